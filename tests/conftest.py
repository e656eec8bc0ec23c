"""Shared fixtures: a tiny random CLIP and a small generated dataset (session scoped)."""

from __future__ import annotations

import math

import pytest
import torch

import vlprompt as vp
from vlprompt.data import make_image_folder


@pytest.fixture(autouse=True)
def _quiet_progress(monkeypatch):
    """No ``[vlprompt]`` progress lines on captured stderr (tests of those lines use ``progress_lines``)."""
    monkeypatch.setenv("VLPROMPT_QUIET", "1")


@pytest.fixture
def progress_lines(monkeypatch):
    """Progress output enabled, as for a user without ``--quiet``."""
    monkeypatch.delenv("VLPROMPT_QUIET", raising=False)


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


@pytest.fixture
def in_process(monkeypatch):
    """Run the sweep's runs in this process (no spawn, torch import and backbone
    load per sweep; the worker pool itself is covered by test_sweep.py)."""
    from vlprompt.sweep import run as run_mod

    def run_local(runs, workers, on_start, on_done, threads=None):
        for r in runs:
            on_start(r.id)
            on_done(run_mod.execute(r))

    monkeypatch.setattr(run_mod, "run_local", run_local)


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the test (tiny matrices: avoids thread contention on shared CPUs)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
