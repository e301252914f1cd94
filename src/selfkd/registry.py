"""Name -> factory registries for models, methods and datasets, with helpful errors."""
from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from pydantic import Field

from .errors import ConfigError, short
from .tasks import DEFAULT_TASK

F = TypeVar("F", bound=Callable)

# Constrained option types for method and model signatures: checked_call enforces the limits.
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]


@dataclass(frozen=True)
class Range:
    """Where ``selfkd tune`` searches a numeric option: from ``low`` to ``high``, uniformly or (``log``) on a log
    scale; an integer option takes integers. A method declares its default search space as ``search_space = {option:
    Range(...) or Choice(...)}`` next to its options; ``selfkd.tune`` checks it against the option's type and limits."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Choice:
    """Where ``selfkd tune`` searches an option with a few values (numbers, names, booleans)."""

    values: tuple[Any, ...]


def closest(name: str, choices, n: int = 1) -> str:
    """A ' Did you mean ...?' hint for a misspelt name, or '' when nothing is close."""
    match = difflib.get_close_matches(str(name), list(choices), n=n, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""


class Registry(Generic[F]):
    def __init__(self, kind: str, task: str | None = None):
        self.kind, self.task = kind, task
        self._entries: dict[str, F] = {}

    def register(self, name: str | None = None) -> Callable[[F], F]:
        def add(fn: F) -> F:
            key = name or fn.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} '{key}' registered twice")
            self._entries[key] = fn
            return fn

        return add

    def get(self, name: str) -> F:
        if name not in self._entries:
            other_task = self.task not in (None, DEFAULT_TASK)
            what = f"{self.task} {self.kind}" if other_task else self.kind
            listing = f"selfkd list {self.kind}s" + (f" --task {self.task}" if other_task else "")
            raise ConfigError(
                f"Unknown {what} {short(name)}.{closest(name, self._entries)} "
                f"Run `{listing}` to see the {len(self._entries)} available names."
            )
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries


def option_hints(fn: Callable) -> dict:
    """Resolved type hints of a function or class constructor; unresolvable ones become Any."""
    import sys
    import typing

    target = fn.__init__ if isinstance(fn, type) else fn
    try:
        return typing.get_type_hints(target, include_extras=True)  # keep Annotated limits
    except Exception:  # a forward reference that cannot be resolved: resolve one by one
        module = vars(sys.modules.get(target.__module__)) if target.__module__ in sys.modules else {}
        hints = {}
        for key, ann in getattr(target, "__annotations__", {}).items():
            try:
                hints[key] = eval(ann, module) if isinstance(ann, str) else ann  # noqa: S307 (own source)
            except Exception:
                hints[key] = typing.Any
        return hints


def checked_call(fn: Callable, kind: str, name: str, kwargs: dict, fixed: tuple = ()):
    """Call ``fn(*fixed, **kwargs)`` after checking every keyword against its signature and types.

    Unknown keywords name the closest valid one; wrong types and values outside the limits of a
    constrained annotation (:data:`Positive`, :data:`Fraction`, ...) name the option, what it must be, the
    value given and the default. Values are converted the way a YAML/CLI user expects ("1e-4" -> 0.0001,
    "false" -> False).
    """
    import inspect
    from typing import Any

    import pydantic

    target = fn.__init__ if isinstance(fn, type) else fn
    params = inspect.signature(target).parameters
    names = [p for p, v in params.items() if v.kind in (v.KEYWORD_ONLY, v.POSITIONAL_OR_KEYWORD) and p != "self"]
    valid = names[len(fixed):]
    if not any(v.kind is v.VAR_KEYWORD for v in params.values()):
        for key in kwargs:
            if key not in valid:
                raise ConfigError(
                    f"Unknown option {short(key)} for {kind} {short(name)}.{closest(key, valid)} "
                    f"Valid options: {', '.join(valid) or '(none)'}."
                )
    missing = [p for p in valid if params[p].default is params[p].empty and p not in kwargs
               and params[p].kind is not params[p].VAR_KEYWORD]
    if missing:
        raise ConfigError(f"{kind.capitalize()} {short(name)} needs the option(s) {', '.join(missing)}: give them in "
                          f"the {kind}'s section of the config (or as keyword arguments in Python).")
    hints = option_hints(fn)
    fields = {key: (hints.get(key, Any), ...) for key in kwargs}
    options = pydantic.create_model(f"{name}_options", __config__=pydantic.ConfigDict(arbitrary_types_allowed=True),
                                    **fields)
    try:
        checked = options(**kwargs)
    except pydantic.ValidationError as err:
        problems = "; ".join(_problem(e, params) for e in err.errors())
        raise ConfigError(f"Bad option for {kind} {short(name)}: {problems}.") from None
    return fn(*fixed, **{key: getattr(checked, key) for key in kwargs})


def _problem(error: dict, params) -> str:
    """One pydantic error as "'option' must be ... (got value); the default is ..."."""
    key = str(error["loc"][0])
    where = "".join(f"[{p}]" for p in error["loc"][1:])
    what = error["msg"].replace("Input should be", "must be", 1)
    default = params[key].default
    hint = ("" if default is params[key].empty else "; leave it out for the default" if default is None
            else f"; the default is {default!r}")
    return f"'{key}{where}' {what} (got {short(error.get('input'))}){hint}"
