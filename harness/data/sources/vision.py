"""On-disk torchvision datasets, a user's image folder, and synthetic datasets made on the fly.

The on-disk sets are read by torchvision's own classes with ``download=False``: nothing is fetched
at run time. Each set's official train and test files are pooled into one ``(x, y)``, because the
harness makes its own stratified train / val / test splits (see :func:`harness.data.core.split_indices`).

The folder that holds the files is, in order: the path after the colon (``cifar10:/data/cifar``),
the study's ``data_root``, ``$HARNESS_DATA_ROOT``, ``~/.cache/harness/data``. Missing or corrupt
files raise a one-line :class:`~harness.errors.UserError` that says which files, where, and how to
get them.

>>> from harness.data.core import load_dataset
>>> x, y = load_dataset("synthetic_cifar")  # no files needed; the same tensors every time
>>> tuple(x.shape), int(y.max())
((5000, 3, 32, 32), 9)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.data.core import _standardise
from harness.errors import UserError
from harness.registry import DATASETS

__all__ = ["DEFAULT_DATA_ROOT", "IMAGE_SIZE", "data_root", "image_size"]

DEFAULT_DATA_ROOT = "~/.cache/harness/data"  # when neither the study nor $HARNESS_DATA_ROOT says
IMAGE_SIZE = 64  # imagefolder side in pixels, small for CPU runs; $HARNESS_IMAGE_SIZE overrides

Pair = tuple[torch.Tensor, torch.Tensor]


def data_root(root: str | None = None) -> Path:
    """The folder to read datasets from: ``root``, else ``$HARNESS_DATA_ROOT``, else the default."""
    return Path(root or os.environ.get("HARNESS_DATA_ROOT") or DEFAULT_DATA_ROOT).expanduser()


def image_size() -> int:
    """Side of ``imagefolder``'s square images: ``$HARNESS_IMAGE_SIZE`` or :data:`IMAGE_SIZE`."""
    text = os.environ.get("HARNESS_IMAGE_SIZE", str(IMAGE_SIZE))
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"HARNESS_IMAGE_SIZE must be a positive pixel count, but got {text!r}.")
    return int(text)


def _to_tensors(x: np.ndarray, y: np.ndarray | Sequence[int]) -> Pair:
    # Same result as data._standardise (one global mean/std), but the uint8 pixels become float32
    # once and are standardised in place: CIFAR-10 would otherwise need three 700 MB float copies.
    t = torch.from_numpy(np.ascontiguousarray(x)).float()
    std, mean = torch.std_mean(t, correction=0)
    return t.sub_(mean).div_(std), torch.as_tensor(np.asarray(y), dtype=torch.int64)


def _pool(parts: Sequence) -> Pair:
    """SVHN and STL-10 objects (``data`` N x C x H x W, ``labels``) pooled into one pair."""
    x, y = (np.concatenate([getattr(p, a) for p in parts]) for a in ("data", "labels"))
    return _to_tensors(x, y)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _require(name: str, folder: Path, files: Sequence[str], how: str) -> None:
    """Raise a one-line UserError unless every one of ``files`` is in ``folder``."""
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise UserError(
            f"dataset {name!r} not found: missing {', '.join(missing)} in {folder}; {how}, or "
            f"pick the folder that holds them with {name}:PATH, $HARNESS_DATA_ROOT or the "
            "study's data_root."
        )


def _read(name: str, root: Path, read: Callable[[], Pair], how: str) -> Pair:
    """Run torchvision's reader; its integrity and parse failures become one-line UserErrors."""
    try:
        return read()
    except RuntimeError as e:
        if "corrupted" in str(e):  # torchvision's wording when an md5 sum differs
            raise UserError(
                f"dataset {name!r} in {root} failed torchvision's md5 integrity check (a partial "
                f"download or different files); {how} again."
            ) from None
        error = e
    except (AssertionError, ValueError, TypeError, EOFError, OSError) as e:  # unparsable files
        error = e
    reason = _one_line(error) or type(error).__name__
    raise UserError(f"dataset {name!r} in {root} could not be read ({reason}); {how}.")


# --- MNIST family: raw, uncompressed IDX files in <root>/<Class>/raw ---------------------------


