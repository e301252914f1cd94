"""Flags shared by the commands that build runs from a recipe (train, sweep, demo), and list parsing."""
from __future__ import annotations

import argparse

from ..errors import ConfigError, short


def add_run_flags(p: argparse.ArgumentParser, per_run: bool = True) -> None:
    """Flags of commands that build runs from a recipe (train; sweep and demo without the per-run ones)."""
    p.add_argument("-c", "--config", help="YAML recipe (see configs/); defaults apply without one")
    if per_run:
        p.add_argument("--method", help="method name (selfkd list methods)")
        p.add_argument("--seed", type=int)
    p.add_argument("--model", help="backbone name (selfkd list models)")
    p.add_argument("--dataset", help="dataset name (selfkd list datasets)")
    p.add_argument("--data-dir", help="folder holding the dataset, used alone (without it: $SELFKD_DATA, ./data, "
                                      "/usr/share/datasets are searched)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size (all processes together)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set optim.lr=0.05 (repeatable)")


def run_flags(args) -> dict:
    """The config flags given on the command line (see :data:`selfkd.config.FLAG_KEYS`)."""
    from ..config import FLAG_KEYS

    return {flag: getattr(args, flag) for flag in FLAG_KEYS if getattr(args, flag, None) is not None}


def parse_list(text: str, what: str, cast=str, unique: bool = True) -> list:
    """``--what a,b,c`` as a list of ``cast`` values; an empty list, a value that does not cast, or (``unique``) a
    value given twice is refused."""
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    try:
        values = [cast(s) for s in items]
    except ValueError:
        raise ConfigError(f"--{what} expects a comma-separated list such as {'0,1,2' if cast is int else 'ce,ls'}, "
                          f"got {short(text)}.") from None
    if not values:
        raise ConfigError(f"--{what} is empty; give at least one value.")
    if unique and len(set(values)) != len(values):
        raise ConfigError(f"--{what} lists a value twice: {short(text)}.")
    return values
