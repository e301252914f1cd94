"""Typed, validated run settings: a YAML recipe plus ``--set a.b=value`` overrides.

Every key is checked: an unknown key names the closest valid one, a wrong type says what was
expected. Method, model and dataset options are free-form here and are checked against the
registered constructor's signature when the run is built (see :func:`selfkd.registry.checked_call`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt

from .errors import ConfigError
from .registry import closest


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MethodConfig(BaseModel):
    """``name`` plus the method's hyperparameters (its keyword arguments)."""

    model_config = ConfigDict(extra="allow")
    name: str = "ce"

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ModelConfig(BaseModel):
    """``name`` plus the backbone's keyword arguments (e.g. ``width``)."""

    model_config = ConfigDict(extra="allow")
    name: str = "cifar_resnet18"

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DataConfig(Section):
    dataset: str = "cifar100"
    data_dir: str | None = None
    options: dict[str, Any] = Field(default_factory=dict, description="reader options, e.g. synthetic sizes")
    batch_size: PositiveInt = 128
    eval_batch_size: PositiveInt = 500
    augment: Literal["crop_flip", "rrc_flip", "flip", "none"] | None = None  # None: the dataset's usual one
    image_size: PositiveInt | None = None  # training crop / test size; None: the dataset's usual one
    padding: NonNegativeInt | None = None  # crop padding; None: the dataset's usual one (4 for CIFAR)
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    test_resize: PositiveInt | None = None  # file datasets: resize before the centre crop (e.g. 256 for 224)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    train_subset: PositiveInt | None = None  # first N images of a fixed shuffle, for quick runs
    test_subset: PositiveInt | None = None
    loader: Literal["auto", "resident", "workers"] = "auto"
    workers: NonNegativeInt = 8


class OptimConfig(Section):
    lr: PositiveFloat = 0.1
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    no_decay_norm_bias: bool = False
    lr_reference_batch: PositiveInt | None = None  # scale lr by batch_size / this (linear scaling rule)


class ScheduleConfig(Section):
    name: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: list[NonNegativeInt] = Field(default_factory=lambda: [100, 150])
    gamma: PositiveFloat = 0.1
    warmup_epochs: NonNegativeInt = 0
    milestones_after_warmup: bool = False  # count milestones from the end of warm-up (Self-KD-Lib)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)  # cosine floor as a fraction of the base lr


class TrainConfig(Section):
    epochs: PositiveInt = 200
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # auto: bf16 on CUDA, off on CPU
    channels_last: bool | Literal["auto"] = "auto"
    compile: Literal["auto", "off", "default", "reduce-overhead", "max-autotune"] = "auto"
    grad_clip: PositiveFloat | None = None
    deterministic: bool = False
    eval_every: PositiveInt = 1
    log_every: PositiveInt = 50  # steps between progress updates and non-finite checks
    nonfinite: Literal["stop", "skip"] = "stop"
    sync_bn: bool = False
    progress: bool | Literal["auto"] = "auto"


class Config(Section):
    name: str | None = None  # run name; default <dataset>_<model>_<method>_s<seed>
    seed: int = 0
    run_dir: str | None = None  # default runs/<name>
    method: MethodConfig = Field(default_factory=MethodConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @property
    def run_name(self) -> str:
        """``name`` with ``{seed}``, ``{method}``, ``{model}``, ``{dataset}`` filled in, or the default
        ``<dataset>_<model>_<method>_s<seed>``."""
        fields = {"seed": self.seed, "method": self.method.name, "model": self.model.name, "dataset": self.data.dataset}
        template = self.name or "{dataset}_{model}_{method}_s{seed}"
        try:
            return template.format(**fields).replace(":", "-")
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError(f"name '{self.name}' has an unknown placeholder ({err}); use {{seed}}, {{method}}, "
                              "{model} or {dataset}.") from None

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.run_name

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


def _fields_at(loc: tuple) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def _explain(err: pydantic.ValidationError, source: str) -> ConfigError:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key '{key}'.{closest(str(e['loc'][-1]), _fields_at(e['loc']))}")
        else:
            lines.append(f"'{key}': {e['msg']} (got {e.get('input')!r})")
    return ConfigError(f"Invalid configuration in {source}: " + "; ".join(lines) + ".")


def parse_override(item: str) -> tuple[str, Any]:
    """``"optim.lr=0.05"`` -> ``("optim.lr", 0.05)``; values are YAML, so ``False`` is a bool."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value (e.g. --set optim.lr=0.05), got '{item}'.")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def set_key(data: dict, dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"Cannot set '{dotted}': '{part}' is a value, not a section.")
        node = nxt
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist. Recipes live in configs/ (e.g. configs/smoke.yaml).")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"Config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of settings, found {type(data).__name__}.")
    return data


def build_config(data: dict, source: str = "the configuration") -> Config:
    try:
        return Config.model_validate(data)
    except pydantic.ValidationError as err:
        raise _explain(err, source) from None


def load_config(path: str | Path | None = None, overrides: list[str] = (), extra: dict | None = None) -> Config:
    """Read a recipe (or the defaults), merge ``extra`` (dotted keys) and ``--set`` overrides, validate."""
    data = read_yaml(path) if path else {}
    for key, value in (extra or {}).items():
        set_key(data, key, value)
    for item in overrides:
        set_key(data, *parse_override(item))
    return build_config(data, str(path) if path else "the command line")