def _mnist_family(name: str, cls_name: str, root: str | None) -> Pair:
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    base = data_root(root)
    raw = base / cls_name / "raw"
    how = f"download the four .gz files from {cls.mirrors[0]} into {raw} and gunzip them"
    _require(name, raw, [Path(f).stem for f, _ in cls.resources], how)

    def read() -> Pair:
        parts = [cls(str(base), train=train, download=False) for train in (True, False)]
        x = torch.cat([p.data for p in parts]).unsqueeze(1).numpy()
        return _to_tensors(x, torch.cat([p.targets for p in parts]).numpy())

    return _read(name, base, read, how)


@DATASETS.register("mnist")
def mnist(root: str | None = None) -> Pair:
    """All 70,000 MNIST digits (official train + test pooled); 1 x 28 x 28, 10 classes."""
    return _mnist_family("mnist", "MNIST", root)


@DATASETS.register("fashion_mnist")
def fashion_mnist(root: str | None = None) -> Pair:
    """All 70,000 Fashion-MNIST images (official train + test pooled); 1 x 28 x 28, 10 classes."""
    return _mnist_family("fashion_mnist", "FashionMNIST", root)


@DATASETS.register("kmnist")
def kmnist(root: str | None = None) -> Pair:
    """All 70,000 Kuzushiji-MNIST characters (train + test pooled); 1 x 28 x 28, 10 classes."""
    return _mnist_family("kmnist", "KMNIST", root)


# --- CIFAR: python pickle batches in <root>/cifar-10-batches-py or <root>/cifar-100-python -----


def _cifar(name: str, cls_name: str, root: str | None) -> Pair:
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    base = data_root(root)
    names = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    how = f"download {cls.url} and extract it in {base}"
    _require(name, base / cls.base_folder, names, how)

    def read() -> Pair:
        parts = [cls(str(base), train=train, download=False) for train in (True, False)]
        x = np.concatenate([p.data.transpose(0, 3, 1, 2) for p in parts])  # torchvision holds HWC
        return _to_tensors(x, np.concatenate([p.targets for p in parts]))

    return _read(name, base, read, how)


@DATASETS.register("cifar10")
def cifar10(root: str | None = None) -> Pair:
    """All 60,000 CIFAR-10 images (official train + test pooled); 3 x 32 x 32, 10 classes."""
    return _cifar("cifar10", "CIFAR10", root)


@DATASETS.register("cifar100")
def cifar100(root: str | None = None) -> Pair:
    """All 60,000 CIFAR-100 images (official train + test pooled); 3 x 32 x 32, 100 classes."""
    return _cifar("cifar100", "CIFAR100", root)


@DATASETS.register("svhn")
def svhn(root: str | None = None) -> Pair:
    """The 99,289 SVHN digits, train + test pooled (no extra); 3 x 32 x 32, 10 classes.

    Digit 0 is label 0 (the files say 10; torchvision remaps it).
    """
    from torchvision.datasets import SVHN

    base = data_root(root)
    urls = [SVHN.split_list[s][0] for s in ("train", "test")]
    how = f"download {' and '.join(urls)} into {base}"
    _require("svhn", base, [SVHN.split_list[s][1] for s in ("train", "test")], how)

    def read() -> Pair:
        parts = [SVHN(str(base), split=s, download=False) for s in ("train", "test")]
        return _pool(parts)

    return _read("svhn", base, read, how)


@functools.cache
def _labelled_stl10() -> type:
    from torchvision.datasets import STL10
    from torchvision.datasets.utils import check_integrity

    class LabelledSTL10(STL10):
        """STL10 whose md5 check skips unlabeled_X.bin: 2.6 GB the labelled splits never read."""

        def _check_integrity(self) -> bool:
            return all(
                check_integrity(os.path.join(self.root, self.base_folder, f), md5)
                for f, md5 in self.train_list + self.test_list
                if not f.startswith("unlabeled")
            )

    return LabelledSTL10


