"""Bad input through the real CLI (issue #12): one table, one row per case.

A row is a command line (``{tmp}``, ``{cfg}``, ``{run}``, ``{new}``, ``{pid}`` are filled in), an optional set-up
that makes the files it needs, the exit code, a fragment of the message, and the paths (under the test's folder)
that must be exactly as they were before (absent ones must stay absent: nothing was created). Every row also
checks that there is no traceback and, for an error, one ``selfkd: error:`` paragraph. Adding a case is one line.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
import yaml

import fault_methods  # noqa: F401  (registers test_nan)
from conftest import live_slurm, tiny_config
from hand import write_fashion, write_image_folder

TINY = {"data": {"options": {"num_classes": 4, "train_size": 32, "test_size": 16, "image_size": 16},
                 "batch_size": 8, "eval_batch_size": 16},
        "model": {"name": "cifar_resnet18", "width": 4}}


def _config(tmp: Path) -> dict:
    cfg = tiny_config(tmp, epochs=1, **TINY)
    del cfg["run_dir"], cfg["name"]
    return cfg


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished tiny run, copied by the set-ups that need it."""
    from selfkd.engine import train

    tmp = tmp_path_factory.mktemp("finished")
    train({**_config(tmp), "run_dir": str(tmp / "run")})
    return tmp / "run"


# --------------------------------------------------------------------------- set-ups: (tmp, finished run) -> None

def copy_run(tmp, run):
    shutil.copytree(run, tmp / "run", symlinks=True)


def unfinished(tmp, run):
    """A run stopped after its first checkpoint (no summary yet): --resume reads its last.pt."""
    copy_run(tmp, run)
    for name in ("summary.json", "model.safetensors", "reliability.json"):
        (tmp / "run" / name).unlink()


def no_checkpoint(tmp, run):
    """A run killed in its first epoch: the marker, config.yaml and TensorBoard events, no last.pt."""
    copy_run(tmp, run)
    for p in (tmp / "run").iterdir():
        if p.name not in (".selfkd-run", "config.yaml", "tb"):
            p.unlink()


def locked(tmp, run):
    """An unfinished run whose folder another process holds (here: this one, through a second open file)."""
    unfinished(tmp, run)
    fd = os.open(tmp / "run" / ".selfkd-run", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.write(fd, f"selfkd run folder\npid {os.getpid()} on a host\n".encode())
    return lambda: os.close(fd)


def seg_recipe(tmp, run):
    """A tiny segmentation recipe, seg.yaml."""
    cfg = {**_config(tmp), "model": {"name": "frskd_seg_resnet18", "channels": 8, "head_channels": 8},
           "data": {"dataset": "synthetic_seg", "options": {"train_size": 16, "test_size": 8, "image_size": 16},
                    "batch_size": 8}}
    (tmp / "seg.yaml").write_text(yaml.safe_dump(cfg))


def project(tmp, run):
    (tmp / "project").mkdir()
    (tmp / "project" / "config.yaml").write_text("seed: 3\n")
    (tmp / "project" / "thesis.tex").write_text("\\chapter{Results}\n")


def foreign(tmp, run):
    (tmp / "foreign").mkdir()
    (tmp / "foreign" / "metrics.csv").write_text("a,b\n1,2\n")
    (tmp / "foreign" / "summary.json").write_text('{"mine": true}')


def symlinked(tmp, run):
    copy_run(tmp, run)
    (tmp / "run" / "notes.txt").write_text("my notes")
    (tmp / "link").symlink_to(tmp / "run")


def checkpoint_edit(change: Callable[[dict], None]):
    def setup(tmp, run):
        unfinished(tmp, run)
        ckpt = torch.load(tmp / "run" / "last.pt", weights_only=True)
        change(ckpt)
        torch.save(ckpt, tmp / "run" / "last.pt")

    return setup


def empty_checkpoint(tmp, run):
    unfinished(tmp, run)
    (tmp / "run" / "last.pt").write_bytes(b"")


def weights_options_list(tmp, run):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    copy_run(tmp, run)
    path = str(tmp / "run" / "model.safetensors")
    with safe_open(path, "pt") as fh:
        meta = fh.metadata()
    save_file(load_file(path), path, metadata={**meta, "model_options": "[1, 2]"})


def summary_final_number(tmp, run):
    copy_run(tmp, run)
    summary = tmp / "run" / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "final": 5}))


