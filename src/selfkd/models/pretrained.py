"""Pretrained weights: what ``model.pretrained`` (and ``tfkd_self``'s teacher) names is read, mapped onto a selfkd
model, loaded and reported (:class:`LoadReport`).

A value is a tag or a path:

- ``imagenet`` (the default weights of the model's first network) or a torchvision weights name (``IMAGENET1K_V2``,
  ``COCO_WITH_VOC_LABELS_V1``) for the models built from torchvision networks, read through torchvision's own
  download and cache (``$TORCH_HOME/hub/checkpoints``); for ``timm:<name>``, ``imagenet`` (timm's default tag) or one
  of timm's tags (``a1_in1k``), read through timm's (the Hugging Face cache).
- a file: ``.safetensors``, or ``.pt``/``.pth``/``.bin`` read with ``torch.load(weights_only=True)`` (no pickled code
  runs), in torchvision's, timm's or efficientnet_pytorch's key layout, or a selfkd weights file; or a selfkd run
  folder (its ``model.safetensors``).

A registered model declares the torchvision networks it takes weights of (:class:`Network`: where each network's
tensors sit in the model), so weights move by name between the models of one network: torchvision's ``resnet18``
into selfkd's ``resnet18`` or into ``frskd_seg_resnet18``'s encoder, and a selfkd ``resnet18`` run into that encoder.
efficientnet_pytorch's names are renamed to torchvision's first (:func:`efficientnet_pytorch_names`).

Every model tensor the weights cover must come from them with its shape, and every tensor of the weights must have
a place, except the class layer when the class count differs (left out: the model keeps its new one), the first
convolution when the input channels differ (adapted as timm's ``adapt_input_conv``) and the parts of the network the
model leaves out (an encoder's classifier). ``exact=True`` (a teacher: the network as trained) allows no difference.
Model tensors the weights do not cover (a segmenter's decoder, given a classifier) keep their random initialisation
and are reported as new. BatchNorm's ``num_batches_tracked`` counters are loaded when present, never required
(torchvision's older files lack them) and not counted.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..data.settings import Preprocessing
from ..errors import CheckpointError, ConfigError, first_line
from ..runfolder import WEIGHTS
from ..weights import load_weights
from .registry import MODEL_WEIGHTS

IMAGENET = "imagenet"
FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
COUNTER = "num_batches_tracked"
TIMM = "timm:"


@dataclass(frozen=True)
class Network:
    """A torchvision network (its builder's name, e.g. ``resnet18``, whose weights enum torchvision knows) and where
    its tensors sit in a selfkd model: ``places`` maps prefixes of the network's keys to prefixes of the model's (the
    first that matches), ``unused`` names the parts of the network the model leaves out."""

    arch: str
    places: tuple[tuple[str, str], ...]
    unused: tuple[str, ...] = ()


@dataclass
class Weights:
    """Tensors read from a source, in ``layout`` (torchvision, timm, efficientnet_pytorch or selfkd)."""

    tensors: dict[str, torch.Tensor]
    layout: str
    what: str
    preprocessing: Preprocessing | None = None
    meta: dict = field(default_factory=dict)  # a selfkd file's metadata


@dataclass
class Placement:
    """Tensors under the model's names; the model tensors they are meant to cover; what was left out, and why; the
    names that found no place."""

    tensors: dict[str, torch.Tensor]
    covered: set[str]
    skipped: dict[str, list[str]]
    unplaced: list[str]


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did; a run prints it and keeps it as ``pretrained.json``."""

    source: str  # the value as given (model.pretrained)
    what: str  # what was read
    layout: str
    model: str
    total: int  # the model's tensors
    loaded: list[str]  # model tensors taken from the weights (adapted ones included)
    adapted: dict[str, str]  # model tensor -> how
    skipped: dict[str, list[str]]  # why -> tensors of the weights left out
    new: list[str]  # model tensors the weights do not give: randomly initialised
    preprocessing: Preprocessing | None = None

    def text(self) -> str:
        parts = [f"Pretrained weights: loaded {len(self.loaded)} of {self.total} tensors of {self.model} from "
                 f"{self.what} ({self.layout} layout)"]
        parts += [f"adapted {key}: {how}" for key, how in self.adapted.items()]
        parts += [f"skipped {_names(keys)}: {why}" for why, keys in self.skipped.items()]
        if self.new:
            tops = sorted({key.split(".")[0] for key in self.new})
            parts.append(f"new (randomly initialised): {len(self.new)} tensors of {', '.join(tops)}")
        if self.preprocessing:
            p = self.preprocessing
            parts.append(f"trained with mean {list(p.mean)}, std {list(p.std)}"
                         + (f", crop {p.image_size}" if p.image_size else ""))
        return "; ".join(parts) + "."

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def read(cls, path: Path) -> LoadReport:
        """The report a run wrote (``pretrained.json``), which a resume needs instead of the weights."""
        try:
            data = json.loads(Path(path).read_text())
            prep = data.pop("preprocessing")
            prep = prep and Preprocessing(tuple(prep["mean"]), tuple(prep["std"]), prep["image_size"])
            report = cls(**data, preprocessing=prep)
        except (OSError, ValueError, TypeError, AttributeError, KeyError) as err:
            raise CheckpointError(f"{path} cannot be read ({first_line(err)}): it records which tensors the run took "
                                  "from its pretrained weights, which a resume needs. Start the run over "
                                  "(--overwrite).") from None
        return report


def _names(keys: list[str], limit: int = 4) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


# --------------------------------------------------------------------------- reading

def read_weights(source: str, model: nn.Module) -> Weights:
    """The tensors ``source`` names for ``model``: a file or run folder, else a tag of the model's weights."""
    path = Path(source).expanduser()
    if path.suffix in FILE_SUFFIXES or "/" in source or os.sep in source or path.exists():
        return read_file(path, model)
    if model.name.startswith(TIMM):
        return timm_weights(model.name[len(TIMM):], source)
    return torchvision_weights(model.name, source)


def read_file(path: Path, model: nn.Module) -> Weights:
    """A weights file or a selfkd run folder, its layout told by its names (or selfkd's metadata)."""
    if path.is_dir():
        if not (path / WEIGHTS).is_file():
            raise CheckpointError(f"{path} is a folder without {WEIGHTS}: give a finished selfkd run folder, or a "
                                  "weights file (.safetensors, .pt, .pth).")
        path = path / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"No weights file at {path}. Give the path of a .safetensors, .pt or .pth file or of a "
                              "finished selfkd run folder, or a tag such as imagenet.")
    if path.suffix == ".safetensors":
        tensors, meta = load_weights(path)
    elif path.suffix in FILE_SUFFIXES:
        tensors, meta = read_torch_file(path), {}
    else:
        raise ConfigError(f"{path}: selfkd reads weights from .safetensors, .pt, .pth and .bin files and run folders; "
                          "save or convert the state dict as one of them.")
    if "model" in meta:
        layout = "selfkd"
    elif "_conv_stem.weight" in tensors:
        layout = "efficientnet_pytorch"
    else:
        layout = "timm" if model.name.startswith(TIMM) else "torchvision"
    prep = Preprocessing(tuple(meta["mean"]), tuple(meta["std"]), meta.get("image_size")) if "mean" in meta else None
    return Weights(tensors, layout, str(path), prep, meta)


