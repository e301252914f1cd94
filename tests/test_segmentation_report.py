"""Segmentation in `selfkd compare`: the prediction examples a run keeps (examples.npz), the mIoU table and gain over
ce, the per-class IoU table and the figure of test images with each method's predictions, from fixture run folders
and from a real run."""
from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import tiny_config
from hand import CONFIGS
from selfkd.data.loaders import Batch
from selfkd.engine.examples import write_examples
from selfkd.report.plots import example_sources, voc_palette
from selfkd.report.table import summarize

CLASSES = ["background", "shirt", "bag", "boot"]
MEAN, STD = (0.5,), (0.25,)


class Loader:
    """A test loader as write_examples sees it: normalised batches and the normalisation constants."""

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray], batch_size: int = 2):
        self.mean, self.std = torch.tensor(MEAN), torch.tensor(STD)
        self.batches = []
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.stack(images[start:start + batch_size])).float() / 255
            y = torch.from_numpy(np.stack(masks[start:start + batch_size])).long()
            index = torch.arange(start, start + len(x))
            self.batches.append(Batch((x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1), y, index))

    def __iter__(self):
        return iter(self.batches)


class Predicts(torch.nn.Module):
    """A segmenter whose prediction of the n-th image it is shown is ``predictions[n]``."""

    def __init__(self, predictions: list[np.ndarray], num_classes: int = len(CLASSES)):
        super().__init__()
        self.predictions, self.num_classes, self.seen = predictions, num_classes, 0

    def forward(self, x):
        labels = torch.from_numpy(np.stack(self.predictions[self.seen:self.seen + len(x)])).long()
        self.seen += len(x)
        return torch.nn.functional.one_hot(labels, self.num_classes).permute(0, 3, 1, 2).float() * 5, []


