"""Command line: ``selfkd train | eval | list | compare | sweep | tune | demo | bench | export``. Parses arguments and
runs the command (each in :mod:`selfkd.commands`); nothing else. Parsing imports no torch, so ``--help`` and argument
errors answer at once.

User mistakes (:class:`selfkd.errors.SelfKDError`) print one paragraph and exit non-zero. Under torchrun an error
every process raised alike is printed once (by rank 0), any other by the process that raised it, after ``[rank N]``.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
import warnings

from .commands import COMMANDS
from .errors import SelfKDError, SelfKDWarning, short
from .version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfkd", description="Self-knowledge distillation for image classification and semantic segmentation: "
                                   "train, evaluate, compare, tune and export networks that teach themselves.")
    parser.add_argument("--version", action="version", version=f"selfkd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning) -> None:
    """selfkd's own warnings as one ``selfkd: warning:`` paragraph (no source line); others as Python shows them."""
    if issubclass(category, SelfKDWarning):
        print(f"selfkd: warning: {message}", file=file or sys.stderr)
    else:
        _default(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command line, for records (selfkd tune's)
    warnings.showwarning = show_warning
    try:
        return args.func(args) or 0
    except SelfKDError as err:
        rank = os.environ.get("RANK", "0")
        if int(os.environ.get("WORLD_SIZE", "1")) == 1:
            print(f"selfkd: error: {err}", file=sys.stderr)
        elif not err.agreed:  # under torchrun: raised by this process alone, which says so
            print(f"[rank {rank}] selfkd: error: {err}", file=sys.stderr)
        elif rank == "0":  # raised alike by every process: said once
            print(f"selfkd: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("selfkd: interrupted (Ctrl-C); nothing more was written.", file=sys.stderr)
        return 130
    except OSError as err:  # a path given (or made of names given) that no file system takes
        if err.errno != errno.ENAMETOOLONG:
            raise
        print(f"selfkd: error: The path {short(str(err.filename))} is too long for the file system (a file name "
              "holds at most 255 bytes, a path 4,096). Choose a shorter one; a run folder's default name is made of "
              "the dataset, model and method names.", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