def read_torch_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .pt/.pth/.bin file through ``torch.load(weights_only=True)``, which refuses any pickled
    object but tensors and plain containers; a ``state_dict``/``model`` entry (training checkpoints) is taken, and a
    ``module.`` prefix (DDP) dropped."""
    import pickle

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise CheckpointError(f"{path} is not a readable weights file ({first_line(err)}).") from None
        held = next((line.strip() for line in str(err).splitlines() if "Unsupported" in line), "objects other than "
                    "tensors")
        raise CheckpointError(f"{path} is a pickle that holds more than tensors ({held[:200]}): loading it could run "
                              "code, so selfkd refuses it (it reads .pt/.pth files with torch.load(weights_only="
                              "True)). Where you trust the file, save its state dict alone (torch.save(model."
                              "state_dict(), path)) or convert it to .safetensors, and give that file.") from None
    except Exception as err:  # a damaged file fails with RuntimeError, EOFError, KeyError... depending on where
        raise CheckpointError(f"{path} is not a readable weights file ({first_line(err)}): it is truncated or "
                              "damaged. Copy or download it again.") from None
    for key in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path} holds no state dict (a mapping of names to tensors); save the model's "
                              "state_dict() and give that file.")
    return {k.removeprefix("module."): v for k, v in data.items()}


def torchvision_weights(model_name: str, tag: str) -> Weights:
    """torchvision's weights ``tag`` of the model's networks, through torchvision's download and cache."""
    networks = MODEL_WEIGHTS.get(model_name, ())
    if not networks:
        with_weights = sorted(name for name, nets in MODEL_WEIGHTS.items() if nets)
        raise ConfigError(f"model.pretrained: {tag} asks for published weights, but no public weights exist for "
                          f"{model_name} (CIFAR-style networks have no ImageNet weights). Give a weights file instead: "
                          f"a selfkd run folder of a {model_name} (e.g. a ce run), its model.safetensors, or a "
                          f".safetensors/.pt state dict in its layout. Models with ImageNet weights: "
                          f"{', '.join(with_weights)}, and timm:<name>.")
    entry = _torchvision_entry(model_name, networks, tag)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / entry.url.rpartition("/")[2]  # where torch.hub keeps it
    existed = cached.is_file()
    try:
        state = entry.get_state_dict(progress=True, weights_only=True)
    except Exception as err:  # a failed download (URLError, HTTPError...) or a damaged cached file
        if existed:
            raise CheckpointError(f"{cached}, torchvision's cached {entry}, cannot be read ({first_line(err)}): it is "
                                  "damaged. Delete it and run again to download it anew, or put a good copy there.") \
                from None
        raise ConfigError(f"torchvision's {entry} weights are not in torch's cache and could not be downloaded "
                          f"({first_line(err)}). On a machine with internet they download by themselves; offline, "
                          f"download {entry.url} elsewhere and put it in {cached.parent} as {cached.name} (the folder "
                          "follows TORCH_HOME), or give the file's path as model.pretrained.") from None
    t = entry.transforms()
    prep = Preprocessing(tuple(t.mean), tuple(t.std), (getattr(t, "crop_size", None) or [None])[0])
    return Weights(state, "torchvision", f"torchvision's {entry}", prep)