def with_file(tmp, run):
    copy_run(tmp, run)
    (tmp / "file").write_text("not a folder")


def latin1_config(tmp, run):
    (tmp / "latin.yaml").write_bytes("name: caf\xe9\n".encode("latin1"))


def duplicate_keys(tmp, run):
    (tmp / "dup.yaml").write_text(yaml.safe_dump(_config(tmp)) + "seed: 1\n")


def not_a_run(tmp, run):
    (tmp / "notrun").mkdir()
    (tmp / "notrun" / "readme.txt").write_text("hello")


def fashion_elsewhere(tmp, run):
    """A copy of the dataset where the search would find it ($SELFKD_DATA), for rows that name another --data-dir."""
    write_fashion(tmp / "env" / "fashion-mnist", n_train=8, n_test=4)
    os.environ["SELFKD_DATA"] = str(tmp / "env")  # restored by the test's monkeypatch


def image_folder_with_loop(tmp, run):
    write_image_folder(tmp / "images")
    (tmp / "images" / "train" / "cat" / "loop").symlink_to("..")


def image_folder_with_a_corrupt_image(tmp, run):
    """Two classes of two PNGs each; one training image is cut off (it fails when a training step reads it)."""
    write_image_folder(tmp / "images", train=2, val=(2, 2))
    with open(tmp / "images" / "train" / "dog" / "1.png", "r+b") as fh:
        fh.truncate(30)


def set_environ(**values: str) -> Callable[[], None]:
    """Set environment variables for one row; the returned clean-up puts them back."""
    old = {key: os.environ.get(key) for key in values}
    os.environ.update(values)

    def restore():
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    return restore


def no_slurm_on_path(tmp, run):
    """A PATH without Slurm's commands (selfkd needs none on this path)."""
    (tmp / "bin").mkdir()
    return set_environ(PATH=str(tmp / "bin"))


def slurm_client(tmp, run, conf: str | None = None):
    """Slurm's commands are here (scripts/slurm-local.sh installs them), pointed at ``conf``."""
    if shutil.which("scontrol") is None:
        pytest.skip("no Slurm client here (scripts/slurm-local.sh up installs one)")
    if conf is not None:
        (tmp / "slurm.conf").write_text(conf)
    return set_environ(SLURM_CONF=str(tmp / "slurm.conf"))


def slurm_controller_down(tmp, run):
    """A slurm.conf whose controller does not run (nothing listens on its port)."""
    return slurm_client(tmp, run, "ClusterName=nowhere\nSlurmctldHost=localhost\nSlurmctldPort=9\n")


def slurm_cluster_up(tmp, run):
    """The test cluster is up (the row is skipped without it, as the Slurm tests are)."""
    stack = contextlib.ExitStack()
    stack.enter_context(live_slurm())
    return stack.close


def slurm_yaml(tmp, run):
    (tmp / "slurm.yaml").write_text("partiton: gpu\ntime: 30\n")


def damaged_records(tmp, run):
    (tmp / "sw" / "slurm").mkdir(parents=True)
    (tmp / "sw" / "slurm" / "jobs.json").write_text("[1, 2]")


class Case(NamedTuple):
    name: str
    argv: str
    code: int
    message: str
    unchanged: tuple[str, ...] = ()
    setup: Callable | None = None


