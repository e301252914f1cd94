"""Segmentation data: VOC and seg_folder in their real layouts (palette PNGs, split lists), bad-input errors, joint
transforms, and fmnist_scenes (masks against hand-painted layouts, determinism, cache, train/test items)."""
import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

import selfkd.data.decoding as decoding
import selfkd.data.segmentation as seg
import selfkd.data.transforms as transforms
from hand import write_fashion_rectangles, write_idx
from selfkd.data import load_dataset
from selfkd.data.augment import seg_scale_crop_flip
from selfkd.data.datasets import SegmentationFiles
from selfkd.errors import ConfigError, DatasetError
from selfkd.tasks import IGNORE_LABEL

PALETTE = [v for k in range(256) for v in (k * 37 % 256, k * 91 % 256, k * 53 % 256)]


def palette_png(path, mask: np.ndarray) -> None:
    image = Image.fromarray(mask.astype(np.uint8))
    image.putpalette(PALETTE)  # an 'L' image with a palette becomes a 'P' (palette) image, as VOC's masks are
    image.save(path)


def random_pair(rng, folder_images, folder_masks, name, num_classes, suffix=".jpg"):
    h, w = (int(v) for v in rng.integers(12, 20, 2))
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder_images / f"{name}{suffix}")
    mask = rng.integers(0, num_classes, (h, w))
    mask[0] = 255  # a boundary row
    palette_png(folder_masks / f"{name}.png", mask)
    return mask