@DATASETS.register("stl10")
def stl10(root: str | None = None) -> Pair:
    """The 13,000 labelled STL-10 images (train + test pooled, no unlabeled); 3 x 96 x 96."""
    cls = _labelled_stl10()
    base = data_root(root)
    names = [f for f, _ in cls.train_list + cls.test_list if not f.startswith("unlabeled")]
    how = f"download {cls.url} and extract it in {base}"
    _require("stl10", base / cls.base_folder, names, how)

    def read() -> Pair:
        parts = [cls(str(base), split=s, download=False) for s in ("train", "test")]
        return _pool(parts)

    return _read("stl10", base, read, how)


@DATASETS.register("imagefolder")
def imagefolder(root: str | None = None) -> Pair:
    """A user's images, one sub-folder per class (``imagefolder:/path/to/images``); RGB, square.

    Each image is resized (shorter side) and centre-cropped to :func:`image_size` pixels; labels
    are the indices of the sorted class folder names, as torchvision's ``ImageFolder`` gives them.
    """
    base = data_root(root)
    how = "write imagefolder:PATH, with one folder of images per class in PATH (PATH/cat/1.png)"
    if not base.is_dir() or not any(p.is_dir() for p in base.iterdir()):
        raise UserError(f"dataset 'imagefolder' found no class folders in {base}; {how}.")

    def read() -> Pair:
        from torchvision import datasets, transforms

        size = image_size()
        tf = transforms.Compose(
            [transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()]
        )
        ds = datasets.ImageFolder(str(base), transform=tf)
        x = np.empty((len(ds), 3, size, size), dtype=np.uint8)  # float only once, at the end
        for i in range(len(ds)):
            x[i] = ds[i][0].numpy()
        return _to_tensors(x, ds.targets)

    return _read("imagefolder", base, read, how)


# --- synthetic: generated, never downloaded ----------------------------------------------------


def _synthetic(n: int, shape: tuple[int, int, int], seed: int, noise: float) -> Pair:
    """``n`` images of 10 smooth class prototypes, shifted, rescaled and cluttered.

    Each image is its class's prototype moved by up to 2 pixels and scaled by 0.5-1.5, plus a
    random mix of 16 class-free smooth patterns and pixel noise, both scaled by ``noise``. On
    held-out images the class means alone score 70-80 % and a linear model on pixels over 90 %:
    far above chance (10 %) yet short of perfect, so strategies have room to differ.
    """
    n_classes = 10
    c, h, w = shape
    shift = 2
    g = torch.Generator().manual_seed(seed)

    def smooth(m: int) -> torch.Tensor:  # neighbouring pixels correlate, as in photographs
        coarse = torch.randn(m, c, h // 4, w // 4, generator=g)
        size = (h + 2 * shift, w + 2 * shift)
        return F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)

    prototypes = smooth(n_classes)
    clutter = smooth(16)[:, :, shift : shift + h, shift : shift + w]
    y = torch.randperm(n, generator=g) % n_classes  # exactly balanced classes
    offsets = torch.randint(0, 2 * shift + 1, (n, 2), generator=g)
    x = torch.empty(n, c, h, w)
    for dy in range(2 * shift + 1):  # 25 vectorised copies instead of n small ones
        for dx in range(2 * shift + 1):
            m = (offsets[:, 0] == dy) & (offsets[:, 1] == dx)
            x[m] = prototypes[y[m], :, dy : dy + h, dx : dx + w]
    x *= torch.empty(n, 1, 1, 1).uniform_(0.5, 1.5, generator=g)
    x += torch.einsum("nm,mchw->nchw", torch.randn(n, 16, generator=g) * noise / 4, clutter)
    x += noise * torch.randn(x.shape, generator=g)
    return _standardise(x.numpy()), y


@DATASETS.register("synthetic_mnist")
def synthetic_mnist(root: str | None = None) -> Pair:
    """5,000 generated MNIST-sized images, 1 x 28 x 28, 10 balanced classes; the same every call."""
    return _synthetic(5000, (1, 28, 28), seed=0, noise=2.0)


@DATASETS.register("synthetic_cifar")
def synthetic_cifar(root: str | None = None) -> Pair:
    """5,000 generated CIFAR-sized images, 3 x 32 x 32, 10 balanced classes; the same every call."""
    return _synthetic(5000, (3, 32, 32), seed=1, noise=3.0)  # more pixels, so more noise
