"""`selfkd compare`: table numbers from fixture run folders, the HTML page and its plots, and what a real
run leaves behind (metrics and TensorBoard events) read back."""
from __future__ import annotations

import csv
import json
import math
import re

import pytest
import yaml

from conftest import tiny_config

BINS = 15


def write_run(root, name, *, method, seed, top1, dataset="cifar100", model="cifar_resnet18", finished=True,
              epochs=3, train_time=100.0, img_per_s=1000.0, extra_params=0, optim=None, checkpoint=False):
    """A run folder as the trainer leaves it. The second-to-last epoch has the best test top-1 (top1 + 5),
    so a report that picked the best epoch instead of the last would show it."""
    path = root / name
    path.mkdir(parents=True)
    config = {"name": name, "seed": seed, "run_dir": str(path), "method": {"name": method}, "model": {"name": model},
              "data": {"dataset": dataset}, "optim": optim or {"lr": 0.1}, "train": {"epochs": epochs}}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    tops = [top1 - 10.0] * (epochs - 2) + [top1 + 5.0, top1] if finished else [top1 - 10.0]
    rows = [{"epoch": e + 1, "train/loss": 2.0 / (e + 1), "train/loss_ce": 2.0 / (e + 1), "lr": 0.1,
             "test/top1": t, "test/top5": 99.0, "test/nll": 0.5, "test/ece": 3.0, "test/aurc": 40.0}
            for e, t in enumerate(tops)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if checkpoint:
        (path / "last.pt").write_bytes(b"checkpoint")
    if finished:
        final = {"top1": top1, "top5": top1 + 20.0, "nll": 1.0 + seed, "ece": 2.0 * (seed + 1), "aurc": 50.0}
        summary = {"name": name, "method": method, "model": model, "dataset": dataset, "seed": seed, "epochs": epochs,
                   "final": final, "best_on_test": {"epoch": epochs - 1, "top1": top1 + 5.0, "note": "selected on test"},
                   "train_time_s": train_time, "img_per_s": img_per_s, "params": 1000, "extra_params": extra_params,
                   "device": "cpu", "world_size": 1}
        (path / "summary.json").write_text(json.dumps(summary))
        count = [0.0] * (BINS - 3) + [10.0, 30.0, 60.0]
        (path / "reliability.json").write_text(json.dumps(
            {"count": count, "confidence": [0.0] * (BINS - 3) + [0.85, 0.91, 0.98],
             "accuracy": [0.0] * (BINS - 3) + [0.8, 0.9, 0.95]}))
    return path


@pytest.fixture
def fixture_runs(tmp_path):
    runs = tmp_path / "runs"
    for seed, top1 in enumerate([70.0, 71.0, 72.5]):
        write_run(runs, f"ce_s{seed}", method="ce", seed=seed, top1=top1, train_time=100.0 + 10 * seed)
    write_run(runs, "lightskd_s0", method="lightskd", seed=0, top1=73.0, extra_params=342116)
    write_run(runs, "lightskd_s1", method="lightskd", seed=1, top1=74.0, extra_params=342116, optim={"lr": 0.05})
    write_run(runs, "frskd_s0", method="frskd", seed=0, top1=75.0, extra_params=6375794)
    write_run(runs, "c10_lightskd_s0", method="lightskd", seed=0, top1=90.0, dataset="cifar10")
    write_run(runs, "frskd_s1", method="frskd", seed=1, top1=60.0, finished=False, checkpoint=True)
    return runs


def read_csv(path):
    with open(path) as fh:
        return {(r["dataset"], r["method"]): r for r in csv.DictReader(fh)}


def test_table_means_stds_and_gain_over_ce_from_last_epoch(fixture_runs, tmp_path, run_cli):
    out = tmp_path / "report"
    code, stdout, _ = run_cli("compare", fixture_runs, "--out", out)
    assert code == 0
    rows = read_csv(out / "results.csv")
    assert set(rows) == {("cifar100", "ce"), ("cifar100", "lightskd"), ("cifar100", "frskd"), ("cifar10", "lightskd")}

    ce = rows[("cifar100", "ce")]
    assert ce["n"] == "3" and ce["seeds"] == "0 1 2"
    assert float(ce["top1_mean"]) == pytest.approx(213.5 / 3, abs=1e-9)
    assert float(ce["top1_std"]) == pytest.approx(math.sqrt(19 / 12), abs=1e-9)  # sample std of 70, 71, 72.5
    assert float(ce["top5_mean"]) == pytest.approx(213.5 / 3 + 20, abs=1e-9)
    assert float(ce["nll_mean"]) == pytest.approx(2.0) and float(ce["ece_mean"]) == pytest.approx(4.0)
    assert float(ce["ece_std"]) == pytest.approx(2.0)  # 2, 4, 6
    assert float(ce["train_time_s"]) == pytest.approx(110.0)
    assert float(ce["gain_vs_ce"]) == 0.0

    light = rows[("cifar100", "lightskd")]
    assert float(light["top1_mean"]) == pytest.approx(73.5) and float(light["top1_std"]) == pytest.approx(math.sqrt(0.5))
    assert float(light["gain_vs_ce"]) == pytest.approx(73.5 - 213.5 / 3, abs=1e-9)
    assert light["extra_params"] == "342116"

    fr = rows[("cifar100", "frskd")]  # the last epoch (75), not the best test epoch (80); the unfinished seed is left out
    assert fr["n"] == "1" and float(fr["top1_mean"]) == 75.0 and fr["top1_std"] == ""
    assert float(fr["gain_vs_ce"]) == pytest.approx(75.0 - 213.5 / 3, abs=1e-9)
    assert rows[("cifar10", "lightskd")]["gain_vs_ce"] == ""  # no ce run on cifar10

    md = (out / "results.md").read_text()
    lines = {line.split("|")[3].strip() + "/" + line.split("|")[1].strip(): line for line in md.splitlines()
             if line.startswith("| cifar")}
    assert "71.17 ± 1.26" in lines["ce/cifar100"] and "+0.00" in lines["ce/cifar100"]
    assert "73.50 ± 0.71" in lines["lightskd/cifar100"] and "+2.33" in lines["lightskd/cifar100"]
    assert "342.1 K" in lines["lightskd/cifar100"] and "110.0 s" in lines["ce/cifar100"]
    assert "| 75.00 " in lines["frskd/cifar100"] and "+3.83" in lines["frskd/cifar100"] and "80.00" not in md
    assert md.index("| cifar100 | cifar_resnet18 | ce") < md.index("| cifar100 | cifar_resnet18 | frskd")
    # Mixed settings are flagged, and the unfinished run is listed with how to resume it.
    assert "lightskd mixes runs with different settings (optim.lr)" in md
    assert re.search(r"frskd_s1: frskd on cifar100/cifar_resnet18, seed 1, 1/3 epochs logged, resumable", md)
    assert all(line in stdout for line in md.splitlines())  # the terminal shows the same text


T_975_2 = 4.302653  # Student's t, 97.5 % quantile, 2 degrees of freedom (any t table)


def test_gain_intervals_against_a_hand_calculation():
    """95 % intervals of a gain over ce, computed by hand (t quantile from a table)."""
    from selfkd.report.stats import gain_interval, paired_interval, welch_interval

    # Paired, seeds 0-2: ce 70, 71, 72.5 and the method 73, 74, 72.5 -> differences 3, 3, 0:
    # mean 2, s_d = sqrt(((3-2)² + (3-2)² + (0-2)²) / 2) = sqrt(3), se = sqrt(3) / sqrt(3) = 1, half-width 4.302653.
    ci = paired_interval({0: 73.0, 1: 74.0, 2: 72.5}, {0: 70.0, 1: 71.0, 2: 72.5})
    assert (ci.kind, ci.df, ci.gain) == ("paired", 2, pytest.approx(2.0))
    assert (ci.low, ci.high) == (pytest.approx(2 - T_975_2, abs=1e-5), pytest.approx(2 + T_975_2, abs=1e-5))
    assert ci.within_noise and ci.text() == "+2.00 [-2.30, +6.30]"
    # Differences 1.0, 1.2, 0.8: mean 1, s_d = 0.2, se = 0.2 / sqrt(3) = 0.1154701, half-width 0.4968275.
    ci = paired_interval({0: 71.0, 1: 72.2, 2: 73.3}, {0: 70.0, 1: 71.0, 2: 72.5})
    assert (ci.low, ci.high) == (pytest.approx(0.5031725, abs=1e-5), pytest.approx(1.4968275, abs=1e-5))
    assert not ci.within_noise and ci.text() == "+1.00 [+0.50, +1.50]"

    # Welch, equal sizes: 80, 82 vs 78, 80 -> difference 2, variances 2 and 2, se = sqrt(2/2 + 2/2) = sqrt(2),
    # df = (1 + 1)² / (1²/1 + 1²/1) = 2, half-width 4.302653 * 1.4142136 = 6.0849.
    ci = welch_interval([80.0, 82.0], [78.0, 80.0])
    assert (ci.kind, ci.df) == ("welch", pytest.approx(2.0))
    assert (ci.low, ci.high) == (pytest.approx(2 - 6.084899, abs=1e-4), pytest.approx(2 + 6.084899, abs=1e-4))
    # Welch, sizes 2 and 3: 73, 74 (variance 1/2) vs 70, 71, 72.5 (variance 19/12):
    # df = (1/4 + 19/36)² / ((1/4)²/1 + (19/36)²/2) = (49/81) / (1/16 + 361/2592) = (49/81) / (523/2592)
    #    = 127008/42363 = 2.998088.
    ci = welch_interval([73.0, 74.0], [70.0, 71.0, 72.5])
    assert ci.df == pytest.approx(127008 / 42363, rel=1e-12) and ci.gain == pytest.approx(73.5 - 213.5 / 3)

    # Which one: paired only when both sides ran the same seeds once each; nothing with one value on a side.
    assert gain_interval([(0, 73.0), (1, 74.0)], [(1, 71.0), (0, 70.0)]).kind == "paired"
    assert gain_interval([(1, 80.0), (2, 82.0)], [(0, 78.0), (1, 80.0)]).kind == "welch"
    assert gain_interval([(0, 80.0), (0, 82.0)], [(0, 78.0), (1, 80.0)]).kind == "welch"  # a seed twice
    assert gain_interval([(0, 73.0)], [(0, 70.0)]) is None
    assert gain_interval([(0, 73.0)], [(0, 70.0), (1, 71.0)]) is None


def test_table_labels_gains_within_noise_and_gains_without_interval(tmp_path):
    from selfkd.report import compare

    runs = tmp_path / "runs"
    for seed, (ce, noisy, clear) in enumerate([(70.0, 73.0, 71.0), (71.0, 74.0, 72.2), (72.5, 72.5, 73.3)]):
        write_run(runs, f"ce_s{seed}", method="ce", seed=seed, top1=ce)
        write_run(runs, f"noisy_s{seed}", method="noisy", seed=seed, top1=noisy)
        write_run(runs, f"clear_s{seed}", method="clear", seed=seed, top1=clear)
    write_run(runs, "lone_s0", method="lone", seed=0, top1=75.0)
    report = compare([runs], tmp_path / "report")
    rows = {line.split("|")[3].strip(): line for line in report.text.splitlines() if line.startswith("| cifar")}
    assert "+2.00 [-2.30, +6.30] within noise" in rows["noisy"]
    assert "+1.00 [+0.50, +1.50]" in rows["clear"] and "within noise" not in rows["clear"]
    assert "+3.83 (no interval)" in rows["lone"] and "| +0.00 " in rows["ce"]
    assert "Note: The gain of cifar100/cifar_resnet18/lone over ce has no interval" in report.text
    assert "--seeds 0,1,2" in report.text and "noisy over ce has no interval" not in report.text
    table = read_csv(tmp_path / "report" / "results.csv")
    clear = table[("cifar100", "clear")]
    assert clear["gain_interval"] == "paired" and float(clear["gain_low"]) == pytest.approx(0.5031725, abs=1e-5)
    assert table[("cifar100", "lone")]["gain_low"] == "" and table[("cifar100", "ce")]["gain_interval"] == ""
    assert "within noise" in (tmp_path / "report" / "index.html").read_text()


def test_index_html_shows_the_table_and_valid_pngs(fixture_runs, tmp_path):
    from PIL import Image

    from selfkd.report import compare

    out = tmp_path / "report"
    report = compare([fixture_runs], out, note="Demo setting 'cpu': test note.")
    page = (out / "index.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    # Four plots per (dataset, model): accuracy, loss, reliability, cost; two pairs here.
    assert sorted(images) == sorted(name for _, name in report.plots) and len(images) == 8
    for name in images:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(out / name) as im:
            im.verify()
    assert "71.17 ± 1.26" in page and "Demo setting &#x27;cpu&#x27;: test note." in page
    assert "frskd_s1" in page  # unfinished runs are on the page too
    assert not re.search(r'(src|href)="(https?:|//|/)', page) and "<script" not in page and "<link" not in page


def test_compare_without_runs_is_a_clear_error(tmp_path, run_cli):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli("compare", tmp_path / "empty", "--out", tmp_path / "r")
    assert code == 2 and "No run folder found" in err
    code, _, err = run_cli("compare", tmp_path / "missing")
    assert code == 2 and "does not exist" in err


def test_only_unfinished_runs_still_make_a_report(tmp_path):
    from selfkd.report import compare

    write_run(tmp_path / "runs", "ce_s0", method="ce", seed=0, top1=50.0, finished=False)
    report = compare([tmp_path / "runs"], tmp_path / "r")
    assert report.groups == [] and "No finished run yet." in report.text
    assert "ce_s0: ce on cifar100/cifar_resnet18, seed 0, 1/3 epochs logged, no checkpoint yet" in report.text


def test_real_run_metrics_and_tensorboard_events(tmp_path, monkeypatch):
    """Every named loss term, the learning rate and each test metric reach metrics.jsonl and the TensorBoard
    events with the same values; compare reads the run's summary back unchanged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from selfkd.engine import train
    from selfkd.losses import cross_entropy
    from selfkd.methods import METHODS
    from selfkd.methods.base import Method, MethodOutput
    from selfkd.report import compare

    class TwoTerms(Method):
        def compute_loss(self, images, targets, index=None):
            logits, _ = self.backbone(images)
            ce = cross_entropy(logits, targets)
            l2 = 0.01 * logits.pow(2).mean()
            return MethodOutput(logits, ce + l2, {"ce": ce, "logit_l2": l2})

    monkeypatch.setitem(METHODS["classification"]._entries, "two_terms", TwoTerms)
    cfg = tiny_config(tmp_path, method="two_terms", epochs=2,
                      data={"options": {"num_classes": 10, "train_size": 256, "test_size": 64, "image_size": 16},
                            "batch_size": 64})
    summary = train(cfg)
    run = tmp_path / "run_two_terms"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    expected = {"train/loss", "train/loss_ce", "train/loss_logit_l2", "train/top1", "lr", "time/epoch_s",
                "time/img_per_s", "test/top1", "test/top5", "test/nll", "test/ece", "test/aurc"}
    assert [r["epoch"] for r in rows] == [1, 2] and all(expected <= set(r) for r in rows)

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert expected <= set(events.Tags()["scalars"])
    assert [s.step for s in events.Scalars("step/lr")] == [4, 8]  # per-step curves at log_every / epoch ends
    assert len(events.Scalars("step/loss")) == 2
    for key in expected:
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [4, 8]  # 256 images / batch 64 = 4 steps per epoch
        assert [s.value for s in scalars] == pytest.approx([r[key] for r in rows], rel=1e-6, abs=1e-6)

    report = compare([run], tmp_path / "report")
    (group,) = report.groups
    assert group.method == "two_terms" and group.mean["top1"] == summary["final"]["top1"] == rows[-1]["test/top1"]
    assert (tmp_path / "report" / "reliability_synthetic_cifar_resnet18.png").is_file()


def test_a_run_without_a_finite_final_metric_is_named_and_left_out(tmp_path):
    import json

    from selfkd.report import compare

    runs = tmp_path / "runs"
    for seed, top1 in enumerate([70.0, 72.0, 90.0]):
        write_run(runs, f"ce_s{seed}", method="ce", seed=seed, top1=top1)
    summary = runs / "ce_s2" / "summary.json"  # a run that diverged: its last epoch's metrics are NaN
    summary.write_text(summary.read_text().replace('"top1": 90.0', '"top1": NaN'))
    assert json.loads(summary.read_text())["final"]["top1"] != json.loads(summary.read_text())["final"]["top1"]
    report = compare([runs], tmp_path / "report")
    assert "| 3 | 71.00 ± 1.41 |" in report.text  # n counts it, the mean and std do not
    assert "1 of its 3 finished runs have no finite final top1 (ce_s2)" in report.text
