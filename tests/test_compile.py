"""Graph capture on the CPU (the CUDA-graph comparison itself is in test_gpu.py), and the per-epoch state it relies
on: every method's per-epoch buffers are checkpointed, its training forward is one graph with no break, stays one graph across epochs (per-epoch values live in buffers), and each batch size
gets its own static graph. Dynamo traces with its "eager" backend here, so no kernels are compiled."""

import pytest
import torch
from torch._dynamo.utils import counters

from conftest import own_methods, per_step_summaries
from selfkd import create_method
from selfkd.config import DataConfig
from selfkd.data import build_train_loader
from selfkd.data.datasets import DatasetSplits, ImageTensors
from selfkd.engine.step import TrainStep, build_optimizer
from selfkd.methods import data_args, method_class


def _compile_with(monkeypatch, backend: str, fullgraph: bool):
    """TrainStep's own torch.compile call (its shape options kept) with a CPU-cheap backend; returns the number
    of graphs compiled so far."""
    real = torch.compile

    def compile_whole(model, mode=None, **options):
        return real(model, backend=backend, fullgraph=fullgraph, **options)

    monkeypatch.setattr(torch, "compile", compile_whole)
    torch._dynamo.reset()
    counters.clear()
    return lambda: counters["stats"]["unique_graphs"]


def random_splits(num_train: int) -> DatasetSplits:
    """Random uint8 32×32 images and labels of 10 classes (content does not matter for graph capture)."""
    gen = torch.Generator().manual_seed(0)
    train = ImageTensors(torch.randint(0, 256, (num_train, 3, 32, 32), dtype=torch.uint8, generator=gen),
                         torch.randint(0, 10, (num_train,), generator=gen))
    return DatasetSplits("random", train, train, 10, 3, (0.5,) * 3, (0.25,) * 3, 32, "crop_flip")


@pytest.fixture
def traced_only(monkeypatch):
    """Traced only (no kernels compiled), failing on any graph break."""
    yield _compile_with(monkeypatch, "eager", fullgraph=True)
    torch._dynamo.reset()


def _method(name, tiny_resnet, tmp_path, num_train):
    options = method_class(name).example_options(tiny_resnet(), tmp_path)
    return create_method(name, tiny_resnet(), num_classes=10, **options, **data_args(name, num_train))


@pytest.mark.parametrize("name", own_methods())
def test_per_epoch_state_survives_a_checkpoint(name, tiny_resnet, tmp_path):
    """A mid-epoch resume does not call on_epoch_start again, so every buffer it sets must be in the state_dict."""
    method = _method(name, tiny_resnet, tmp_path, 32)
    method.on_epoch_start(150, 300)
    restored = _method(name, tiny_resnet, tmp_path, 32)
    restored.load_state_dict(method.state_dict())
    for key, value in method.named_buffers():
        assert torch.equal(dict(restored.named_buffers())[key], value), key


@pytest.mark.parametrize("name", own_methods())
def test_training_forward_is_one_graph_for_every_epoch(name, tiny_resnet, tmp_path, traced_only):
    device = torch.device("cpu")
    splits = random_splits(32)
    method = _method(name, tiny_resnet, tmp_path, len(splits.train))
    method.train()
    loader = build_train_loader(splits, DataConfig(dataset="bench", batch_size=16), method.data_needs, device)
    loader.set_epoch(0)
    first = next(iter(loader))
    # One eager call first: state sized by the first batch (DSR's cache) is allocated outside any graph.
    method.on_epoch_start(0, 3)
    method(first.images, first.targets, first.index if method.data_needs.index else None)
    step = TrainStep(method, build_optimizer(method, 0.01, 0.9, False, 5e-4, False, device), device, "off", "default")
    for epoch in range(3):  # per-epoch values (PS-KD's alpha, ONE's ramp-up, SAD's switch, DSR's reset) change
        method.on_epoch_start(epoch, 3)
        loader.set_epoch(epoch)
        for batch in loader:
            step(batch.images, batch.targets, batch.index)
    assert step.stats.steps == 3 * len(loader)
    assert traced_only() == 1


def test_each_batch_size_gets_its_own_static_graph(tiny_resnet, traced_only):
    device = torch.device("cpu")
    method = create_method("ce", tiny_resnet(), num_classes=10)
    step = TrainStep(method, build_optimizer(method, 0.01, 0.9, False, 5e-4, False, device), device, "off", "default")
    for size in (8, 5, 3, 8, 5):
        step(torch.randn(size, 3, 32, 32), torch.randint(0, 10, (size,)))
    # Three sizes, three graphs; a dynamic-shape graph would have served 5 and 3 (and then 8) as one.
    assert traced_only() == 3


def _per_step_losses(name, tiny_resnet, tmp_path, compile_mode: str) -> list[dict]:
    device = torch.device("cpu")
    splits = random_splits(48)
    method = _method(name, tiny_resnet, tmp_path, len(splits.train))
    loader = build_train_loader(splits, DataConfig(dataset="bench", batch_size=16), method.data_needs, device)
    return per_step_summaries(method, loader, device, "off", compile_mode, lr=0.01)


@pytest.mark.parametrize("name", ["dsr", "lightskd", "pskd", "dlb", "frskd"])
def test_compiled_training_matches_eager_for_stateful_methods(name, tiny_resnet, tmp_path, monkeypatch):
    """Through AOTAutograd (what inductor compiles; buffer updates become graph outputs copied back), float32."""
    eager = _per_step_losses(name, tiny_resnet, tmp_path, "off")
    graphs = _compile_with(monkeypatch, "aot_eager", fullgraph=False)  # as in training: DSR's first step breaks
    compiled = _per_step_losses(name, tiny_resnet, tmp_path, "default")
    torch._dynamo.reset()
    assert graphs() >= 1 and len(compiled) == len(eager) == 6
    for i, (a, b) in enumerate(zip(eager, compiled)):
        assert a.keys() == b.keys()
        for key in a:
            # fp32 rounding of fused vs unfused kernels, amplified over six SGD steps, stays within these bounds (the
            # small DSR term, ~0.01, differs by up to 4e-5); a missing or stale state term moves it by its own size
            assert b[key] == pytest.approx(a[key], rel=5e-4, abs=1e-4), (i, key)
    stateful = {"dsr": "train/loss_dsr", "lightskd": "train/loss_dsr", "dlb": "train/loss_kd"}.get(name)
    if stateful:  # the state-carrying term is really active after the first step
        assert compiled[0][stateful] == 0 and compiled[1][stateful] > 0
