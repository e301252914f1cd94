"""Typed, validated run settings: a YAML recipe plus ``--set a.b=value`` overrides.

Every key is checked: an unknown key names the closest valid one, a wrong type says what was
expected. Method, model and dataset options are free-form here and are checked against the
registered constructor's signature when the run is built (see :func:`selfkd.registry.checked_call`).
"""
from __future__ import annotations

import copy
import sys
import warnings
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt

from .data.settings import DataConfig
from .errors import ConfigError, SelfKDWarning, short
from .registry import closest
from .tasks import TASK_NAMES

Task = Literal[("auto", *TASK_NAMES)]  # auto: what the dataset's labels are


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class MethodConfig(BaseModel):
    """``name`` plus the method's hyperparameters (its keyword arguments)."""

    model_config = ConfigDict(extra="allow")
    name: str = "ce"

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ModelConfig(BaseModel):
    """``name`` plus the backbone's keyword arguments (e.g. ``width``); ``pretrained``: the weights a new run starts
    from (a tag such as ``imagenet``, a file or a run folder: :mod:`selfkd.models.pretrained`); ``freeze_bn``: the
    BatchNorm layers that came from them stay in eval mode (running statistics frozen; their affine weights train)."""

    model_config = ConfigDict(extra="allow")
    name: str = "cifar_resnet18"
    pretrained: str | None = Field(None, min_length=1)
    freeze_bn: bool = False

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class OptimConfig(Section):
    lr: PositiveFloat = 0.1
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    no_decay_norm_bias: bool = False
    lr_reference_batch: PositiveInt | None = None  # scale lr by batch_size / this (linear scaling rule)
    pretrained_lr_scale: float = Field(1.0, ge=0)  # lr multiplier of the parameters that came from model.pretrained


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
    grad_clip_mode: Literal["norm", "value"] = "norm"  # clip the global gradient norm, or each value (FRSKD seg)
    accumulate_steps: PositiveInt = 1  # batches whose gradients are summed (loss / N) before each optimizer step
    deterministic: bool = False
    eval_every: PositiveInt = 1  # epochs between evaluations (the last epoch is always evaluated)
    # Which weights the run exports and tests: the last epoch's, or those of the epoch with the best validation
    # metric (the task's headline metric on data.val_split's images; kept in the checkpoint).
    select: Literal["last", "best_val"] = "last"
    # Test evaluation: on every evaluated epoch (per-epoch test/ columns, the best one labelled as selected on the test
    # set), only at the end for the selected weights, or never (selfkd tune's trials: tuning never sees the test set).
    eval_test: Literal["every", "end", "never"] = "every"
    log_every: PositiveInt = 50  # steps between progress updates and non-finite checks
    nonfinite: Literal["stop", "skip"] = "stop"
    sync_bn: bool = False
    progress: bool | Literal["auto"] = "auto"


class Config(Section):
    name: str | None = Field(None, min_length=1)  # run name; default <dataset>_<model>_<method>_s<seed>
    task: Task = "auto"
    seed: int = Field(0, ge=0, lt=2**63)  # what torch's generators take
    run_dir: str | None = Field(None, min_length=1)  # default runs/<name>
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
            raise ConfigError(f"name {short(self.name)} has an unknown placeholder ({short(str(err))}); use "
                              "{seed}, {method}, {model} or {dataset}.") from None

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.run_name

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def resolved(self, device_type: str, distributed: bool) -> Config:
        """This config with every ``auto`` training setting decided for the device it runs on.

        ``amp``: bf16 on CUDA, off elsewhere. ``channels_last``: on CUDA, never on the CPU. ``compile``: CUDA graphs
        (``reduce-overhead``) on one GPU; plain compilation under DDP, whose all-reduce hooks fire during
        backward and have not been validated inside captured graphs; off on CPU.
        """
        t, cuda = self.train, device_type == "cuda"
        channels_last = cuda if t.channels_last == "auto" else t.channels_last
        if channels_last and not cuda:
            warnings.warn("train.channels_last: true is ignored on the CPU, which trains in the contiguous layout: "
                          "oneDNN's convolution backward crashes or hangs on channels_last activations on processors "
                          "without AVX-512 (benchmarks/cpu_channels_last.py reproduces it). Set it to auto to "
                          "silence this.", SelfKDWarning, stacklevel=2)
            channels_last = False
        settings = {
            "amp": ("bf16" if cuda else "off") if t.amp == "auto" else t.amp,
            "channels_last": channels_last,
            "compile": ("off" if not cuda else "default" if distributed else "reduce-overhead")
            if t.compile == "auto" else t.compile,
        }
        return self.model_copy(update={"train": t.model_copy(update=settings)})


def _fields_at(loc: tuple, model: type[BaseModel]) -> list[str]:
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def _elsewhere(name: str, model: type[BaseModel]) -> str:
    """A hint for a key put in the wrong section: ' Did you mean 'train.epochs'?' for 'epochs'."""
    for section, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel) and name in ann.model_fields:
            return f" Did you mean '{section}.{name}'?"
    return ""


def explain(err: pydantic.ValidationError, source: str, model: type[BaseModel] | None = None) -> ConfigError:
    """A pydantic error of ``model`` (default :class:`Config`) read from ``source``, as one paragraph: each unknown key
    with the closest valid one, each wrong value with what was expected."""
    model = model or Config
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            name = str(e["loc"][-1])
            hint = closest(name, _fields_at(e["loc"], model)) or _elsewhere(name, model)
            lines.append(f"unknown key {short(key)}.{hint}")
        else:
            lines.append(f"{short(key)}: {e['msg']} (got {short(e.get('input'))})")
    text = "; ".join(line.rstrip(".") for line in lines)
    return ConfigError(f"Invalid configuration in {source}: {text}" + ("" if text.endswith("?") else "."))


