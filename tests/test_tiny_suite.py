"""The tiny benchmark suite: determinism, on-disk formats, masks, variants, VTAB lists, leakage, loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sklearn")
pytest.importorskip("skimage")

import vlprompt as vp  # noqa: E402
from vlprompt.data.tiny import SPECS, caption, mask_relpath, render_scene, tiny_task_names  # noqa: E402
from vlprompt.data.tiny.suite import (  # noqa: E402
    N_TEST,
    N_TRAIN,
    N_VAL,
    N_VARIANT_TEST,
    SUITE_VERSION,
    default_suite_dir,
    generate_suite,
)

ZHOU = [s for s in SPECS if s.fmt == "split_zhou"]
VTAB = [s for s in SPECS if s.fmt == "vtab"]
REQUIRED_DISTINCT = {s.name for s in SPECS if not s.optional and s.fmt == "split_zhou" and not s.variant_of}


@pytest.fixture(scope="session")
def suite(tmp_path_factory) -> Path:
    """The suite generated once, through the registry's first-use path, into a temporary cache."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLPROMPT_CACHE", str(cache))
        vp.load_dataset("tiny/shapes", None)  # generates on first use
        root = default_suite_dir()
    assert root == cache / "tiny-suite" / f"v{SUITE_VERSION}"
    return root


@pytest.fixture(scope="session")
def manifest(suite) -> dict:
    return json.loads((suite / "manifest.json").read_text())


def present(manifest, specs):
    return [s for s in specs if s.name in manifest["tasks"]]


def test_enough_tasks_from_required_sources(manifest):
    assert len(REQUIRED_DISTINCT) >= 8
    assert REQUIRED_DISTINCT <= set(manifest["tasks"])
    assert len(VTAB) >= 3
    assert len([s for s in SPECS if s.variant_of == "shapes"]) >= 2
    for name, reason in manifest["skipped"].items():
        assert next(s for s in SPECS if s.name == name).optional, reason


def test_second_generation_is_byte_identical(suite, tmp_path):
    names = ["shapes", "counting", "digits", "real_textures", "shapes_sketch", "vtab_eurosat"]
    again = generate_suite(tmp_path / "again", tasks=names)
    for name in names:
        files = sorted(p.relative_to(suite / name) for p in (suite / name).rglob("*") if p.is_file())
        files2 = sorted(p.relative_to(again / name) for p in (again / name).rglob("*") if p.is_file())
        assert files == files2, name
        for rel in files:
            assert (suite / name / rel).read_bytes() == (again / name / rel).read_bytes(), (name, rel)