def _torchvision_entry(model_name: str, networks: tuple[Network, ...], tag: str):
    """The member of the networks' weights enums that ``tag`` names (``imagenet``: the first one's default)."""
    from torchvision.models import get_model_weights

    enums = [get_model_weights(network.arch) for network in networks]
    if tag == IMAGENET:
        return enums[0].DEFAULT
    for enum in enums:
        if tag.rpartition(".")[2] in enum.__members__:
            return enum[tag.rpartition(".")[2]]
    names = [IMAGENET] + [name for enum in enums for name in enum.__members__ if name != "DEFAULT"]
    raise ConfigError(f"model.pretrained: {tag} is neither a weights file (no such path) nor torchvision weights of "
                      f"{model_name}, which are: {', '.join(names)}. Give one of them or the path of a file.")


def timm_weights(name: str, tag: str) -> Weights:
    """timm's pretrained weights ``tag`` of model ``name``, through ``timm.create_model(pretrained=True)``: timm's own
    download and cache (the Hugging Face cache, or torch's for older weights)."""
    import timm

    tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{name}.*")]
    if tag != IMAGENET and tag not in tags:
        known = f"its tags are {', '.join(tags)}" if tags else "timm publishes none for it"
        raise ConfigError(f"model.pretrained: {tag} is neither a weights file (no such path) nor timm weights of "
                          f"{name} ({known}). Give imagenet (timm's default), a tag, or the path of a file.")
    full = name if tag == IMAGENET else f"{name}.{tag}"
    try:
        net = timm.create_model(full, pretrained=True)
    except Exception as err:  # a failed download (OSError, the hub's errors) or a damaged cached file
        cfg = timm.models.get_pretrained_cfg(full)
        where = (f"download model.safetensors from https://huggingface.co/{cfg.hf_hub_id}" if cfg and cfg.hf_hub_id
                 else f"download {getattr(cfg, 'url', None)}")
        raise ConfigError(f"timm's weights {full} could not be read from its cache or downloaded ({first_line(err)}). "
                          "On a machine with internet they download by themselves into the Hugging Face cache "
                          f"(HF_HOME); offline, {where} and give its path as model.pretrained.") from None
    cfg = net.pretrained_cfg
    prep = Preprocessing(tuple(cfg["mean"]), tuple(cfg["std"]), cfg["input_size"][-1])
    return Weights(net.state_dict(), "timm", f"timm's {cfg['architecture']}.{cfg['tag']}", prep)


