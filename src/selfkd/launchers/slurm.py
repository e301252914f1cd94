"""selfkd commands as Slurm jobs, through submitit: the options of a job, the check that Slurm is there, the task a
job runs, submission as one job array that never submits a task twice, and following the jobs.

A task (:class:`SelfkdTask`) runs ``python -m selfkd ARGS`` as a child process on the compute node, its output
appended to a log. submitit pickles the task (a reference to its class and its fields) into the job's folder and
asks Slurm to signal the job ``signal_before`` seconds before its time limit. On that signal (or a preemption's)
submitit calls :meth:`SelfkdTask.checkpoint`: the child gets SIGTERM, which makes a training run finish its step,
save a checkpoint and exit (the Ctrl-C/SIGTERM path of ``selfkd train``); then submitit requeues the job, and the
requeued job runs the task again, which asks again what to run (a sweep's run resumes from its checkpoint). The
child never receives that signal itself (it is blocked there: its default action would end the process). SIGTERM
from Slurm (``scontrol requeue``, ``scancel``, a time limit reached without the signal) reaches every process of
the job: the child checkpoints and stops the same way, and Slurm decides what follows. The task exits with the
child's exit code, so that Slurm marks a failed command FAILED; the other tasks of the array go on.

The job ids of every submission are recorded by task name in ``<folder>/jobs.json``; a task whose last job is still
queued or running (``squeue``) is not submitted again. Job states come from ``squeue`` while Slurm holds the job and
from its accounting (``sacct``) after.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, NonNegativeInt, PositiveInt, field_validator

from ..atomic import atomic_write
from ..errors import ClusterError, ConfigError, first_line
from ..threads import child_thread_env

RECORDS = "jobs.json"  # task name -> the ids of the jobs submitted for it, oldest first
CONFIG_ENV = "SELFKD_SLURM_CONFIG"  # the --slurm-config used when none is given
COMMANDS = ("sbatch", "squeue", "scontrol", "srun")  # what submitting needs on this machine (sacct is optional)
MAX_TIMEOUTS = 100  # requeues after reaching the time limit, per job (submitit's limit; preemptions do not count)
ANSWER_S = 60  # how long a Slurm command may take to answer
QUEUED = ("PENDING", "REQUEUE", "SUSPENDED")  # squeue states (prefixes) of a job that waits; the others run
NOTHING = "Nothing was submitted or written."


class SlurmOptions(BaseModel):
    """What each job asks Slurm for: ``--slurm-KEY`` on the command line, KEY in a ``--slurm-config`` YAML."""

    model_config = ConfigDict(extra="forbid")

    partition: str | None = None
    time: PositiveInt = 60  # minutes a job may run; a run that needs longer is requeued from its checkpoint
    nodes: PositiveInt = 1
    gpus: NonNegativeInt = 0  # GPUs per node
    tasks_per_node: PositiveInt | None = None  # processes of one DDP run per node (default: one per GPU, or 1)
    cpus: PositiveInt | None = None  # CPUs per process
    mem: str | None = None  # memory per node, Slurm's syntax: 16G, 500M
    account: str | None = None
    qos: str | None = None
    extra: dict[str, str | bool] = {}  # more #SBATCH options: {constraint: a100}; true for one without a value
    max_running: PositiveInt | None = None  # jobs of one array running at once (Slurm's --array=...%N)
    signal_before: PositiveInt = 90  # seconds before the time limit at which a job checkpoints and requeues itself

    @field_validator("mem")
    @classmethod
    def _slurm_size(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9]+[KMGT]?", value):
            raise ValueError("give the memory per node as Slurm writes it: a number of megabytes, or with K, M, G or T "
                             "(16G, 500M)")
        return value

    @property
    def processes(self) -> int:
        """Processes of one run (all nodes): more than one run DistributedDataParallel."""
        return self.nodes * (self.tasks_per_node or max(1, self.gpus))

    def parameters(self, name: str) -> dict:
        """submitit's SlurmExecutor parameters of these options, for jobs called ``name``."""
        given = {"partition": self.partition, "cpus_per_task": self.cpus, "mem": self.mem, "account": self.account,
                 "qos": self.qos, "gpus_per_node": self.gpus or None, "array_parallelism": self.max_running}
        return {"job_name": name, "time": self.time, "nodes": self.nodes,
                "ntasks_per_node": self.tasks_per_node or max(1, self.gpus), "signal_delay_s": self.signal_before,
                "additional_parameters": {k.lstrip("-"): v for k, v in self.extra.items()},
                **{k: v for k, v in given.items() if v is not None}}

    def describe(self) -> str:
        """``partition gpu, 240 min per job, 4 processes per run (1 node × 4 GPUs), 8 CPUs each``."""
        where = f"partition {self.partition}" if self.partition else "the default partition"
        per_node = self.tasks_per_node or max(1, self.gpus)
        shape = f" ({self.nodes} node(s) × {per_node})" if self.processes > 1 else ""
        gpus = f", {self.gpus} GPU(s) per node" if self.gpus else ""
        cpus = f", {self.cpus} CPU(s) each" if self.cpus else ""
        return f"{where}, {self.time} min per job, {self.processes} process(es) per run{shape}{gpus}{cpus}"


