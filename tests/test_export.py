"""`selfkd export`: round trips on the CPU (the exported file gives the original logits), the check that
refuses a file that does not, and the error when the optional ONNX packages are missing."""
from __future__ import annotations

import pytest
import torch

from selfkd.export import ExportMismatch, export
from selfkd.weights import load_weights, save_weights


@pytest.fixture
def run_dir(tmp_path, tiny_resnet):
    """A finished run folder as far as export reads it: model.safetensors with its metadata."""
    model = tiny_resnet(num_classes=7, in_channels=1)
    with torch.no_grad():  # non-trivial BN statistics, so eval mode differs from train mode
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "run"
    path.mkdir()
    meta = {"model": "cifar_resnet18", "num_classes": 7, "in_channels": 1, "model_options": {"width": 8},
            "method": "lightskd", "selfkd_version": "0.1.0", "image_size": 24}
    save_weights(path / "model.safetensors", model, meta)
    return path, model.eval(), meta


@pytest.mark.filterwarnings("ignore::FutureWarning")  # PyTorch marks TorchScript deprecated
def test_torchscript_round_trip_returns_the_same_logits(run_dir, run_cli):
    path, model, _ = run_dir
    code, out, err = run_cli("export", path, "--format", "torchscript")
    assert code == 0, err
    exported = path / "export" / "model.torchscript.pt"
    assert str(exported) in out and "max abs diff" in out and "5×1×24×24" in out  # checked at the training image size
    loaded = torch.jit.load(str(exported))
    for shape in [(3, 1, 24, 24), (1, 1, 28, 28)]:  # another batch size and image size than when traced
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            want, _ = model(x)
            got = loaded(x)
        assert isinstance(got, torch.Tensor) and got.shape == (shape[0], 7)  # logits only, no features
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert not list((path / "export").glob(".*tmp"))
    folder = path / "elsewhere"
    folder.mkdir()
    code, out, err = run_cli("export", path, "--format", "torchscript", "--out", folder)  # an existing folder
    assert code == 0, err
    assert (folder / "model.torchscript.pt").is_file()


def test_safetensors_round_trip_keeps_weights_and_metadata(run_dir, tiny_resnet, tmp_path):
    path, model, meta = run_dir
    result = export(path / "model.safetensors", "safetensors", tmp_path / "deploy" / "net.safetensors")
    assert result["max_abs_diff"] == 0.0 and result["input_shape"] == [None, 1, 24, 24]
    state, got_meta = load_weights(tmp_path / "deploy" / "net.safetensors")
    assert got_meta == meta
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    fresh = tiny_resnet(num_classes=7, in_channels=1)
    fresh.load_state_dict(state)
    x = torch.randn(2, 1, 24, 24)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x)[0], model(x)[0])


def test_an_export_that_changes_the_outputs_is_refused(run_dir, monkeypatch):
    import selfkd.export as ex

    path, _, _ = run_dir
    write, load = ex.WRITERS["torchscript"]

    def load_perturbed(file, meta):
        module = load(file, meta)
        return lambda images: module(images) + 1e-2

    monkeypatch.setitem(ex.WRITERS, "torchscript", (write, load_perturbed))
    with pytest.raises(ExportMismatch, match="does not reproduce the model"):
        export(path, "torchscript")
    assert not (path / "export" / "model.torchscript.pt").exists()
    assert not list((path / "export").iterdir())  # no temporary file left either


