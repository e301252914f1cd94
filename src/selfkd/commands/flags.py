"""Flags shared by the commands that build runs from a recipe (train, sweep, demo), the launcher's (sweep; tune),
and list parsing."""
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


# --slurm-KEY flags: key of selfkd.launchers.slurm.SlurmOptions -> (type, metavar, help)
SLURM_FLAGS = {
    "partition": (str, "NAME", "partition (default: the cluster's default)"),
    "time": (int, "MINUTES", "time limit of each job (default 60); a run that needs longer checkpoints before it and "
                             "is requeued"),
    "gpus": (int, "N", "GPUs per node of each run (one training process per GPU; default 0)"),
    "nodes": (int, "N", "nodes per run (default 1); with several processes a run trains with DDP"),
    "tasks_per_node": (int, "N", "training processes per node (default: one per GPU, or 1)"),
    "cpus": (int, "N", "CPUs per training process (its compute threads)"),
    "mem": (str, "SIZE", "memory per node, Slurm's syntax (16G, 500M)"),
    "account": (str, "NAME", "account to charge"),
    "qos": (str, "NAME", "quality of service"),
    "max_running": (int, "N", "jobs of the array running at once (default: all)"),
    "signal_before": (int, "SECONDS", "how long before the time limit Slurm signals a run to checkpoint and requeue "
                                      "itself (default 90; Slurm checks time limits every 30 s)"),
}


def add_launcher_flags(p: argparse.ArgumentParser) -> None:
    """--launcher local|slurm, --wait and the --slurm-* options (see README, "On a cluster")."""
    p.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="local: child processes on this machine (default); slurm: one Slurm job per run, submitted "
                        "through submitit (pip install 'selfkd[slurm]'); the command returns once they are queued")
    p.add_argument("--wait", action="store_true", help="with --launcher slurm: follow the jobs to their end with a "
                                                       "progress line, then finish as a local launch does")
    p.add_argument("--slurm-config", metavar="FILE",
                   help="YAML of Slurm options: the keys of the --slurm-* flags without 'slurm-' and with _ for - "
                        "(the flags win); default $SELFKD_SLURM_CONFIG")
    for key, (kind, metavar, text) in SLURM_FLAGS.items():
        p.add_argument(f"--slurm-{key.replace('_', '-')}", type=kind, metavar=metavar, help=text)
    p.add_argument("--slurm-extra", action="append", default=[], metavar="KEY=VALUE",
                   help="another #SBATCH option, e.g. --slurm-extra constraint=a100 (repeatable; KEY alone for an "
                        "option without a value)")


def slurm_options(args):
    """The :class:`selfkd.launchers.slurm.SlurmOptions` of ``--launcher slurm`` (its YAML, then the flags); None for
    ``--launcher local``, which refuses the Slurm flags."""
    given = {key: getattr(args, f"slurm_{key}") for key in SLURM_FLAGS if getattr(args, f"slurm_{key}") is not None}
    if args.slurm_extra:
        given["extra"] = dict(_extra(item) for item in args.slurm_extra)
    if args.launcher == "local":
        named = [f"--slurm-{k.replace('_', '-')}" for k in given] + ["--slurm-config"] * bool(args.slurm_config) \
            + ["--wait"] * args.wait
        if named:
            verb = "applies" if len(named) == 1 else "apply"
            raise ConfigError(f"{', '.join(named)} {verb} to --launcher slurm; add --launcher slurm, or leave "
                              f"{'it' if len(named) == 1 else 'them'} out to run on this machine.")
        return None
    from ..launchers.slurm import load_options

    return load_options(args.slurm_config, given)


def _extra(item: str) -> tuple[str, str | bool]:
    key, sep, value = item.partition("=")
    if not key.strip("- "):
        raise ConfigError(f"--slurm-extra expects KEY=VALUE (an sbatch option, e.g. constraint=a100), got '{item}'.")
    return key.strip(), value if sep else True
