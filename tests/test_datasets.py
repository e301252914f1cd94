"""Dataset readers on tiny files written in each dataset's exact published layout."""
import gzip
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from torchvision.io import encode_jpeg, encode_png, write_file

from hand import write_fashion, write_idx
from selfkd.data import ImageFiles, ImageTensors, load_dataset
from selfkd.errors import ConfigError, DatasetError

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No $SELFKD_DATA, ./data = tmp_path/data, caches in tmp_path."""
    monkeypatch.delenv("SELFKD_DATA", raising=False)
    monkeypatch.setenv("SELFKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


# --------------------------------------------------------------------------- writers

class Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 byte strings (SHORT_BINSTRING/BINSTRING), as cPickle did for the
    original CIFAR files, so they load as str under ``encoding='latin1'``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_string(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_string
    dispatch[bytes] = save_py2_string


def py2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def bytes_keys(obj):
    """The same dicts as re-pickled by Python 3 after loading with encoding='bytes' (b'data' keys)."""
    if isinstance(obj, dict):
        return {k.encode(): bytes_keys(v) for k, v in obj.items()}
    if isinstance(obj, list) and obj and isinstance(obj[0], str):
        return [s.encode() for s in obj]
    return obj


def cifar10_batches(seed=0, bad_label=False):
    rng = np.random.default_rng(seed)
    batches = {}
    for name, n in [(f"data_batch_{i}", 3) for i in range(1, 6)] + [("test_batch", 4)]:
        labels = [int(v) for v in rng.integers(0, 10, n)]
        batches[name] = {"batch_label": f"{name} of 5", "labels": labels,
                         "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "filenames": [f"img_{name}_{j}.png" for j in range(n)]}
    if bad_label:
        batches["data_batch_2"]["labels"][1] = 10
    batches["batches.meta"] = {"num_cases_per_batch": 3, "label_names": CIFAR10_NAMES, "num_vis": 3072}
    return batches


def write_cifar10_folder(root: Path, batches) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, content in batches.items():
        (folder / name).write_bytes(py2_pickle(content))
    return folder


def write_cifar10_tar(root: Path, batches) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, content in {"readme.html": b"<html></html>", **batches}.items():
            data = content if isinstance(content, bytes) else pickle.dumps(bytes_keys(content), protocol=4)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


def write_image(file: Path, height=12, width=10, colour=(10, 20, 30)):
    file.parent.mkdir(parents=True, exist_ok=True)
    image = torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).expand(3, height, width).contiguous()
    write_file(str(file), encode_png(image) if file.suffix.lower() == ".png" else encode_jpeg(image, quality=95))


# --------------------------------------------------------------------------- CIFAR

def test_cifar10_folder_and_tarball_read_back_exactly(tmp_path):
    batches = cifar10_batches()
    train_data = np.concatenate([batches[f"data_batch_{i}"]["data"] for i in range(1, 6)])
    train_labels = sum((batches[f"data_batch_{i}"]["labels"] for i in range(1, 6)), [])
    for path in (write_cifar10_folder(tmp_path / "a", batches), write_cifar10_tar(tmp_path / "b", batches)):
        splits = load_dataset("cifar10", path.parent)
        assert isinstance(splits.train, ImageTensors) and splits.in_memory
        assert splits.train.images.shape == (15, 3, 32, 32) and splits.train.images.dtype == torch.uint8
        assert splits.test.images.shape == (4, 3, 32, 32)
        # Row layout of the originals: 1024 red, 1024 green, 1024 blue bytes, row-major.
        assert torch.equal(splits.train.images, torch.from_numpy(train_data).view(15, 3, 32, 32))
        assert splits.train.labels.tolist() == train_labels
        assert splits.test.labels.tolist() == batches["test_batch"]["labels"]
        assert splits.train.labels.dtype == torch.int64
        assert splits.classes == CIFAR10_NAMES and splits.num_classes == 10
        assert (splits.image_size, splits.augment, splits.mean[0]) == (32, "crop_flip", 0.4914)
        assert int(splits.train.images[3, 1, 0, 5]) == int(train_data[3, 1024 + 5])


def test_cifar100_folder(tmp_path):
    rng = np.random.default_rng(1)
    names = [f"class_{k:02d}" for k in range(100)]
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    content = {}
    for split, n in (("train", 6), ("test", 3)):
        content[split] = {"filenames": [f"{split}_{j}.png" for j in range(n)], "batch_label": f"{split} batch",
                          "fine_labels": [int(v) for v in rng.integers(0, 100, n)],
                          "coarse_labels": [int(v) for v in rng.integers(0, 20, n)],
                          "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        (folder / split).write_bytes(py2_pickle(content[split]))
    (folder / "meta").write_bytes(py2_pickle({"fine_label_names": names,
                                              "coarse_label_names": [f"super_{k}" for k in range(20)]}))
    splits = load_dataset("cifar100", folder)  # --data-dir naming the dataset folder itself
    assert splits.train.images.shape == (6, 3, 32, 32) and splits.test.images.shape == (3, 3, 32, 32)
    assert splits.train.labels.tolist() == content["train"]["fine_labels"]
    assert splits.test.labels.tolist() == content["test"]["fine_labels"]
    assert torch.equal(splits.test.images.reshape(3, -1), torch.from_numpy(content["test"]["data"]))
    assert splits.classes == names and splits.num_classes == 100


def test_cifar_damaged_files_are_dataset_errors(tmp_path):
    folder = write_cifar10_folder(tmp_path / "trunc", cifar10_batches())
    raw = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match=r"could not be read.*cifar-10-batches-py.*data_batch_1\.\.5"):
        load_dataset("cifar10", tmp_path / "trunc")

    write_cifar10_folder(tmp_path / "labels", cifar10_batches(bad_label=True))
    with pytest.raises(DatasetError, match=r"outside 0\.\.9 \(found 0\.\.10\)"):
        load_dataset("cifar10", tmp_path / "labels")

    archive = write_cifar10_tar(tmp_path / "tar", cifar10_batches())
    archive.write_bytes(archive.read_bytes()[:-200])
    with pytest.raises(DatasetError, match="could not be read"):
        load_dataset("cifar10", tmp_path / "tar")

    incomplete = tmp_path / "incomplete" / "cifar-10-batches-py"
    incomplete.mkdir(parents=True)
    (incomplete / "batches.meta").write_bytes(py2_pickle({"label_names": CIFAR10_NAMES}))
    with pytest.raises(DatasetError, match=r"has no data_batch_1, .*test_batch.*expected layout"):
        load_dataset("cifar10", tmp_path / "incomplete")

    # A pickle that would run code is refused, not executed.
    evil = write_cifar10_folder(tmp_path / "evil", cifar10_batches())
    (evil / "test_batch").write_bytes(pickle.dumps(Path("x")))
    with pytest.raises(DatasetError, match="unexpected object"):
        load_dataset("cifar10", tmp_path / "evil")


# --------------------------------------------------------------------------- Fashion-MNIST

def test_fashion_mnist_gz_idx(tmp_path):
    arrays = write_fashion(tmp_path / "fashion-mnist")
    splits = load_dataset("fashion_mnist", tmp_path)
    assert splits.train.images.shape == (5, 1, 28, 28) and splits.test.images.shape == (3, 1, 28, 28)
    assert torch.equal(splits.train.images[:, 0], torch.from_numpy(arrays["train"][0]))
    assert splits.test.labels.tolist() == arrays["t10k"][1].tolist()
    assert splits.in_channels == 1 and splits.classes[9] == "Ankle boot"


def test_fashion_mnist_truncated_files(tmp_path):
    folder = tmp_path / "gz" / "fashion-mnist"
    write_fashion(folder)
    raw = (folder / "train-images-idx3-ubyte.gz").read_bytes()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(raw[: len(raw) - 100])
    with pytest.raises(DatasetError, match="could not be read.*EOFError"):
        load_dataset("fashion_mnist", tmp_path / "gz")

    folder = tmp_path / "idx" / "fashion-mnist"
    write_fashion(folder)
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz", "rb") as fh:
        raw = fh.read()
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(raw[:-28])
    with pytest.raises(DatasetError, match=r"has 2324 data bytes but its header says \(3, 28, 28\)"):
        load_dataset("fashion_mnist", tmp_path / "idx")

    folder = tmp_path / "labels" / "fashion-mnist"
    write_fashion(folder)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.array([1, 12, 3]))
    with pytest.raises(DatasetError, match=r"outside 0\.\.9 \(found 1\.\.12\)"):
        load_dataset("fashion_mnist", tmp_path / "labels")

    write_fashion(tmp_path / "empty" / "fashion-mnist", n_train=0)  # well-formed files of no image
    with pytest.raises(DatasetError, match="'fashion_mnist' has no training images"):
        load_dataset("fashion_mnist", tmp_path / "empty")


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="no system Fashion-MNIST")
def test_real_fashion_mnist_from_system_folder():
    splits = load_dataset("fashion_mnist")
    assert splits.train.images.shape == (60000, 1, 28, 28) and splits.test.images.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(splits.train.labels), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(splits.test.labels), torch.full((10,), 1000))


# --------------------------------------------------------------------------- search and errors

def test_root_search_order(tmp_path, monkeypatch):
    write_fashion(tmp_path / "cli" / "fashion-mnist", n_train=2)
    write_fashion(tmp_path / "env" / "fashion-mnist", n_train=3)
    write_fashion(tmp_path / "data" / "fashion-mnist", n_train=4)  # ./data (cwd is tmp_path)
    monkeypatch.setenv("SELFKD_DATA", str(tmp_path / "env"))
    assert len(load_dataset("fashion_mnist", tmp_path / "cli").train) == 2
    assert len(load_dataset("fashion_mnist", tmp_path / "cli" / "fashion-mnist").train) == 2  # the folder itself
    assert len(load_dataset("fashion_mnist").train) == 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="Put it there, or leave --data-dir out"):  # used or refused, never skipped
        load_dataset("fashion_mnist", tmp_path / "empty")
    monkeypatch.delenv("SELFKD_DATA")
    assert len(load_dataset("fashion_mnist").train) == 4


def test_missing_dataset_names_layout_and_places(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset("cub200")
    message = str(err.value)
    assert "was not found" in message and "images.txt, image_class_labels.txt (1-based)" in message
    for place in (Path("data") / "cub200", Path("/usr/share/datasets") / "CUB_200_2011"):
        assert str(place) in message
    with pytest.raises(DatasetError, match=f"--data-dir {tmp_path / 'nowhere'} does not exist"):
        load_dataset("cub200", tmp_path / "nowhere")


def test_unknown_reader_option_is_config_error(tmp_path):
    write_fashion(tmp_path / "fashion-mnist")
    with pytest.raises(ConfigError, match="Unknown option 'colour' for dataset 'fashion_mnist'"):
        load_dataset("fashion_mnist", tmp_path, colour=True)


# --------------------------------------------------------------------------- TinyImageNet

TINY_WNIDS = ["n03000000", "n01000000", "n02000000"]  # wnids.txt order; classes are numbered sorted


def tiny_colour(label, i):
    return (30 + 80 * label, 200 - 40 * i, 60 + 25 * label + 10 * i)


def write_tiny(root: Path) -> Path:
    folder = root / "tiny-imagenet-200"
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    (folder / "words.txt").write_text("n00001740\tentity\nn01000000\tgoldfish, Carassius auratus\n"
                                      "n02000000\tEuropean fire salamander\nn03000000\tbullfrog, Rana catesbeiana\n")
    for wnid in TINY_WNIDS:
        label = sorted(TINY_WNIDS).index(wnid)
        for i in range(2):
            write_image(folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", 64, 64, tiny_colour(label, i))
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t63\t63\n")
    gray = torch.full((1, 64, 64), 77, dtype=torch.uint8)  # some originals are grayscale JPEGs
    write_file(str(folder / "train" / "n02000000" / "images" / "n02000000_1.JPEG"), encode_jpeg(gray, quality=95))
    rows = [("val_0.JPEG", "n02000000"), ("val_1.JPEG", "n03000000"), ("val_2.JPEG", "n01000000"),
            ("val_3.JPEG", "n03000000")]
    for j, (name, wnid) in enumerate(rows):
        write_image(folder / "val" / "images" / name, 64, 64, tiny_colour(sorted(TINY_WNIDS).index(wnid), j % 2))
    (folder / "val" / "val_annotations.txt").write_text(
        "".join(f"{name}\t{wnid}\t0\t32\t44\t62\n" for name, wnid in rows))
    (folder / "test" / "images").mkdir(parents=True)  # unlabelled test images: not used
    return folder


def test_tinyimagenet_original_layout(tmp_path):
    write_tiny(tmp_path)
    splits = load_dataset("tinyimagenet", tmp_path)
    assert splits.in_memory and splits.train.images.shape == (6, 3, 64, 64)
    assert splits.train.images.dtype == torch.uint8 and splits.test.images.shape == (4, 3, 64, 64)
    assert splits.train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert splits.test.labels.tolist() == [1, 2, 0, 2]
    assert splits.classes == ["goldfish, Carassius auratus", "European fire salamander", "bullfrog, Rana catesbeiana"]
    assert (splits.num_classes, splits.image_size, splits.augment, splits.padding) == (3, 64, "crop_flip", 8)
    mean_colour = splits.train.images.float().mean((2, 3))
    expected = torch.tensor([tiny_colour(k, i) for k in range(3) for i in range(2)], dtype=torch.float32)
    expected[3] = 77.0  # the grayscale one, expanded to three equal channels
    assert torch.allclose(mean_colour, expected, atol=2.5)
    assert torch.equal(splits.train.images[3, 0], splits.train.images[3, 2])


def test_tinyimagenet_cache_is_used_and_invalidated(tmp_path, monkeypatch):
    import selfkd.data.folders as folders

    folder = write_tiny(tmp_path)
    first = load_dataset("tinyimagenet", tmp_path)
    assert len(list((tmp_path / "cache").glob("tinyimagenet-*.npz"))) == 1

    def no_decoding(path):
        raise AssertionError("decoded although the cache is valid")

    with monkeypatch.context() as m:
        m.setattr(folders, "decode_rgb", no_decoding)
        cached = load_dataset("tinyimagenet", tmp_path)
    assert torch.equal(cached.train.images, first.train.images) and torch.equal(cached.test.images, first.test.images)

    changed = folder / "train" / "n01000000" / "images" / "n01000000_1.JPEG"
    write_image(changed, 64, 64, (250, 5, 5))
    os.utime(changed, ns=(1_000_000_000, 1_000_000_000))
    reread = load_dataset("tinyimagenet", tmp_path)
    assert torch.allclose(reread.train.images[1].float().mean((1, 2)), torch.tensor([250.0, 5.0, 5.0]), atol=2.5)
    assert len(list((tmp_path / "cache").glob("tinyimagenet-*.npz"))) == 1  # the stale cache was replaced


def test_tinyimagenet_bad_files(tmp_path):
    folder = write_tiny(tmp_path / "corrupt")
    bad = folder / "val" / "images" / "val_2.JPEG"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(DatasetError, match="Could not read the image .*val_2.JPEG") as err:
        load_dataset("tinyimagenet", tmp_path / "corrupt")
    assert "Traceback" not in str(err.value) and ".cpp" not in str(err.value)

    folder = write_tiny(tmp_path / "size")
    write_image(folder / "train" / "n03000000" / "images" / "n03000000_0.JPEG", 32, 64)
    with pytest.raises(DatasetError, match="n03000000_0.JPEG is 64x32 pixels"):
        load_dataset("tinyimagenet", tmp_path / "size")

    folder = write_tiny(tmp_path / "label")
    with open(folder / "val" / "val_annotations.txt", "a") as fh:
        fh.write("val_4.JPEG\tn09999999\t0\t32\t44\t62\n")
    with pytest.raises(DatasetError, match="line 5 labels val_4.JPEG with 'n09999999'"):
        load_dataset("tinyimagenet", tmp_path / "label")


# --------------------------------------------------------------------------- CUB-200-2011

CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
CUB_IMAGES = [("001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg", 1, 1),
              ("001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg", 1, 0),
              ("002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg", 2, 0),
              ("002.Laysan_Albatross/Laysan_Albatross_0003_1033.jpg", 2, 1),
              ("003.Sooty_Albatross/Sooty_Albatross_0031_1066.jpg", 3, 1)]


def write_cub(root: Path, images=CUB_IMAGES) -> Path:
    folder = root / "CUB_200_2011"
    for rel, _, _ in images:
        write_image(folder / "images" / rel)
    (folder / "classes.txt").write_text("".join(f"{k} {c}\n" for k, c in enumerate(CUB_CLASSES, 1)))
    (folder / "images.txt").write_text("".join(f"{i} {rel}\n" for i, (rel, _, _) in enumerate(images, 1)))
    (folder / "image_class_labels.txt").write_text("".join(f"{i} {y}\n" for i, (_, y, _) in enumerate(images, 1)))
    (folder / "train_test_split.txt").write_text("".join(f"{i} {t}\n" for i, (_, _, t) in enumerate(images, 1)))
    return folder


def test_cub200_original_layout(tmp_path):
    folder = write_cub(tmp_path)
    splits = load_dataset("cub200", tmp_path)
    assert isinstance(splits.train, ImageFiles) and not splits.in_memory
    assert splits.train.paths == [str(folder / "images" / CUB_IMAGES[i][0]) for i in (0, 3, 4)]
    assert splits.train.labels.tolist() == [0, 1, 2] and splits.test.labels.tolist() == [0, 1]
    assert splits.classes == ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross"]
    assert (splits.num_classes, splits.image_size, splits.augment) == (3, 224, "rrc_flip")
    assert splits.mean == (0.485, 0.456, 0.406) and splits.std == (0.229, 0.224, 0.225)


def test_cub200_errors(tmp_path):
    write_cub(tmp_path / "range", CUB_IMAGES + [("003.Sooty_Albatross/x.jpg", 4, 1)])
    with pytest.raises(DatasetError, match=r"outside 0\.\.2 \(found 0\.\.3\)"):
        load_dataset("cub200", tmp_path / "range")
    folder = write_cub(tmp_path / "missing")
    (folder / "images" / CUB_IMAGES[2][0]).unlink()
    with pytest.raises(DatasetError, match="1 of the 2 images listed .* are missing .*Laysan_Albatross_0002_1027"):
        load_dataset("cub200", tmp_path / "missing")


# --------------------------------------------------------------------------- Stanford Dogs

DOG_FOLDERS = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog"]


def write_dogs(root: Path, train, test) -> Path:
    """``train``/``test``: lists of (folder index, image number); labels are 1-based, as in lists.tar."""
    folder = root / "stanford_dogs"
    for k, i in train + test:
        write_image(folder / "Images" / DOG_FOLDERS[k] / f"{DOG_FOLDERS[k][:9]}_{i}.jpg")
    for name, rows in (("train_list.mat", train), ("test_list.mat", test)):
        files = np.empty((len(rows), 1), dtype=object)
        annotations = np.empty((len(rows), 1), dtype=object)
        for j, (k, i) in enumerate(rows):
            files[j, 0] = f"{DOG_FOLDERS[k]}/{DOG_FOLDERS[k][:9]}_{i}.jpg"
            annotations[j, 0] = f"{DOG_FOLDERS[k]}/{DOG_FOLDERS[k][:9]}_{i}"
        labels = np.array([[k + 1] for k, _ in rows], dtype=np.float64)
        scipy.io.savemat(folder / name, {"file_list": files, "annotation_list": annotations, "labels": labels})
    return folder


def test_stanford_dogs_original_layout(tmp_path):
    folder = write_dogs(tmp_path, [(0, 5927), (1, 10), (2, 3), (2, 4)], [(1, 11), (0, 12)])
    splits = load_dataset("stanford_dogs", tmp_path)
    assert splits.train.paths[0] == str(folder / "Images" / "n02085620-Chihuahua" / "n02085620_5927.jpg")
    assert splits.train.labels.tolist() == [0, 1, 2, 2] and splits.test.labels.tolist() == [1, 0]
    assert splits.test.paths[1].endswith("n02085620-Chihuahua/n02085620_12.jpg")
    assert splits.classes == ["Chihuahua", "Japanese_spaniel", "Maltese_dog"] and splits.num_classes == 3


def test_stanford_dogs_errors(tmp_path):
    folder = write_dogs(tmp_path / "range", [(0, 1), (1, 2)], [(2, 3)])
    mat = scipy.io.loadmat(folder / "test_list.mat")
    scipy.io.savemat(folder / "test_list.mat", {"file_list": mat["file_list"], "labels": np.array([[4.0]])})
    with pytest.raises(DatasetError, match=r"test_list.mat fall outside 0\.\.2 \(found 3\.\.3\)"):
        load_dataset("stanford_dogs", tmp_path / "range")
    folder = write_dogs(tmp_path / "mismatch", [(0, 1), (1, 2)], [(2, 3)])
    scipy.io.savemat(folder / "test_list.mat", {"file_list": mat["file_list"], "labels": np.array([[1.0]])})
    with pytest.raises(DatasetError, match="labels .*n02085936_3.jpg as class 1.*do not match"):
        load_dataset("stanford_dogs", tmp_path / "mismatch")
    (folder / "test_list.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 20)
    with pytest.raises(DatasetError, match="could not be read as a MATLAB file"):
        load_dataset("stanford_dogs", tmp_path / "mismatch")


# --------------------------------------------------------------------------- MIT-67

def test_mit67_official_lists(tmp_path):
    folder = tmp_path / "indoorCVPR_09"
    train = ["kitchen/int474.jpg", "bookstore/bookstore_0001.jpg", "airport_inside/airport_inside_0001.jpg",
             "kitchen/int475.jpg"]
    test = ["bookstore/bookstore_0002.jpg", "airport_inside/airport_inside_0002.jpg"]
    for rel in train + test:
        write_image(folder / "Images" / rel)
    (folder / "TrainImages.txt").write_text("\r\n".join(train) + "\r\n")  # Windows line ends, as published
    (folder / "TestImages.txt").write_text("\n".join(test))
    splits = load_dataset("mit67", tmp_path)
    assert splits.classes == ["airport_inside", "bookstore", "kitchen"]
    assert splits.train.labels.tolist() == [2, 1, 0, 2] and splits.test.labels.tolist() == [1, 0]
    assert splits.train.paths[0] == str(folder / "Images" / "kitchen" / "int474.jpg")
    with open(folder / "TestImages.txt", "a") as fh:
        fh.write("\nwinecellar/wine_0001.jpg\n")
    with pytest.raises(DatasetError, match="line 3: 'winecellar/wine_0001.jpg' is in no category folder"):
        load_dataset("mit67", tmp_path)


# --------------------------------------------------------------------------- any image folder

def test_imagefolder(tmp_path):
    folder = tmp_path / "pets"
    for split, files in (("train", ["cat/a.jpg", "cat/b.PNG", "dog/sub/c.jpeg", "dog/d.png"]),
                         ("val", ["cat/e.jpg", "dog/f.png"])):
        for rel in files:
            write_image(folder / split / rel)
    (folder / "train" / "cat" / "notes.txt").write_text("not an image")
    (folder / "train" / ".cache").mkdir()
    splits = load_dataset("imagefolder", folder)
    assert splits.classes == ["cat", "dog"] and splits.num_classes == 2
    assert [Path(p).name for p in splits.train.paths] == ["a.jpg", "b.PNG", "d.png", "c.jpeg"]
    assert splits.train.labels.tolist() == [0, 0, 1, 1] and splits.test.labels.tolist() == [0, 1]
    assert (splits.image_size, splits.augment) == (224, "rrc_flip")
    write_image(folder / "val" / "bird" / "g.jpg")
    with pytest.raises(DatasetError, match=r"only in train: none; only in val: \['bird'\]"):
        load_dataset("imagefolder", folder)