# --------------------------------------------------------------------------- placing

EFFICIENTNET_PARTS = {  # efficientnet_pytorch's MBConv modules -> torchvision's, with and without the expansion conv
    True: {"_expand_conv": "0.0", "_bn0": "0.1", "_depthwise_conv": "1.0", "_bn1": "1.1", "_se_reduce": "2.fc1",
           "_se_expand": "2.fc2", "_project_conv": "3.0", "_bn2": "3.1"},
    False: {"_depthwise_conv": "0.0", "_bn1": "0.1", "_se_reduce": "1.fc1", "_se_expand": "1.fc2",
            "_project_conv": "2.0", "_bn2": "2.1"},
}


def efficientnet_pytorch_names(tensors: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """efficientnet_pytorch's EfficientNet tensors under torchvision's names for network ``arch``: its flat
    ``_blocks`` are torchvision's stages' blocks in order, each MBConv's modules in the same order (names that fit
    nothing are kept, to be reported)."""
    import torchvision.models as tvm

    with torch.device("meta"):
        features = getattr(tvm, arch)().features
    head = len(features) - 1
    blocks = [(s, b) for s in range(1, head) for b in range(len(features[s]))]
    top = {"_conv_stem": "features.0.0", "_bn0": "features.0.1", "_conv_head": f"features.{head}.0",
           "_bn1": f"features.{head}.1", "_fc": "classifier.1"}
    out = {}
    for key, value in tensors.items():
        module, _, leaf = key.rpartition(".")
        parts = module.split(".")
        name = top.get(module)
        if len(parts) == 3 and parts[0] == "_blocks" and parts[1].isdigit() and int(parts[1]) < len(blocks):
            stage, block = blocks[int(parts[1])]
            part = EFFICIENTNET_PARTS[f"_blocks.{parts[1]}._expand_conv.weight" in tensors].get(parts[2])
            name = part and f"features.{stage}.{block}.block.{part}"
        out[f"{name}.{leaf}" if name else key] = value
    return out


def move(tensors: dict, places, unused: tuple[str, ...], own, why: str) -> Placement:
    """``tensors`` renamed by the first of ``places`` (old prefix, new prefix) that fits each name; names under
    ``unused`` are skipped for ``why``; ``own``: the names of the receiving side (None: any name), where a renamed
    tensor must land to be placed."""
    out, skipped, unplaced = {}, [], []
    for key, value in tensors.items():
        new = next((to + key[len(at):] for at, to in places if key.startswith(at)), None)
        if new is not None and (own is None or new in own):
            out[new] = value
        elif new is None and key.startswith(unused):
            skipped.append(key)
        else:
            unplaced.append(key)
    covered = {key for key in own or () if any(key.startswith(to) for _, to in places)}
    return Placement(out, covered, {why: skipped} if skipped else {}, unplaced)


def place(weights: Weights, model: nn.Module) -> tuple[str, Placement]:
    """``(layout, placement)``: ``weights`` under ``model``'s names (see the module's docstring), in the layout that
    places most of them: the model's own names (a selfkd file of the model, a timm file of a timm model, a state dict
    saved from a selfkd model), or one of its networks'."""
    own = model.state_dict().keys()
    tensors, skipped = weights.tensors, {}
    if weights.meta.get("inference") == "method":  # the file of a whole method: its model is its `backbone`
        inner = move(tensors, [("backbone.", "")], ("",), None, f"modules of the {weights.meta.get('method')} method")
        tensors, skipped = inner.tensors, inner.skipped
    if weights.layout == "selfkd" and weights.meta["model"] != model.name:
        tensors, networks, skipped = _through_network(tensors, weights.meta["model"], model.name, skipped)
        options = []
    else:
        networks = () if model.name.startswith(TIMM) else MODEL_WEIGHTS.get(model.name, ())
        own_names = [("", "model.") if weights.layout == "timm" else ("", "")]
        layout = weights.layout if weights.layout in ("selfkd", "timm") else "selfkd (the model's own names)"
        options = [(layout, move(tensors, own_names, (), own, ""))]
    if weights.layout == "efficientnet_pytorch":
        networks = [n for n in networks if n.arch.startswith("efficientnet")]
    for network in networks:
        named = efficientnet_pytorch_names(tensors, network.arch) if weights.layout == "efficientnet_pytorch" \
            else tensors
        options.append((weights.layout, move(named, network.places, network.unused, own, f"not part of {model.name}")))
    layout, placed = min(options, key=lambda option: len(option[1].unplaced))
    return layout, Placement(placed.tensors, placed.covered, {**skipped, **placed.skipped}, placed.unplaced)


def _through_network(tensors: dict, source: str, model_name: str, skipped: dict):
    """The tensors of a selfkd file of model ``source`` under the names of the network it shares with the model."""
    theirs = {n.arch: n for n in MODEL_WEIGHTS.get(source, ())}
    networks = MODEL_WEIGHTS.get(model_name, ())
    shared = [n for n in networks if n.arch in theirs]
    if not shared:
        raise ConfigError(f"The weights hold a {source}, which shares no network with {model_name} "
                          f"({source}: {', '.join(theirs) or 'none'}; {model_name}: "
                          f"{', '.join(n.arch for n in networks) or 'none'}). Give weights of a {model_name}, or of "
                          "a model built on the same network.")
    network = theirs[shared[0].arch]
    back = move(tensors, [(to, at) for at, to in network.places], ("",), None, f"parts of {source} outside its "
                f"{network.arch}")
    return back.tensors, shared[:1], {**skipped, **back.skipped}


# --------------------------------------------------------------------------- loading

def load_pretrained(model: nn.Module, source: str, exact: bool = False) -> LoadReport:
    """Load the weights ``source`` names into ``model`` (see the module's docstring) and say what was done; nothing in
    ``model`` changes when they do not fit (a :class:`ConfigError` naming the first differences)."""
    weights = read_weights(source, model)
    layout, placed = place(weights, model)
    own = model.state_dict()
    state, adapted, skipped, wrong = fit(model, placed, own, exact)
    missing = [k for k in own if k in placed.covered and k not in state and k not in wrong and not k.endswith(COUNTER)
               and not any(k in keys for keys in skipped.values())]
    uncovered = [k for k in own if k not in placed.covered and not k.endswith(COUNTER)]
    if missing or placed.unplaced or wrong or (exact and uncovered):
        raise ConfigError(_mismatch(weights.what, model.name, missing or (uncovered if exact else []), placed.unplaced,
                                    list(wrong.values()), exact))
    model.load_state_dict({**own, **state})
    counted = [k for k in own if not k.endswith(COUNTER)]
    return LoadReport(source, weights.what, layout, model.name, len(counted),
                      [k for k in counted if k in state], adapted, {**placed.skipped, **skipped},
                      [k for k in counted if k not in state], weights.preprocessing)


def loaded_norms(model: nn.Module, report: LoadReport) -> list[str]:
    """The names of ``model``'s BatchNorm modules whose running statistics came from the weights (model.freeze_bn)."""
    loaded = set(report.loaded)
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and f"{name}.running_mean" in loaded]