def parse_override(item: str) -> tuple[str, Any]:
    """``"optim.lr=0.05"`` -> ``("optim.lr", 0.05)``; values are YAML, so ``False`` is a bool."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value (e.g. --set optim.lr=0.05), got {short(item)}.")
    key, raw = item.split("=", 1)
    try:
        value = parse_yaml(raw, f"--set {short(key.strip(), 40, quoted=False)}=...") if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def set_key(data: dict, dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"Cannot set {short(dotted)}: {short(part)} is a value, not a section.")
        node = nxt
    node[parts[-1]] = value


MAX_YAML_BYTES = 2**20  # a config file (recipes are a few kilobytes)
MAX_YAML_VALUES = 100_000  # values in one YAML document, its aliases expanded (recipes hold a few hundred)


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (the plain loader keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {short(key)} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _values(node, counted: dict, open_nodes: set) -> int:
    """How many values a YAML node holds with every alias expanded (an alias is the node it names: each node is
    counted once, so a "billion laughs" document costs no more than its text)."""
    if id(node) in counted:
        return counted[id(node)]
    if id(node) in open_nodes:
        raise yaml.constructor.ConstructorError(None, None, "an alias refers to a node that holds it",
                                                node.start_mark)
    open_nodes.add(id(node))
    children = (node.value if isinstance(node, yaml.SequenceNode)
                else [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
    counted[id(node)] = 1 + sum(_values(child, counted, open_nodes) for child in children)
    open_nodes.discard(id(node))
    return counted[id(node)]


def parse_yaml(text: str, source: str):
    """YAML ``text`` (from ``source``, for messages) as Python values. A key given twice is a YAML error; a
    document that holds more than :data:`MAX_YAML_VALUES` values once its aliases are expanded, or that is nested
    too deeply to read, is refused before it is built."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if (count := _values(node, {}, set())) > MAX_YAML_VALUES:
            raise ConfigError(f"{source} holds {count:,} values once its YAML aliases are expanded; selfkd reads at "
                              f"most {MAX_YAML_VALUES:,} (a config holds a few hundred). Write the values out instead "
                              "of repeating aliases.")
        return loader.construct_document(node)
    except RecursionError:
        raise ConfigError(f"{source} is nested too deeply to read; a config is a few levels of sections.") from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(f"Config file {path} {what}. Recipes live in configs/ (e.g. configs/smoke.yaml).")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ConfigError(f"Config file {path} holds {path.stat().st_size:,} bytes; selfkd reads configs of at most "
                          f"{MAX_YAML_BYTES:,} (a recipe is a few kilobytes). Is it the right file?")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"), f"Config file {path}") or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"Config file {path} is not UTF-8 text (byte {err.start} cannot be decoded); save it as "
                          "UTF-8.") from None
    except yaml.YAMLError as err:
        mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None) or str(err)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"Config file {path} is not valid YAML{where}: {' '.join(problem.split())}.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of settings, found {type(data).__name__}.")
    return data


def build_config(data: dict, source: str = "the configuration") -> Config:
    try:
        return Config.model_validate(data)
    except pydantic.ValidationError as err:
        raise explain(err, source) from None


# Command-line flags that stand for a config key: flag (argparse dest) -> dotted key.
FLAG_KEYS = {
    "method": "method.name", "model": "model.name", "dataset": "data.dataset", "data_dir": "data.data_dir",
    "epochs": "train.epochs", "batch_size": "data.batch_size", "device": "train.device",
    "run_dir": "run_dir", "name": "name", "seed": "seed",
}


def flag_args(flags: dict[str, Any], overrides: Sequence[str] = ()) -> list[str]:
    """The command-line arguments that give ``flags`` (keys of :data:`FLAG_KEYS`; None values left out) and the
    ``--set`` ``overrides``: how a sweep or a tuning worker passes its settings on to the commands it starts."""
    return ([a for key, value in flags.items() if value is not None for a in (f"--{key.replace('_', '-')}", str(value))]
            + [a for item in overrides for a in ("--set", item)])


def make_config(recipe: str | Path | dict | None = None, flags: dict[str, Any] | None = None,
                overrides: Sequence[str] = (), quiet: bool = False, source: str = "the run's saved config") -> Config:
    """The one way a run's config is made (CLI, sweep, demo, bench): a recipe (a YAML file, a mapping such as a
    run's saved config, or None for the defaults), then ``flags`` (keys of :data:`FLAG_KEYS`; None values are
    ignored), then ``--set key=value`` overrides, validated. ``source`` names a mapping recipe in error messages.

    A ``method`` flag that names another method than the recipe's drops the recipe's method options (they
    belong to the old method); that is said on stderr unless ``quiet``.
    """
    if isinstance(recipe, dict):
        data = copy.deepcopy(recipe)
    else:
        data, source = (read_yaml(recipe), str(recipe)) if recipe else ({}, "the command line")
    given = {FLAG_KEYS[flag]: value for flag, value in (flags or {}).items() if value is not None}
    new_method = given.get("method.name")
    old = data.get("method")
    if new_method and isinstance(old, dict) and old.get("name", "ce") != new_method:
        dropped = sorted(k for k in old if k != "name")
        data["method"] = {}
        if dropped and not quiet:
            print(f"note: --method {new_method} replaces {old.get('name', 'ce')}; dropped its options "
                  f"{', '.join(dropped)}.", file=sys.stderr)
    for key, value in given.items():
        set_key(data, key, value)
    for item in overrides:
        set_key(data, *parse_override(item))
    return build_config(data, source)
