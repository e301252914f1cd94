"""Where a study lives and what it is: its storage, the definition stored with it, and its budget of trials.

The storage is a real database: by default an SQLite file in the study folder (``study.db``, opened with a 60 s busy
timeout so that workers on one machine wait for each other's writes), or any Optuna storage URL (PostgreSQL, MySQL,
or ``journal:PATH``, Optuna's journal file on a shared filesystem), which lets many workers on many machines share
one study. On a database storage every worker records a heartbeat for its running trial; a trial whose heartbeat
stops (its worker died) is failed by the next worker that looks and enqueued again with the same parameters, as a
new trial that continues the same run folder (Optuna's ``RetryHeartbeatStaleTrialCallback``); the journal storage
has no heartbeat in Optuna, so there a dead worker's trial stays running.

The budget counts trials that finished (complete or pruned), run or wait to run; failed ones do not count. Each
trial has a slot, its own number or, for a retry, the number of the trial it continues; a new trial runs only when
fewer than the budget of counted trials hold a lower slot, so two workers asking at once never run more than the
budget.
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

from ..errors import ConfigError, first_line

RETRIED_FROM = "failed_trial"  # the system attribute Optuna's retry callback sets: the number of the first try


def storage_url(url: str | None, out: Path) -> str:
    """``url``, or the SQLite file ``study.db`` in the study folder."""
    return url or f"sqlite:///{(out / 'study.db').resolve()}"


def retry_callback():
    """Enqueue a stale (or interrupted) trial again, without limit: a trial is never lost."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None)


SCHEMA_TRIES = 5  # attempts to open a database whose tables another worker is making


def open_storage(url: str, heartbeat: int):
    """The Optuna storage at ``url``, with a heartbeat every ``heartbeat`` seconds on a database (a trial is stale
    after twice that); refuses a URL it cannot open."""
    import optuna
    import sqlalchemy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            if url.startswith("journal:"):
                path = Path(url[len("journal:"):]).expanduser()
                if not path.parent.is_dir():
                    raise OSError(f"no folder {path.parent}")
                return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
            engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
            for attempt in range(SCHEMA_TRIES):
                try:
                    return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat,
                                                      grace_period=2 * heartbeat,
                                                      heartbeat_stale_trial_callback=retry_callback())
                except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError):
                    # workers started together: another one was making the tables (or a database that is not there)
                    if attempt == SCHEMA_TRIES - 1:
                        raise
                    time.sleep(0.5)
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, OSError, RuntimeError) as err:
            raise ConfigError(f"The study storage {url} cannot be opened ({type(err).__name__}: {first_line(err)}). "
                              "Give a reachable database URL (sqlite:///FILE, postgresql://USER@HOST/DB, "
                              "mysql://USER@HOST/DB with its driver installed) or journal:PATH in an existing "
                              "folder, or leave --storage out for an SQLite file in the study folder.") from None


def open_study(storage, name: str, definition: dict, resume: bool, sampler, pruner):
    """The study ``name`` in ``storage`` (made if new) and its definition: ``definition``, or with ``resume`` the one
    stored with it (``definition`` may then be None). A study stored with another definition is refused unless
    ``resume``."""
    import optuna

    if resume and name not in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
        raise ConfigError(f"--resume continues a study as it was made, but the storage holds no study '{name}'. Leave "
                          "--resume out to start it (with -c RECIPE and the search space).")
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True,
                                sampler=sampler, pruner=pruner)
    stored = study.user_attrs.get("selfkd")
    if stored is None:
        study.set_user_attr("selfkd", definition)
        return study, definition
    if stored == definition or resume:
        return study, stored
    raise ConfigError(f"The study '{name}' in its storage was made with {_differences(stored, definition)} than this "
                      "command gives. Continue it as it was made with --resume (its own recipe, search space and "
                      "objective), or start another study with another --out (or --storage).")


def _differences(stored: dict, now: dict) -> str:
    """What differs between two definitions, in words."""
    from ..report.runs import differing_settings

    parts = []
    if stored.get("objective") != now.get("objective"):
        parts.append(f"another objective ({stored.get('objective')}, not {now.get('objective')})")
    if stored.get("space") != now.get("space"):
        parts.append(f"another search space ({json.dumps(stored.get('space'))}, not {json.dumps(now.get('space'))})")
    keys = differing_settings([stored.get("config") or {}, now.get("config") or {}], ignore=())
    if keys:
        parts.append(f"other settings ({', '.join(keys)})")
    return " and ".join(parts) or "another definition"


def frozen(trial):
    """The stored record (FrozenTrial, with its system attributes) of a running ``trial``."""
    return next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)


def slot(trial) -> int:
    """The budget slot of a trial (a FrozenTrial): its own number, or the number of the trial a retry continues."""
    return trial.system_attrs.get(RETRIED_FROM, trial.number)


def counted(study) -> list:
    """The trials the budget counts: every one that did not fail."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.FAIL]


def startable(study, budget: int) -> bool:
    """Whether a trial may start: one waits (a retry), or fewer than ``budget`` are counted."""
    from optuna.trial import TrialState

    trials = counted(study)
    return any(t.state == TrialState.WAITING for t in trials) or len(trials) < budget


def within_budget(study, trial, budget: int) -> bool:
    """Whether ``trial`` (a FrozenTrial, just asked for) holds one of the first ``budget`` slots; a retry always
    does."""
    if RETRIED_FROM in trial.system_attrs:
        return True
    return sum(slot(t) < trial.number for t in counted(study)) < budget


def finished(study, budget: int) -> bool:
    """Whether the study is over: ``budget`` trials complete or pruned, none running or waiting."""
    from optuna.trial import TrialState

    states = [t.state for t in counted(study)]
    done = sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states)
    return done >= budget and done == len(states)
