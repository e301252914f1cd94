"""The test Slurm cluster (scripts/slurm-local.sh, started by make test as root) driven through submitit, as
``--launcher slurm`` will drive it: results, job arrays, a failing task, requeue, and the signal before the time
limit that makes a checkpointable job save itself and come back. A real slurmctld/slurmd/slurmdbd, no mocks;
skipped (with the reason) where no cluster is up.

Timings on the 2-core test machine (slurm-local.sh's settings: KillWait=5, cred_expire=5, sched_interval=2):
a job's result ~1 s after submission; a requeued job runs again ~7 s after it left (~12 s after an outside
``scontrol requeue``, which waits KillWait because submitit ignores SIGTERM); the ``--signal`` before the time
limit arrives on slurmctld's 30 s time-limit check, 10-40 s into a 1-minute job with --signal=USR2@20. The file
takes about as long as that job (its wait overlaps the other tests).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle  # submitit's dependency
import pytest
import submitit

# The jobs cannot import this module by name (pytest put tests/ on sys.path, the job's python has no such path):
# its functions and classes travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.slurm

RESULT_TIMEOUT_S = 120


# ----------------------------------------------------------------------------------------------- job functions
def describe(a, b):
    """a + b and what the job saw: its id, working directory, OMP_NUM_THREADS, python."""
    return a + b, os.environ["SLURM_JOB_ID"], os.getcwd(), os.environ.get("OMP_NUM_THREADS"), sys.executable


def square(x):
    return x * x, os.environ["SLURM_ARRAY_TASK_ID"]


def trial(x):
    if x == 1:
        raise ValueError(f"trial {x} diverged")
    return x


def wait_for_flag(flag: str):
    """Runs until ``flag`` exists, unless this is a requeued run: returns the restart count."""
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    Path(f"{flag}.run{restarts}").touch()
    deadline = time.time() + RESULT_TIMEOUT_S
    while restarts == 0 and not Path(flag).exists() and time.time() < deadline:
        time.sleep(0.2)
    return restarts


class Counter(submitit.helpers.Checkpointable):
    """Counts until a signal checkpoints it (submitit pickles the instance and requeues the job); the requeued run
    starts from the pickled instance and returns what it carried over."""

    def __init__(self):
        self.steps = 0
        self.started = None
        self.signalled = None

    def __call__(self, flag: str):
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        Path(f"{flag}.run{restarts}").touch()
        if self.signalled is not None:  # resumed from the checkpoint
            return self.steps, restarts, self.signalled - self.started, time.time() - self.signalled
        self.started = time.time()
        while time.time() - self.started < RESULT_TIMEOUT_S:
            self.steps += 1
            time.sleep(0.1)
        return self.steps, restarts, None, None

    def checkpoint(self, *args, **kwargs):
        self.signalled = time.time()
        return super().checkpoint(*args, **kwargs)


# ----------------------------------------------------------------------------------------------------- helpers
@pytest.fixture
def executor(slurm_cluster, tmp_path):
    ex = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    ex.update_parameters(timeout_min=5, slurm_partition=slurm_cluster.partition,
                         slurm_setup=["export OMP_NUM_THREADS=1"])
    return ex


@pytest.fixture(scope="module", autouse=True)
def time_limited_job(slurm_cluster, tmp_path_factory):
    """A 1-minute job with --signal=USR2@20, submitted as this module starts so that its wait overlaps the other
    tests (checked by the last one). slurmctld checks time limits every 30 s and signals at the first check within
    the signal time plus 30 s of the end (Slurm 22.05, send_job_warn_signal): here the first check at or after 10 s
    into the job, so 10-40 s in. An earlier signal could reach python before submitit has its handler (the default
    action of SIGUSR2 ends the process) or before the srun step exists (then it is lost): submitit's default,
    slurm_signal_delay_s=90, on a 1-minute job signals at the first check, 0-30 s in."""
    folder = tmp_path_factory.mktemp("time_limited")
    ex = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    ex.update_parameters(timeout_min=1, slurm_signal_delay_s=20, slurm_partition=slurm_cluster.partition,
                         slurm_setup=["export OMP_NUM_THREADS=1"])
    flag = str(folder / "flag")
    job = ex.submit(Counter(), flag)
    yield job, flag
    if not job.done():
        job.cancel(check=False)


def logs(job) -> str:
    return f"\n--- stdout\n{job.stdout() or ''}\n--- stderr\n{job.stderr() or ''}"


def wait_done(job, timeout: float = RESULT_TIMEOUT_S):
    """job.done() with a deadline (a job that died without a result pickle is never done without sacct)."""
    deadline = time.time() + timeout
    while not job.done():
        if time.time() > deadline:
            squeue = subprocess.run(["squeue", "-j", job.job_id.split("_")[0]], check=False, capture_output=True,
                                    text=True).stdout
            pytest.fail(f"job {job.job_id} not done after {timeout:.0f} s\n{squeue}{logs(job)}")
        time.sleep(0.5)


def result(job):
    wait_done(job)
    return job.result()


def sacct_state(job, slurm_cluster, want: str, timeout: float = 30) -> str:
    """The job's state as submitit reads it (sacct), once it says ``want``: sacct lags slurmctld by about a second."""
    if not slurm_cluster.accounting:
        return want
    deadline = time.time() + timeout
    while True:
        state = job.get_info(mode="force").get("State", "UNKNOWN")
        if state.startswith(want) or time.time() > deadline:
            return state
        time.sleep(0.5)