def load_options(path: str | None, given: dict) -> SlurmOptions:
    """The options of a YAML file (``path``, else ``$SELFKD_SLURM_CONFIG``, else none), then the ``given`` flags
    (their ``extra`` adds to the file's), validated: an unknown key is named with the closest valid one."""
    import pydantic

    from ..config import explain, read_yaml

    named = f"--slurm-config {path}" if path else f"${CONFIG_ENV}={os.environ.get(CONFIG_ENV)}"
    path = path or os.environ.get(CONFIG_ENV) or None
    if path and not Path(path).is_file():
        raise ConfigError(f"{named}: {'it is a folder' if Path(path).is_dir() else 'no such file'}. It names a YAML "
                          "file of Slurm options (the --slurm-* flags' keys, e.g. partition: gpu, time: 240).")
    data = read_yaml(path) if path else {}
    if isinstance(data.get("extra"), dict) and "extra" in given:
        given = {**given, "extra": {**data["extra"], **given["extra"]}}
    data = {**data, **given}
    source = f"the Slurm options ({path} and the --slurm-* flags)" if path else "the --slurm-* flags"
    try:
        return SlurmOptions.model_validate(data)
    except pydantic.ValidationError as err:
        raise explain(err, source, SlurmOptions) from None


def check_slurm() -> None:
    """Refuse, saying what is missing and how to get it, unless submitit is installed, Slurm's commands are on PATH
    and the controller answers (``scontrol ping``). Reads only."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise ClusterError("--launcher slurm submits through submitit, which is not installed: pip install "
                           f"'selfkd[slurm]' (or pip install submitit), or leave out --launcher slurm. {NOTHING}") \
            from None
    missing = [c for c in COMMANDS if shutil.which(c) is None]
    if missing:
        raise ClusterError(
            f"--launcher slurm needs Slurm's commands, and {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
            "not on PATH here. Run selfkd where sbatch and squeue work (a login node of the cluster), or install a "
            "Slurm client configured for the cluster (Debian: apt-get install slurm-client, with the cluster's "
            f"slurm.conf and munge key); or leave out --launcher slurm to run on this machine. {NOTHING}")
    conf = os.environ.get("SLURM_CONF")
    if conf and not Path(conf).is_file():
        raise ClusterError(f"--launcher slurm: SLURM_CONF={conf} names no file, so Slurm's commands cannot find the "
                           f"cluster. Point SLURM_CONF at the cluster's slurm.conf, or unset it. {NOTHING}")
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=ANSWER_S)
        said = None if ping.returncode == 0 else _said(ping)
    except subprocess.TimeoutExpired:
        said = f"no answer within {ANSWER_S} s"
    if said is not None:
        raise ClusterError(f"--launcher slurm: the Slurm controller does not answer (scontrol ping: {said}). Check "
                           "that the cluster is up (sinfo) and that this machine's slurm.conf (SLURM_CONF) is the "
                           f"cluster's. {NOTHING}")


class SelfkdTask:
    """One Slurm task: ``python -m selfkd ARGS`` with its output appended to ``log``; see the module docstring. Under
    several tasks per job (``nodes``, ``tasks_per_node``) each runs one process of a DDP run, with torchrun's
    environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) made from Slurm's."""

    def __init__(self, args: list[str], log: Path | str):
        self.args, self.log = list(args), str(log)
        self._child: subprocess.Popen | None = None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_child"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _child=None)

    def arguments(self) -> list[str] | None:
        """The selfkd arguments to run now (None: nothing is left to do). Asked each time the task starts."""
        return self.args

    def __call__(self) -> None:
        args = self.arguments()
        if args is None:
            return
        import submitit

        env = {**os.environ, "PYTHONUNBUFFERED": "1", **_distributed_env(),
               **child_thread_env(1, total=int(os.environ.get("SLURM_CPUS_PER_TASK", "0")) or None)}
        command = [sys.executable, "-m", "selfkd", *args]
        requeue = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
        Path(self.log).parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as log:
            if env.get("RANK", "0") == "0":
                log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')}  {' '.join(command[1:])}  "
                          f"(Slurm job {submitit.JobEnvironment().job_id})\n")
                log.flush()
            signal.pthread_sigmask(signal.SIG_BLOCK, {requeue})  # the child inherits the mask: it never sees it
            try:
                self._child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {requeue})
        code = self._child.wait()
        if code:
            sys.exit(code if code > 0 else 128 - code)  # not an exception: submitit records no result, Slurm the code

    def checkpoint(self, *args, **kwargs):
        """submitit's hook on the requeue signal: SIGTERM to the child and wait for it to stop (a run saves its
        checkpoint), then submitit requeues the job with this task. Runs in the signal handler, possibly inside
        Popen.wait, so the child is waited for without reaping it (``WNOWAIT``) and without Popen's lock."""
        from submitit.helpers import DelayedSubmission

        child = self._child
        if child is not None and child.returncode is None:
            child.send_signal(signal.SIGTERM)
            with contextlib.suppress(ChildProcessError):
                os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        return DelayedSubmission(self, *args, **kwargs)


