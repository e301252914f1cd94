"""Batches reach the model in the run's memory format with canonical strides, whatever their channel count.

For C = 1 a tensor with strides (HW, 1, W, 1) counts as both contiguous and channels_last, and PyTorch then runs
the whole network channels_last; on AVX2-only CPUs oneDNN's 1×1 convolution backward hangs or crashes on such
activations. So the strides themselves are asserted, not ``is_contiguous``.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import tiny_config

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def canonical(shape, layout) -> tuple[int, ...]:
    return torch.empty(shape, device="meta", memory_format=layout).stride()


def loaders(dataset: str, augment: str, channels: int, layout, **data):
    from selfkd.config import build_config
    from selfkd.data import build_test_loader, build_train_loader, load_dataset
    from selfkd.data.needs import DataNeeds

    options = {"num_classes": 4, "train_size": 16, "test_size": 8, "image_size": 12, "channels": channels}
    cfg = build_config(tiny_config(Path("/nonexistent"), data={"dataset": dataset, "options": options, "augment": augment,
                                               "batch_size": 8, "eval_batch_size": 8, **data}))
    splits = load_dataset(dataset, None, **options)
    cpu = torch.device("cpu")
    return (build_train_loader(splits, cfg.data, DataNeeds(views=2), cpu, memory_format=layout),
            build_test_loader(splits, cfg.data, cpu, memory_format=layout))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dataset, augment", [("synthetic", "crop_flip"), ("synthetic", "rrc_flip"),
                                              ("synthetic", "flip"), ("synthetic", "none"),
                                              ("synthetic_seg", "seg_scale_crop_flip"), ("synthetic_seg", "none")])
def test_resident_batches_have_the_canonical_strides_of_the_layout(dataset, augment, channels, layout):
    for loader in loaders(dataset, augment, channels, LAYOUTS[layout]):
        images = next(iter(loader)).images
        assert images.stride() == canonical(images.shape, LAYOUTS[layout]), (images.shape, images.stride())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_file_batches_have_the_canonical_strides_of_the_layout(tmp_path, layout):
    from hand import write_image_folder
    from selfkd.config import build_config
    from selfkd.data import build_test_loader, build_train_loader, load_dataset
    from selfkd.data.needs import DataNeeds

    write_image_folder(tmp_path / "images")
    cfg = build_config(tiny_config(tmp_path, data={"dataset": "imagefolder", "options": {}, "image_size": 16,
                                                   "workers": 0, "batch_size": 2, "eval_batch_size": 2}))
    splits = load_dataset("imagefolder", tmp_path / "images")
    cpu = torch.device("cpu")
    for loader in (build_train_loader(splits, cfg.data, DataNeeds(), cpu, memory_format=LAYOUTS[layout]),
                   build_test_loader(splits, cfg.data, cpu, memory_format=LAYOUTS[layout])):
        images = next(iter(loader)).images
        assert images.stride() == canonical(images.shape, LAYOUTS[layout])


@pytest.mark.parametrize("dataset", ["synthetic", "synthetic_seg"])
def test_one_channel_training_runs_every_1x1_convolution_contiguous_on_cpu(dataset):
    """What reaches the 1×1 (shortcut) convolutions of a training step on single-channel images: contiguous
    activations with canonical strides, as the CPU run's layout is (never channels_last)."""
    from selfkd.config import build_config
    from selfkd.data import load_dataset
    from selfkd.engine.setup import build_run

    options = {"num_classes": 4, "train_size": 16, "test_size": 8, "image_size": 16, "channels": 1}
    model = {"name": "cifar_resnet18", "width": 4} if dataset == "synthetic" else \
        {"name": "frskd_seg_resnet18", "channels": 8, "head_channels": 8}
    cfg = tiny_config(Path("/nonexistent"), data={"dataset": dataset, "options": options, "batch_size": 8,
                                                  "eval_batch_size": 8})
    cfg = build_config({**cfg, "model": model})
    parts = build_run(cfg, load_dataset(dataset, None, **options), torch.device("cpu"))
    seen = []

    def check(module, inputs):
        x = inputs[0]
        seen.append(x.stride() == canonical(x.shape, torch.contiguous_format))

    ones = [m for m in parts.method.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)]
    hooks = [m.register_forward_pre_hook(check) for m in ones]
    batch = next(iter(parts.train_loader))
    parts.step(batch.images, batch.targets, batch.index)
    for hook in hooks:
        hook.remove()
    assert ones and len(seen) >= len(ones) and all(seen)


def test_channels_last_on_a_cpu_falls_back_to_contiguous_with_a_warning():
    """oneDNN's AVX2 convolution backward crashes on channels_last activations (Segmentation fault, double free),
    so a CPU run never uses that layout, even when the config asks for it."""
    from selfkd.config import build_config
    from selfkd.errors import SelfKDWarning

    cfg = build_config(tiny_config(Path("/nonexistent"), train={"channels_last": True}))
    with pytest.warns(SelfKDWarning, match="channels_last"):
        assert cfg.resolved("cpu", distributed=False).train.channels_last is False
    assert cfg.resolved("cuda", distributed=False).train.channels_last is True
