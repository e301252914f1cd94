"""Bad input through the real CLI (issue #12): one table, one row per case.

A row is a command line (``{tmp}``, ``{cfg}``, ``{run}``, ``{new}``, ``{pid}`` are filled in), an optional set-up
that makes the files it needs, the exit code, a fragment of the message, and the paths (under the test's folder)
that must be exactly as they were before (absent ones must stay absent: nothing was created). Every row also
checks that there is no traceback and, for an error, one ``selfkd: error:`` paragraph. Adding a case is one line.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
import torchvision
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


def yaml_bomb(levels: int = 9) -> str:
    """A "billion laughs" YAML value: ``levels`` levels of 10 aliases each (10**levels strings once expanded)."""
    anchors = ["&a0 [" + ", ".join(["lol"] * 10) + "]"]
    anchors += [f"&a{k} [" + ", ".join([f"*a{k - 1}"] * 10) + "]" for k in range(1, levels)]
    return "[" + ", ".join(anchors) + "]"


def bomb_config(tmp, run):
    """A config whose run name is a YAML alias bomb."""
    (tmp / "bomb.yaml").write_text(yaml.safe_dump(_config(tmp)) + f"defs: {yaml_bomb()}\nname: *a8\n")


def mine(tmp) -> Path:
    """A file of the user's, {tmp}/mine.txt."""
    (tmp / "mine.txt").write_text("my thesis")
    return tmp / "mine.txt"


def marker_linked(tmp, run):
    """A finished run whose .selfkd-run is a link to a file of the user's."""
    copy_run(tmp, run)
    (tmp / "run" / ".selfkd-run").unlink()
    (tmp / "run" / ".selfkd-run").symlink_to(mine(tmp))


def temporary_linked(tmp, run):
    """A finished run where the checkpoint's temporary file is a link to a file of the user's."""
    copy_run(tmp, run)
    (tmp / "run" / ".last.pt.tmp").symlink_to(mine(tmp))


def two_runs(tmp, run):
    copy_run(tmp, run)
    shutil.copytree(run, tmp / "other", symlinks=True)


def users_report(tmp, run):
    """A finished run, and a folder of the user's own holding index.html and results.md."""
    copy_run(tmp, run)
    (tmp / "mine").mkdir()
    (tmp / "mine" / "index.html").write_text("<p>my page</p>")
    (tmp / "mine" / "results.md").write_text("# my results")


def a_report(tmp, run):
    """A finished run and a report of it in {tmp}/report."""
    from selfkd.report import compare

    copy_run(tmp, run)
    compare([tmp / "run"], tmp / "report")


def disk_full_for_plots(tmp, run):
    """A finished run; writing a PNG fails half-way as on a full disk."""
    from matplotlib.figure import Figure

    copy_run(tmp, run)
    real = Figure.savefig

    def savefig(self, path, **kwargs):
        real(self, path, **kwargs)
        with open(path, "r+b") as fh:
            fh.truncate(100)
        raise OSError(errno.ENOSPC, "No space left on device")

    Figure.savefig = savefig
    return lambda: setattr(Figure, "savefig", real)


