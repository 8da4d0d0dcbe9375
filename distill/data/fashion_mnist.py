"""Fashion-MNIST's product photos (28x28 grey) from Debian's package, a local folder, or a download."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from deploy.errors import InputError

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
SUPERCATEGORIES = ("clothing",) * 5 + ("footwear", "clothing", "footwear", "accessory", "footwear")
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"  # package dataset-fashion-mnist
_FILES = {"train": "train-{}-idx{}-ubyte.gz", "test": "t10k-{}-idx{}-ubyte.gz"}


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[0:4], "big")
    if magic != 0x800 + ndim:
        raise InputError(f"{path}: not an idx{ndim} file (magic {magic:#x})")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _download(split: str, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        from torchvision.datasets import FashionMNIST

        ds = FashionMNIST(str(cache), train=split == "train", download=True)
    except Exception as e:  # no network, mirror down: say how to fix it offline
        raise InputError(
            f"Fashion-MNIST not found in {DEBIAN_DIR} and the download failed ({type(e).__name__}: {e}); "
            "install the Debian package dataset-fashion-mnist or set data.generator.fashion_mnist_dir "
            "to a folder with the four idx .gz files") from e
    return ds.data.numpy(), ds.targets.numpy()


def load_fashion_mnist(split: str, directory: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 28, 28] uint8 and labels [N] of the official 'train' (60k) or 'test' (10k) split."""
    folder = Path(directory or DEBIAN_DIR)
    images_file = folder / _FILES[split].format("images", 3)
    labels_file = folder / _FILES[split].format("labels", 1)
    if images_file.is_file() and labels_file.is_file():
        return _read_idx(images_file, 3), _read_idx(labels_file, 1)
    if directory:
        raise InputError(f"data.generator.fashion_mnist_dir: {images_file} or {labels_file} is missing")
    return _download(split, Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgekd")
