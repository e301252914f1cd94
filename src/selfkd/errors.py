"""User-facing errors: the CLI prints them as one paragraph and exits non-zero, without a traceback."""
from __future__ import annotations

import reprlib


class SelfKDError(Exception):
    """A mistake the user can fix (bad config, missing dataset, foreign checkpoint...).

    The message must say what is wrong and what to do about it.
    """

    exit_code = 2
    # Raised alike by every process of a torchrun run (agreed through ``distributed.together`` or a collective
    # check), so the CLI prints it once; any other error is printed by the process that raised it.
    agreed = False


def first_line(err: BaseException, text: str | None = None, limit: int = 300) -> str:
    """How a message quotes a lower-level error: the first line of ``text`` (default: ``err``'s message), at most
    ``limit`` characters, or ``err``'s type name when there is no text."""
    lines = (str(err) if text is None else text).strip().splitlines()
    return (lines or [type(err).__name__])[0][:limit]


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 6, 6, 60, 60


def short(value, limit: int = 60, quoted: bool = True) -> str:
    """How a message quotes a user's value: its ``repr`` (a string without its quotes unless ``quoted``), at most
    about ``limit`` characters. A longer string is cut and its length said; a container is cut without walking all of
    it (a YAML alias bomb stays cheap)."""
    if isinstance(value, str) and (len(value) > limit or not quoted):
        cut = value[:limit] if quoted else value[:limit].replace("\n", " ")
        return (repr(cut) if quoted else cut) + (f"… ({len(value):,} characters)" if len(value) > limit else "")
    text = _REPR.repr(value)
    return text if len(text) <= 2 * limit else f"{text[:2 * limit]}…"


class SelfKDWarning(UserWarning):
    """Something selfkd decided differently from what the config asked, and why (the CLI prints it as one
    ``selfkd: warning:`` paragraph)."""


class ConfigError(SelfKDError):
    pass


class DatasetError(SelfKDError):
    pass


class CheckpointError(SelfKDError):
    pass


class ClusterError(SelfKDError):
    """The cluster a launcher submits to (Slurm) is missing, does not answer, or refuses the jobs; nothing was
    submitted or written."""


class TrainingError(SelfKDError):
    """Training stopped on purpose (non-finite loss, a failed write); the message says what was saved (the
    previous checkpoint is never damaged) and what to run next."""

    exit_code = 3


class Interrupted(SelfKDError):
    """Stopped by a signal (Ctrl-C, SIGTERM); the message says what was saved and how to continue."""

    exit_code = 130
