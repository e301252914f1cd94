"""`selfkd sweep --launcher slurm` on the real test cluster (scripts/slurm-local.sh; make test starts it), no mocks:
the same numbers as a local sweep, a run requeued mid-training that ends bit-identical, a second submission that
submits nothing, a failing run that spares the others, `--status`, a DDP run from Slurm's environment, the signal
before the time limit, and N copies of a command (`selfkd tune --workers N`). Skipped, saying why, without a cluster.

Every run here has one compute thread (OMP_NUM_THREADS=1, which sbatch passes on to the jobs), so the local runs and
the references train exactly as the jobs' runs do. Timings on the 2-core test machine: a smoke run trains for ~10 s;
the time-limited run (~55 s of training in 1-minute jobs) is submitted as the module starts, its signal comes
10-40 s into each job (slurmctld checks time limits every 30 s), and it ends after ~2 minutes, overlapping the other
tests; the module takes about as long.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from conftest import cli
from selfkd.runfolder import RUN, SWEEP

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
LONG_EPOCHS = 16  # ~55 s of training: Slurm's signal (10-40 s into a job) lands while it trains
WAIT_S = 300
TIMES = ("train_time_s", "img_per_s", "runs")  # report columns that differ between any two sweeps (and the folders)


@pytest.fixture(scope="module", autouse=True)
def one_thread(slurm_cluster, tmp_path_factory):
    """One compute thread for every run (the jobs get this environment from sbatch); at the end, every job the
    module submitted is cancelled (they are finished unless a test failed)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield
    for records in Path(tmp_path_factory.getbasetemp()).rglob("slurm/jobs.json"):
        written = json.loads(records.read_text())
        if isinstance(written, dict):  # not the damaged ones of the bad-input table
            ids = [i for jobs in written.values() for i in jobs]
            subprocess.run(["scancel", *ids], capture_output=True, check=False)


@pytest.fixture(scope="module", autouse=True)
def time_limited(one_thread, tmp_path_factory):
    """One smoke run of LONG_EPOCHS epochs in 1-minute jobs signalled 20 s before their limit, submitted as the module
    starts (the last test checks it, so that its wait overlaps the others)."""
    out = tmp_path_factory.mktemp("limited") / "sweep"
    args = ["sweep", "-c", SMOKE, "--device", "cpu", "--epochs", LONG_EPOCHS, "--methods", "ce", "--out", out,
            "--launcher", "slurm", "--slurm-time", "1", "--slurm-signal-before", "20", "--slurm-cpus", "1"]
    code, stdout, err = cli(*args)
    assert code == 0 and "Submitted Slurm job" in stdout, stdout + err
    return out, args


def records(out: Path) -> dict[str, list[str]]:
    return json.loads((out / "slurm" / "jobs.json").read_text())


def wait_for(condition, what: str, timeout: float = WAIT_S):
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            squeue = subprocess.run(["squeue"], capture_output=True, text=True).stdout
            pytest.fail(f"{what}: not after {timeout:.0f} s\n{squeue}")
        time.sleep(0.2)


def same_weights(a: Path, b: Path) -> bool:
    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return first.keys() == second.keys() and all(first[k].equal(second[k]) for k in first)


def table(out: Path) -> list[dict]:
    """The report's rows without the timings and folders."""
    rows = (out / "report" / "results.csv").read_text().splitlines()
    header = rows[0].split(",")
    return [{k: v for k, v in zip(header, row.split(",")) if k not in TIMES} for row in rows[1:]]


def requeued(job: str) -> bool:
    """Whether Slurm's accounting has a requeued run of the job (sacct -D keeps every run)."""
    states = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-o", "State", "-j", job], capture_output=True,
                            text=True, check=True).stdout.split()
    return "REQUEUED" in states


def status_until(args: list, run: str, state: str, slurm_cluster) -> str:
    """`--status`'s line of ``run`` once its Slurm state reads ``state`` (sacct lags the queue by about a second;
    without accounting a job that left the queue reads ENDED)."""
    state = state if slurm_cluster.accounting else "ENDED"
    lines = {}

    def shown() -> bool:
        code, out, err = cli(*args, "--status")
        assert code == 0, out + err
        lines.update((line.split()[0], line) for line in out.splitlines()[1:] if line.strip())
        return f" {state} " in lines.get(run, "")

    wait_for(shown, f"--status saying {state} for {run}", timeout=30)
    return lines[run]