TRAIN = "train -c {cfg} --run-dir {new}"
SWEEP = "sweep -c {cfg} --methods ce --out {tmp}/sw"
SLURM = SWEEP + " --launcher slurm"
SEG = "train -c {tmp}/seg.yaml --run-dir {new}"
CASES = [
    # Files that were destroyed or overwritten.
    Case("overwrite-a-project-folder", "train -c {cfg} --run-dir {tmp}/project --overwrite", 2,
         "selfkd did not make it", ("project",), project),
    Case("foreign-files-with-output-names", "train -c {cfg} --run-dir {tmp}/foreign", 2, "is not empty",
         ("foreign",), foreign),
    Case("second-process-on-a-folder-in-use", "train -c {cfg} --run-dir {run} --overwrite", 2,
         "in use by another selfkd process (pid {pid} on a host)", ("run",), locked),
    Case("resume-a-folder-in-use", "train --resume {run}", 2, "in use by another selfkd process", ("run",), locked),
    Case("resume-a-finished-run", "train --resume {run}", 0, "is finished (1/1 epochs); nothing was changed",
         ("run",), copy_run),
    Case("overwrite-through-a-symlinked-run-folder", "train -c {cfg} --run-dir {tmp}/link --overwrite", 0,
         "run folder {tmp}/link", ("link", "run/notes.txt"), symlinked),
    Case("resume-mid-epoch-with-another-batch-size", "train --resume {run} --batch-size 4", 2,
         "stopped in the middle of epoch 1 (step 2) and this resume changes data.batch_size 4 (saved: 8)", ("run",),
         checkpoint_edit(lambda c: c.update(epoch=0, step_in_epoch=2))),
    Case("resume-and-overwrite-together", "train --resume {run} --overwrite", 2, "give one of them", ("run",),
         copy_run),
    Case("resume-with-another-run-dir", "train --resume {run} --run-dir {new}", 2,
         "Give either --resume RUN_DIR (the run folder it continues) or --run-dir, not both", ("run", "new"), copy_run),
    Case("resume-a-checkpoint-past-the-epochs", "train --resume {run}", 2,
         "was saved after epoch 2, past train.epochs=1 of this resume: a run cannot go back. Resume with --epochs 2",
         ("run",), checkpoint_edit(lambda c: c.update(epoch=2))),
    Case("resume-a-checkpoint-partway-past-the-epochs", "train --resume {run}", 2,
         "was saved in epoch 2 (step 3), past train.epochs=1 of this resume", ("run",),
         checkpoint_edit(lambda c: c.update(step_in_epoch=3))),
    # Runs that stopped before their first checkpoint.
    Case("rerun-after-a-crash-in-epoch-1", "train -c {cfg} --run-dir {run}", 2,
         "stopped before its first checkpoint", ("run",), no_checkpoint),
    Case("resume-after-a-crash-in-epoch-1", "train --resume {run}", 2,
         "Start it over with `selfkd train -c {run}/config.yaml --run-dir {run} --overwrite`", ("run",), no_checkpoint),
    Case("nonfinite-loss-in-epoch-1", TRAIN + " --method test_nan --set method.from_step=1", 3,
         "No checkpoint was saved yet, so there is nothing to resume"),
    # Tracebacks.
    Case("device-meta", TRAIN + " --device meta", 2, "not a device selfkd runs on", ("new",)),
    Case("device-mps", TRAIN + " --device mps", 2, "not a device selfkd runs on", ("new",)),
    Case("seed-beyond-64-bits", TRAIN + " --seed 99999999999999999999999", 2,
         "'seed': Input should be less than 9223372036854775808", ("new",)),
    Case("model-width-0", TRAIN + " --set model.width=0", 2,
         "'width' must be greater than or equal to 1 (got 0)", ("new",)),
    Case("synthetic-num-classes-0", TRAIN + " --set data.options.num_classes=0", 2,
         "'num_classes' must be greater than or equal to 1 (got 0)", ("new",)),
    Case("synthetic-train-size-negative", TRAIN + " --set data.options.train_size=-1", 2,
         "'train_size' must be greater than or equal to 1 (got -1)", ("new",)),
    Case("in-memory-data-read-by-workers", TRAIN + " --set data.loader=workers", 2,
         "data.loader=workers does not fit synthetic, which is held in memory", ("new",)),
    Case("file-augmentation-on-in-memory-scenes", SEG + " --set data.augment=seg_voc", 2,
         "data.augment=seg_voc does not fit synthetic_seg", ("new",), seg_recipe),
    Case("classification-augmentation-on-scenes", SEG + " --set data.augment=crop_flip", 2,
         "use seg_scale_crop_flip, none", ("new",), seg_recipe),
    Case("rrc-scale-reversed", TRAIN + " --set data.augment=rrc_flip --set data.rrc_scale=[1.0,0.1]", 2,
         "'data.rrc_scale': Value error, must be [low, high] with 0 < low <= high <= 1 (got [1.0, 0.1])", ("new",)),
    Case("rrc-scale-negative", TRAIN + " --set data.augment=rrc_flip --set data.rrc_scale=[-0.5,1.0]", 2,
         "'data.rrc_scale': Value error, must be [low, high] with 0 < low <= high <= 1 (got [-0.5, 1.0])", ("new",)),
    Case("config-not-utf8", "train -c {tmp}/latin.yaml --run-dir {new}", 2, "is not UTF-8 text", ("new",),
         latin1_config),
    Case("checkpoint-missing-entries", "train --resume {run}", 2, "no 'optimizer'", ("run",),
         checkpoint_edit(lambda c: c.pop("optimizer"))),
    Case("checkpoint-epoch-a-string", "train --resume {run}", 2, "'epoch' is a str", ("run",),
         checkpoint_edit(lambda c: c.update(epoch="one"))),
    Case("checkpoint-empty", "train --resume {run}", 2, "is empty (0 bytes)", ("run",), empty_checkpoint),
    Case("checkpoint-window-damaged", "train --resume {run} --epochs 2", 2,
         "'window' is not the statistics of a partly trained epoch", ("run",),
         checkpoint_edit(lambda c: c.update(step_in_epoch=1, window={"names": ["loss"]}))),
    Case("checkpoint-cuda-rng-damaged", "train --resume {run}", 2, "'rng' holds no torch generator states", ("run",),
         checkpoint_edit(lambda c: c["rng"].update(cuda=["not a state"]))),
    Case("checkpoint-best-without-its-metric", "train --resume {run} --epochs 2", 2,
         "'best' is not an epoch and a metric value", ("run",), checkpoint_edit(lambda c: c.update(best={"epoch": 1}))),
    Case("weights-options-not-a-mapping", "export {run} --format safetensors", 2, "'model_options' is [1, 2]",
         ("run",), weights_options_list),
    Case("export-negative-image-size", "export {run} --format torchscript --image-size -5", 2, "--image-size -5",
         ("run",), copy_run),
    Case("export-out-below-a-file", "export {run} --format torchscript --out {tmp}/file/m.pt", 2,
         "a file is in its way", ("run", "file"), with_file),
    Case("compare-out-is-a-file", "compare {run} --out {tmp}/file", 2, "Cannot make the report folder",
         ("run", "file"), with_file),
    Case("compare-a-malformed-summary", "compare {run} --out {tmp}/report", 0,
         "summary.json holds values selfkd does not write (final)", ("run",), summary_final_number),
    Case("one-with-a-last-batch-of-one", TRAIN + " --method one --set data.options.train_size=17", 0,
         "the last batch of each epoch (1 image(s), a different random few each epoch) is left out"),
    Case("bake-batch-without-an-anchor", TRAIN + " --method bake --batch-size 3", 2, "The batch holds no anchor",
         ("new",)),
    # Accepted silently.
    Case("empty-training-set", TRAIN + " --set data.options.train_size=0", 2,
         "'train_size' must be greater than or equal to 1 (got 0)", ("new",)),
    Case("one-class-only", TRAIN + " --set data.options.num_classes=1", 2, "at least two classes", ("new",)),
    Case("cskd-batch-size-1", TRAIN + " --method cskd --batch-size 1 --set data.options.train_size=8", 0,
         "a step holds 1 anchor(s), each with 1 same-class partner(s): 2 images"),
    Case("run-dir-empty", "train -c {cfg} --run-dir ''", 2,
         "'run_dir': String should have at least 1 character", ("runs",)),
    Case("name-empty", "train -c {cfg} --name ''", 2, "'name': String should have at least 1 character", ("runs",)),
    Case("data-dir-missing-with-a-copy-elsewhere",
         TRAIN + " --dataset fashion_mnist --data-dir {tmp}/nowhere --set data.options={{}}", 2,
         "--data-dir {tmp}/nowhere does not exist", ("new",), fashion_elsewhere),
    Case("data-dir-a-file-with-a-copy-elsewhere",
         TRAIN + " --dataset fashion_mnist --data-dir {cfg} --set data.options={{}}", 2,
         "--data-dir {cfg} is not a folder", ("new",), fashion_elsewhere),
    Case("data-dir-empty", TRAIN + " --data-dir ''", 2,
         "'data.data_dir': String should have at least 1 character", ("new",)),
    Case("symlink-loop-in-an-image-folder",
         TRAIN + " --dataset imagefolder --data-dir {tmp}/images --set data.options={{}} --set data.workers=0", 2,
         "counted twice", ("new",), image_folder_with_loop),
    Case("eval-run-with-another-dataset", "eval --run {run} --dataset cifar100 --model resnet18 --device cpu", 2,
         "--dataset cifar100 (the run's is synthetic); --model resnet18", ("run",), copy_run),
    Case("eval-weights-on-a-dataset-of-another-task", "eval --weights {run}/model.safetensors --dataset synthetic_seg "
         "--device cpu", 2, "holds a classification model ('cifar_resnet18'), but dataset 'synthetic_seg' is for "
         "segmentation", ("run",), copy_run),
    Case("eval-batch-size-0", "eval --run {run} --batch-size 0 --device cpu", 2, "--batch-size 0", ("run",), copy_run),
    Case("eval-run-and-weights", "eval --run {run} --weights {run}/model.safetensors --dataset synthetic", 2,
         "either --run RUN_DIR or --weights FILE", ("run",), copy_run),
    Case("eval-run-data-dir-empty", "eval --run {run} --data-dir '' --device cpu", 2,
         "'data.data_dir': String should have at least 1 character", ("run",), copy_run),
    Case("eval-weights-data-dir-empty", "eval --weights {run}/model.safetensors --dataset synthetic --data-dir '' "
         "--device cpu", 2, "'data.data_dir': String should have at least 1 character", ("run",), copy_run),
    Case("corrupt-image-while-training",
         TRAIN + " --dataset imagefolder --data-dir {tmp}/images --set data.options={{}} --set data.workers=0 "
         "--set data.image_size=16", 2, "re-extract the dataset. No checkpoint was saved yet, so there is nothing to "
         "resume; start over with `selfkd train -c {new}/config.yaml --run-dir {new} --overwrite`.", (),
         image_folder_with_a_corrupt_image),
    # Misleading.
    Case("std-zero", TRAIN + " --set data.std=[0,0,0]", 2,
         "'data.std': Value error, every value must be > 0 (images are divided by it)", ("new",)),
    Case("mean-nan", TRAIN + " --set data.mean=[.nan,0,0]", 2, "'data.mean.0': Input should be a finite number",
         ("new",)),
    Case("lr-infinite", TRAIN + " --set optim.lr=.inf", 2, "'optim.lr': Input should be a finite number", ("new",)),
    Case("epochs-at-the-top-level", TRAIN + " --set epochs=3", 2, "Did you mean 'train.epochs'?", ("new",)),
    Case("duplicate-yaml-keys", "train -c {tmp}/dup.yaml --run-dir {new}", 2, "the key 'seed' is given twice",
         ("new",), duplicate_keys),
    Case("resume-a-folder-that-is-not-a-run", "train --resume {tmp}/notrun", 2,
         "{tmp}/notrun is not a selfkd run folder", ("notrun",), not_a_run),
    Case("eval-a-folder-that-is-not-a-run", "eval --run {tmp}/notrun", 2, "{tmp}/notrun is not a selfkd run folder",
         ("notrun",), not_a_run),
    Case("resume-the-checkpoint-file", "train --resume {run}/last.pt", 2, "last.pt is a file, not a folder", ("run",),
         copy_run),
    Case("config-a-folder", "train -c {tmp} --run-dir {new}", 2, "is a folder, not a file", ("new",)),
    Case("bench-an-unknown-method", "bench --methods ce,nosuch --steps 1 --warmup 0 --device cpu --width 4", 2,
         "Unknown method 'nosuch'"),
    # Sweeps on Slurm (issue #25): checked before the sweep folder is made.
    Case("slurm-not-installed", SLURM, 2, "needs Slurm's commands, and sbatch, squeue, scontrol, srun are not on PATH "
         "here", ("sw",), no_slurm_on_path),
    Case("slurm-conf-names-no-file", SLURM, 2, "SLURM_CONF={tmp}/slurm.conf names no file", ("sw",), slurm_client),
    Case("slurm-controller-down", SLURM, 2, "the Slurm controller does not answer (scontrol ping: Slurmctld(primary)",
         ("sw",), slurm_controller_down),
    Case("slurm-unknown-partition", SLURM + " --slurm-partition nosuch", 2,
         "Slurm refuses these jobs: invalid partition specified: nosuch", ("sw",), slurm_cluster_up),
    Case("slurm-config-unknown-key", SLURM + " --slurm-config {tmp}/slurm.yaml", 2,
         "unknown key 'partiton'. Did you mean 'partition'?", ("sw", "slurm.yaml"), slurm_yaml),
    Case("slurm-config-missing", SLURM + " --slurm-config {tmp}/none.yaml", 2,
         "--slurm-config {tmp}/none.yaml: no such file", ("sw",)),
    Case("slurm-time-0", SLURM + " --slurm-time 0", 2, "'time': Input should be greater than 0 (got 0)", ("sw",)),
    Case("slurm-mem-in-words", SLURM + " --slurm-mem lots", 2, "'mem': Value error, give the memory per node as Slurm writes it", ("sw",)),
    Case("slurm-extra-without-a-key", SLURM + " --slurm-extra =a100", 2, "--slurm-extra expects KEY=VALUE", ("sw",)),
    Case("slurm-options-without-slurm", SWEEP + " --slurm-partition gpu --wait", 2,
         "--slurm-partition, --wait apply to --launcher slurm", ("sw",)),
    Case("local-gpus-on-slurm", SLURM + " --gpus 0,1", 2, "on Slurm give --slurm-gpus N", ("sw",)),
    Case("slurm-job-records-damaged", SWEEP + " --status", 2, "jobs.json is not a record of Slurm jobs selfkd wrote",
         ("sw",), damaged_records),
]


