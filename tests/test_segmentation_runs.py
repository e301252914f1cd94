"""Segmentation through the whole toolchain: train, eval (run and weights), export, the run folder, the task's
metrics and refusals of a task mismatch; a VOC-layout folder trains through the file loader."""
import json

import pytest
import torch
import yaml

from conftest import tiny_config
from hand import checkpoint_state
from selfkd.engine import train
from selfkd.errors import ConfigError


def seg_config(tmp_path, method="frskd", epochs=3):
    cfg = tiny_config(tmp_path, method=method, epochs=epochs)
    cfg["model"] = {"name": "frskd_seg_resnet18", "channels": 16, "head_channels": 32}
    cfg["data"] = {"dataset": "synthetic_seg", "options": {"num_classes": 4, "train_size": 64, "test_size": 32,
                                                           "image_size": 32},
                   "batch_size": 16, "eval_batch_size": 16}
    cfg["optim"] = {"lr": 0.05, "weight_decay": 5e-4}
    if method == "frskd":
        cfg["method"].update(warmup_epochs=1, ramp_epochs=1)  # KD and AT from the second epoch on
    return cfg


def test_frskd_segmentation_run_learns_and_its_weights_evaluate_and_export(tmp_path, run_cli):
    cfg = seg_config(tmp_path)
    recipe = tmp_path / "seg.yaml"
    recipe.write_text(yaml.safe_dump(cfg))
    code, out, err = run_cli("train", "-c", recipe)
    assert code == 0, err
    run = tmp_path / "run_frskd"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train/loss_kd"] == 0 and rows[-1]["train/loss_kd"] > 0  # the ramp switched KD on
    summary = json.loads((run / "summary.json").read_text())
    final = summary["final"]
    assert summary["task"] == "segmentation" and set(final) >= {"miou", "pixel_acc", "ece", "iou_per_class"}
    assert len(final["iou_per_class"]) == 4 and 0 < final["miou"] <= 100
    assert rows[-1]["train/pixel_acc"] > rows[0]["train/pixel_acc"] and rows[-1]["train/loss_ce"] < rows[0]["train/loss_ce"]
    assert "mIoU" in out and "final test miou" in out
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "test/miou" in header and "test/iou_per_class" not in header  # lists stay in metrics.jsonl
    assert len(rows[-1]["test/iou_per_class"]) == 4
    assert summary["best_on_test"].keys() >= {"epoch", "miou"}
    # The exported module is the student segmenter, which is what was evaluated.
    code, out, err = run_cli("eval", "--run", run, "--device", "cpu")
    assert code == 0, err
    assert json.loads(out)["miou"] == pytest.approx(final["miou"])
    code, out, err = run_cli("export", run, "--format", "torchscript")
    assert code == 0, err


@pytest.mark.parametrize("mistake, message", [
    ({"model": {"name": "cifar_resnet18", "width": 8}}, "is a classification backbone, but dataset 'synthetic_seg'"),
    ({"task": "classification"}, "task: classification does not fit dataset 'synthetic_seg'"),
    ({"method": {"name": "cskd"}}, "Unknown segmentation method 'cskd'"),
])
def test_a_task_mismatch_is_refused_with_one_paragraph(tmp_path, mistake, message):
    cfg = seg_config(tmp_path, method="ce")
    cfg.update(mistake)
    with pytest.raises(ConfigError, match=message):
        train(cfg)


def test_a_segmenter_on_a_classification_dataset_is_refused(tmp_path):
    cfg = tiny_config(tmp_path, model={"name": "frskd_seg_resnet18"})
    with pytest.raises(ConfigError, match="is a segmenter, but dataset 'synthetic' is for classification"):
        train(cfg)


