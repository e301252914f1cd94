"""FileLoader: worker-decoded, per-sample seeded batches of image files."""
import pytest
import torch
from torchvision.io import encode_png, write_file

from selfkd.config import DataConfig
from selfkd.data import ImageFiles, build_test_loader, build_train_loader, load_dataset
from selfkd.data.files import FileLoader
from selfkd.data.loaders import AugmentSpec
from selfkd.data.needs import DataNeeds
from selfkd.data.resident import ResidentLoader
from selfkd.data.samplers import Batches, ShardedSequential
from selfkd.data.small_images import read_synthetic
from selfkd.errors import DatasetError

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
CPU = torch.device("cpu")
COLOUR = (100, 150, 200)


def write_png(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(str(path), encode_png(image))
    return str(path)


@pytest.fixture
def files(tmp_path):
    """10 PNGs of different sizes: #0 is a constant colour, #1 is random 20x30, the rest random."""
    gen = torch.Generator().manual_seed(0)
    images = [torch.tensor(COLOUR, dtype=torch.uint8).view(3, 1, 1).expand(3, 16, 16).contiguous()]
    images += [torch.randint(0, 256, (3, 20 + 2 * (k % 3), 30 - 3 * (k % 2)), dtype=torch.uint8, generator=gen)
               for k in range(9)]
    paths = [write_png(tmp_path / "img" / f"{k}.png", image) for k, image in enumerate(images)]
    return ImageFiles(paths, torch.arange(10) % 3), images


def loader(data, sampler, spec=None, views=1, workers=0, train=True, seed=0):
    spec = spec or AugmentSpec("rrc_flip", 16)
    return FileLoader(data, sampler, CPU, MEAN, STD, spec, views, workers, train=train, seed=seed)


def by_index(file_loader) -> dict[int, torch.Tensor]:
    return {int(i): image for batch in file_loader for i, image in zip(batch.index, batch.images)}


def normalised(rgb):
    return (torch.tensor(rgb, dtype=torch.float32) / 255 - torch.tensor(MEAN)) / torch.tensor(STD)


def test_test_batches_are_centre_crops_normalised(files):
    data, images = files
    test = loader(data, ShardedSequential(10, 4), AugmentSpec("rrc_flip", 16, test_resize=20), train=False)
    batches = list(test)
    assert len(test) == 3 and test.num_samples == 10
    assert [tuple(b.images.shape) for b in batches] == [(4, 3, 16, 16), (4, 3, 16, 16), (2, 3, 16, 16)]
    first = batches[0]
    assert first.images.dtype == torch.float32 and first.images.is_contiguous()  # the default layout
    assert first.index.tolist() == [0, 1, 2, 3] and first.index.dtype == torch.int64
    assert first.targets.tolist() == [0, 1, 2, 0] and first.targets.dtype == torch.int64
    assert torch.allclose(first.images[0], normalised(COLOUR).view(3, 1, 1).expand(3, 16, 16), atol=1e-5)
    # #1 is 20x30: Resize(20) keeps it, CenterCrop(16) takes rows 2..17 and columns 7..22.
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    expected = (images[1][:, 2:18, 7:23].float() / 255 - mean) / std
    assert torch.allclose(first.images[1], expected, atol=1e-5)


def test_evaluation_shards_take_only_the_steps_that_give_them_images(files):
    """3 test images, one per process per step, over 2 processes: rank 1 has no image for the second step, which it
    skips (the loader crashed on the empty batch); evaluation has no per-step collective."""
    data, _ = files
    shards = [ShardedSequential(3, 1, rank=r, world=2) for r in range(2)]
    assert [len(s) for s in shards] == [2, 1]
    assert [[b.tolist() for b in s] for s in shards] == [[[0], [2]], [[1]]]
    three = ImageFiles(data.paths[:3], data.labels[:3])
    assert [b.index.tolist() for b in loader(three, ShardedSequential(3, 1, rank=1, world=2), train=False)] == [[1]]
    assert len(ShardedSequential(1, 4, rank=1, world=2)) == 0  # fewer images than processes: none at all


def test_augmentation_depends_on_seed_epoch_index_only(files):
    data, _ = files
    spec = AugmentSpec("rrc_flip", 16, scale=(0.2, 1.0))
    reference = by_index(loader(data, Batches(10, 4, seed=0), spec, seed=5))
    # Other batching, order and worker processes: the same image for every sample.
    other = loader(data, Batches(10, 3, seed=1), spec, workers=2, seed=5)
    assert all(torch.equal(image, reference[i]) for i, image in by_index(other).items())
    assert len(reference) == 10
    other.set_epoch(1)
    next_epoch = by_index(other)
    assert sum(not torch.equal(next_epoch[i], reference[i]) for i in range(1, 10)) >= 8
    reseeded = by_index(loader(data, Batches(10, 4, seed=0), spec, seed=6))
    assert sum(not torch.equal(reseeded[i], reference[i]) for i in range(1, 10)) >= 8


def test_views_are_view_major_and_independent(files):
    data, _ = files
    two = loader(data, Batches(10, 4, seed=0), views=2, seed=3)
    one = loader(data, Batches(10, 4, seed=0), views=1, seed=3)
    for pair, single in zip(two, one):
        b = len(single.index)
        assert pair.images.shape == (2 * b, 3, 16, 16)
        assert torch.equal(pair.index, single.index.repeat(2)) and torch.equal(pair.targets, single.targets.repeat(2))
        assert torch.equal(pair.images[:b], single.images)  # view 0 is seeded like the single view
        assert not torch.equal(pair.images[b:][single.index != 0], pair.images[:b][single.index != 0])


def test_iter_from_resumes_mid_epoch(files):
    data, _ = files
    file_loader = loader(data, Batches(10, 3, seed=2), workers=2, seed=1)
    file_loader.set_epoch(4)
    full = list(file_loader)
    assert len(full) == len(file_loader) == 4
    next(iter(file_loader.iter_from(0)))  # an abandoned pass must not disturb the next one
    tail = list(file_loader.iter_from(2))
    assert len(tail) == 2
    for a, b in zip(full[2:], tail):
        assert torch.equal(a.index, b.index) and torch.equal(a.images, b.images)


def test_crop_flip_pads_with_zeros(files):
    data, _ = files
    only_constant = ImageFiles(data.paths[:1] * 8, torch.zeros(8, dtype=torch.int64))
    crops = torch.cat([b.images for b in loader(only_constant, Batches(8, 8), AugmentSpec("crop_flip", 16, 4))])
    colour, black = normalised(COLOUR).view(1, 3, 1, 1), normalised((0, 0, 0)).view(1, 3, 1, 1)
    is_colour = torch.isclose(crops, colour, atol=1e-5).all(1)
    assert bool((is_colour | torch.isclose(crops, black, atol=1e-5).all(1)).all())
    assert int(is_colour.sum((1, 2)).min()) >= 12 * 12  # a shift of at most 4 pixels each way
    assert int((~is_colour).sum()) > 0


def test_corrupt_file_is_a_dataset_error(files):
    data, _ = files
    with open(data.paths[6], "r+b") as fh:
        fh.truncate(30)
    file_loader = loader(data, Batches(10, 5, seed=0), workers=2)
    with pytest.raises(DatasetError, match=r"Could not read the image .*6\.png: .*corrupt") as err:
        list(file_loader)
    message = str(err.value)
    del err  # the traceback would keep the workers alive until a garbage collection
    assert "Traceback" not in message and ".cpp" not in message


def test_pipeline_builds_file_loaders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gen = torch.Generator().manual_seed(1)
    for split, count in (("train", 6), ("val", 2)):
        for name in ("ant", "bee"):
            for k in range(count):
                write_png(tmp_path / "bugs" / split / name / f"{k}.png",
                          torch.randint(0, 256, (3, 24, 20), dtype=torch.uint8, generator=gen))
    splits = load_dataset("imagefolder", tmp_path / "bugs")
    cfg = DataConfig(dataset="imagefolder", batch_size=4, eval_batch_size=3, image_size=16, workers=0)
    train = build_train_loader(splits, cfg, DataNeeds(class_partners=1), CPU, seed=0)
    assert isinstance(train, FileLoader) and train.num_samples == 12 and len(train) == 3
    batch = next(iter(train))
    assert batch.images.shape == (8, 3, 16, 16)
    assert torch.equal(batch.targets[:4], batch.targets[4:])  # [anchors; same-class partners]
    test = build_test_loader(splits, cfg, CPU)
    assert sorted(int(i) for b in test for i in b.index) == [0, 1, 2, 3]

    resident = ResidentLoader(read_synthetic(train_size=20).train, Batches(20, 8), CPU, (0.5,) * 3, (0.25,) * 3, None)
    assert resident.num_samples == 20
