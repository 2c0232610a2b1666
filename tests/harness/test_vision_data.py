"""On-disk datasets read from tiny files in the real formats, through torchvision's own classes.

torchvision checks md5 sums for CIFAR, SVHN and STL-10; the tests point its expected sums at the
files they wrote, so that check still runs.
"""

import hashlib
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets as tvd

from harness import cli
from harness.data.core import load_dataset
from harness.data.sources.vision import _labelled_stl10
from harness.errors import UserError
from harness.registry import DATASETS

ON_DISK = ["mnist", "fashion_mnist", "kmnist", "cifar10", "cifar100", "svhn", "stl10",
           "imagefolder"]
CIFAR10 = (tvd.CIFAR10, "cifar-10-batches-py", "labels", "label_names", 10,
           [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"])
CIFAR100 = (tvd.CIFAR100, "cifar-100-python", "fine_labels", "fine_label_names", 100,
            ["train"], ["test"])
SYNTHETIC = {"synthetic_mnist": (1, 28, 28), "synthetic_cifar": (3, 32, 32)}


def _pixels(n, shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def _labels(n, k=10, seed=0):
    return np.random.default_rng(seed + 100).integers(0, k, n).astype(np.int64)


def _write(path, data: bytes) -> list:
    """Write ``data`` to ``path``; return torchvision's ``[name, md5]`` entry for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return [path.name, hashlib.md5(data).hexdigest()]


def _assert_round_trip(x, y, pixels, labels):
    """``(x, y)`` holds exactly ``pixels`` (N x C x H x W uint8) standardised, and ``labels``."""
    u = pixels.astype(np.float64)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert tuple(x.shape) == pixels.shape
    assert y.tolist() == list(labels)
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std(correction=0)) - 1) < 1e-4
    np.testing.assert_allclose(x.numpy(), (u - u.mean()) / u.std(), atol=1e-4)


def _idx(array: np.ndarray) -> bytes:
    # IDX: magic 0x08 (unsigned byte) and the number of dims, then each dim, all big-endian
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def _write_mnist(root, cls_name, n_train=12, n_test=8):
    pixels, labels = _pixels(n_train + n_test, (28, 28)), _labels(n_train + n_test)
    raw = root / cls_name / "raw"
    for prefix, part in (("train", slice(0, n_train)), ("t10k", slice(n_train, None))):
        _write(raw / f"{prefix}-images-idx3-ubyte", _idx(pixels[part]))
        _write(raw / f"{prefix}-labels-idx1-ubyte", _idx(labels[part].astype(np.uint8)))
    return pixels[:, None], labels


def _write_cifar(root, monkeypatch, spec):
    cls, folder, label_key, meta_key, k, train, test = spec
    sizes = [3] * len(train) + [4] * len(test)
    pixels, labels = _pixels(sum(sizes), (3, 32, 32)), _labels(sum(sizes), k)
    entries, start = [], 0
    for name, n in zip(train + test, sizes):
        part = slice(start, start + n)
        batch = {"data": pixels[part].reshape(n, -1), label_key: labels[part].tolist()}
        entries.append(_write(root / folder / name, pickle.dumps(batch)))
        start += n
    names = pickle.dumps({meta_key: [str(i) for i in range(k)]})
    meta = _write(root / folder / cls.meta["filename"], names)
    monkeypatch.setattr(cls, "train_list", entries[: len(train)])
    monkeypatch.setattr(cls, "test_list", entries[len(train) :])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": meta[1]})
    return pixels, labels


def _write_svhn(root, monkeypatch):
    from scipy.io import savemat

    pixels, labels = _pixels(10, (3, 32, 32)), _labels(10)
    split_list = dict(tvd.SVHN.split_list)
    for split, part in (("train", slice(0, 6)), ("test", slice(6, None))):
        path = root / f"{split}_32x32.mat"
        # the .mat holds H x W x C x N and calls digit 0 "10"
        digits = np.where(labels[part] == 0, 10, labels[part])[:, None]
        savemat(path, {"X": pixels[part].transpose(2, 3, 1, 0), "y": digits})
        md5 = hashlib.md5(path.read_bytes()).hexdigest()
        split_list[split] = [split_list[split][0], path.name, md5]
    monkeypatch.setattr(tvd.SVHN, "split_list", split_list)
    return pixels, labels


def _write_stl10(root, monkeypatch, n_train=5, n_test=3):
    pixels, labels = _pixels(n_train + n_test, (3, 96, 96)), _labels(n_train + n_test)
    folder = root / "stl10_binary"
    entries = []
    for prefix, part in (("train", slice(0, n_train)), ("test", slice(n_train, None))):
        # images are stored column-major; labels count from 1
        images = pixels[part].transpose(0, 1, 3, 2).tobytes()
        entries.append(_write(folder / f"{prefix}_X.bin", images))
        digits = (labels[part] + 1).astype(np.uint8).tobytes()
        entries.append(_write(folder / f"{prefix}_y.bin", digits))
    # no unlabeled_X.bin on disk: the labelled sets must not need it
    monkeypatch.setattr(tvd.STL10, "train_list", [*entries[:2], ["unlabeled_X.bin", "0" * 32]])
    monkeypatch.setattr(tvd.STL10, "test_list", entries[2:])
    return pixels, labels


def test_every_on_disk_and_synthetic_dataset_is_registered():
    assert set(ON_DISK) | set(SYNTHETIC) <= set(DATASETS.names())


@pytest.mark.parametrize(
    "name, cls_name", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST"), ("kmnist", "KMNIST")]
)
def test_mnist_family_pools_train_and_test_idx_files(tmp_path, name, cls_name):
    pixels, labels = _write_mnist(tmp_path, cls_name)
    _assert_round_trip(*DATASETS.get(name)(root=str(tmp_path)), pixels, labels)


def test_cifar10_reads_the_python_batches_through_torchvision(tmp_path, monkeypatch):
    pixels, labels = _write_cifar(tmp_path, monkeypatch, CIFAR10)
    _assert_round_trip(*DATASETS.get("cifar10")(root=str(tmp_path)), pixels, labels)


def test_cifar100_uses_the_fine_labels(tmp_path, monkeypatch):
    pixels, labels = _write_cifar(tmp_path, monkeypatch, CIFAR100)
    _assert_round_trip(*DATASETS.get("cifar100")(root=str(tmp_path)), pixels, labels)


def test_svhn_reads_mat_files_and_labels_digit_zero_as_zero(tmp_path, monkeypatch):
    pixels, labels = _write_svhn(tmp_path, monkeypatch)
    assert 0 in labels
    _assert_round_trip(*DATASETS.get("svhn")(root=str(tmp_path)), pixels, labels)


def test_stl10_reads_the_labelled_binaries_without_the_unlabeled_file(tmp_path, monkeypatch):
    pixels, labels = _write_stl10(tmp_path, monkeypatch)
    _assert_round_trip(*DATASETS.get("stl10")(root=str(tmp_path)), pixels, labels)
    assert issubclass(_labelled_stl10(), tvd.STL10)


def test_imagefolder_labels_sorted_class_folders_and_keeps_pixels(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_IMAGE_SIZE", "8")
    pixels = _pixels(4, (8, 8, 3))
    for i, cls in enumerate(["dog", "cat"]):  # written out of order; labels follow sorted names
        for j in range(2):
            (tmp_path / cls).mkdir(exist_ok=True)
            Image.fromarray(pixels[2 * i + j]).save(tmp_path / cls / f"{j}.png")
    x, y = load_dataset(f"imagefolder:{tmp_path}")
    expected = np.concatenate([pixels[2:], pixels[:2]]).transpose(0, 3, 1, 2)  # cat first
    _assert_round_trip(x, y, expected, [0, 0, 1, 1])


def test_imagefolder_makes_rgb_squares_of_the_default_size(tmp_path, monkeypatch):
    monkeypatch.delenv("HARNESS_IMAGE_SIZE", raising=False)
    for cls, mode, size in (("gray", "L", (100, 80)), ("colour", "RGB", (40, 70))):
        (tmp_path / cls).mkdir()
        colour = 200 if mode == "L" else (10, 20, 30)
        Image.new(mode, size, color=colour).save(tmp_path / cls / "a.png")
        Image.new(mode, size).save(tmp_path / cls / "b.png")
    x, y = DATASETS.get("imagefolder")(root=str(tmp_path))
    assert x.shape == (4, 3, 64, 64) and y.tolist() == [0, 0, 1, 1]


def test_imagefolder_rejects_a_bad_image_size(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    monkeypatch.setenv("HARNESS_IMAGE_SIZE", "big")
    with pytest.raises(UserError, match="HARNESS_IMAGE_SIZE must be a positive .* but got 'big'"):
        DATASETS.get("imagefolder")(root=str(tmp_path))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("mnist", "MNIST/raw"), ("fashion_mnist", "FashionMNIST/raw"), ("kmnist", "KMNIST/raw"),
        ("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
        ("svhn", "train_32x32.mat"), ("stl10", "stl10_binary"), ("imagefolder", "no class folders"),
    ],
)
def test_missing_files_give_one_line_naming_the_files_the_root_and_the_fix(
    tmp_path, name, expected
):
    with pytest.raises(UserError) as err:
        DATASETS.get(name)(root=str(tmp_path))
    message = str(err.value)
    assert "\n" not in message
    assert f"dataset {name!r}" in message and str(tmp_path) in message and expected in message
    if name != "imagefolder":
        assert f"{name}:PATH" in message and "$HARNESS_DATA_ROOT" in message and "http" in message


def test_missing_lists_only_the_absent_files(tmp_path, monkeypatch):
    _write_cifar(tmp_path, monkeypatch, CIFAR10)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    expected = r"missing data_batch_3 in \S+cifar-10-batches-py; download https://"
    with pytest.raises(UserError, match=expected):
        DATASETS.get("cifar10")(root=str(tmp_path))


def test_root_comes_from_the_name_then_harness_data_root_then_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_DATA_ROOT", str(tmp_path / "env"))
    with pytest.raises(UserError, match=str(tmp_path / "env" / "MNIST")):
        load_dataset("mnist")
    with pytest.raises(UserError, match=str(tmp_path / "named" / "MNIST")):
        load_dataset(f"mnist:{tmp_path / 'named'}")
    monkeypatch.delenv("HARNESS_DATA_ROOT")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cache = tmp_path / "home" / ".cache" / "harness" / "data"
    with pytest.raises(UserError, match=str(cache / "MNIST")):
        load_dataset("mnist")


def test_a_failed_md5_check_is_a_one_line_user_error(tmp_path, monkeypatch):
    _write_svhn(tmp_path, monkeypatch)
    (tmp_path / "test_32x32.mat").write_bytes(b"truncated")
    expected = r"^dataset 'svhn' in \S+ failed torchvision's md5 integrity check [^\n]*$"
    with pytest.raises(UserError, match=expected):
        DATASETS.get("svhn")(root=str(tmp_path))


def test_an_unreadable_idx_file_is_a_one_line_user_error(tmp_path):
    _write_mnist(tmp_path, "MNIST")
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03 bad")
    with pytest.raises(UserError, match=r"^dataset 'mnist' in \S+ could not be read \([^\n]*$"):
        DATASETS.get("mnist")(root=str(tmp_path))


def test_the_cli_exits_2_with_one_line_for_a_missing_dataset(tmp_path, monkeypatch, capsys):
    # stands in for a study whose dataset is cifar10:<tmp_path>
    monkeypatch.setattr(cli, "cmd_study", lambda args: load_dataset(f"cifar10:{tmp_path}"))
    assert cli.main(["study", "anything"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: dataset 'cifar10' not found") and err.count("\n") == 1


@pytest.mark.parametrize("name, shape", SYNTHETIC.items())
def test_synthetic_sets_are_deterministic_balanced_and_standardised(name, shape):
    x, y = load_dataset(name)
    x2, y2 = DATASETS.get(name)()  # generated afresh, not the cached pair
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.shape == (5000, *shape) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == [500] * 10
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-3


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_sets_are_learnable_but_not_trivial(name):
    from sklearn.neighbors import NearestCentroid

    x, y = load_dataset(name)
    x, y = x.flatten(1).numpy(), y.numpy()
    accuracy = NearestCentroid().fit(x[:3000], y[:3000]).score(x[3000:], y[3000:])
    assert 0.5 < accuracy < 0.99  # chance is 0.1; a perfect score would leave strategies no room
