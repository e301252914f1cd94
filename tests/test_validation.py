"""Validation splits (data.val_split) and the selection of weights on them (train.select, train.eval_test): which
images are held out and how they compose with train_subset, the loaders and methods that see the rest, and runs that
select, test, export and resume with them."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import fault_methods  # noqa: F401  (registers test_sigterm)
from conftest import tiny_config
from hand import write_image_folder
from selfkd.data import DataConfig, DataNeeds, build_train_loader, build_val_loader, load_dataset
from selfkd.data.holdout import training_set, training_size, val_rows, validation_set
from selfkd.engine import train
from selfkd.errors import ConfigError, Interrupted
from test_segmentation_data import voc  # noqa: F401  (the tiny VOCdevkit fixture of the segmentation data tests)

CPU = torch.device("cpu")
SYNTHETIC = {"num_classes": 4, "train_size": 203, "test_size": 32, "image_size": 16}


def synthetic():
    return load_dataset("synthetic", **SYNTHETIC)


def test_a_count_is_stratified_by_class_drawn_by_its_own_seed_and_held_out_before_the_subset():
    splits = synthetic()
    labels = splits.train.labels
    sizes = torch.bincount(labels, minlength=4)
    cfg = DataConfig(dataset="synthetic", val_split=40)
    rows = val_rows(splits, cfg)
    assert len(rows) == 40 and len(set(rows.tolist())) == 40
    # Each class gives its share: floor(40·n_c/203), the largest remainders one more.
    share = sizes.double() * 40 / 203
    got = torch.bincount(labels[rows], minlength=4)
    assert int(got.sum()) == 40 and bool(((got - share).abs() < 1).all()), (got, share)
    # The same images for every run seed and subset (only val_seed moves them), never among the training images.
    for seed, subset in ((0, None), (7, 50), (3, 120)):
        part = DataConfig(dataset="synthetic", val_split=40, train_subset=subset)
        assert torch.equal(val_rows(splits, part), rows)
        trained = training_set(splits, part, seed)
        assert len(trained) == training_size(splits, part) == (subset or 163)
        held = {tuple(x.flatten().tolist()) for x in validation_set(splits, part).images}
        assert not held & {tuple(x.flatten().tolist()) for x in trained.images}
    assert not torch.equal(val_rows(splits, DataConfig(dataset="synthetic", val_split=40, val_seed=1)), rows)
    # The subset draws from the rest with the run's seed: other seeds, other images.
    a, b = (training_set(splits, DataConfig(dataset="synthetic", val_split=40, train_subset=50), s) for s in (0, 1))
    assert not torch.equal(a.images, b.images)


def test_a_fraction_counts_the_training_set_and_bad_splits_are_refused():
    splits = synthetic()
    assert len(val_rows(splits, DataConfig(dataset="synthetic", val_split=0.1))) == round(0.1 * 203)
    with pytest.raises(ConfigError, match="asks for 203 of the 203 training images of synthetic, which leaves no "
                                          "training image. Give a count between 1 and 202"):
        val_rows(splits, DataConfig(dataset="synthetic", val_split=203))
    with pytest.raises(ConfigError, match="which leaves no validation image"):
        val_rows(splits, DataConfig(dataset="synthetic", val_split=0.001))
    one_rare = load_dataset("synthetic", **SYNTHETIC)
    one_rare.train.labels[:] = torch.arange(203) % 3  # class 3 has no image left ...
    one_rare.train.labels[0] = 3  # ... but this one
    with pytest.raises(ConfigError, match="every training image of class\\(es\\) class_3 of synthetic"):
        val_rows(one_rare, DataConfig(dataset="synthetic", val_split=150))
    with pytest.raises(ConfigError, match="synthetic has none"):
        val_rows(splits, DataConfig(dataset="synthetic", val_split="dataset"))


def test_segmentation_holds_out_a_plain_random_draw_and_voc_gives_its_own(voc):  # noqa: F811
    scenes = load_dataset("synthetic_seg", train_size=20, test_size=4, image_size=16)
    rows = val_rows(scenes, DataConfig(dataset="synthetic_seg", val_split=5))
    assert len(rows) == 5 and torch.equal(rows, torch.randperm(20, generator=torch.Generator().manual_seed(0))[:5]
                                          .sort().values)
    loader = build_val_loader(scenes, DataConfig(dataset="synthetic_seg", val_split=5, eval_batch_size=2), CPU)
    batches = list(loader)
    assert [len(b.targets) for b in batches] == [2, 2, 1] and batches[0].targets.shape[-2:] == (16, 16)
    assert torch.equal(torch.cat([b.targets for b in batches]).to(torch.uint8), scenes.train.labels[rows])

    devkit, _ = voc
    voc = load_dataset("voc", data_dir=devkit)
    own = DataConfig(dataset="voc", val_split="dataset")
    assert [p.rsplit("/", 1)[1] for p in validation_set(voc, own).paths] == ["2008_000003.jpg"]  # VOC2012 val
    assert [p.rsplit("/", 1)[1] for p in training_set(voc, own, 0).paths] == [
        "000001.jpg", "000002.jpg", "000004.jpg", "2008_000001.jpg", "2008_000002.jpg"]  # 2007 trainval + 2012 train
    assert load_dataset("voc", data_dir=devkit, split="voc2012").own_val is None  # its val is its test split


def test_partners_and_per_sample_tables_see_only_the_training_part(tmp_path):
    splits = synthetic()
    cfg = DataConfig(dataset="synthetic", val_split=40, train_subset=100, batch_size=20)
    loader = build_train_loader(splits, cfg, DataNeeds(class_partners=1, index=True), CPU, seed=3)
    trained = training_set(splits, cfg, 3)
    for batch in loader:
        assert int(batch.index.max()) < 100
        anchors, partners = batch.index.chunk(2)
        assert torch.equal(trained.labels[anchors], trained.labels[partners])
    from selfkd.config import build_config
    from selfkd.engine.setup import build_method

    run = build_config(tiny_config(tmp_path, method="pskd", data={"options": SYNTHETIC, "val_split": 40,
                                                                "train_subset": 500}))
    assert build_method(run, splits).table.shape == (163, 4)  # the training set less the validation split


def _selecting(tmp_path, name, **train_options):
    """Five epochs whose best validation epoch is the third: lr ×40 after it (deterministic on the CPU, so the
    tests below assert it before they rely on it)."""
    return tiny_config(tmp_path, epochs=5, name=name, run_dir=str(tmp_path / name),
                       data={"options": SYNTHETIC, "val_split": 48, "batch_size": 32},
                       schedule={"name": "multistep", "milestones": [3], "gamma": 40.0},
                       train={"epochs": 5, "device": "cpu", "progress": False, "deterministic": True, **train_options})


def test_best_val_exports_and_tests_the_best_validation_epoch(tmp_path, run_cli):
    summary = train(_selecting(tmp_path, "best", select="best_val"))
    run = tmp_path / "best"
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r["val/top1"] for r in rows]
    assert max(val) == val[2] > max(val[3:]) and max(val[:2]) < val[2]  # the third epoch is the best, as designed
    assert summary["selected"] == {"epoch": 3, "by": "best_val", "metric": "val/top1", "value": val[2], "note":
                                   "weights of epoch 3, selected as the best validation top1 (train.select: best_val)"}
    assert (summary["train_images"], summary["val_images"]) == (155, 48)
    assert summary["final"] == {k[5:]: v for k, v in rows[2].items() if k.startswith("test/")}  # tested again
    assert summary["final"] != {k[5:]: v for k, v in rows[4].items() if k.startswith("test/")}
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["best_val"] == {"epoch": 3, "top1": val[2]} and ckpt["epoch"] == 5
    exported = load_file(run / "model.safetensors")
    assert all(torch.equal(v, ckpt["best_state"][f"backbone.{k}"]) for k, v in exported.items())
    assert not all(torch.equal(v, ckpt["method_state"][f"backbone.{k}"]) for k, v in exported.items())
    code, out, _ = run_cli("eval", "--run", run, "--device", "cpu")
    assert code == 0 and '"epoch": 3' in out and f'"top1": {summary["final"]["top1"]}' in out


@pytest.mark.parametrize("eval_test", ["end", "never"])
def test_a_run_tested_only_at_the_end_or_never(tmp_path, eval_test):
    summary = train(_selecting(tmp_path, eval_test, eval_test=eval_test, eval_every=2))
    rows = [json.loads(r) for r in (tmp_path / eval_test / "metrics.jsonl").read_text().splitlines()]
    evaluated = ["val/aurc", "val/ece", "val/nll", "val/top1", "val/top5"]
    assert [sorted(k for k in r if k.startswith(("val/", "test/"))) for r in rows] == [[], evaluated, [], evaluated,
                                                                                      evaluated]
    assert summary["selected"] == {"epoch": 5, "by": "last", "metric": "val/top1", "value": rows[-1]["val/top1"],
                                   "note": "weights of epoch 5, selected as the last epoch (train.select: last)"}
    assert summary["best_on_test"] == {}
    assert bool(summary["final"]) == (eval_test == "end")
    assert (tmp_path / eval_test / "reliability.json").exists() == (eval_test == "end")


def test_best_val_needs_a_validation_split(tmp_path):
    cfg = tiny_config(tmp_path, epochs=1, train={"select": "best_val"})
    with pytest.raises(ConfigError, match="but this run has no validation split. Hold one out"):
        train(cfg)
    assert not (tmp_path / "run_ce").exists()


def test_a_run_on_image_files_validates_on_files(tmp_path):
    write_image_folder(tmp_path / "images", train=10, val=(2, 2))
    cfg = tiny_config(tmp_path, epochs=1, model={"name": "cifar_resnet18", "width": 4},
                      data={"dataset": "imagefolder", "data_dir": str(tmp_path / "images"), "options": {},
                            "image_size": 8, "workers": 0, "batch_size": 4, "val_split": 4})
    summary = train(cfg)
    assert (summary["train_images"], summary["val_images"]) == (16, 4)
    row = json.loads((tmp_path / "run_ce" / "metrics.jsonl").read_text())
    assert row["val/top1"] in (0.0, 25.0, 50.0, 75.0, 100.0)


def test_sigterm_mid_epoch_then_resume_keeps_the_best_weights_exactly(tmp_path):
    """A best_val run stopped by SIGTERM in its fourth epoch, after its best epoch (the third), and resumed ends with
    the same weights, best weights, rows, selection and exported file as a run that was never stopped: the best
    weights it exports are those its checkpoint carried over the stop."""
    cfg = _selecting(tmp_path, "straight", select="best_val")
    cfg["method"] = {"name": "test_sigterm", "at_step": 0}
    assert train(cfg)["selected"]["epoch"] == 3
    stopped = dict(cfg, run_dir=str(tmp_path / "stopped"), name="stopped", method={"name": "test_sigterm",
                                                                                    "at_step": 17})
    with pytest.raises(Interrupted, match="epoch 4, step 2"):  # 5 steps per epoch
        train(stopped)
    assert torch.load(tmp_path / "stopped" / "last.pt", weights_only=True)["best_val"]["epoch"] == 3
    stopped["method"]["at_step"] = 0
    train(stopped, resume=True)
    a, b = (torch.load(tmp_path / name / "last.pt", weights_only=True) for name in ("straight", "stopped"))
    for part in ("method_state", "best_state"):
        assert a[part].keys() == b[part].keys() and all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert a["best_val"] == b["best_val"]
    rows = [[{k: v for k, v in json.loads(r).items() if not k.startswith("time/")}  # the timings differ
             for r in (tmp_path / run / "metrics.jsonl").read_text().splitlines()] for run in ("straight", "stopped")]
    assert rows[0] == rows[1]
    exported = [load_file(tmp_path / run / "model.safetensors") for run in ("straight", "stopped")]
    assert all(torch.equal(exported[0][k], exported[1][k]) for k in exported[0])
    summaries = [json.loads((tmp_path / run / "summary.json").read_text()) for run in ("straight", "stopped")]
    assert summaries[0]["selected"] == summaries[1]["selected"] and summaries[0]["final"] == summaries[1]["final"]


def test_a_resume_may_not_change_how_the_run_validates_or_selects(tmp_path):
    cfg = _selecting(tmp_path, "run", select="best_val")
    cfg["train"]["epochs"] = 1
    train(cfg)
    for section, change in (("data", {"val_split": 20}), ("data", {"val_seed": 1}), ("train", {"select": "last"})):
        changed = {**cfg, "train": {**cfg["train"], "epochs": 2}}
        changed[section] = {**changed[section], **change}
        with pytest.raises(ConfigError, match="validates or selects its weights otherwise than this resume"):
            train(changed, resume=True)
