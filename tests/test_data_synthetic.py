"""The synthetic image-folder generator."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from vlprompt.data import load_dataset, make_image_folder
from vlprompt.errors import ConfigError, DatasetError


def test_fast_and_loadable(tmp_path):
    start = time.perf_counter()
    root = make_image_folder(tmp_path / "shapes", n_train=20, n_val=2, n_test=4)
    assert time.perf_counter() - start < 2.0
    task = load_dataset("imagefolder", root)
    assert task.classnames == ["blue triangle", "green square", "purple cross", "red circle", "yellow star"]
    assert (len(task.train), len(task.val), len(task.test)) == (100, 10, 20)
    assert Image.open(task.train[0].path).size == (64, 64)


def test_deterministic_reuse_and_regenerate(tmp_path):
    a = make_image_folder(tmp_path / "a", n_train=3, n_val=0, n_test=1, seed=3)
    b = make_image_folder(tmp_path / "b", n_train=3, n_val=0, n_test=1, seed=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*.jpg"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.jpg"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert not (a / "val").exists()
    mtime = (a / files[0]).stat().st_mtime_ns
    make_image_folder(tmp_path / "a", n_train=3, n_val=0, n_test=1, seed=3)  # reused
    assert (a / files[0]).stat().st_mtime_ns == mtime
    make_image_folder(tmp_path / "a", n_train=2, n_val=0, n_test=1, seed=3)  # regenerated
    assert len(list((a / "train").rglob("*.jpg"))) == 10


def test_refuses_foreign_folder_and_bad_args(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not an \\(empty\\) folder"):
        make_image_folder(tmp_path)
    with pytest.raises(ConfigError):
        make_image_folder(tmp_path / "x", classes=("one",))
    with pytest.raises(ConfigError):
        make_image_folder(tmp_path / "x", n_train=0)


def test_learnable_by_a_linear_probe(tmp_path):
    classes = ("red circle", "green square", "blue triangle", "yellow star", "purple cross", "orange ring")
    root = make_image_folder(tmp_path / "s", classes=classes, n_train=20, n_val=0, n_test=20, size=32)
    task = load_dataset("imagefolder", root)

    def features(samples):  # a 4x4x4 colour histogram: a crude, position-invariant feature
        rows = []
        for s in samples:
            q = np.asarray(Image.open(s.path), dtype=np.int64) // 64
            rows.append(np.bincount((q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).ravel(), minlength=64))
        x = np.stack(rows) / (32 * 32)
        return np.hstack([x, np.ones((len(x), 1))])

    x, y = features(task.train), np.array([s.label for s in task.train])
    targets = np.eye(len(classes))[y]
    w = np.linalg.solve(x.T @ x + 1e-3 * np.eye(x.shape[1]), x.T @ targets)  # ridge regression probe
    xt, yt = features(task.test), np.array([s.label for s in task.test])
    accuracy = float(((xt @ w).argmax(1) == yt).mean())
    assert accuracy >= 0.9, accuracy


def test_arbitrary_class_names_get_distinct_styles(tmp_path):
    from vlprompt.data.synthetic import _class_styles

    styles = _class_styles(["cat", "red circle", "dog", "big red circle"] + [f"c{i}" for i in range(20)])
    assert len(set(styles)) == len(styles)
    assert len({colour for colour, _ in styles[:11]}) == 11