def snapshot(path: Path):
    """Every file below ``path`` (bytes; links as their target), or None when it does not exist."""
    if path.is_symlink():
        return ("link", os.readlink(path))
    if not path.exists():
        return None
    if path.is_file():
        return path.read_bytes()
    return {str(p.relative_to(path)): snapshot(p) for p in sorted(path.rglob("*")) if not p.is_dir() or p.is_symlink()}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, tmp_path, finished, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default run folder would land in ./runs
    monkeypatch.setenv("SELFKD_DATA", str(tmp_path / "no-data"))
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(_config(tmp_path)))
    cleanup = case.setup(tmp_path, finished) if case.setup else None
    fill = {"tmp": tmp_path, "cfg": tmp_path / "cfg.yaml", "run": tmp_path / "run", "new": tmp_path / "new",
            "pid": os.getpid()}
    before = {p: snapshot(tmp_path / p) for p in case.unchanged}
    try:
        argv = [arg.format(**fill) for arg in case.argv.split()]
        code, out, err = run_cli(*[a if a != "''" else "" for a in argv])
    finally:
        if cleanup:
            cleanup()
    assert "Traceback" not in out + err
    assert code == case.code, err
    assert case.message.format(**fill) in (err if code else out + err)
    if code:
        assert err.count("selfkd: error:") == 1 and err.strip().splitlines()[-1].startswith("selfkd: error:")
    for p in case.unchanged:
        assert snapshot(tmp_path / p) == before[p], p
