"""Shared fixtures: a tiny random CLIP and a small generated dataset (session scoped)."""

from __future__ import annotations

import math

import pytest
import torch

import vlprompt as vp
from vlprompt.data import make_image_folder


@pytest.fixture(scope="session")
def tiny_bb():
    """tiny-clip (random init unless the embedded weights ship) with CLIP's temperature 100."""
    bb = vp.load_backbone("tiny-clip")
    with torch.no_grad():
        bb.model.logit_scale.fill_(math.log(100.0))
    return bb


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "shapes"
    make_image_folder(root, n_train=8, n_val=4, n_test=6, size=64, seed=0)
    return root


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("feature_cache"))