def fit(model: nn.Module, placed: Placement, own: dict, exact: bool):
    """``(state, adapted, skipped, wrong)``: the placed tensors that fit the model's shapes (a first conv of other
    input channels adapted), the class layers left out (another class count), the other shapes that differ (in the
    model's order)."""
    first = next((f"{name}.weight" for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    state, adapted, skipped, wrong = {}, {}, {}, {}
    for key in [k for k in own if k in placed.tensors]:
        value, mine = placed.tensors[key], own[key]
        if value.shape == mine.shape:
            state[key] = value
        elif not exact and _class_layer(value, mine, model.num_classes):
            skipped.setdefault(f"{value.shape[0]} classes, this run has {model.num_classes}", []).append(key)
        elif not exact and key == first and value.shape[:1] + value.shape[2:] == mine.shape[:1] + mine.shape[2:]:
            state[key] = adapt_input_conv(value, mine.shape[1], key)
            adapted[key] = (f"{value.shape[1]} input channels {'summed' if mine.shape[1] == 1 else 'repeated'} to "
                            f"{mine.shape[1]}, as timm's adapt_input_conv")
        else:
            wrong[key] = f"{key} {tuple(value.shape)} in the weights, {tuple(mine.shape)} in the model"
    return state, adapted, skipped, wrong


def _class_layer(value: torch.Tensor, mine: torch.Tensor, num_classes: int) -> bool:
    """Whether a shape difference is the class count's: the model's tensor has ``num_classes`` rows, the weights'
    another number, and the rest agrees."""
    return value.ndim == mine.ndim and mine.shape[0] == num_classes and value.shape[1:] == mine.shape[1:]


def adapt_input_conv(weight: torch.Tensor, channels: int, key: str) -> torch.Tensor:
    """A first conv's weight for ``channels`` input channels, as timm's ``adapt_input_conv``: summed over its inputs
    for one channel; from three, repeated and scaled by 3/channels (the response to a grey image stays the same)."""
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    if weight.shape[1] != 3:
        raise ConfigError(f"The first convolution {key} of the weights takes {weight.shape[1]} input channel(s) and "
                          f"this model {channels}: only 3-channel weights can be adapted to other channel counts (and "
                          f"any to 1), as timm does. Give weights trained on {channels}- or 3-channel images.")
    return weight.repeat(1, math.ceil(channels / 3), 1, 1)[:, :channels] * (3 / channels)


def _mismatch(what: str, model: str, missing: list[str], unplaced: list[str], wrong: list[str], exact: bool) -> str:
    found = [f"{model}'s {_names(missing, 3)} are not in them" if missing else "",
             f"their {_names(unplaced, 3)} have no place in {model}" if unplaced else "",
             f"shapes differ: {_names(wrong, 3)}" if wrong else ""]
    archs = [n.arch for n in MODEL_WEIGHTS.get(model, ())]
    built = f"of torchvision's {' or '.join(archs)} (what {model} is built on), " if archs else ""
    fix = ("A teacher must be the network as trained: the same model, options, class count and input channels" if exact
           else f"They are of another architecture or other model options: give weights {built}or of a selfkd run of "
           f"{model} with the same options")
    return f"{what} does not fit {model}: {'; '.join(f for f in found if f)}. {fix}."
