"""`selfkd bench` output (not its timings): every method in one run, ratios to ce, the JSON schema."""
import json

import pytest


def test_bench_reports_every_method_relative_to_ce(tmp_path, run_cli):
    out_file = tmp_path / "bench.json"
    code, out, err = run_cli("bench", "--methods", "drg,tfkd_self,pskd", "--width", "8", "--num-classes", "10",
                             "--batch-size", "8", "--steps", "2", "--warmup", "1", "--rounds", "2",
                             "--device", "cpu", "--json", out_file)
    assert code == 0, err
    result = json.loads(out_file.read_text())
    rows = {r["method"]: r for r in result["results"]}
    assert list(rows) == ["ce", "drg", "tfkd_self", "pskd"] and result["failed"] == []  # ce always included
    for r in rows.values():
        assert {"method", "img_per_s", "ms_per_step", "relative_to_ce", "extra_params", "peak_mem_mb"} <= set(r)
        assert r["img_per_s"] > 0 and r["relative_to_ce"] == r["ms_per_step"] / rows["ce"]["ms_per_step"]
    assert rows["ce"]["relative_to_ce"] == 1.0
    # The DRG head on stage 2 of a width-8 ResNet-18 (c = 16), K = 10: attention SepConv(16,16) + BN = 896,
    # SepConv(16,32) = 1,152, SepConv(32,64) = 3,840, Linear(64,10) = 650.
    assert rows["drg"]["extra_params"] == 896 + 1152 + 3840 + 650
    assert rows["ce"]["peak_mem_mb"] is None  # GPU memory only
    assert result["environment"]["torch"] and result["settings"]["batch_size"] == 8
    assert "drg" in out and "× ce" in out  # the table


def test_bench_profile_writes_each_methods_operator_table(tmp_path, run_cli):
    code, _, err = run_cli("bench", "--methods", "dsr", "--width", "8", "--num-classes", "10", "--batch-size", "8",
                           "--steps", "2", "--warmup", "1", "--device", "cpu", "--profile", tmp_path / "prof")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "prof").iterdir()) == [".selfkd-profile", "ce.txt", "dsr.txt"]
    table = (tmp_path / "prof" / "dsr.txt").read_text()
    assert table.startswith("2 training steps") and "aten::convolution_backward" in table and "Self CPU time total" in table


def test_bench_data_and_eval_modes(tmp_path, run_cli):
    for what in ("data", "eval"):
        out_file = tmp_path / f"{what}.json"
        code, _, err = run_cli("bench", "--what", what, "--width", "8", "--batch-size", "16", "--steps", "2",
                               "--warmup", "1", "--device", "cpu", "--json", out_file)
        assert code == 0, err
        (row,) = json.loads(out_file.read_text())["results"]
        assert row["what"] == what and row["img_per_s"] > 0


def test_bench_refuses_counts_it_cannot_time_and_allows_no_warmup(tmp_path, run_cli, capsys):
    from selfkd.cli import main

    with pytest.raises(SystemExit) as exit_info:  # argparse's usage error (it used to loop forever)
        main(["bench", "--steps", "0", "--device", "cpu"])
    assert exit_info.value.code == 2 and "--steps: must be at least 1, got 0" in capsys.readouterr().err
    out_file = tmp_path / "data.json"
    code, _, err = run_cli("bench", "--what", "data", "--warmup", "0", "--steps", "2", "--batch-size", "8",
                           "--device", "cpu", "--json", out_file)
    assert code == 0, err


def test_bench_segmentation_times_ce_and_frskd_on_generated_scenes(tmp_path, run_cli):
    """--task segmentation: generated scenes (synthetic_seg), the segmentation methods (default ce, frskd); a
    segmentation recipe implies the task."""
    out_file = tmp_path / "seg.json"
    code, out, err = run_cli("bench", "--task", "segmentation", "--model", "frskd_seg_resnet18", "--image-size", "32",
                             "--num-classes", "4", "--batch-size", "2", "--steps", "1", "--warmup", "0", "--rounds", "1",
                             "--device", "cpu", "--json", out_file)
    assert code == 0, err
    result = json.loads(out_file.read_text())
    rows = {r["method"]: r for r in result["results"]}
    assert list(rows) == ["ce", "frskd"] and result["failed"] == [] and "segmentation, 32² images" in err
    assert result["settings"]["task"] == "segmentation" and result["settings"]["image_size"] == 32
    # The self-teacher of 64-channel pyramids: 6 + 5 and 6 depthwise units (1×1 depthwise conv + BN: 3·64 each),
    # and a second head: cbr3(64→256) (147,456 + 512) and a 3×3 conv to K = 4 (9,216 + 4).
    assert rows["frskd"]["extra_params"] == 17 * 3 * 64 + 147_456 + 512 + 9_216 + 4
    recipe = tmp_path / "seg.yaml"
    recipe.write_text("method: {name: frskd, warmup_epochs: 0}\n"
                      "model: {name: frskd_seg_resnet18, channels: 8, head_channels: 8}\n"
                      "data: {dataset: voc, batch_size: 2, augment: seg_voc}\n")  # a file augmentation
    code, out, err = run_cli("bench", "-c", recipe, "--methods", "frskd", "--image-size", "32", "--num-classes", "4",
                             "--steps", "1", "--warmup", "0", "--rounds", "1", "--device", "cpu", "--json", out_file)
    assert code == 0, err
    rows = {r["method"]: r for r in json.loads(out_file.read_text())["results"]}
    assert list(rows) == ["ce", "frskd"] and rows["frskd"]["extra_params"] == 17 * 3 * 8 + 8 * 8 * 9 + 16 + 8 * 4 * 9 + 4
    assert rows["frskd"]["mean_loss"] > rows["ce"]["mean_loss"]  # CE of both heads, KD and AT from the start
