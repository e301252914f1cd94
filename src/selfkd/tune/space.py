"""Search spaces: a method's declared default (:attr:`selfkd.methods.Method.search_space`) and the command line's
``--space KEY=LOW:HIGH[:log]`` / ``KEY=a,b,c`` items, checked against the types and limits of the options they search,
and sampled by an Optuna trial.

A key is a dotted config key (``optim.lr``, ``data.batch_size``, ``train.epochs``), a method option
(``method.temperature``) or a model option (``model.width``). A range searches numbers, uniformly or on a log scale,
integers when the option takes integers; a list of values searches those values.
"""
from __future__ import annotations

import contextlib
import inspect
import typing
from collections.abc import Sequence
from dataclasses import asdict

import pydantic
import yaml

from ..errors import ConfigError
from ..registry import Choice, Range, closest, option_hints

Space = dict  # dotted key -> Range | Choice
EXAMPLE = "e.g. --space optim.lr=0.01:0.3:log or --space method.temperature=2,4,8"
# Keys that decide what the trials are compared on, or that no trial may change (it is never tested): not searched.
FIXED = ("seed", "data.val_split", "data.val_seed", "train.eval_test")


def parse_space(items: Sequence[str]) -> Space:
    """The ``--space`` items as a space, each well formed (a key given once, ``low <= high``, a log range above 0)."""
    space: Space = {}
    for item in items:
        key, sep, text = (part.strip() for part in item.partition("="))
        if not (sep and key and text):
            raise ConfigError(f"--space expects KEY=LOW:HIGH[:log] or KEY=a,b,c ({EXAMPLE}), got '{item}'.")
        if key in space:
            raise ConfigError(f"--space gives {key} twice ('{item}'); give each key once.")
        if ":" in text:
            space[key] = _range(key, text)
        else:
            values = [_scalar(v) for v in text.split(",")]
            if any(v in (None, "") for v in values):
                raise ConfigError(f"--space {key}={text} lists an empty value; give KEY=a,b,c ({EXAMPLE}).")
            space[key] = Choice(tuple(values))
    return space


def _scalar(text: str):
    """A value as YAML reads it (``0.1`` a float, ``true`` a boolean, ``bifpn`` a string), a number as Python does
    (``1e-5`` too, which YAML 1.1 reads as a string)."""
    text = text.strip()
    for number in (int, float) if any(c.isdigit() for c in text) else ():
        with contextlib.suppress(ValueError):
            return number(text)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text.strip()


def _range(key: str, text: str) -> Range:
    parts = text.split(":")
    ends = [_scalar(p) for p in parts[:2]]
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2].strip() != "log") or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in ends):
        raise ConfigError(f"--space {key}={text} is not a range LOW:HIGH or LOW:HIGH:log of two numbers ({EXAMPLE}).")
    return checked_range(key, Range(ends[0], ends[1], len(parts) == 3))


def checked_range(key: str, where: Range) -> Range:
    """``where`` if it is a range at all: ``low <= high``, and above 0 on a log scale."""
    if where.low > where.high:
        raise ConfigError(f"The search range of {key} goes from {where.low} down to {where.high} (low > high); give "
                          f"it as {key}={where.high}:{where.low}{':log' if where.log else ''}.")
    if where.log and where.low <= 0:
        raise ConfigError(f"The search range of {key} is on a log scale from {where.low}, but a log scale cannot reach "
                          f"0 or below; start it above 0 (e.g. {key}={where.high / 100:g}:{where.high}:log), or search "
                          f"it uniformly ({key}={where.low}:{where.high}).")
    return where


def to_json(space: Space) -> dict:
    """The space as JSON (stored with a study, compared when a study is continued)."""
    return {key: {**asdict(where), **({"values": list(where.values)} if isinstance(where, Choice) else {})}
            for key, where in sorted(space.items())}


def from_json(data: dict) -> Space:
    return {key: Choice(tuple(w["values"])) if "values" in w else Range(w["low"], w["high"], w["log"])
            for key, w in data.items()}


def suggest(trial, key: str, where):
    """The value of ``key`` the Optuna ``trial`` samples (integers for a range with integer ends)."""
    if isinstance(where, Choice):
        return trial.suggest_categorical(key, list(where.values))
    if isinstance(where.low, int) and isinstance(where.high, int):
        return trial.suggest_int(key, where.low, where.high, log=where.log)
    return trial.suggest_float(key, float(where.low), float(where.high), log=where.log)


# --------------------------------------------------------------------------- checking a space against the options

def method_space(method_cls, name: str, cfg, given: Space, others: dict) -> Space:
    """The space of one method: its declared default, then ``given`` (the command line's, which wins), each entry
    checked against the option or config key it searches in a run of ``cfg``. ``others``: the other tuned methods'
    classes by name, for a key that belongs to one of them."""
    space = {f"method.{option}": where for option, where in method_cls.search_space.items()}
    space.update(given)
    if not space:
        raise ConfigError(f"Method '{name}' declares no search space and --space adds none, so there is nothing to "
                          f"tune; add config keys to search ({EXAMPLE}).")
    return {key: _checked(key, where, _hint(key, method_cls, name, cfg, others)) for key, where in space.items()}


