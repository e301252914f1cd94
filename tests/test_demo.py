"""`selfkd demo`: the regime line, its time estimate (arithmetic, and a real measurement through the training
builder), the seeds and the record it leaves; `benchmarks/results_section.py` on fixture run folders."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from hand import write_fashion
from test_report import write_run

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_regime_and_its_line():
    """The CPU demo trains the regime chosen from the papers, and says how it differs from a paper run."""
    from selfkd.config import make_config
    from selfkd.demo import describe, recipe_path

    cpu = make_config(recipe_path("cpu"))
    assert (cpu.data.train_subset, cpu.train.epochs, cpu.train.eval_every, cpu.data.batch_size) == (1000, 40, 10, 64)
    assert (cpu.schedule.name, cpu.schedule.milestones, cpu.schedule.gamma) == ("multistep", [20, 30], 0.1)
    assert (cpu.optim.lr, cpu.optim.weight_decay, cpu.model.options()) == (0.05, 5e-4, {"width": 16})
    assert cpu.data.train_subset * cpu.train.epochs == 8000 * 5  # the former demo's image passes per method
    line = describe("cpu", cpu, 60000, 10000)
    assert line == ("Demo setting 'cpu': Fashion-MNIST, 1,000 of 60,000 training images, all 10,000 test images, "
                    "40 epochs (lr ×0.1 after epochs 20 and 30), cifar_resnet18 (width 16), batch 64, device cpu. "
                    "A paper run (CIFAR-100, 50,000 training images, 200 epochs, ResNet-18 of width 64) differs in "
                    "dataset, data size, epochs, width.")
    gpu = make_config(recipe_path("gpu"))
    assert gpu.schedule.name == "multistep" and gpu.data.train_subset is None and "width" not in gpu.model.options()
    assert describe("gpu", gpu, 60000, 10000).endswith("differs in dataset, data size, epochs.")


def test_estimate_arithmetic():
    from selfkd.demo import Speed, evaluations, run_seconds

    assert evaluations(40, 10) == 4  # epochs 10, 20, 30, 40
    assert evaluations(40, 10, done=25) == 2  # 30, 40
    assert evaluations(7, 3) == 3  # 3, 6 and the last, 7
    assert evaluations(5, 1) == 5 and evaluations(5, 1, done=5) == 0
    speed = Speed(step_s=0.2, steps_per_epoch=16, eval_batch_s=0.5, eval_batches=20, startup_s=3.0)
    # start-up 3 s + 40 epochs × 16 steps × 0.2 s + 4 evaluations × 20 batches × 0.5 s = 3 + 128 + 40
    assert run_seconds(speed, 40, 10) == pytest.approx(171.0)
    # resumed after 25 epochs: 3 + 15 × 16 × 0.2 + 2 × 20 × 0.5 = 3 + 48 + 20
    assert run_seconds(speed, 40, 10, done=25) == pytest.approx(71.0)


def test_demo_times_its_methods_passes_seeds_and_records_itself(tmp_path, monkeypatch, run_cli):
    """Real measurements through the training builder feed the estimate (per run, per method); the demo passes its
    seeds and estimates to the sweep, prints the estimate first and records command, machine and time."""
    import selfkd.demo
    import selfkd.sweep
    from selfkd.demo import measure
    from selfkd.runfolder import SWEEP
    from selfkd.sweep import SweepResult

    data = tmp_path / "data"
    write_fashion(data / "fashion-mnist", n_train=40, n_test=30)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"name": "cifar_resnet18", "width": 4},
        "data": {"dataset": "fashion_mnist", "train_subset": 24, "batch_size": 8, "eval_batch_size": 12},
        "schedule": {"name": "multistep", "milestones": [2]}, "train": {"epochs": 4, "device": "cpu", "eval_every": 2,
                                                                          "progress": False}}))
    monkeypatch.setattr(selfkd.demo, "recipe_path", lambda setting, task="classification": recipe)

    from selfkd.config import make_config
    from selfkd.data import load_dataset

    cfg = make_config(recipe, {"data_dir": str(data), "method": "cskd"})
    speed = measure(cfg, load_dataset("fashion_mnist", str(data)), load_s=1.5)
    assert (speed.steps_per_epoch, speed.eval_batches) == (3, 3)  # 24 images / 8, 30 test images / 12
    assert speed.step_s > 0 and speed.eval_batch_s > 0 and speed.startup_s > 1.5

    calls = []

    def fake_sweep(config, methods, seeds, out, flags, note=None, estimates=None, **kwargs):
        calls.append((methods, seeds, estimates))
        out.mkdir(parents=True)  # the sweep folder, made and marked as the sweep makes it
        (out / SWEEP.marker).touch()
        return SweepResult([], {}, None)

    monkeypatch.setattr(selfkd.sweep, "sweep", fake_sweep)
    out = tmp_path / "demo"
    code, stdout, err = run_cli("demo", "--setting", "cpu", "--seeds", "0,1", "--methods", "ce,cskd", "--out", out,
                                "--data-dir", data)
    assert code == 0, err
    ((methods, seeds, estimates),) = calls
    assert methods == ["ce", "cskd"] and seeds == [0, 1]
    assert sorted(estimates) == ["ce_s0", "ce_s1", "cskd_s0", "cskd_s1"] and min(estimates.values()) > 0
    assert estimates["ce_s0"] == estimates["ce_s1"]  # one measurement per method
    assert stdout.index("Demo setting 'cpu'") < stdout.index("Estimated time: about") and "for 4 run(s)" in stdout
    record = json.loads((out / "demo.json").read_text())
    assert record["command"] == "selfkd demo --setting cpu --seeds 0,1 --methods ce,cskd"
    assert record["trained"] == ["ce_s0", "cskd_s0", "ce_s1", "cskd_s1"] and record["kept"] == []
    assert record["estimate_s"] == pytest.approx(sum(estimates.values())) and record["wall_s"] > 0
    assert record["machine"]["cores"] >= 1 and record["machine"]["torch"] and record["regime"].startswith("Demo setting")

    # A finished run is not timed again, and a resumed one counts only the epochs it still lacks.
    from selfkd.demo import Speed, estimate
    from selfkd.sweep import plan

    (out / "ce_s0").mkdir()
    (out / "ce_s0" / "summary.json").write_text("{}")
    (out / "ce_s1").mkdir()
    (out / "ce_s1" / "last.pt").write_bytes(b"x")
    (out / "ce_s1" / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e}) + "\n" for e in (1, 2, 3)))
    monkeypatch.setattr(selfkd.demo, "measure", lambda cfg, splits, load_s: Speed(1.0, 3, 0.5, 3, 2.0, 0.25))
    jobs = plan(str(recipe), ["ce"], [0, 1], out, {"data_dir": str(data)})
    # ce_s1 resumed after 3 of 4 epochs: 2 s + 1 epoch × (3 steps × 1 s + a 0.25 s checkpoint)
    # + 1 evaluation × 3 batches × 0.5 s
    assert estimate(jobs, {"ce": cfg}, None, 0.0) == {"ce_s1": pytest.approx(6.75)}


def load_script():
    spec = importlib.util.spec_from_file_location("results_section", ROOT / "benchmarks" / "results_section.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_section_from_fixture_runs(tmp_path):
    """The README section is rebuilt between its markers from the committed small files of the demo's runs."""
    script = load_script()
    demo = tmp_path / "runs" / "demo_cpu"
    for seed, (ce, frskd) in enumerate([(70.0, 73.0), (71.0, 74.0), (72.5, 72.5)]):
        write_run(demo, f"ce_s{seed}", method="ce", seed=seed, top1=ce, dataset="fashion_mnist", checkpoint=True)
        write_run(demo, f"frskd_s{seed}", method="frskd", seed=seed, top1=frskd, dataset="fashion_mnist")
    (demo / "ce_s0" / "model.safetensors").write_bytes(b"weights")
    (demo / "demo.json").write_text(json.dumps({
        "command": "selfkd demo --setting cpu --seeds 0,1,2", "regime": "Demo setting 'cpu': a regime.",
        "wall_s": 1234.0, "estimate_s": 1100.0, "threads_per_run": 2, "trained": ["ce_s0"], "kept": [],
        "date": "2026-12-01", "machine": {"cores": 2, "cpu": "AMD EPYC 7B13", "torch": "2.14.1", "selfkd": "0.1.0"}}))
    readme = tmp_path / "README.md"
    readme.write_text(f"# selfkd\n\nintro\n\n{script.BEGIN}\nold text\n{script.END}\n\n## Next\nrest\n")
    results = tmp_path / "benchmarks" / "results"
    seg = tmp_path / "runs" / "demo_segmentation_cpu"
    for seed, (ce, frskd) in enumerate([(40.0, 41.0), (42.0, 42.5)]):
        for method, miou in (("ce", ce), ("frskd", frskd)):
            run = write_run(seg, f"{method}_s{seed}", method=method, seed=seed, top1=0.0, dataset="fmnist_scenes")
            summary = json.loads((run / "summary.json").read_text())
            summary.update(task="segmentation", final={"miou": miou, "pixel_acc": 90.0, "ece": 1.5})
            (run / "summary.json").write_text(json.dumps(summary))

    with pytest.raises(SystemExit, match="overlap"):  # it would delete what it copies
        script.main(["--from", str(results / "demo_cpu"), "--results", str(results), "--readme", str(readme)])
    assert script.main(["--from", str(demo), "--from", str(seg), "--results", str(results),
                        "--readme", str(readme)]) == 0
    results = results / "demo_cpu"
    kept = sorted(str(p.relative_to(results)) for p in results.rglob("*") if p.is_file())
    assert kept == sorted(["demo.json", *(f"{m}_s{s}/{f}" for m in ("ce", "frskd") for s in range(3)
                                          for f in ("config.yaml", "metrics.jsonl", "summary.json"))])  # no checkpoint
    text = readme.read_text()
    assert text.startswith("# selfkd\n\nintro\n\n" + script.BEGIN) and text.endswith(script.END + "\n\n## Next\nrest\n")
    assert "old text" not in text
    section = text[text.index(script.BEGIN):text.index(script.END)]
    assert "**Measured here** with `selfkd demo --setting cpu --seeds 0,1,2` on 2026-12-01: 2 cores (AMD EPYC 7B13)" in section
    assert "took 20.6 min in all" in section and "estimated 18.3 min" in section and "Demo setting 'cpu': a regime." in section
    # frskd - ce per seed: 3, 3, 0 -> +2.00 [-2.30, +6.30] (paired t, 2 degrees of freedom; see test_report.py)
    assert "| frskd | 3 | 73.17 ± 0.76 | +2.00 [-2.30, +6.30] within noise |" in section
    assert "| ce | 3 | 71.17 ± 1.26 | (baseline) |" in section and "paired by seed" in section
    assert "reported by the paper" in section
    assert "| frskd | CIFAR-100, ResNet-18, top-1 | 76.24 | 76.60 | +0.36 | reported by Self-KD-Lib" in section
    # The segmentation demo's headline metric is mIoU: frskd - ce per seed 1.0, 0.5 -> +0.75 ± t(0.975, 1)·0.354/√2
    assert "| Method | n | Test mIoU (%) | Gain over ce [95 % interval] | Pixel acc. (%) | ECE (%) |" in section
    assert "| frskd | 2 | 41.75 ± 1.06 | +0.75 [-2.43, +3.93] within noise | 90.00 | 1.50 |" in section

    script.main(["--results", str(results.parent), "--readme", str(readme)])
    assert readme.read_text() == text  # regenerating from the committed files gives the same section

    empty = tmp_path / "none"
    script.main(["--results", str(empty), "--readme", str(readme)])
    assert "No run is committed yet" in readme.read_text() and "## Next\nrest\n" in readme.read_text()