def _distributed_env() -> dict[str, str]:
    """torchrun's environment for this task when the job runs several (one process of a DDP run each)."""
    if int(os.environ.get("SLURM_NTASKS", "1")) < 2:
        return {}
    from submitit.helpers import TorchDistributedEnvironment

    d = TorchDistributedEnvironment()  # the first node's name, a port drawn from the job id, Slurm's ranks
    return {"MASTER_ADDR": d.master_addr, "MASTER_PORT": str(d.master_port), "RANK": str(d.rank),
            "WORLD_SIZE": str(d.world_size), "LOCAL_RANK": str(d.local_rank),
            "LOCAL_WORLD_SIZE": str(d.local_world_size)}


@dataclass
class Launch:
    submitted: dict[str, str]  # task name -> job id, submitted now
    active: dict[str, str]  # task name -> job id, queued or running already (not submitted again)

    @property
    def jobs(self) -> dict[str, str]:
        return {**self.active, **self.submitted}

    def print_submitted(self) -> None:
        """The job array just submitted (its id and each task's job) and the tasks queued or running already."""
        if self.submitted:
            array = sorted({i.split("_")[0] for i in self.submitted.values()})
            print(f"Submitted Slurm job {', '.join(array)}: "
                  + ", ".join(f"{n} {i}" for n, i in self.submitted.items()) + ".", flush=True)
        if self.active:
            print("Queued or running already (not submitted again): "
                  + ", ".join(f"{n} {i}" for n, i in self.active.items()) + ".", flush=True)