def read_only_folder(tmp, run):
    """{tmp}/ro, read-only even for root (chattr +i)."""
    (tmp / "ro").mkdir()
    if subprocess.run(["chattr", "+i", str(tmp / "ro")], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here")
    return lambda: subprocess.run(["chattr", "-i", str(tmp / "ro")])


def sweep_log_linked(tmp, run):
    """A sweep folder selfkd made whose first run's log is a link to a file of the user's."""
    (tmp / "sweep" / "logs").mkdir(parents=True)
    (tmp / "sweep" / ".selfkd-sweep").write_text("")
    (tmp / "sweep" / "logs" / "ce_s0.log").symlink_to(mine(tmp))


def write_seg_folder(root: Path, train: int = 4, classes: str = "sky\nroad\ncar\n", bad_label: int | None = None,
                     val_label: int | None = None) -> None:
    """A seg_folder of 8×8 images, K = 3: ``train`` training pairs (the last one's mask all ``bad_label`` when given)
    and 2 validation pairs (masks all ``val_label`` when given)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for split, names in (("train", [f"t{i}" for i in range(train)]), ("val", ["v0", "v1"])):
        for name in names:
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
            mask = rng.integers(0, 3, (8, 8), dtype=np.uint8)
            label = val_label if split == "val" else bad_label if name == names[-1] else None
            Image.fromarray(mask if label is None else np.full_like(mask, label)).save(root / "masks" / f"{name}.png")
        (root / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    (root / "classes.txt").write_text(classes)


def seg_folder_recipe(tmp: Path, batch_size: int = 2, **folder) -> None:
    """{tmp}/segf (:func:`write_seg_folder` with ``folder``) and a tiny recipe for it, segf.yaml: 16² crops of the 8²
    images (padded), one epoch."""
    write_seg_folder(tmp / "segf", **folder)
    cfg = {**_config(tmp), "model": {"name": "frskd_seg_resnet18", "channels": 8, "head_channels": 8},
           "data": {"dataset": "seg_folder", "data_dir": str(tmp / "segf"), "batch_size": batch_size, "workers": 0,
                    "image_size": 16, "short_side": [8, 8], "blur": False}}
    (tmp / "segf.yaml").write_text(yaml.safe_dump(cfg))


def empty_classes(tmp, run):
    seg_folder_recipe(tmp, classes="")


def small_images(tmp, run):
    seg_folder_recipe(tmp)


def unlabelled_validation(tmp, run):
    seg_folder_recipe(tmp, val_label=255)


def one_bad_mask(tmp, run):
    """Eight training pairs, the last with label 9 (K = 3), two images per step on each of two processes (seed 0: in
    the first batch of process 0; seed 1: in the second of process 1)."""
    seg_folder_recipe(tmp, batch_size=4, train=8, bad_label=9)


def scenes_recipe(tmp, run):
    """Fashion-MNIST in {tmp}/fashion-mnist, $SELFKD_CACHE in {tmp}/cache, and scenes.yaml: fmnist_scenes of 2 + 2
    scenes."""
    write_fashion(tmp / "fashion-mnist", n_train=8, n_test=4)
    old = os.environ.get("SELFKD_CACHE")
    os.environ["SELFKD_CACHE"] = str(tmp / "cache")
    cfg = {**_config(tmp), "model": {"name": "frskd_seg_resnet18", "channels": 8, "head_channels": 8},
           "data": {"dataset": "fmnist_scenes", "data_dir": str(tmp / "fashion-mnist"), "batch_size": 2,
                    "image_size": 32, "options": {"train_size": 2, "test_size": 2}}}
    (tmp / "scenes.yaml").write_text(yaml.safe_dump(cfg))
    return lambda: os.environ.pop("SELFKD_CACHE") if old is None else os.environ.update(SELFKD_CACHE=old)


def poisoned_scenes_cache(tmp, run):
    """:func:`scenes_recipe`, its scenes cached, then every cached mask pixel set to label 200 (shapes and dtype
    kept)."""
    from selfkd.data import load_dataset

    restore = scenes_recipe(tmp, run)
    load_dataset("fmnist_scenes", tmp / "fashion-mnist", train_size=2, test_size=2)
    (file,) = (tmp / "cache").glob("fmnist_scenes-*.npz")
    with np.load(file) as saved:
        arrays = {key: np.full_like(saved[key], 200) if key.endswith("masks") else saved[key] for key in saved}
    np.savez(file, **arrays)
    return restore


def seg_run(tmp, run):
    """A finished tiny segmentation run in {tmp}/seg."""
    from selfkd.engine import train

    seg_recipe(tmp, run)
    train({**yaml.safe_load((tmp / "seg.yaml").read_text()), "run_dir": str(tmp / "seg")})


def seg_runs_one_with_empty_examples(tmp, run):
    """Two finished segmentation runs, {tmp}/seg and {tmp}/seg2 (seed 1), seg2's examples.npz holding 0×0 examples
    (loadable, of the right keys and dtypes)."""
    seg_run(tmp, run)
    shutil.copytree(tmp / "seg", tmp / "seg2")
    summary = json.loads((tmp / "seg2" / "summary.json").read_text())
    (tmp / "seg2" / "summary.json").write_text(json.dumps({**summary, "seed": 1}))
    np.savez(tmp / "seg2" / "examples.npz", images=np.zeros((4, 0, 0, 3), np.uint8),
             masks=np.zeros((4, 0, 0), np.uint8), predictions=np.zeros((4, 0, 0), np.uint8),
             sizes=np.zeros((4, 2), np.int64), index=np.arange(4), classes=np.array(["a", "b", "c", "d"]))


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


class CodeOnLoad:
    """Unpickling this runs code: it makes the folder ``path`` (weights_only loading refuses it, so nothing is made)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def weights_files(tmp, run):
    """Weights files that cannot start the tiny run (cifar_resnet18 of width 4, 3 channels, 4 classes)."""
    from selfkd.models import create_model

    torch.save({"w": torch.zeros(1000)}, tmp / "whole.pt")
    (tmp / "truncated.pt").write_bytes((tmp / "whole.pt").read_bytes()[:600])
    (tmp / "corrupt.safetensors").write_bytes(b"definitely not safetensors")
    torch.save({"w": torch.zeros(2), "payload": CodeOnLoad(tmp / "pwned")}, tmp / "code.pt")
    torch.save(torchvision.models.resnet18().state_dict(), tmp / "resnet18.pth")
    grey = create_model("cifar_resnet18", num_classes=4, in_channels=1, width=4)
    torch.save(grey.state_dict(), tmp / "grey.pth")


def offline(tmp, run, cached: bytes | None = None):
    """resnet.yaml (the tiny run on torchvision's resnet18), torch's cache in {tmp}/torch (with ``cached`` as
    torchvision's resnet18 file), and no network."""
    from urllib.error import URLError

    (tmp / "resnet.yaml").write_text(yaml.safe_dump({**_config(tmp), "model": {"name": "resnet18"}}))
    if cached is not None:
        (tmp / "torch" / "hub" / "checkpoints").mkdir(parents=True)
        (tmp / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth").write_bytes(cached)
    before, download = os.environ.get("TORCH_HOME"), torch.hub.download_url_to_file
    os.environ["TORCH_HOME"] = str(tmp / "torch")

    def no_network(url, *args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")

    torch.hub.download_url_to_file = no_network

    def restore():
        torch.hub.download_url_to_file = download
        if before is None:
            os.environ.pop("TORCH_HOME")
        else:
            os.environ["TORCH_HOME"] = before

    return restore


def timm_offline(tmp, run):
    """timm.yaml (the tiny run on timm:resnet18), an empty Hugging Face cache in {tmp}/hf, and no network."""
    import huggingface_hub.constants as hf

    (tmp / "timm.yaml").write_text(yaml.safe_dump({**_config(tmp), "model": {"name": "timm:resnet18"}}))
    before = hf.HF_HUB_CACHE, hf.HF_HUB_OFFLINE
    hf.HF_HUB_CACHE, hf.HF_HUB_OFFLINE = str(tmp / "hf"), True

    def restore():
        hf.HF_HUB_CACHE, hf.HF_HUB_OFFLINE = before

    return restore


def tune_recipe(tmp, run):
    """The bad-input recipe with a validation split of 8 images, tune.yaml (selfkd tune needs one)."""
    cfg = _config(tmp)
    cfg["data"]["val_split"] = 8
    (tmp / "tune.yaml").write_text(yaml.safe_dump(cfg))


def tune_study(tmp, run):
    """A study of ce in {tmp}/study searching optim.lr in 0.01..0.1, made as selfkd tune makes it (no trial yet)."""
    from selfkd.runfolder import TUNE
    from selfkd.tune import definitions
    from selfkd.tune.study import open_storage, open_study, storage_url

    tune_recipe(tmp, run)
    (tmp / "study").mkdir()
    (tmp / "study" / TUNE.marker).touch()  # selfkd made the folder
    definition = definitions(str(tmp / "tune.yaml"), ["ce"], ["optim.lr=0.01:0.1"], {}, [])["ce"]
    open_study(open_storage(storage_url(None, tmp / "study"), 30), "study.ce", definition, False, None, None)


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
    from selfkd.runfolder import SWEEP

    (tmp / "sw" / "slurm").mkdir(parents=True)
    (tmp / "sw" / SWEEP.marker).touch()  # selfkd made the folder
    (tmp / "sw" / "slurm" / "jobs.json").write_text("[1, 2]")


class Case(NamedTuple):
    name: str
    argv: str
    code: int
    message: str
    unchanged: tuple[str, ...] = ()
    setup: Callable | None = None
    ranks: int = 1  # more: run under torchrun with that many processes (on the CPU)


TRAIN = "train -c {cfg} --run-dir {new}"
SWEEP = "sweep -c {cfg} --methods ce --out {tmp}/sw"
SLURM = SWEEP + " --launcher slurm"
SEG = "train -c {tmp}/seg.yaml --run-dir {new}"
SEGF = "train -c {tmp}/segf.yaml --run-dir {new}"
SCENES = "train -c {tmp}/scenes.yaml --run-dir {new}"
SEGF2 = SEGF + " --method frskd --set method.warmup_epochs=0"  # frskd: every parameter gets a gradient (DDP)
RESNET = "train -c {tmp}/resnet.yaml --run-dir {new}"
TUNE = "tune -c {tmp}/tune.yaml --methods ce --trials 2 --out {new}"
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
    Case("compare-out-is-a-file", "compare {run} --out {tmp}/file", 2,
         "The report folder {tmp}/file cannot be made: {tmp}/file is a file", ("run", "file"), with_file),
    Case("compare-a-malformed-summary", "compare {run} --out {tmp}/report", 0,
         "summary.json holds values selfkd does not write (final)", ("run",), summary_final_number),
    Case("one-with-a-last-batch-of-one", TRAIN + " --method one --set data.options.train_size=17", 0,
         "the last batch of each epoch (1 image(s), a different random few each epoch) is left out"),
    Case("bake-batch-without-an-anchor", TRAIN + " --method bake --batch-size 3", 2, "The batch holds no anchor",
         ("new",)),
    # Pretrained weights (issue #23): refused before the run folder is made.
    Case("pretrained-file-missing", TRAIN + " --set model.pretrained={tmp}/nothere.safetensors", 2,
         "No weights file at {tmp}/nothere.safetensors", ("new",)),
    Case("pretrained-file-truncated", TRAIN + " --set model.pretrained={tmp}/truncated.pt", 2,
         "truncated.pt is not a readable weights file", ("new", "truncated.pt"), weights_files),
    Case("pretrained-file-corrupt", TRAIN + " --set model.pretrained={tmp}/corrupt.safetensors", 2,
         "corrupt.safetensors is not a readable safetensors file", ("new",), weights_files),
    Case("pretrained-pickle-that-runs-code", TRAIN + " --set model.pretrained={tmp}/code.pt", 2,
         "code.pt is a pickle that holds more than tensors", ("new", "pwned"), weights_files),
    Case("pretrained-another-architecture", TRAIN + " --set model.pretrained={tmp}/resnet18.pth", 2,
         "resnet18.pth does not fit cifar_resnet18: cifar_resnet18's stem.0.weight", ("new",), weights_files),
    Case("pretrained-another-in-channels", TRAIN + " --set model.pretrained={tmp}/grey.pth", 2,
         "The first convolution stem.0.weight of the weights takes 1 input channel(s) and this model 3", ("new",),
         weights_files),
    Case("teacher-another-class-count-head-kept", TRAIN + " --method tfkd_self --set method.teacher_weights={run} "
         "--set data.options.num_classes=5", 2, "shapes differ: fc.weight (4, 32) in the weights, (5, 32) in the model",
         ("new", "run"), copy_run),
    Case("pretrained-folder-not-a-run", TRAIN + " --set model.pretrained={tmp}/notrun", 2,
         "{tmp}/notrun is a folder without model.safetensors", ("new", "notrun"), not_a_run),
    Case("pretrained-imagenet-for-a-cifar-network", TRAIN + " --set model.pretrained=imagenet", 2,
         "no public weights exist for cifar_resnet18", ("new",)),
    Case("pretrained-unknown-torchvision-name", RESNET + " --set model.pretrained=IMAGENET1K_V9", 2,
         "nor torchvision weights of resnet18, which are: imagenet, IMAGENET1K_V1", ("new", "torch"), offline),
    Case("pretrained-offline-and-not-cached", RESNET + " --set model.pretrained=imagenet", 2,
         "put it in {tmp}/torch/hub/checkpoints as resnet18-f37072fd.pth", ("new",), offline),  # torch makes its folder
    Case("pretrained-cached-file-damaged", RESNET + " --set model.pretrained=imagenet", 2,
         "torchvision's cached ResNet18_Weights.IMAGENET1K_V1, cannot be read", ("new", "torch"),
         lambda tmp, run: offline(tmp, run, cached=b"PK\x03\x04 cut short")),
    Case("pretrained-timm-offline-and-not-cached", "train -c {tmp}/timm.yaml --run-dir {new} --set "
         "model.pretrained=imagenet", 2, "download model.safetensors from https://huggingface.co/timm/resnet18.a1_in1k "
         "and give its path as model.pretrained", ("new",), timm_offline),
    Case("pretrained-lr-scale-without-weights", TRAIN + " --set optim.pretrained_lr_scale=0.1", 2,
         "optim.pretrained_lr_scale=0.1 act on the parameters that came from pretrained weights, but model.pretrained "
         "is not set", ("new",)),
    Case("resume-adding-pretrained-weights", "train --resume {run} --set model.pretrained={run}", 2,
         "started from random weights, and this resume sets model.pretrained", ("run",), unfinished),
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
    # Files lost or overwritten (issue #22).
    Case("resume-through-a-linked-marker", "train --resume {run} --epochs 3", 2,
         "{run}/.selfkd-run is a symbolic link. selfkd never writes or locks a file through a link", ("run", "mine.txt"),
         marker_linked),
    Case("checkpoint-written-through-a-linked-temporary-file", "train --resume {run} --epochs 2", 0,
         "final test", ("mine.txt",), temporary_linked),
    Case("export-into-another-run", "export {run} --format safetensors --out {tmp}/other/", 2,
         "--out {tmp}/other/model.safetensors is inside the run folder {tmp}/other", ("run", "other"), two_runs),
    Case("export-over-a-checkpoint", "export {run} --format torchscript --out {run}/last.pt", 2,
         "--out {run}/last.pt is inside the run folder {run}", ("run",), copy_run),
    Case("compare-into-a-folder-of-the-users", "compare {run} --out {tmp}/mine", 2,
         "The report folder {tmp}/mine is not empty (index.html, results.md) and selfkd did not make it",
         ("run", "mine"), users_report),
    Case("compare-into-a-run-folder", "compare {run} --out {run}", 2, "selfkd did not make it (it has no "
         ".selfkd-report)", ("run",), copy_run),
    Case("compare-over-a-report", "compare {run} --out {tmp}/report", 2,
         "already holds a report (accuracy_synthetic_cifar_resnet18.png", ("run", "report"), a_report),
    Case("compare-over-a-report-with-overwrite", "compare {run} --out {tmp}/report --overwrite", 0,
         "Report: {tmp}/report/index.html", ("run",), a_report),
    Case("compare-onto-a-full-disk", "compare {run} --out {tmp}/report", 3,
         "the disk is full", ("run", "report"), disk_full_for_plots),
    Case("sweep-in-a-read-only-folder", "sweep -c {cfg} --methods ce --out {tmp}/ro/sweep", 2,
         "Cannot write in the sweep folder {tmp}/ro/sweep", ("ro",), read_only_folder),
    Case("sweep-out-is-a-file", "sweep -c {cfg} --methods ce --out {tmp}/file", 2,
         "The sweep folder {tmp}/file cannot be made: {tmp}/file is a file", ("file", "run"), with_file),
    Case("sweep-into-a-folder-of-the-users", "sweep -c {cfg} --methods ce --out {tmp}/project", 2,
         "The sweep folder {tmp}/project is not empty (config.yaml, thesis.tex) and selfkd did not make it",
         ("project",), project),
    Case("sweep-log-linked", "sweep -c {cfg} --methods ce --out {tmp}/sweep", 2,
         "{tmp}/sweep/logs/ce_s0.log is a symbolic link", ("mine.txt",), sweep_log_linked),
    Case("bench-profile-into-a-folder-of-the-users", "bench --methods ce --steps 1 --warmup 0 --device cpu --width 4 "
         "--profile {tmp}/project", 2, "The profile folder {tmp}/project is not empty", ("project",), project),
    # Tracebacks for user mistakes (issue #22).
    Case("seg-folder-classes-txt-empty", SEGF, 2, "{tmp}/segf/classes.txt is empty", ("new", "segf"), empty_classes),
    Case("pad-label-beyond-the-classes", SEGF + " --set data.pad_label=7", 2,
         "data.pad_label=7 is no label of seg_folder, whose classes are 0..2", ("new",), small_images),
    Case("scenes-with-a-million-items", SCENES + " --set data.options.max_items=1000000", 2,
         "'max_items' must be less than or equal to 64 (got 1000000)", ("new",), scenes_recipe),
    Case("scenes-beyond-the-memory", SCENES + " --set data.options.train_size=1000000000", 2,
         "fmnist_scenes with these options needs about", ("new",), scenes_recipe),
    Case("synthetic-beyond-the-memory", TRAIN + " --set data.options.image_size=1000000", 2,
         "synthetic with these options needs about", ("new",)),
    Case("image-files-cropped-to-100000-pixels", SEGF + " --set data.image_size=100000", 2,
         "A forward pass of 2 images of 3×100000×100000 needs about", ("new",), small_images),
    Case("scenes-from-a-poisoned-cache", SCENES, 0, "final test", (), poisoned_scenes_cache),
    Case("bench-segmentation-at-100000-pixels", "bench --task segmentation --image-size 100000 --steps 1 --warmup 0 "
         "--device cpu", 2, "synthetic_seg with these options needs about"),
    Case("compare-a-run-with-empty-examples", "compare {tmp}/seg {tmp}/seg2 --out {tmp}/report", 0,
         "{tmp}/seg2: examples.npz does not hold examples as selfkd writes them; its predictions are left out",
         ("seg", "seg2"), seg_runs_one_with_empty_examples),
    Case("bad-mask-in-the-first-batch-of-one-of-two-processes", SEGF2 + " --seed 0", 1,
         "selfkd: error: The mask {tmp}/segf/masks/t7.png has label(s) 9", ("segf",), one_bad_mask, ranks=2),
    Case("bad-mask-in-a-later-batch-of-one-of-two-processes", SEGF2 + " --seed 1", 1,
         "selfkd: error: The mask {tmp}/segf/masks/t7.png has label(s) 9", ("segf",), one_bad_mask, ranks=2),
    # Accepted silently (issue #22).
    Case("segmentation-test-set-without-a-labelled-pixel", SEGF, 2,
         "The evaluation set holds no labelled pixel", ("segf",), unlabelled_validation),
    Case("scenes-band-as-wide-as-the-canvas", SCENES + " --set data.options.ignore_band=64", 2,
         "ignore_band < canvas (got 64: a band as wide as the canvas leaves no pixel labelled)", ("new",),
         scenes_recipe),
    Case("export-segmentation-at-100000-pixels", "export {tmp}/seg --format safetensors --image-size 100000", 2,
         "Exporting at --image-size 100000 (a check batch of 5 images of 3×100000×100000 through the model) needs "
         "about", ("seg",), seg_run),
    Case("demo-seeds-empty", "demo --seeds ''", 2, "--seeds is empty; give at least one value."),
    # Hangs and runaway messages (issue #22).
    Case("scenes-band-far-wider-than-the-canvas", SCENES + " --set data.options.ignore_band=5000", 2,
         "ignore_band < canvas (got 5000", ("new",), scenes_recipe),
    Case("yaml-alias-bomb-as-the-run-name", "train -c {tmp}/bomb.yaml --run-dir {new}", 2,
         "values once its YAML aliases are expanded; selfkd reads at most 100,000", ("new",), bomb_config),
    Case("yaml-alias-bomb-in-a-set", TRAIN + " --set name={bomb}", 2,
         "--set name=... holds 1,234,567,900 values once its YAML aliases are expanded", ("new",)),
    Case("model-name-of-10-mb", TRAIN + " --set model.name={huge}", 2,
         "Unknown model '" + "x" * 60 + "'… (10,000,000 characters). Run `selfkd list models`", ("new",)),
    Case("model-name-of-10-mb-in-the-default-run-folder", "train -c {cfg} --set model.name={huge}", 2,
         "The path 'runs/synthetic_xxxxxxxxxx", ("runs",)),
    Case("run-name-longer-than-a-file-name", "train -c {cfg} --name {long}", 2,
         "The path 'runs/nnnnnnnnnn", ("runs",)),
    Case("compare-out-longer-than-a-file-name", "compare {run} --out {tmp}/{long}", 2,
         "is too long for the file system (a file name holds at most 255 bytes", ("run",), copy_run),
    Case("export-out-longer-than-a-file-name", "export {run} --format safetensors --out {tmp}/{long}.st", 2,
         "is too long for the file system", ("run",), copy_run),
    # Validation splits and selfkd tune (#24).
    Case("val-split-as-large-as-the-training-set", TRAIN + " --set data.val_split=32", 2,
         "asks for 32 of the 32 training images of synthetic, which leaves no training image", ("new",)),
    Case("val-split-emptying-a-class", TRAIN + " --set data.val_split=30", 2,
         "would hold out every training image of class(es) class_0, class_1 of synthetic", ("new",)),
    Case("val-split-a-fraction-of-1", TRAIN + " --set data.val_split=1.0", 2,
         "'data.val_split': Value error, must be a number of images (an integer, at least 1), a fraction", ("new",)),
    Case("val-split-of-a-dataset-without-one", TRAIN + " --set data.val_split=dataset", 2,
         "asks for the validation split of synthetic itself, but synthetic has none", ("new",)),
    Case("best-val-without-a-validation-split", TRAIN + " --set train.select=best_val", 2,
         "but this run has no validation split. Hold one out", ("new",)),
    Case("resume-with-another-validation-split", "train --resume {run} --epochs 2 --set data.val_split=8", 2,
         "validates or selects its weights otherwise than this resume (data.val_split 8 (saved: None))", ("run",),
         unfinished),
    Case("tune-without-a-validation-split", "tune -c {cfg} --methods ce --trials 2 --space optim.lr=0.01:0.1 "
         "--out {new}", 2, "holds no validation split; add one", ("new",)),
    Case("tune-unknown-space-key", TUNE + " --space optim.lrr=0.01:0.1", 2,
         "unknown config key 'optim.lrr'. Did you mean 'lr'?", ("new",), tune_recipe),
    Case("tune-space-low-above-high", TUNE + " --space optim.lr=0.5:0.1", 2, "goes from 0.5 down to 0.1 (low > high)",
         ("new",), tune_recipe),
    Case("tune-log-range-through-0", TUNE + " --space optim.lr=0:0.1:log", 2, "a log scale cannot reach 0 or below",
         ("new",), tune_recipe),
    Case("tune-space-over-an-option-of-another-method", "tune -c {tmp}/tune.yaml --methods ce,lightskd --trials 2 "
         "--out {new} --space method.alpha=0.1:1", 2, "searches an option of lightskd, not of 'ce'", ("new",),
         tune_recipe),
    Case("tune-nothing-to-search", "tune -c {tmp}/tune.yaml --methods ce --trials 2 --out {new}", 2,
         "declares no search space and --space adds none", ("new",), tune_recipe),
    Case("tune-storage-folder-missing", TUNE + " --space optim.lr=0.01:0.1 --storage sqlite:///{tmp}/nowhere/s.db",
         2, "cannot be opened (OperationalError", ("new", "nowhere"), tune_recipe),
    Case("tune-storage-without-its-driver", TUNE + " --space optim.lr=0.01:0.1 --storage "
         "postgresql://selfkd@127.0.0.1:9/none", 2, "cannot be opened", ("new",), tune_recipe),
    Case("tune-a-study-made-with-another-space", "tune -c {tmp}/tune.yaml --methods ce --trials 2 --out {tmp}/study "
         "--space optim.lr=0.01:0.5", 2, "The study 'study.ce' in its storage was made with another search space",
         ("study",), tune_study),
    Case("tune-resume-without-a-study", TUNE + " --space optim.lr=0.01:0.1 --resume", 2,
         "--resume continues the studies in {new}/study.db, which does not exist", ("new",), tune_recipe),
    Case("tune-workers-without-slurm", TUNE + " --space optim.lr=0.01:0.1 --workers 2", 2,
         "--workers applies to --launcher slurm", ("new",), tune_recipe),
    Case("tune-no-workers-on-slurm", TUNE + " --space optim.lr=0.01:0.1 --launcher slurm --workers 0", 2,
         "--workers 0: give a positive number", ("new",), tune_recipe),
    Case("tune-zero-trials", "tune -c {tmp}/tune.yaml --methods ce --trials 0 --out {new}", 2,
         "--trials 0: give a positive number", ("new",), tune_recipe),
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


def torchrun(argv: list[str], ranks: int) -> tuple[int, str, str]:
    """``selfkd ARGV`` under torchrun with ``ranks`` processes on the CPU: (exit code, stdout, stderr), torchrun's own
    failure report after the workers' output cut off."""
    import selfkd

    source = str(Path(selfkd.__file__).parents[1])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([source, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                           "-m", "selfkd", *argv], env=env, capture_output=True, text=True, timeout=900)
    workers = done.stderr.split("torch/distributed/elastic/")[0].rsplit("\n", 1)[0]  # the launcher's lines follow
    return done.returncode, done.stdout, workers


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, tmp_path, finished, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default run folder would land in ./runs
    monkeypatch.setenv("SELFKD_DATA", str(tmp_path / "no-data"))
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(_config(tmp_path)))
    cleanup = case.setup(tmp_path, finished) if case.setup else None
    fill = {"tmp": tmp_path, "cfg": tmp_path / "cfg.yaml", "run": tmp_path / "run", "new": tmp_path / "new",
            "pid": os.getpid(), "bomb": yaml_bomb(), "huge": "x" * 10_000_000, "long": "n" * 300}
    before = {p: snapshot(tmp_path / p) for p in case.unchanged}
    try:
        argv = [arg.format(**fill) for arg in case.argv.split()]
        argv = [a if a != "''" else "" for a in argv]
        code, out, err = run_cli(*argv) if case.ranks == 1 else torchrun(argv, case.ranks)
    finally:
        if cleanup:
            cleanup()
    assert "Traceback" not in out + err
    assert len(out + err) < 20_000, f"{len(out + err):,} characters of output"  # a message quotes values short
    assert code == case.code, err
    assert case.message.format(**fill) in (err if code else out + err)
    if code:
        assert err.count("selfkd: error:") == 1 and err.strip().splitlines()[-1].startswith("selfkd: error:")
    for p in case.unchanged:
        assert snapshot(tmp_path / p) == before[p], p