@pytest.fixture
def voc(tmp_path):
    """A VOCdevkit with VOC2012 (train/val/trainval) and VOC2007 (trainval/test); returns (folder, masks by id)."""
    rng = np.random.default_rng(0)
    devkit, masks = tmp_path / "VOCdevkit", {}
    lists = {2012: {"train": ["2008_000001", "2008_000002"], "val": ["2008_000003"]},
             2007: {"trainval": ["000001", "000002", "000004"], "test": ["000003"]}}
    lists[2012]["trainval"] = lists[2012]["train"] + lists[2012]["val"]
    for year, splits in lists.items():
        base = devkit / f"VOC{year}"
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (base / sub).mkdir(parents=True)
        for name, ids in splits.items():
            (base / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
            for i in ids:
                if i not in masks:
                    masks[i] = random_pair(rng, base / "JPEGImages", base / "SegmentationClass", i, 21)
    return devkit, masks


def test_voc_splits_load_and_palette_masks_decode_to_class_indices(voc):
    devkit, masks = voc
    data = load_dataset("voc", data_dir=devkit)
    assert (data.task, data.num_classes, data.classes[0]) == ("segmentation", 21, "background")
    assert isinstance(data.train, SegmentationFiles) and not data.in_memory
    names = [p.split("/")[-1] for p in data.train.paths]
    assert names == ["000001.jpg", "000002.jpg", "000004.jpg", "2008_000001.jpg", "2008_000002.jpg", "2008_000003.jpg"]
    assert [p.split("/")[-1] for p in data.test.mask_paths] == ["000003.png"]
    for image_path, mask_path in zip(data.train.paths + data.test.paths, data.train.mask_paths + data.test.mask_paths):
        image, mask = decoding.read_pair(image_path, mask_path, 21)
        want = masks[mask_path.split("/")[-1][:-4]]
        assert mask.dtype == torch.uint8 and mask.numpy().tolist() == want.tolist()
        assert image.shape == (3, *want.shape)
    standard = load_dataset("voc", data_dir=devkit, split="voc2012")
    assert len(standard.train) == 2 and [p.split("/")[-1] for p in standard.test.paths] == ["2008_000003.jpg"]


def test_a_split_list_naming_a_missing_file_is_refused_when_read(voc):
    devkit, _ = voc
    missing = devkit / "VOC2012" / "SegmentationClass" / "2008_000002.png"
    missing.unlink()
    with pytest.raises(DatasetError, match=str(missing)):
        load_dataset("voc", data_dir=devkit, split="voc2012")


def test_bad_masks_are_refused_naming_the_file(tmp_path):
    image = tmp_path / "a.jpg"
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(image)
    wrong_size, bad_label, broken, rgb = (tmp_path / f"{n}.png" for n in ("size", "label", "broken", "rgb"))
    palette_png(wrong_size, np.zeros((8, 11)))
    palette_png(bad_label, np.full((8, 10), 30))
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(rgb)
    with pytest.raises(DatasetError, match=f"{wrong_size} is 11x8 .* {image} is 10x8"):
        decoding.read_pair(str(image), str(wrong_size), 21)
    with pytest.raises(DatasetError, match=f"{bad_label} has label.* 30"):
        decoding.read_pair(str(image), str(bad_label), 21)
    with pytest.raises(DatasetError, match=str(broken)):
        decoding.read_pair(str(image), str(broken), 21)
    with pytest.raises(DatasetError, match=f"{rgb} is a RGB image"):
        decoding.read_pair(str(image), str(rgb), 21)


def test_seg_folder_reads_lists_with_or_without_extensions(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "mine"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    masks = {n: random_pair(rng, root / "images", root / "masks", n, 3, ".png") for n in ("a", "b", "c")}
    (root / "train.txt").write_text("a.png\nb\n")
    (root / "test.txt").write_text("c\n")
    with pytest.raises(DatasetError, match="classes.txt"):
        load_dataset("seg_folder", data_dir=root)
    data = load_dataset("seg_folder", data_dir=root, num_classes=3)
    assert data.classes == ["class_0", "class_1", "class_2"] and len(data.train) == 2
    (root / "classes.txt").write_text("sky\nroad\ncar\n")
    data = load_dataset("seg_folder", data_dir=root)
    assert (data.num_classes, data.classes, data.task) == (3, ["sky", "road", "car"], "segmentation")
    _, mask = decoding.read_pair(data.test.paths[0], data.test.mask_paths[0], 3)
    assert mask.numpy().tolist() == masks["c"].tolist()
    with pytest.raises(DatasetError, match="names 3 classes but num_classes=4"):
        load_dataset("seg_folder", data_dir=root, num_classes=4)
    (root / "classes.txt").write_text("sky\n")
    with pytest.raises(DatasetError, match="has 1 class.*at least two classes"):
        load_dataset("seg_folder", data_dir=root)
    with pytest.raises(ConfigError, match="'num_classes' must be greater than or equal to 2 \\(got 1\\)"):
        load_dataset("synthetic_seg", num_classes=1)


def coded_pair(h=20, w=30):
    """An image whose every channel is 10 × the mask, so any misalignment shows."""
    mask = torch.randint(0, 21, (h, w), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return (mask * 10).expand(3, h, w).clone(), mask


def test_file_transform_keeps_image_and_mask_aligned_and_pads_masks_with_ignore():
    image, mask = coded_pair()
    transform = transforms.build_seg_transform(True, crop_size=32, short_side=(20, 20), blur=False)  # no resampling
    for seed in range(4):
        torch.manual_seed(seed)
        out_image, out_mask = transform(image, mask)
        assert out_image.shape == (3, 32, 32) and out_mask.shape == (32, 32)
        labelled = out_mask != 255
        assert int(labelled.sum()) == 20 * 30  # the whole image, padded to the crop with 255
        assert torch.equal(out_image[:, labelled], (out_mask[labelled] * 10).expand(3, -1))
        assert not out_image[:, ~labelled].any()
    torch.manual_seed(0)
    _, scaled = transforms.build_seg_transform(True, crop_size=32, short_side=(40, 60))(image, mask)
    assert set(scaled.unique().tolist()) <= set(mask.unique().tolist()) | {255}  # nearest: no new labels
    assert all(torch.equal(a, b) for a, b in zip(transforms.build_seg_transform(False)(image, mask), (image, mask)))
    small_image, small_mask = transforms.build_seg_transform(False, eval_size=16)(image, mask)
    assert small_image.shape == (3, 16, 16) and small_mask.shape == (16, 16)


def test_batched_joint_augmentation_aligns_crops_flips_and_pads():
    masks = torch.randint(0, 10, (8, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    images = (masks * 10)[:, None].expand(8, 3, 16, 16).contiguous()
    out, labels = seg_scale_crop_flip(images, masks, 16, (1.0, 1.0), True, torch.Generator().manual_seed(1),
                                       IGNORE_LABEL)
    assert out.shape == (8, 3, 16, 16) and labels.dtype == torch.int64
    torch.testing.assert_close(out, (labels * 10.0)[:, None].expand(8, 3, 16, 16), atol=1e-3, rtol=0)
    mirrored = [torch.equal(labels[i], masks[i].flip(-1).long()) for i in range(8)]
    assert any(mirrored) and not all(mirrored)
    assert all(m or torch.equal(labels[i], masks[i].long()) for i, m in enumerate(mirrored))
    again = seg_scale_crop_flip(images, masks, 16, (0.5, 0.5), True, torch.Generator().manual_seed(2), IGNORE_LABEL)
    out, labels = seg_scale_crop_flip(images, masks, 16, (0.5, 0.5), True, torch.Generator().manual_seed(2),
                                      IGNORE_LABEL)
    assert torch.equal(again[0], out) and torch.equal(again[1], labels)  # seeded
    padded = labels == 255
    assert padded.flatten(1).sum(1).tolist() == [16 * 16 - 8 * 8] * 8  # the 8×8 scaled image, 255 around it
    assert not out.permute(1, 0, 2, 3)[:, padded].any()


# --------------------------------------------------------------------------- fmnist_scenes

def test_resize_items_is_bilinear_in_integer_maths():
    items = torch.randint(0, 256, (5, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    for size in (20, 36):
        want = torch.nn.functional.interpolate(items[:, None].float(), size=(size, size), mode="bilinear",
                                               align_corners=False)[:, 0]
        got = torch.from_numpy(seg.resize_items(items.numpy(), size)).float()
        assert (got - want).abs().max() <= 1.0
    assert seg.resize_items(np.array([[[0, 255], [0, 255]]], np.uint8), 4)[0, 0].tolist() == [0, 64, 191, 255]


def test_scene_masks_match_the_layout_painted_by_hand():
    rng = np.random.default_rng(3)
    items, classes = np.full((10, 28, 28), 255, np.uint8), np.arange(10)
    layout = seg.scene_layout(rng, 20, 10, 2, 4, 6, 12, 32)
    images, masks = seg.compose_scenes(items, classes, layout, 32, 16)
    expected = np.zeros((20, 32, 32), np.uint8)
    for n in range(20):
        for j in range(layout.count[n]):
            top, left, size = layout.top[n, j], layout.left[n, j], layout.size[n, j]
            expected[n, top:top + size, left:left + size] = classes[layout.item[n, j]] + 1
    assert masks.tolist() == expected.tolist()
    assert images.shape == (20, 1, 32, 32) and images[:, 0].tolist() == np.where(expected > 0, 255, 0).tolist()
    banded = seg.compose_scenes(items, classes, layout, 32, 16, ignore_band=1)[1]
    for n in range(3):
        for y in range(32):
            for x in range(32):
                window = expected[n, max(y - 1, 0):y + 2, max(x - 1, 0):x + 2]
                assert banded[n, y, x] == (255 if (window != expected[n, y, x]).any() else expected[n, y, x])


def test_scene_shapes_have_their_holes_filled():
    ring = np.full((1, 28, 28), 200, np.uint8)
    ring[0, 9:19, 9:19] = 0
    layout = seg.SceneLayout(*(np.array(v) for v in ([1], [[0]], [[28]], [[0]], [[0]])))
    images, masks = seg.compose_scenes(ring, np.array([4]), layout, 28, 16)
    assert (masks == 5).all()  # the hole is labelled with the item
    assert images[0, 0, 12, 12] == 0 and images[0, 0, 0, 0] == 200


@pytest.fixture
def fake_fashion_mnist(tmp_path, monkeypatch):
    """30 training items (a rectangle of intensity 200) and 10 test items (intensity 100), labels 0..9."""
    folder = tmp_path / "fashion-mnist"
    write_fashion_rectangles(folder)
    monkeypatch.setenv("SELFKD_CACHE", str(tmp_path / "cache"))
    return folder


def test_fmnist_scenes_are_deterministic_cached_and_split_by_source(fake_fashion_mnist, monkeypatch):
    options = dict(train_size=12, test_size=6, canvas=32, min_size=8, max_size=14)
    data = load_dataset("fmnist_scenes", data_dir=fake_fashion_mnist, **options)
    assert (data.task, data.num_classes, data.in_channels, data.classes[0]) == ("segmentation", 11, 1, "background")
    assert data.train.images.shape == (12, 1, 32, 32) and data.train.labels.shape == (12, 32, 32)
    assert data.test.images.shape == (6, 1, 32, 32) and data.train.labels.dtype == torch.uint8
    assert data.train.images.max() == 200 and data.test.images.max() == 100  # each split from its own items
    assert set(data.train.labels.unique().tolist()) <= set(range(11)) and data.train.labels.max() > 0
    cached = list((fake_fashion_mnist.parent / "cache").glob("fmnist_scenes-*.npz"))
    assert len(cached) == 1

    def fail(*args, **kwargs):
        raise AssertionError("composed again instead of read from the cache")

    monkeypatch.setattr(seg, "compose_scenes", fail)
    monkeypatch.setattr(seg, "read_fashion_mnist", fail)  # a hit reads no item
    again = load_dataset("fmnist_scenes", data_dir=fake_fashion_mnist, **options)
    for a, b in ((data.train, again.train), (data.test, again.test)):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    # the same bytes on every machine (integer maths, seeded NumPy generators)
    digest = hashlib.sha256(data.train.images.numpy().tobytes() + data.train.labels.numpy().tobytes()).hexdigest()
    assert digest[:16] == "4acffea89a682339"
    monkeypatch.undo()
    monkeypatch.setenv("SELFKD_CACHE", str(fake_fashion_mnist.parent / "cache"))
    other = load_dataset("fmnist_scenes", data_dir=fake_fashion_mnist, seed=1, **options)
    assert not torch.equal(other.train.labels, data.train.labels)
    items = np.zeros((30, 28, 28), np.uint8)
    items[:, 6:22, 8:20] = 150
    write_idx(fake_fashion_mnist / "train-images-idx3-ubyte.gz", items)  # changed files: composed again
    assert load_dataset("fmnist_scenes", data_dir=fake_fashion_mnist, **options).train.images.max() == 150


def test_fmnist_scenes_load_with_a_warning_when_the_cache_cannot_be_written(fake_fashion_mnist, monkeypatch):
    blocker = fake_fashion_mnist.parent / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("SELFKD_CACHE", str(blocker / "cache"))
    with pytest.warns(UserWarning, match="Could not cache the fmnist_scenes scenes.*SELFKD_CACHE"):
        data = load_dataset("fmnist_scenes", data_dir=fake_fashion_mnist, train_size=4, test_size=2, canvas=32,
                            min_size=8, max_size=14)
    assert data.train.images.shape == (4, 1, 32, 32)
    assert sorted(p.name for p in fake_fashion_mnist.parent.iterdir()) == ["fashion-mnist", "not_a_folder"]


def test_fmnist_scenes_refuses_inconsistent_sizes(fake_fashion_mnist):
    with pytest.raises(ConfigError, match="min_size ≤ max_size ≤ canvas"):
        load_dataset("fmnist_scenes", data_dir=fake_fashion_mnist, canvas=32, max_size=40)


def test_in_memory_segmentation_is_evaluated_at_its_own_size_unless_eval_size_is_set():
    from selfkd.data import DataConfig, DataNeeds, build_test_loader, build_train_loader

    data = load_dataset("synthetic_seg", train_size=4, test_size=3, image_size=24)
    cfg = DataConfig(dataset="synthetic_seg", batch_size=4, eval_batch_size=4, image_size=16)
    assert next(iter(build_train_loader(data, cfg, DataNeeds(), torch.device("cpu")))).images.shape == (4, 3, 16, 16)
    batch = next(iter(build_test_loader(data, cfg, torch.device("cpu"))))
    assert batch.images.shape == (3, 3, 24, 24) and torch.equal(batch.targets, data.test.labels.long())
    cfg.eval_size = 12
    batch = next(iter(build_test_loader(data, cfg, torch.device("cpu"))))
    assert batch.images.shape == (3, 3, 12, 12) and batch.targets.shape == (3, 12, 12)