def launch(tasks: dict[str, SelfkdTask], folder: Path, options: SlurmOptions, name: str) -> Launch:
    """Submit those of ``tasks`` (name -> task) whose last job in ``folder/jobs.json`` is not queued or running, as
    one job array called ``name`` (one job for one task); submitit's files go to ``folder/<job id>/``. Everything is
    checked first (Slurm is there, ``sbatch --test-only`` accepts the jobs): nothing is written when it is not. Two
    launches of the same tasks at once take turns (a lock in ``folder``): the second finds the first one's jobs."""
    if not tasks:
        return Launch({}, {})
    check_slurm()
    executor = _executor(folder, options, name)
    if _unqueued(tasks, read_records(folder)):
        _test_submission(executor, len(tasks))
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder):
        records = read_records(folder)
        todo = _unqueued(tasks, records)
        active = {n: records[n][-1] for n in tasks if n not in todo}
        ids = _submit(executor, [tasks[n] for n in todo]) if todo else []
        if ids:
            for n, job in zip(todo, ids):
                records.setdefault(n, []).append(job)
            _record(folder, records, ids)
    return Launch(dict(zip(todo, ids)), active)


def _record(folder: Path, records: dict[str, list[str]], submitted: list[str]) -> None:
    """Write ``folder/jobs.json``; when that fails, cancel the ``submitted`` jobs (unrecorded, they would be
    submitted again) and say so."""
    try:
        atomic_write(folder / RECORDS, lambda tmp: tmp.write_text(json.dumps(records, indent=1) + "\n"),
                     "The jobs it would record were cancelled. Free some space (or make the folder writable), then "
                     "run the command again.")
    except BaseException:
        subprocess.run(["scancel", *submitted], capture_output=True, timeout=ANSWER_S)
        raise


def launch_copies(args: list[str], count: int, out: Path, options: SlurmOptions, name: str) -> Launch:
    """``count`` copies of ``selfkd ARGS`` as one job array (e.g. the workers of one study sharing its storage):
    ``worker<i>``, each requeue-safe, its log in ``out/logs/worker<i>.log``; the records and submitit's files in
    ``out/slurm``. A copy queued or running already is not submitted again."""
    tasks = {f"worker{i}": SelfkdTask(args, Path(out).absolute() / "logs" / f"worker{i}.log") for i in range(count)}
    return launch(tasks, Path(out) / "slurm", options, name)


def _unqueued(tasks: dict, records: dict[str, list[str]]) -> list[str]:
    """The names of ``tasks`` without a job queued or running (their last recorded one), in order."""
    live = queue_states() if records else {}
    return [n for n in tasks if not (records.get(n) and records[n][-1] in live)]


def _executor(folder: Path, options: SlurmOptions, name: str):
    import submitit

    executor = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=MAX_TIMEOUTS)
    executor.update_parameters(**options.parameters(name))
    return executor


def _test_submission(executor, count: int) -> None:
    """``sbatch --test-only`` of the script submitit will submit (an array of ``count``): Slurm checks the partition,
    account, QOS, time and resources, and nothing is submitted or written."""
    from submitit.slurm.slurm import _make_sbatch_string  # the script submitit writes (its own, internal function)

    parameters = {**executor.parameters, **({"map_count": count} if count > 1 else {})}
    script = _make_sbatch_string(command=executor._submitit_command_str, folder=executor.folder, **parameters)
    done = subprocess.run(["sbatch", "--test-only"], input=script, capture_output=True, text=True, timeout=ANSWER_S)
    if done.returncode:
        said = "; ".join(line.replace("sbatch: error: ", "").strip() for line in done.stderr.splitlines()
                         if line.strip()) or f"exit code {done.returncode}"
        raise ClusterError(f"Slurm refuses these jobs: {said}. Check the --slurm-* options and --slurm-config "
                           f"(sinfo lists the partitions and their limits). {NOTHING}")


def _submit(executor, tasks: list[SelfkdTask]) -> list[str]:
    import submitit

    try:
        with executor.batch():
            jobs = [executor.submit(task) for task in tasks]
    except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError, OSError) as err:
        raise ClusterError(f"sbatch failed: {first_line(err)}. Nothing was submitted; run the command again.") \
            from None
    return [job.job_id for job in jobs]