def test_results_section_tuning_from_a_fixture_study(tmp_path):
    """The tuning subsection: each method's trials and best trial from tune.json, its tuned test accuracy and gain over
    the tuned ce from the final runs beside the untuned demo's, and whether tuning changed the comparison."""
    script = load_script()
    study, demo = tmp_path / "runs" / "tune_fashion_mnist", tmp_path / "results" / "demo_cpu"
    finals = {"ce": (80.0, 81.0, 82.0), "lightskd": (83.0, 84.0, 84.5)}  # lightskd - ce: 3, 3, 2.5 -> clearly better
    untuned = {"ce": (80.0, 81.0, 82.0), "lightskd": (81.0, 80.5, 82.5)}  # 1, -0.5, 0.5 -> within noise
    for folder, table in ((study / "final", finals), (demo, untuned)):
        for method, values in table.items():
            for seed, top1 in enumerate(values):
                run = write_run(folder, f"{method}_s{seed}", method=method, seed=seed, top1=top1,
                                dataset="fashion_mnist")
                summary = json.loads((run / "summary.json").read_text())
                (run / "summary.json").write_text(json.dumps({**summary, "val_images": 200, "train_images": 1000}))
    best = {"ce": {"trial": 4, "value": 85.5, "params": {"optim.lr": 0.0312}, "epoch": 40},
            "lightskd": {"trial": 7, "value": 86.0, "params": {"method.alpha": 0.51, "optim.lr": 0.02}, "epoch": 40}}
    (study / "tune.json").write_text(json.dumps({
        "command": "selfkd tune -c configs/demo/fashion_mnist_tune.yaml ...", "date": "2026-12-07", "wall_s": 1800.0,
        "budget": 12, "final_seeds": [0, 1, 2], "threads_per_run": 2,
        "machine": {"cores": 2, "cpu": "AMD EPYC 7B13", "torch": "2.14.1", "selfkd": "0.1.0"},
        "methods": {m: {"trials": {"complete": 7, "pruned": 5}, "best": b} for m, b in best.items()}}))
    for method in finals:
        (study / method).mkdir()
        (study / method / "best.yaml").write_text("seed: 0\n")
    (study / "ce" / "trial_000").mkdir()
    (study / "ce" / "trial_000" / "last.pt").write_bytes(b"a checkpoint")
    (study / "report").mkdir()
    (study / "report" / "tune_ce_history.png").write_bytes(b"png")
    readme = tmp_path / "README.md"
    readme.write_text(f"{script.BEGIN}\n{script.END}\n")
    assert script.main(["--from", str(study), "--results", str(tmp_path / "results"), "--readme", str(readme)]) == 0
    kept = sorted(str(p.relative_to(tmp_path / "results" / "tune_fashion_mnist"))
                  for p in (tmp_path / "results" / "tune_fashion_mnist").rglob("*") if p.is_file())
    assert kept == sorted(["tune.json", "ce/best.yaml", "lightskd/best.yaml", "report/tune_ce_history.png",
                           *(f"final/{m}_s{s}/{f}" for m in finals for s in range(3)
                             for f in ("config.yaml", "metrics.jsonl", "summary.json"))])  # no trial run folder
    section = readme.read_text()
    assert "took 30.0 min in all: 12 trials per method" in section and "2 CPU thread(s) per run" in section
    assert ("| lightskd | 7, 5 | 86.0 (trial 7, epoch 40) | alpha 0.51, lr 0.02 | 83.83 ± 0.76 | "
            "+2.83 [+2.12, +3.55] | 81.33 ± 1.04 | +0.33 [-1.56, +2.23] within noise |") in section
    assert "| ce | 7, 5 | 85.5 (trial 4, epoch 40) | lr 0.0312 | 81.00 ± 1.00 | (baseline) |" in section
    # lightskd - ce per seed, untuned 1, -0.5, 0.5: +0.33 ± t(0.975, 2)·0.764/√3; tuned 3, 3, 2.5: +2.83 ± 4.303·0.289/√3
    assert ("**Tuning changed how lightskd compares with ce:** within noise untuned (+0.33 [-1.56, +2.23]), better "
            "than ce tuned (+2.83 [+2.12, +3.55]).") in section
    assert "Validation: 200 images held out" in section and "each run's 1,000 training images" in section
    assert "![ce history](benchmarks/results/tune_fashion_mnist/report/tune_ce_history.png)" in section