class BakedBatch(torch.nn.Module):
    """Reshapes with a Python number taken from the traced batch: tracing bakes that batch size into the file."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, images):
        logits = self.module(images)
        return logits.reshape(int(images.shape[0]), -1)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("stage", ["write", "check"])
def test_an_export_that_fails_is_one_paragraph_and_leaves_nothing(run_dir, run_cli, monkeypatch, stage):
    """A model the format cannot take (the writer fails), or a file that fails when run on the check's batch (a
    batch size baked in by tracing): one paragraph, exit 3, no file (they were tracebacks)."""
    import selfkd.export as ex

    path, _, _ = run_dir
    write, load = ex.WRITERS["torchscript"]

    def cannot_trace(model, meta, example, file):
        raise RuntimeError("Tracer cannot infer type of output\nmore detail")

    def bake_batch(model, meta, example, file):
        write(BakedBatch(model), meta, example, file)

    monkeypatch.setitem(ex.WRITERS, "torchscript", (cannot_trace if stage == "write" else bake_batch, load))
    code, _, err = run_cli("export", path, "--format", "torchscript")
    assert code == 3 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"The torchscript export of {path / 'model.safetensors'} failed (RuntimeError: " in err
    assert ("Tracer cannot infer type of output)" if stage == "write" else "shape '[2, -1]' is invalid") in err
    assert not list((path / "export").iterdir())


def test_onnx_without_its_packages_says_how_to_install_them(run_dir, run_cli, monkeypatch):
    import importlib.util

    import selfkd.export as ex

    path, _, _ = run_dir
    real = importlib.util.find_spec
    monkeypatch.setattr(ex.importlib.util, "find_spec",
                        lambda name, *a: None if name in ex.ONNX_PACKAGES else real(name, *a))
    code, _, err = run_cli("export", path, "--format", "onnx")
    assert code == 2
    assert "pip install onnx onnxscript onnxruntime" in err and "--format torchscript" in err
    assert not (path / "export").exists()


def test_export_needs_a_finished_run(tmp_path, run_cli):
    (tmp_path / "unfinished").mkdir()
    code, _, err = run_cli("export", tmp_path / "unfinished", "--format", "torchscript")
    assert code == 2 and "model.safetensors does not exist" in err and "finished run folder" in err


def test_foreign_or_mismatched_weights_are_refused_by_export_and_eval(tmp_path, tiny_resnet, run_cli):
    anonymous = tmp_path / "anonymous.safetensors"
    save_weights(anonymous, tiny_resnet(), {"num_classes": 10})  # no model name, no channels
    code, _, err = run_cli("export", anonymous, "--format", "torchscript")
    assert code == 2 and "lacks the metadata model, in_channels" in err
    ten_classes = tmp_path / "ten.safetensors"
    save_weights(ten_classes, tiny_resnet(), {"model": "cifar_resnet18", "num_classes": 10, "in_channels": 3,
                                              "model_options": {"width": 8}})
    code, _, err = run_cli("eval", "--weights", ten_classes, "--dataset", "synthetic", "--device", "cpu",
                           "--model", "cifar_resnet34")  # another model than the file holds
    assert code == 2 and "does not fit model 'cifar_resnet34' with 10 classes" in err


def _eval_variants():
    """(task, method, its ``eval`` option) for every registered method and every inference variant it offers."""
    import inspect
    import typing

    from conftest import own_methods
    from selfkd.methods import method_class

    for task in ("classification", "segmentation"):
        for name in own_methods(task):
            init = method_class(name, task).__init__
            hint = typing.get_type_hints(init).get("eval") if "eval" in inspect.signature(init).parameters else None
            for variant in (typing.get_args(hint) if hint else ()) or [None]:
                yield pytest.param(task, name, variant, id=f"{task}-{name}-{variant}")


# The tiny model of each task: (name, options, image size).
TINY_MODELS = {"classification": ("cifar_resnet18", {"width": 8}, 16),
               "segmentation": ("frskd_seg_resnet18", {"channels": 8, "head_channels": 8}, 32)}


@pytest.mark.parametrize("task, name, variant", list(_eval_variants()))
def test_exported_weights_give_the_logits_that_were_evaluated(task, name, variant, tmp_path):
    """One module serves the evaluation and the export: after a training step, model.safetensors rebuilds a
    module whose logits equal the evaluation path's (selfkd eval --weights and export read it the same way)."""
    from selfkd import create_method, create_model
    from selfkd.data import DataConfig, build_train_loader, load_dataset
    from selfkd.engine.evaluation import evaluate, rebuild_eval_model
    from selfkd.engine.step import TrainStep, build_optimizer
    from selfkd.methods import data_args, method_class
    from selfkd.weights import save_eval_model

    cpu = torch.device("cpu")
    model_name, model_options, size = TINY_MODELS[task]
    dataset = "synthetic_seg" if task == "segmentation" else "synthetic"
    splits = load_dataset(dataset, num_classes=10, train_size=16, test_size=8, image_size=size)

    def model():
        torch.manual_seed(0)
        return create_model(model_name, num_classes=10, **model_options)

    options = {"eval": variant} if variant else {}
    options.update(method_class(name, task).example_options(model(), tmp_path))
    method = create_method(name, model(), **options, **data_args(name, len(splits.train), task))
    loader = build_train_loader(splits, DataConfig(dataset="synthetic", batch_size=8), method.data_needs, cpu)
    batch = next(iter(loader))
    method.on_epoch_start(0, 1)
    TrainStep(method, build_optimizer(method, 0.05, 0.9, False, 0.0, False, cpu), cpu)(
        batch.images, batch.targets, batch.index)
    meta = {"model": model_name, "num_classes": 10, "in_channels": 3, "model_options": model_options,
            "method": name, "method_options": options, "task": task}
    save_eval_model(tmp_path / "model.safetensors", method, meta)

    images = torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(0))

    class Record:  # the evaluation loop's own call, recorded
        def update(self, logits, targets):
            self.logits = logits

    want = evaluate(method.eval_model(), [type("B", (), {"images": images, "targets": None})], cpu, None,
                    Record()).logits
    loaded, got_meta = rebuild_eval_model(tmp_path / "model.safetensors")
    with torch.no_grad():
        out = loaded(images)
    got = out[0] if isinstance(out, tuple) else out
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert got_meta["inference"] == ("backbone" if method.eval_model() is method.backbone else "method")
    if variant not in (None, "backbone", "single"):  # an ensemble or an exit: not the backbone's logits
        assert not torch.allclose(method.backbone.eval()(images)[0], want)


def test_an_ensemble_run_exports_and_evaluates_from_its_weights(tmp_path, run_cli):
    """ONE with eval=ensemble: `selfkd eval --weights` and `selfkd export` accept the run's model.safetensors and
    give the logits the run reported (they used to refuse it: 'does not fit model')."""
    import json

    import yaml

    from conftest import tiny_config

    # The synthetic reader's default options, so that `eval --weights --dataset synthetic` sees the same test set.
    cfg = tiny_config(tmp_path, method="one", epochs=1, data={"train_subset": 64, "options": {}})
    cfg["method"]["eval"] = "ensemble"
    recipe = tmp_path / "one.yaml"
    recipe.write_text(yaml.safe_dump(cfg))
    code, _, err = run_cli("train", "-c", recipe)
    assert code == 0, err
    run = tmp_path / "run_one"
    final = json.loads((run / "summary.json").read_text())["final"]
    code, out, err = run_cli("eval", "--weights", run / "model.safetensors", "--dataset", "synthetic", "--device", "cpu")
    assert code == 0, err
    assert json.loads(out)["top1"] == pytest.approx(final["top1"]) and json.loads(out)["nll"] == pytest.approx(final["nll"])
    code, out, err = run_cli("export", run, "--format", "torchscript")
    assert code == 0, err