def test_voc_layout_trains_with_file_workers_and_evaluates_at_original_resolution(tmp_path):
    """A tiny VOCdevkit (palette PNG masks, split lists): random scale/crop/pad/blur in worker processes, evaluation
    one image at a time at its own size; the ignored boundary pixels are left out of the metrics."""
    import numpy as np

    from test_segmentation_data import random_pair

    rng = np.random.default_rng(0)
    devkit, test_masks = tmp_path / "VOCdevkit", []
    for year, lists in {2007: {"trainval": ["a1", "a2", "a3"], "test": ["t1", "t2"]},
                        2012: {"trainval": ["b1", "b2", "b3"]}}.items():
        base = devkit / f"VOC{year}"
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (base / sub).mkdir(parents=True)
        for split, ids in lists.items():
            (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
            for i in ids:
                mask = random_pair(rng, base / "JPEGImages", base / "SegmentationClass", i, 21)
                if split == "test":
                    test_masks.append(mask)
    cfg = seg_config(tmp_path, method="ce", epochs=1)
    cfg["data"] = {"dataset": "voc", "data_dir": str(devkit), "batch_size": 3, "image_size": 16,
                   "short_side": [12, 24], "workers": 1}
    summary = train(cfg)
    assert 0 <= summary["final"]["pixel_acc"] <= 100 and len(summary["final"]["iou_per_class"]) == 21
    # Each test image evaluated once at its own size, its boundary row (255) left out: every labelled pixel once.
    from selfkd.engine.evaluation import evaluate_run

    whole = evaluate_run(cfg["run_dir"], device="cpu")
    assert whole["n"] == sum(int((m != 255).sum()) for m in test_masks)
    assert whole["miou"] == pytest.approx(summary["final"]["miou"])


def test_a_stopped_segmentation_run_resumes_exactly_at_an_accumulation_boundary(tmp_path, monkeypatch):
    """SIGTERM in the middle of a 2-batch accumulation window: the run finishes the window, checkpoints between
    optimizer steps, and the resumed run ends with the weights of an uninterrupted one."""
    import os
    import signal

    import torch

    from selfkd.engine.step import TrainStep
    from selfkd.errors import Interrupted

    def config(name):
        cfg = seg_config(tmp_path, method="frskd", epochs=2)
        cfg["data"]["batch_size"] = 8  # 8 steps per epoch
        cfg["train"].update(accumulate_steps=2, deterministic=True)
        cfg["run_dir"] = str(tmp_path / name)
        return cfg

    train(config("straight"))
    calls, real = {"n": 0}, TrainStep.__call__

    def stop_after_fifth_batch(self, *args, **kwargs):
        real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 2, first batch of a window
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(TrainStep, "__call__", stop_after_fifth_batch)
    with pytest.raises(Interrupted):
        train(config("split"))
    monkeypatch.undo()
    stopped = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert (stopped["epoch"], stopped["step_in_epoch"]) == (0, 6)  # the window of batches 5-6 was finished
    train(config("split"), resume=True)
    a, b = checkpoint_state(tmp_path / "straight"), checkpoint_state(tmp_path / "split")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_two_rank_segmentation_run(tmp_path, run_cli):
    """torchrun, 2 processes on CPU (gloo): masks sharded, the confusion matrix summed over ranks, one run folder."""
    from test_distributed import _torchrun

    cfg = seg_config(tmp_path, method="frskd", epochs=1)
    recipe = tmp_path / "seg.yaml"
    recipe.write_text(yaml.safe_dump(cfg))
    result = _torchrun("train", "-c", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run_frskd" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["task"] == "segmentation"
    # Each rank evaluated half of the test images; one process evaluating all of them gives the same numbers only
    # if the ranks' confusion matrices and calibration bins were summed.
    code, out, err = run_cli("eval", "--run", tmp_path / "run_frskd", "--device", "cpu")
    assert code == 0, err
    whole = json.loads(out)
    assert whole["n"] == 32 * 32 * 32  # every test pixel (none is ignored in synthetic_seg)
    for key in ("miou", "pixel_acc"):
        assert summary["final"][key] == pytest.approx(whole[key], abs=1e-3), key
    # ECE bins each pixel's confidence, which other batch shapes round differently (oneDNN's AVX2 kernels): a relative
    # 1e-3 still fails clearly if one rank's bins were left out (that moves it by far more).
    assert summary["final"]["ece"] == pytest.approx(whole["ece"], rel=1e-3)


def test_the_ignore_label_has_one_source_the_task_table(tmp_path):
    """Unlabelled pixels carry the task's IGNORE_LABEL: the pixel losses leave them out, and a config cannot set
    another label for the method (it would disagree with the metrics and the data)."""
    from selfkd.config import build_config
    from selfkd.data.segmentation import read_synthetic_segmentation
    from selfkd.engine.setup import build_method
    from selfkd.tasks import IGNORE_LABEL, TASKS

    assert TASKS["segmentation"].ignore_index == IGNORE_LABEL and TASKS["classification"].ignore_index is None
    splits = read_synthetic_segmentation(train_size=8, test_size=4, image_size=32)
    method = build_method(build_config(seg_config(tmp_path, method="ce")), splits).eval()  # eval: same logits twice
    images = torch.randn(2, 3, 32, 32)
    targets = torch.full((2, 32, 32), IGNORE_LABEL)
    targets[1, 2, 3] = 1
    logits = method.backbone(images)[0]
    want = torch.nn.functional.cross_entropy(logits[1:, :, 2, 3], torch.tensor([1]))
    assert torch.allclose(method.compute_loss(images, targets).loss, want, atol=1e-6)
    cfg = build_config({**seg_config(tmp_path, method="ce"), "method": {"name": "ce", "ignore_index": 0}})
    with pytest.raises(ConfigError, match="ignore_index"):
        build_method(cfg, splits)