def scene(label: int, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A grey image ``(1, size, size)`` with a square of class ``label`` (bright) on background (dark)."""
    mask = np.zeros((size, size), np.uint8)
    mask[2:6, 2:6] = label
    image = np.where(mask > 0, 200, 30).astype(np.uint8)[None]
    return image, mask


def test_examples_file_round_trip_pads_examples_of_different_sizes(tmp_path):
    small, big = scene(1, 6), scene(2, 8)
    big[1][0, 0] = 255  # an ignored pixel
    loader = Loader([small[0], big[0], scene(3)[0]], [small[1], big[1], scene(3)[1]], batch_size=1)
    predictions = [np.full((6, 6), 1, np.uint8), np.full((8, 8), 2, np.uint8), np.zeros((8, 8), np.uint8)]
    module = Predicts(predictions)
    module.train()
    write_examples(tmp_path / "examples.npz", module, loader, CLASSES, torch.device("cpu"), None, count=2)
    assert module.training and module.seen == 2  # back in training mode; the third image was never predicted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["examples.npz"]  # no temporary file left
    with np.load(tmp_path / "examples.npz", allow_pickle=False) as saved:
        ex = {k: saved[k] for k in saved.files}
    assert set(ex) == {"images", "masks", "predictions", "sizes", "index", "classes"}
    assert ex["images"].shape == (2, 8, 8, 1) and ex["images"].dtype == np.uint8
    assert ex["masks"].dtype == ex["predictions"].dtype == np.uint8
    assert ex["sizes"].tolist() == [[6, 6], [8, 8]] and ex["index"].tolist() == [0, 1]
    assert ex["classes"].dtype.kind == "U" and ex["classes"].tolist() == CLASSES
    # De-normalised back to the original pixels; the smaller example padded bottom/right (image 0, labels 255).
    np.testing.assert_array_equal(ex["images"][0, :6, :6, 0], small[0][0])
    np.testing.assert_array_equal(ex["images"][1, :, :, 0], big[0][0])
    assert (ex["images"][0, 6:] == 0).all() and (ex["images"][0, :, 6:] == 0).all()
    np.testing.assert_array_equal(ex["masks"][0, :6, :6], small[1])
    np.testing.assert_array_equal(ex["masks"][1], big[1])
    assert (ex["masks"][0, 6:] == 255).all() and (ex["predictions"][0, :, 6:] == 255).all()
    assert (ex["predictions"][0, :6, :6] == 1).all() and (ex["predictions"][1] == 2).all()


def write_seg_run(root, name, *, method, seed, miou, iou, predictions=None, dataset="fmnist_scenes",
                  model="frskd_seg_effb0", epochs=3):
    """A finished segmentation run folder as the trainer leaves it (config, metrics, summary with the per-class
    IoU and class names, reliability bins, examples of the first two test scenes predicted as ``predictions``)."""
    path = root / name
    path.mkdir(parents=True)
    config = {"name": name, "seed": seed, "method": {"name": method}, "model": {"name": model},
              "data": {"dataset": dataset}, "train": {"epochs": epochs}}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [{"epoch": e + 1, "train/loss": 1.0 / (e + 1), "train/pixel_acc": 80.0,
             "test/miou": miou - 10.0 * (epochs - 1 - e), "test/pixel_acc": 90.0, "test/ece": 2.0}
            for e in range(epochs)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    final = {"miou": miou, "pixel_acc": 90.0 + seed, "ece": 2.0, "iou_per_class": iou, "n": 128}
    summary = {"task": "segmentation", "name": name, "method": method, "model": model, "dataset": dataset,
               "seed": seed, "epochs": epochs, "final": final, "best_on_test": {"epoch": epochs, "miou": miou},
               "train_time_s": 60.0, "img_per_s": 50.0, "params": 1000, "extra_params": 0 if method == "ce" else 500,
               "device": "cpu", "world_size": 1, "classes": CLASSES}
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "reliability.json").write_text(json.dumps({"count": [0.0] * 14 + [10.0], "confidence": [0.0] * 14 + [0.97],
                                                       "accuracy": [0.0] * 14 + [0.9]}))
    if predictions is not None:
        (a, m1), (b, m2) = scene(1), scene(2)
        write_examples(path / "examples.npz", Predicts(predictions), Loader([a, b], [m1, m2]), CLASSES,
                       torch.device("cpu"), None)
    return path


def square(label: int) -> np.ndarray:
    return scene(label)[1]


@pytest.fixture
def seg_runs(tmp_path):
    runs = tmp_path / "runs"
    ce_iou = [[90.0, 40.0, None, 20.0], [92.0, 44.0, 30.0, 22.0], [94.0, 48.0, 36.0, 30.0]]
    for seed, (miou, iou) in enumerate(zip([50.0, 52.0, 57.0], ce_iou)):
        # ce misses the bag in the second scene (predicts background there)
        write_seg_run(runs, f"ce_s{seed}", method="ce", seed=seed, miou=miou, iou=iou,
                      predictions=[square(1), np.zeros((8, 8), np.uint8)])
    for seed, miou in enumerate([60.0, 62.0]):
        # frskd calls the bag a boot (class 3): the only place class 3 appears
        write_seg_run(runs, f"frskd_s{seed}", method="frskd", seed=seed, miou=miou,
                      iou=[95.0, 50.0 + seed, 40.0, None], predictions=[square(1), square(3)])
    return runs


def test_compare_gives_miou_mean_std_gain_and_the_per_class_iou_table(seg_runs, tmp_path, run_cli):
    out = tmp_path / "report"
    code, stdout, err = run_cli("compare", seg_runs, "--out", out)
    assert code == 0, err
    with open(out / "results.csv") as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert float(rows["ce"]["miou_mean"]) == pytest.approx(53.0)
    assert float(rows["ce"]["miou_std"]) == pytest.approx(np.std([50.0, 52.0, 57.0], ddof=1))
    assert float(rows["frskd"]["gain_vs_ce"]) == pytest.approx(61.0 - 53.0)
    assert "top1_mean" not in rows["ce"]  # no classification columns
    md = (out / "results.md").read_text()
    assert md == stdout.split("\nReport:")[0]
    table = md.split("## fmnist_scenes / frskd_seg_effb0: IoU per class")[1]
    lines = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("|")]
    assert lines[0] == ["Class", "ce (n=3)", "frskd (n=2)"]
    by_class = {line[0]: line[1:] for line in lines[2:]}
    assert list(by_class) == CLASSES
    assert by_class["background"] == ["92.00", "95.00"]
    assert by_class["shirt"] == ["44.00", "50.50"]
    assert by_class["bag"] == ["33.00", "40.00"]  # the seed where the bag was absent is left out of ce's mean
    assert by_class["boot"] == ["24.00", ""]  # never present for frskd
    headline = next(line for line in md.splitlines() if line.startswith("| fmnist_scenes") and "| ce " in line)
    assert "53.00 ± 3.61" in headline  # mean ± sample std in the mIoU column
    html = (out / "index.html").read_text()
    assert "IoU per class" in html and "<td>boot</td>" in html and "<td>33.00</td>" in html
    for name in ("accuracy", "examples"):  # the mIoU curves and the example figure
        png = out / f"{name}_fmnist_scenes_frskd_seg_effb0.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f'src="{png.name}"' in html
    assert "test mIoU (%) per epoch" in html


def colours(png) -> set[tuple[int, int, int]]:
    return set(map(tuple, np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3).tolist()))


def test_example_figure_shows_each_methods_predictions_of_the_same_images(seg_runs, tmp_path):
    from selfkd.report import compare

    palette = [tuple(int(v) for v in c) for c in voc_palette()]
    boot, bag = palette[3], palette[2]
    drawn = colours(compare([seg_runs], tmp_path / "a").out / "examples_fmnist_scenes_frskd_seg_effb0.png")
    assert boot in drawn and bag in drawn  # frskd's boot (only it predicts one); the ground truth's bag
    # A method whose examples are of other images (another ground truth at the same index) is not drawn.
    for seed in (0, 1):
        (seg_runs / f"frskd_s{seed}" / "examples.npz").unlink()
        (a, m1), (b, m2) = scene(1), scene(3)
        write_examples(seg_runs / f"frskd_s{seed}" / "examples.npz", Predicts([square(1), square(3)]),
                       Loader([a, b], [m1, m2]), CLASSES, torch.device("cpu"), None)
    drawn = colours(compare([seg_runs], tmp_path / "b").out / "examples_fmnist_scenes_frskd_seg_effb0.png")
    assert boot not in drawn and bag in drawn


def test_damaged_examples_files_are_skipped(seg_runs, tmp_path):
    from selfkd.report import compare

    (seg_runs / "ce_s0" / "examples.npz").write_bytes(b"not a zip file")
    masks = np.zeros((2, 8, 8), np.uint8)  # every array, but the images lack their channel axis
    np.savez(seg_runs / "ce_s1" / "examples.npz", images=masks, masks=masks, predictions=masks,
             sizes=np.full((2, 2), 8), index=np.arange(2), classes=np.array(CLASSES))
    report = compare([seg_runs], tmp_path / "report")
    assert "examples_fmnist_scenes_frskd_seg_effb0.png" in [name for _, name in report.plots]
    assert [g.method for g, _ in example_sources(report.groups)] == ["ce", "frskd"]  # ce's from ce_s2


def test_example_runs_share_one_seed_where_they_can(tmp_path):
    from selfkd.report.runs import load_runs

    runs = tmp_path / "runs"
    for method, seeds in {"ce": [0, 1], "frskd": [1, 2], "dsr": [1]}.items():
        for seed in seeds:
            write_seg_run(runs, f"{method}_s{seed}", method=method, seed=seed, miou=50.0, iou=[50.0] * 4,
                          predictions=[square(seed), square(seed)])
    write_seg_run(runs, "ls_s0", method="ls", seed=0, miou=50.0, iou=[50.0] * 4)  # no examples file
    groups = summarize(load_runs([runs])[0])
    chosen = {g.method: int(ex["predictions"][0].max()) for g, ex in example_sources(groups)}
    assert chosen == {"ce": 1, "dsr": 1, "frskd": 1}  # seed 1 is the one all three have; ls has none


def test_voc_palette():
    palette = voc_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert palette[0].tolist() == [0, 0, 0] and palette[1].tolist() == [128, 0, 0]
    assert palette[15].tolist() == [192, 128, 128]  # VOC's person
    assert palette[255].tolist() == [224, 224, 192]  # VOC's boundary (ignored) colour
    assert len({tuple(c) for c in palette.tolist()}) == 256  # every label its own colour


def test_a_real_segmentation_run_keeps_examples_and_class_names_for_the_report(tmp_path):
    from selfkd.data import load_dataset
    from selfkd.engine import train
    from selfkd.report import compare

    cfg = tiny_config(tmp_path, epochs=1)
    cfg["model"] = {"name": "frskd_seg_resnet18", "channels": 8, "head_channels": 8}
    cfg["data"] = {"dataset": "synthetic_seg", "options": {"num_classes": 3, "train_size": 16, "test_size": 6,
                                                           "image_size": 32}, "batch_size": 8, "eval_batch_size": 4}
    summary = train(cfg)
    run = tmp_path / "run_ce"
    assert summary["classes"] == ["background", "class_1", "class_2"]
    test = load_dataset("synthetic_seg", **cfg["data"]["options"]).test  # the first four test scenes, as stored
    with np.load(run / "examples.npz", allow_pickle=False) as saved:
        np.testing.assert_array_equal(saved["images"], test.images[:4].permute(0, 2, 3, 1).numpy())
        np.testing.assert_array_equal(saved["masks"], test.labels[:4].numpy())
        assert saved["predictions"].shape == (4, 32, 32) and saved["predictions"].max() < 3
        assert saved["index"].tolist() == [0, 1, 2, 3] and saved["classes"].tolist() == summary["classes"]
    report = compare([run], tmp_path / "report")
    assert "examples_synthetic_seg_frskd_seg_resnet18.png" in [name for _, name in report.plots]
    assert re.search(r"\| class_2 +\| +\d+\.\d\d +\|", report.text)  # its IoU in the per-class table


def test_voc_recipes_are_the_official_recipe_and_build():
    from selfkd.config import make_config
    from selfkd.methods import create_method
    from selfkd.models import create_model

    for method in ("ce", "frskd"):
        path = CONFIGS / "voc" / f"{method}_effb0.yaml"
        cfg = make_config(path)
        o, s, t, d = cfg.optim, cfg.schedule, cfg.train, cfg.data
        assert (cfg.method.name, cfg.model.name, d.dataset, d.options) == (method, "frskd_seg_effb0", "voc",
                                                                            {"split": "voc0712"})
        assert (o.lr, o.momentum, o.nesterov, o.weight_decay) == (0.01, 0.9, False, 5e-4)
        assert (s.name, s.milestones, s.gamma, t.epochs) == ("multistep", [40], 0.1, 60)
        assert (d.batch_size, t.accumulate_steps, t.grad_clip, t.grad_clip_mode) == (16, 2, 2.0, "value")
        assert (d.augment, d.short_side, d.image_size, d.pad_label, d.blur, d.eval_size) == (
            "seg_voc", (256, 1024), 512, 255, True, None)
        text = path.read_text()
        assert "79.07" in text and "data.pad_label: 0" in text and "data.eval_size: 512" in text
        model = create_model(cfg.model.name, num_classes=21, **cfg.model.options())
        create_method(method, model, **cfg.method.options())  # the options are the method's
    opts = make_config(CONFIGS / "voc" / "frskd_effb0.yaml").method.options()
    assert (opts["alpha"], opts["beta"], opts["temperature"], opts["warmup_epochs"], opts["kd_mask"]) == (
        1.0, 50.0, 1.0, 40, False)


@pytest.mark.parametrize("path", ["fmnist_scenes/frskd_effb0.yaml", "demo/fmnist_scenes.yaml",
                                  "demo/fmnist_scenes_gpu.yaml"])
def test_fmnist_scenes_recipes_scale_the_official_schedule(path):
    """KD and AT start at 2/3 of the run, as the official 40 of 60 epochs, where the learning rate drops; the crop
    is the whole canvas."""
    from selfkd.config import make_config
    from selfkd.methods.segmentation import distillation_ramp

    cfg = make_config(CONFIGS / path)
    epochs, warmup = cfg.train.epochs, cfg.method.options()["warmup_epochs"]
    assert cfg.data.dataset == "fmnist_scenes" and cfg.method.name == "frskd"
    assert warmup == round(epochs * 40 / 60) and cfg.schedule.milestones == [warmup]
    assert distillation_ramp(warmup - 1, epochs, warmup, None) == 0 < distillation_ramp(warmup, epochs, warmup, None)
    assert distillation_ramp(epochs - 1, epochs, warmup, None) == 1.0
    assert cfg.data.image_size == cfg.data.options["canvas"] == 64
    ce = make_config(CONFIGS / path, {"method": "ce"}, quiet=True)  # the demo's ce run: frskd's options dropped
    assert ce.method.options() == {}


@pytest.mark.parametrize("folder", ["voc", "fmnist_scenes"])
def test_ce_and_frskd_recipes_differ_only_in_the_method(folder):
    from selfkd.config import make_config

    ce, frskd = (make_config(CONFIGS / folder / f"{m}_effb0.yaml").to_dict() for m in ("ce", "frskd"))
    assert ce.pop("method") == {"name": "ce"} and frskd.pop("method")["name"] == "frskd"
    assert ce == frskd