def _options(fn, fixed: int) -> dict:
    """Keyword options of a method class or model factory (after its ``fixed`` leading arguments) -> type hint."""
    from ..methods.registry import DATA_ARGS

    target = fn.__init__ if isinstance(fn, type) else fn
    params = [p for p, v in inspect.signature(target).parameters.items()
              if p != "self" and v.kind in (v.KEYWORD_ONLY, v.POSITIONAL_OR_KEYWORD)][fixed:]
    hints = option_hints(fn)
    return {p: hints.get(p, typing.Any) for p in params if p not in DATA_ARGS}


def _hint(key: str, method_cls, name: str, cfg, others: dict):
    """The type (with its limits) of the option or config key ``key`` names."""
    section, _, option = key.partition(".")
    if key in FIXED:
        raise ConfigError(f"--space {key}: {', '.join(FIXED)} decide what the trials are compared on (the same seed "
                          "and validation images for every trial, never the test set), so they are not searched; "
                          "set them in the recipe or with --set.")
    if key in ("method.name", "model.name"):
        raise ConfigError(f"--space {key}: the methods are chosen with --methods and the model with --model (or the "
                          "recipe), not searched; search their options (method.<option>, model.<option>).")
    if section == "method":
        options = _options(method_cls, 2)
        if option not in options:
            owners = [other for other, cls in others.items() if option in _options(cls, 2)]
            if owners:
                raise ConfigError(f"--space {key} searches an option of {', '.join(owners)}, not of '{name}', and a "
                                  f"--space applies to every method of --methods; tune {', '.join(owners)} in a "
                                  "command of its own (each method's default space already covers its options).")
            raise ConfigError(f"--space {key}: '{name}' has no option '{option}'.{closest(option, options)} Its "
                              f"options: {', '.join(options) or '(none)'}.")
        return options[option]
    if section == "model":
        return _model_option(key, option, cfg)
    return _config_field(key)


def _model_option(key: str, option: str, cfg):
    from ..models.registry import MODELS

    options = _options(MODELS.get(cfg.model.name), 0)
    options = {k: v for k, v in options.items() if k not in ("num_classes", "in_channels")}
    if option not in options:
        raise ConfigError(f"--space {key}: model '{cfg.model.name}' has no option '{option}'.{closest(option, options)}"
                          f" Its options: {', '.join(options) or '(none)'}.")
    return options[option]


def _section(model) -> bool:
    return isinstance(model, type) and issubclass(model, pydantic.BaseModel)


def _config_field(key: str):
    """The annotated type of the config field at dotted ``key`` (a leaf of :class:`selfkd.config.Config`)."""
    from ..config import Config

    model, parts, field = Config, key.split("."), None
    for i, part in enumerate(parts):
        if not _section(model):
            raise ConfigError(f"--space {key}: '{'.'.join(parts[:i])}' is a value, not a section of the config.")
        field = model.model_fields.get(part)
        if field is None:
            hint = closest(part, model.model_fields) or " Method options are method.<option>, model options " \
                                                         "model.<option>."
            raise ConfigError(f"--space {key}: unknown config key '{'.'.join(parts[:i + 1])}'.{hint} Search a "
                              f"config key (such as optim.lr), a method option or a model option ({EXAMPLE}).")
        model = field.annotation
    if _section(model):
        raise ConfigError(f"--space {key} names a section of the config, not one of its keys (such as "
                          f"{key}.{next(iter(model.model_fields))}).")
    return typing.Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation


def _numeric(hint) -> type | None:
    """``int`` or ``float`` when every value of ``hint`` (limits and ``None`` aside) is that kind of number."""
    if typing.get_origin(hint) is typing.Annotated:
        return _numeric(typing.get_args(hint)[0])
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args:
        kinds = {_numeric(a) for a in args}
        return kinds.pop() if len(kinds) == 1 else None
    return hint if hint in (int, float) else None


def _checked(key: str, where, hint):
    """``where`` with its values checked against ``hint`` (a float option's range as floats)."""
    adapter = pydantic.TypeAdapter(hint)

    def check(value):
        try:
            adapter.validate_python(value, strict=isinstance(value, bool))
        except pydantic.ValidationError as err:
            problem = err.errors()[0]["msg"].replace("Input should be", "should be", 1)
            raise ConfigError(f"--space {key}: {value!r} is not a value {key} takes ({problem}); search within its "
                              "limits.") from None
        return value

    if isinstance(where, Choice):
        return Choice(tuple(check(v) for v in where.values))
    kind = _numeric(hint)
    if kind is None:
        raise ConfigError(f"--space {key} gives a range, but {key} is not a number; list the values to search "
                          f"instead ({key}=a,b,c).")
    if kind is int and not all(isinstance(v, int) for v in (where.low, where.high)):
        raise ConfigError(f"--space {key} takes whole numbers, but its range is {where.low}:{where.high}; give "
                          "integer ends.")
    where = checked_range(key, Range(*(kind(v) for v in (where.low, where.high)), where.log))
    return Range(check(where.low), check(where.high), where.log)