@pytest.mark.parametrize("spec", ZHOU, ids=lambda s: s.name)
def test_split_zhou_format_and_counts(suite, manifest, spec):
    if spec.name not in manifest["tasks"]:
        pytest.skip(f"optional source absent: {spec.source}")
    tdir = suite / spec.name
    split = json.loads((tdir / f"split_zhou_{spec.display}.json").read_text())
    assert set(split) == {"train", "val", "test"}
    classnames = (tdir / "classnames.txt").read_text().splitlines()
    assert classnames == list(spec.classnames)
    assert len(classnames) >= 4 and len(set(classnames)) == len(classnames)
    template = (tdir / "template.txt").read_text().strip()
    assert "{}" in template
    assert (tdir / "task_name.txt").read_text().strip()
    per = {"train": N_TRAIN, "val": N_VAL, "test": N_TEST}
    if spec.variant_of:
        per = {"train": 0, "val": 0, "test": N_VARIANT_TEST}
    for sp, items in split.items():
        labels = [lab for _, lab, _ in items]
        assert sorted(set(labels)) == (list(range(len(classnames))) if per[sp] else [])
        assert all(labels.count(i) == per[sp] for i in set(labels))
        assert all(cname == classnames[lab] for _, lab, cname in items)
        assert manifest["tasks"][spec.name][sp] == len(items)
    # every image has its mask; a sample of them: same size, binary, not empty
    every = [rel for items in split.values() for rel, _, _ in items]
    assert all((tdir / "mask" / mask_relpath(rel)).is_file() for rel in every)
    for rel in every[:: max(1, len(every) // 12)]:
        img = Image.open(tdir / "images" / rel)
        mask = np.asarray(Image.open(tdir / "mask" / mask_relpath(rel)).convert("L"))
        assert img.mode == "RGB" and img.size == (64, 64) and mask.shape == (64, 64)
        assert set(np.unique(mask).tolist()) <= {0, 255} and mask.any()


def test_variants_share_classnames_with_source(suite):
    for spec in (s for s in SPECS if s.variant_of):
        src = (suite / spec.variant_of / "classnames.txt").read_text()
        assert (suite / spec.name / "classnames.txt").read_text() == src


def test_softcpt_groups(suite, manifest):
    groups = json.loads((suite / "groups.json").read_text())
    assert len(groups) >= 2
    for group, names in groups.items():
        assert (suite / f"group_{group}.txt").read_text().splitlines() == names
        assert all((suite / n / "task_name.txt").is_file() for n in names)


@pytest.mark.parametrize("spec", VTAB, ids=lambda s: s.name)
def test_vtab_lists(suite, spec):
    tdir = suite / spec.name
    lists = {k: (tdir / f"{k}.txt").read_text().splitlines() for k in ("train800", "val200", "train800val200", "test")}
    assert len(lists["train800"]) == 800 and len(lists["val200"]) == 200
    assert lists["train800val200"] == lists["train800"] + lists["val200"]
    assert lists["test"]
    n_cls = len((tdir / "classnames.txt").read_text().splitlines())
    assert "{}" in (tdir / "template.txt").read_text()
    for line in lists["train800val200"] + lists["test"]:
        rel, label = line.split(" ")
        assert 0 <= int(label) < n_cls
    for line in lists["train800"][::97] + lists["test"][::97]:
        assert (tdir / line.split(" ")[0]).is_file()


def test_no_test_identity_in_trainable_set(manifest):
    test, trainable = set(manifest["test_identities"]), set(manifest["trainable_identities"])
    n = sum(t["test"] for t in manifest["tasks"].values())
    n_train = sum(t["train"] + t["val"] for t in manifest["tasks"].values())
    assert len(test) == n and len(trainable) == n_train  # every image has a distinct identity
    assert not test & trainable


@pytest.mark.parametrize("name", tiny_task_names(include_optional=False))
def test_load_every_task_base_four_shot(suite, name):
    task = vp.load_dataset(f"tiny/{name}", suite, shots=4, seed=1, subsample="base")
    assert task.name == f"tiny/{name}"
    spec = next(s for s in SPECS if s.name == name)
    n_base = (len(spec.classnames) + 1) // 2
    assert task.classnames == list(spec.classnames[:n_base])
    assert len(task.train) == (0 if spec.variant_of else 4 * n_base)
    assert task.test and all(Path(s.path).is_file() for s in task.test[:5])
    assert task.extra["task_name"] and Path(task.extra["suite_dir"]) == suite
    assert task.augment == spec.augment  # survives few-shot sampling and class subsampling
    if spec.fmt == "split_zhou":
        assert Path(task.extra["mask_dir"]).is_dir()


def test_alias_and_unused_root(suite, tmp_path, monkeypatch):
    task = vp.load_dataset("TINY_shapes-sketch", suite)
    assert task.name == "tiny/shapes_sketch"
    # a root holding no suite is ignored in favour of the cache; the cache's parent folder is found
    monkeypatch.setenv("VLPROMPT_CACHE", str(suite.parent.parent))
    assert vp.load_dataset("tiny/digits", tmp_path).extra["suite_dir"] == str(suite)
    assert vp.load_dataset("tiny/digits", suite.parent.parent).extra["suite_dir"] == str(suite)
    assert not any(tmp_path.iterdir())  # nothing written into a user's root


def test_captions_are_varied_and_deterministic():
    rng = np.random.default_rng(3)
    scenes = [render_scene(rng, count=k % 3 + 1) for k in range(30)]
    caps = [caption(s, np.random.default_rng(i)) for i, s in enumerate(scenes)]
    caps2 = [caption(s, np.random.default_rng(i)) for i, s in enumerate(scenes)]
    assert caps == caps2 and len(set(caps)) > 20
    assert all(s.attrs["shape"].rstrip("s") in c or s.attrs["shape"] in c for s, c in zip(scenes, caps, strict=True))
