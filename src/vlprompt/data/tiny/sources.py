"""Real image sources of the tiny suite: packaged data read without any download.

Required: scikit-learn ``load_digits`` and scikit-image's bundled sample images. Optional (skipped when
absent): Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``,
or ``$VLPROMPT_FASHION_MNIST``) and Animal-MNIST (``pip install --no-deps animal-mnist``).
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np

FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot")
#: Animal-MNIST's labels 0..9 (its README lists the classes in this order).
ANIMAL_CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
#: class name -> scikit-image sample image used by the real-texture task.
SKIMAGE_TEXTURES = {
    "brick wall": "brick", "grass": "grass", "gravel": "gravel", "lunar surface": "moon",
    "star field": "hubble_deep_field", "stained tissue": "immunohistochemistry", "printed text": "page",
    "cells under a microscope": "cell",
}


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits as uint8 images in [0, 255] and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.rint(d.images / 16.0 * 255).astype(np.uint8), d.target.astype(np.int64)


def skimage_image(name: str) -> np.ndarray:
    """A scikit-image sample image as uint8 H x W x 3."""
    from skimage import data

    img = np.asarray(getattr(data, name)())
    if img.dtype != np.uint8:
        img = np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8) if img.max() <= 1 else img.astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return img[..., :3]


def fashion_dir() -> Path:
    return Path(os.environ.get("VLPROMPT_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))


def has_fashion() -> bool:
    d = fashion_dir()
    return (d / "t10k-images-idx3-ubyte.gz").is_file() and (d / "t10k-labels-idx1-ubyte.gz").is_file()


def fashion_mnist() -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's 10,000 test-file images (28x28 uint8) and labels."""
    d = fashion_dir()
    with gzip.open(d / "t10k-images-idx3-ubyte.gz", "rb") as fh:
        images = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(d / "t10k-labels-idx1-ubyte.gz", "rb") as fh:
        labels = np.frombuffer(fh.read(), np.uint8, offset=8).astype(np.int64)
    return images, labels


def _animal_dir() -> Path | None:
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations))) / "data" / "Animal_MNIST"
    return d if (d / "animal_data_version_3.gz").is_file() else None


def has_animals() -> bool:
    return _animal_dir() is not None


def animal_mnist() -> tuple[np.ndarray, np.ndarray]:
    """Animal-MNIST's 10,000 28x28 uint8 silhouettes and labels (the package's own pickled arrays;
    importing the package itself would need TensorFlow)."""
    d = _animal_dir()
    assert d is not None
    with gzip.open(d / "animal_data_version_3.gz", "rb") as fh:
        images = np.asarray(pickle.load(fh), dtype=np.uint8)  # noqa: S301 - file shipped in the package
    with gzip.open(d / "animal_label_version_3.gz", "rb") as fh:
        labels = np.asarray(pickle.load(fh), dtype=np.int64)  # noqa: S301
    return images, labels