@contextlib.contextmanager
def _locked(folder: Path):
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_records(folder: Path) -> dict[str, list[str]]:
    """``folder/jobs.json``: task name -> job ids, oldest first ({} before the first submission)."""
    path = Path(folder) / RECORDS
    try:
        records = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        records = first_line(err)
    if not (isinstance(records, dict) and all(isinstance(v, list) and all(isinstance(i, str) for i in v)
                                              for v in records.values())):
        raise ClusterError(f"{path} is not a record of Slurm jobs selfkd wrote ({str(records)[:100]}). It keeps a run "
                           "from being submitted twice: restore it, or delete it once none of its jobs is queued or "
                           "running (squeue --me).")
    return records


def queue_states() -> dict[str, str]:
    """Job id -> state of this user's jobs that Slurm holds, queued or running (``squeue``, one per array task)."""
    out = _answer(["squeue", "--me", "--noheader", "--array", "--format=%i|%T"])
    return dict(line.strip().split("|", 1) for line in out.splitlines() if "|" in line)


def ended_states(ids) -> dict[str, str]:
    """Job id -> final state (COMPLETED, FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY...) from Slurm's accounting;
    ENDED where it has none (no accounting, or not written yet)."""
    ids = list(ids)
    arrays = sorted({i.split("_")[0] for i in ids})
    found: dict[str, str] = {}
    if arrays and shutil.which("sacct"):
        try:
            out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(arrays)],
                                 capture_output=True, text=True, timeout=ANSWER_S).stdout
        except subprocess.TimeoutExpired:
            out = ""
        found = {job: state.split()[0] for job, _, state in (line.partition("|") for line in out.splitlines())
                 if state.strip()}
    final = {i: found.get(i, "ENDED") for i in ids}
    return {i: "ENDED" if s.startswith((*QUEUED, "RUNNING", "COMPLETING")) else s for i, s in final.items()}


def job_states(ids) -> dict[str, str]:
    """Job id -> its state now: squeue's while Slurm holds the job, the accounting's after."""
    live = queue_states()
    ended = ended_states(i for i in ids if i not in live)
    return {i: live.get(i) or ended[i] for i in ids}


def _answer(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=ANSWER_S)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"`{' '.join(command)}` did not answer within {ANSWER_S} s; check the cluster (sinfo) "
                           "and run the command again.") from None
    if done.returncode:
        raise ClusterError(f"`{' '.join(command)}` failed: {_said(done)}. Check the cluster (sinfo) and run the "
                           "command again.")
    return done.stdout


def _said(done: subprocess.CompletedProcess) -> str:
    """The first line a failed command printed, or its exit code."""
    lines = (done.stderr + done.stdout).strip().splitlines()
    return lines[0][:300] if lines else f"exit code {done.returncode}"


def follow(jobs: dict[str, str], outcome: Callable[[str, str], str | None], total: int | None = None,
           noun: str = "runs") -> dict[str, bool]:
    """Wait until none of ``jobs`` (name -> job id) is queued or running, printing a progress line whenever the
    counts change (of ``total`` ``noun``: those not followed count as done). When a job leaves the queue,
    ``outcome(name, its final state)`` says why it failed (None: it did not). Returns {name: succeeded}. Asks squeue
    every 2 s at first, less often later (every 30 s after 5 minutes); a busy controller may fail to answer 4 times
    in a row."""
    from ..report.table import format_duration

    began, waiting, results, shown, failures, asked = time.monotonic(), dict(jobs), {}, None, 0, False
    total = total or len(jobs)
    while waiting:
        if asked:
            time.sleep(min(30.0, max(2.0, (time.monotonic() - began) / 10)))
        asked = True
        try:
            live = queue_states()
        except ClusterError:
            failures += 1
            if failures == 5:
                raise
            continue
        failures = 0
        ended = [n for n, job in waiting.items() if job not in live]
        states = ended_states(waiting[n] for n in ended)
        for n in ended:
            results[n] = outcome(n, states[waiting.pop(n)]) is None
        queued = sum(live[job].startswith(QUEUED) for job in waiting.values())
        failed = sum(not ok for ok in results.values())
        counts = (queued, len(waiting) - queued, total - len(waiting) - failed, failed)
        if counts != shown:
            print("Slurm: {} queued, {} running, {} done, {} failed of {} {}".format(*counts, total, noun)
                  + f" ({format_duration(time.monotonic() - began)} following).", flush=True)
            shown = counts
    return results