def tiny_recipe(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    recipe = yaml.safe_load(SMOKE.read_text())
    recipe["data"]["options"].update(train_size=128, test_size=64, image_size=16)
    recipe["train"] = {"epochs": 1, "device": "cpu"}
    (folder / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    return folder / "tiny.yaml"


# ------------------------------------------------------------------------------------------------------- tests
def test_slurm_sweep_equals_the_local_one_resumes_a_requeued_run_exactly_and_never_submits_twice(tmp_path,
                                                                                                   slurm_cluster):
    grid = ["-c", SMOKE, "--device", "cpu", "--methods", "ce,ls", "--seeds", "0,1"]
    local, out = tmp_path / "local" / "sweep", tmp_path / "slurm" / "sweep"
    submit = ["sweep", *grid, "--out", out, "--launcher", "slurm", "--slurm-cpus", "1"]
    code, stdout, err = cli(*submit)
    assert code == 0 and "Submitted Slurm job" in stdout, stdout + err
    first = records(out)
    assert sorted(first) == ["ce_s0", "ce_s1", "ls_s0", "ls_s1"] and all(len(ids) == 1 for ids in first.values())

    # The same command while the runs are queued or running submits nothing.
    code, stdout, err = cli(*submit)
    assert code == 0 and "Submitted" not in stdout, stdout + err
    assert "0 finished, 4 queued or running already, 0 to resume, 0 to start" in stdout
    assert records(out) == first

    # ce_s0 is requeued while it trains: Slurm's SIGTERM makes it checkpoint, the requeued task resumes it.
    log = out / "logs" / "ce_s0.log"
    wait_for(lambda: log.is_file() and "selfkd 0.1.0: ce on" in log.read_text(), "ce_s0 training")
    subprocess.run(["scontrol", "requeue", first["ce_s0"][0]], check=True)
    code, stdout, err = cli("sweep", *grid, "--out", local)  # the same sweep on this machine, meanwhile
    assert code == 0, stdout + err

    code, stdout, err = cli(*submit, "--wait")  # follows what is left, then compares
    assert code == 0 and "Submitted" not in stdout, stdout + err
    text = log.read_text()
    assert "Stopped by SIGTERM at epoch 1, step" in text and "Resuming" in text, text
    assert records(out) == first  # requeued as the same job
    if slurm_cluster.accounting:
        assert requeued(first["ce_s0"][0])
    assert table(out) == table(local)
    for run in first:
        assert same_weights(out / run, local / run), run


def test_a_failing_run_spares_the_others_and_status_reports_it(tmp_path, slurm_cluster):
    recipe = tiny_recipe(tmp_path)
    out = tmp_path / "sweep"
    broken = out / "ce_s1"  # a run with a checkpoint that cannot be read: its resume fails
    broken.mkdir(parents=True)
    for folder, kind in ((out, SWEEP), (broken, RUN)):  # as selfkd made them
        (folder / kind.marker).touch()
    (broken / "config.yaml").write_text(recipe.read_text())
    (broken / "last.pt").write_bytes(b"not a checkpoint")
    args = ["sweep", "-c", recipe, "--methods", "ce", "--seeds", "1,0", "--out", out]
    code, stdout, err = cli(*args, "--launcher", "slurm", "--slurm-cpus", "1", "--wait")
    assert code == 1, stdout + err
    assert "[ce_s1] FAILED (Slurm state" in stdout and "not a readable selfkd checkpoint" in stdout
    assert "[ce_s0] finished: test top1" in stdout and (out / "ce_s0" / "summary.json").is_file()
    assert "1 run(s) failed: ce_s1" in err
    jobs, final = records(out), ("FAILED", "COMPLETED") if slurm_cluster.accounting else ("ENDED", "ENDED")
    line = status_until(args, "ce_s1", "FAILED", slurm_cluster).split()
    assert line[1:] == [jobs["ce_s1"][0], final[0], *"0 of 1 epochs trained, checkpoint saved".split(),
                        str(out / "logs" / "ce_s1.log")]
    line = status_until(args, "ce_s0", "COMPLETED", slurm_cluster)
    assert line.split()[1:5] == [jobs["ce_s0"][0], final[1], "finished:", "test"]


def test_jobs_that_cannot_be_recorded_are_cancelled(tmp_path):
    """Unrecorded jobs would be submitted again by the next run of the command: when jobs.json cannot be written
    (here a folder holds the name of its temporary file), the jobs just submitted are cancelled and the message says
    so."""
    recipe = tiny_recipe(tmp_path)
    out = tmp_path / "sweep"
    (out / "slurm" / ".jobs.json.tmp").mkdir(parents=True)
    (out / SWEEP.marker).touch()  # a sweep folder selfkd made
    code, stdout, err = cli("sweep", "-c", recipe, "--methods", "ce", "--out", out, "--launcher", "slurm",
                            "--slurm-cpus", "1")
    assert code == 3 and "The jobs it would record were cancelled" in err, stdout + err
    assert not (out / "slurm" / "jobs.json").exists()
    jobs = [p.name for p in (out / "slurm").iterdir() if p.name[0].isdigit()]  # submitit's folder of each job
    assert len(jobs) == 1
    wait_for(lambda: jobs[0] not in subprocess.run(["squeue", "--noheader", "--format=%i"], capture_output=True,
                                                  text=True).stdout.split(), f"job {jobs[0]} cancelled", timeout=30)
    assert not (out / "ce_s0" / "summary.json").exists()  # it left the queue cancelled, not finished


def test_two_processes_of_a_run_train_ddp_from_slurms_environment_as_torchrun_does(tmp_path):
    recipe = tiny_recipe(tmp_path)
    out = tmp_path / "sweep"
    code, stdout, err = cli("sweep", "-c", recipe, "--methods", "ce", "--out", out, "--launcher", "slurm",
                            "--slurm-tasks-per-node", "2", "--slurm-cpus", "1", "--wait")
    assert code == 0, stdout + err
    assert "2 process(es) per run (1 node(s) × 2)" in stdout
    assert json.loads((out / "ce_s0" / "summary.json").read_text())["world_size"] == 2
    torchrun = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               "-m", "selfkd", "train", "-c", recipe, "--method", "ce", "--seed", "0", "--run-dir",
                               tmp_path / "torchrun"], capture_output=True, text=True, timeout=WAIT_S)
    assert torchrun.returncode == 0, torchrun.stderr[-3000:]
    assert same_weights(out / "ce_s0", tmp_path / "torchrun")