def wait_file(path: str, job, timeout: float = RESULT_TIMEOUT_S):
    deadline = time.time() + timeout
    while not Path(path).exists():
        if time.time() > deadline:
            pytest.fail(f"{path} not written after {timeout:.0f} s{logs(job)}")
        time.sleep(0.1)


def requeues(job) -> list[str]:
    """The state of every run of the job in the accounting (sacct -D keeps the requeued runs)."""
    out = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-o", "State", "-j", job.job_id], capture_output=True,
                         text=True, check=True).stdout
    return out.split()


# ------------------------------------------------------------------------------------------------------- tests
def test_function_job_returns_its_result(executor, slurm_cluster):
    job = executor.submit(describe, 2, 3)
    total, job_id, cwd, omp, python = result(job)
    assert total == 5
    assert job_id == job.job_id
    assert cwd == os.getcwd()  # sbatch runs the job where it was submitted from
    assert omp == "1"
    assert python == sys.executable  # submitit launches the submitter's python
    assert sacct_state(job, slurm_cluster, "COMPLETED") == "COMPLETED"


def test_job_array_gives_each_task_its_result(executor, slurm_cluster):
    jobs = executor.map_array(square, [1, 2, 3])
    array_id = jobs[0].job_id.split("_")[0]
    assert [j.job_id for j in jobs] == [f"{array_id}_{i}" for i in range(3)]
    assert [result(j) for j in jobs] == [(1, "0"), (4, "1"), (9, "2")]
    assert [sacct_state(j, slurm_cluster, "COMPLETED") for j in jobs] == ["COMPLETED"] * 3


def test_failing_task_is_reported_and_spares_the_others(executor, slurm_cluster):
    jobs = executor.map_array(trial, [0, 1, 2])
    for j in jobs:
        wait_done(j)
    assert jobs[0].result() == 0 and jobs[2].result() == 2
    with pytest.raises(submitit.core.utils.FailedJobError, match="ValueError: trial 1 diverged"):
        jobs[1].result()
    assert [sacct_state(j, slurm_cluster, s) for j, s in zip(jobs, ["COMPLETED", "FAILED", "COMPLETED"])] == \
        ["COMPLETED", "FAILED", "COMPLETED"]


def test_requeued_job_runs_again_and_completes(executor, slurm_cluster, tmp_path):
    flag = str(tmp_path / "flag")
    job = executor.submit(wait_for_flag, flag)
    wait_file(f"{flag}.run0", job)
    subprocess.run(["scontrol", "requeue", job.job_id], check=True)
    requeued = time.time()
    assert result(job) == 1  # the second run saw SLURM_RESTART_COUNT=1
    print(f"requeue -> result: {time.time() - requeued:.1f} s")
    assert sacct_state(job, slurm_cluster, "COMPLETED") == "COMPLETED"
    if slurm_cluster.accounting:
        assert sorted(requeues(job)) == ["COMPLETED", "REQUEUED"]


def test_preemption_signal_checkpoints_and_requeues(executor, slurm_cluster, tmp_path):
    """USR2 (what a preempting cluster or submitit's job._interrupt() sends): the job checkpoints, requeues itself,
    and its next run starts from the checkpoint."""
    flag = str(tmp_path / "flag")
    job = executor.submit(Counter(), flag)
    wait_file(f"{flag}.run0", job)
    time.sleep(1)
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)
    signalled = time.time()
    steps, restarts, _, _ = result(job)
    print(f"USR2 -> result: {time.time() - signalled:.1f} s")
    assert restarts == 1 and steps > 0  # the requeued run continued from the pickled counter
    assert "Caught signal SIGUSR2" in job.stderr()
    assert sacct_state(job, slurm_cluster, "COMPLETED") == "COMPLETED"
    if slurm_cluster.accounting:
        assert sorted(requeues(job)) == ["COMPLETED", "REQUEUED"]


def test_time_limit_signal_checkpoints_and_requeues(time_limited_job, slurm_cluster):
    """The job submitted when this module started (time_limited_job): the signal came before the limit, the job
    checkpointed and requeued itself, and its next run resumed from the checkpoint."""
    job, _ = time_limited_job
    steps, restarts, ran_s, back_s = result(job)
    print(f"signal after {ran_s:.1f} s of the 60 s limit; resumed {back_s:.1f} s later")
    assert restarts == 1 and steps > 0
    assert 9 < ran_s < 45  # the first 30 s check at or after 10 s into the job
    assert "Caught signal SIGUSR2" in job.stderr()
    assert sacct_state(job, slurm_cluster, "COMPLETED") == "COMPLETED"
    if slurm_cluster.accounting:
        assert sorted(requeues(job)) == ["COMPLETED", "REQUEUED"]
