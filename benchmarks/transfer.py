"""Transfer on a CPU (issue #23): does an encoder pretrained with selfkd help `ce` and `frskd` segment fmnist_scenes?

    flock /tmp/selfkd-heavy.lock .venv/bin/python benchmarks/transfer.py          # about an hour on two idle cores

ImageNet weights cannot be downloaded on the machine this was measured on, so the pretraining is done here, with
selfkd. The regime was fixed before any result was seen:

1. Pretraining: `ce` on Fashion-MNIST with `resnet18` (configs/transfer/pretrain_fmnist_resnet18.yaml: all 60,000
   training images, 10 epochs, seed 0). One pretrained classifier serves every seed, as a published checkpoint would.
2. Segmentation: the segmentation demo's CPU regime (configs/demo/fmnist_scenes.yaml: 2,500 training and 500 test
   scenes, 4 epochs, lr 0.02 ×0.1 at epoch 3, batch 16, frskd's KD and AT after 3 epochs) with `frskd_seg_resnet18`
   instead of `frskd_seg_effb0` (its encoder is the classifier's ResNet-18), `ce` and `frskd`, seeds 0, 1 and 2, from
   scratch and from the classifier (`model.pretrained: <its run folder>`: the encoder is loaded, the FPN, BiFPN and
   head start new). Every run normalises with Fashion-MNIST's mean and std (what the encoder was trained with), so the
   start is the only difference; the pretrained runs use the same learning rate everywhere (pretrained_lr_scale 1).
3. The table (benchmarks/results_section.py): mIoU mean ± std per method and start, the gain of the pretrained start
   per method and of frskd over ce per start, each with its 95 % interval paired by seed (selfkd.report.stats).

Runs go to --out (default runs/transfer/); a run with a summary.json is kept, an unfinished one started over, so an
interrupted call continues. The small files of each run (config.yaml, metrics.jsonl, summary.json, pretrained.json)
and transfer.json (command, machine, wall time) are copied to benchmarks/results/transfer_cpu/, and README.md's
Results section is rewritten.
"""
from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import results_section

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ROOT / "configs" / "transfer" / "pretrain_fmnist_resnet18.yaml"
SCENES = ROOT / "configs" / "demo" / "fmnist_scenes.yaml"
MODEL = "frskd_seg_resnet18"
METHODS, STARTS, SEEDS = ("ce", "frskd"), ("scratch", "fmnist"), (0, 1, 2)
FASHION_NORM = ["--set", "data.mean=[0.2860]", "--set", "data.std=[0.3530]"]  # Fashion-MNIST's (small_images.py)
RESULTS = ROOT / "benchmarks" / "results" / "transfer_cpu"
KEEP = ("config.yaml", "metrics.jsonl", "summary.json", "pretrained.json")
COMMAND = "flock /tmp/selfkd-heavy.lock .venv/bin/python benchmarks/transfer.py"


def runs(out: Path) -> list[tuple[str, list[str]]]:
    """(run name, `selfkd train` arguments) in the order they run: the pretraining first."""
    jobs = [("pretrain", ["-c", str(PRETRAIN)])]
    for seed in SEEDS:
        for start in STARTS:
            for method in METHODS:
                start_from = ["--set", f"model.pretrained={out / 'pretrain'}"] if start == "fmnist" else []
                jobs.append((f"{method}_{start}_s{seed}", ["-c", str(SCENES), "--model", MODEL, "--method", method,
                                                         "--seed", str(seed), *FASHION_NORM, *start_from]))
    return jobs


def train(name: str, args: list[str], out: Path) -> bool:
    """Train one run unless it is finished; returns whether it was trained."""
    run_dir = out / name
    if (run_dir / "summary.json").is_file():
        print(f"{name}: finished before, kept", flush=True)
        return False
    argv = [sys.executable, "-m", "selfkd", "train", *args, "--run-dir", str(run_dir), "--set", "train.progress=false"]
    if run_dir.exists():
        argv.append("--overwrite")  # an unfinished run of an interrupted call: start it over
    print(f"{name}: {' '.join(argv[1:])}", flush=True)
    subprocess.run(argv, check=True)
    return True


def copy_results(out: Path, record: dict) -> None:
    if RESULTS.exists():
        shutil.rmtree(RESULTS)
    for name, _ in runs(out):
        (RESULTS / name).mkdir(parents=True)
        for file in KEEP:
            if (out / name / file).is_file():
                shutil.copy2(out / name / file, RESULTS / name / file)
    (RESULTS / "transfer.json").write_text(json.dumps(record, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/transfer", help="where the runs go (default %(default)s)")
    out = Path(parser.parse_args(argv).out)  # as given: the runs' configs name the pretrained folder relative to it
    started, trained = time.perf_counter(), []
    for name, args in runs(out):
        if train(name, args, out):
            trained.append(name)
    import torch

    from selfkd.bench import environment

    record = {"command": COMMAND, "date": datetime.date.today().isoformat(), "wall_s": time.perf_counter() - started,
              "trained": trained, "machine": environment(torch.device("cpu")), "model": MODEL, "seeds": list(SEEDS)}
    copy_results(out, record)
    results_section.rewrite(results_section.README, results_section.section())
    print(f"Copied the runs' small files to {RESULTS} and rewrote the Results section of {results_section.README}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