def test_copies_of_a_command_run_as_one_array_and_are_not_submitted_twice(tmp_path):
    from selfkd.launchers.slurm import follow, launch_copies, load_options

    options = load_options(None, {"cpus": 1})
    first = launch_copies(["list", "methods"], 2, tmp_path, options, "selfkd-test-copies")
    assert sorted(first.submitted) == ["worker0", "worker1"] and not first.active
    assert len({i.split("_")[0] for i in first.submitted.values()}) == 1  # one array
    again = launch_copies(["list", "methods"], 2, tmp_path, options, "selfkd-test-copies")
    assert again.active == first.submitted and not again.submitted
    ended = follow(first.jobs, lambda name, state: None if state in ("COMPLETED", "ENDED") else state, noun="workers")
    assert ended == {"worker0": True, "worker1": True}
    for i in range(2):
        assert "lightskd" in (tmp_path / "logs" / f"worker{i}.log").read_text().splitlines()


def test_a_run_signalled_before_its_time_limit_checkpoints_requeues_and_ends_bit_identical(time_limited, tmp_path,
                                                                                           slurm_cluster):
    out, args = time_limited
    reference = subprocess.run([sys.executable, "-m", "selfkd", "train", "-c", SMOKE, "--device", "cpu", "--epochs",
                                str(LONG_EPOCHS), "--method", "ce", "--seed", "0", "--run-dir", tmp_path / "reference"],
                               capture_output=True, text=True, timeout=WAIT_S)
    assert reference.returncode == 0, reference.stderr[-3000:]
    code, stdout, err = cli(*args, "--wait")
    assert code == 0, stdout + err
    job = records(out)["ce_s0"]
    assert len(job) == 1  # every requeue is the same job
    text = (out / "logs" / "ce_s0.log").read_text()
    assert "Stopped by SIGTERM" in text and "Resuming" in text, f"the run was not requeued while it trained:\n{text}"
    slurm_log = next((out / "slurm" / job[0]).glob("*_log.err")).read_text()
    assert "Caught signal SIGUSR2" in slurm_log and "this job is timed-out" in slurm_log
    if slurm_cluster.accounting:
        assert requeued(job[0])
    assert same_weights(out / "ce_s0", tmp_path / "reference")


def test_tune_on_slurm_runs_workers_on_one_study_and_its_final_runs(tmp_path):
    """`selfkd tune --launcher slurm --workers 2`: one array of two workers on the study folder's SQLite study; the
    budget is met exactly, the final run is trained and tested once, the report is written; the same command again
    submits nothing new while they run, and continues nothing once over."""
    import optuna

    recipe = tiny_recipe(tmp_path)
    config = yaml.safe_load(recipe.read_text())
    config["data"]["val_split"] = 32
    recipe.write_text(yaml.safe_dump(config))
    out = tmp_path / "study"
    command = ["tune", "-c", recipe, "--methods", "ce", "--trials", "4", "--space", "optim.lr=0.001:1.0:log",
               "--final-seeds", "0", "--out", out, "--launcher", "slurm", "--workers", "2", "--slurm-cpus", "1"]
    code, stdout, err = cli(*command)
    assert code == 0 and "Submitted Slurm job" in stdout, stdout + err
    first = records(out)
    assert sorted(first) == ["worker0", "worker1"] and len({ids[0].split("_")[0] for ids in first.values()}) == 1
    code, stdout, err = cli(*command, "--wait")  # queued or running: nothing is submitted; then follows them
    assert code == 0 and "Submitted" not in stdout and "2 worker(s)" in stdout, stdout + err
    assert records(out) == first
    trials = optuna.load_study(study_name="study.ce", storage=f"sqlite:///{out / 'study.db'}").get_trials()
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 4
    assert 0 < json.loads((out / "final" / "ce_s0" / "summary.json").read_text())["final"]["top1"] <= 100
    assert (out / "report" / "index.html").is_file() and (out / "ce" / "best.yaml").is_file()
    for i in range(2):
        assert (out / "logs" / f"worker{i}.log").read_text().startswith("=== ")
