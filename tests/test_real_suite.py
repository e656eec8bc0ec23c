"""The real-data suite (``real/<name>``): first-use generation, determinism, format, leakage, errors.

Datasets whose source is not installed are skipped (optional ones: Fashion-MNIST, Animal-MNIST,
conformal-clip-data); the required ones need scikit-learn and scikit-image.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("skimage")

import vlprompt as vp  # noqa: E402
from vlprompt.data import list_datasets  # noqa: E402
from vlprompt.data.real import SPECS, SUITE_VERSION, default_suite_dir, generate_dataset, real_status  # noqa: E402
from vlprompt.data.splitfile import read_split_entries  # noqa: E402
from vlprompt.errors import ConfigError, DatasetError  # noqa: E402

PARAMS = [pytest.param(s, id=s.name, marks=pytest.mark.skipif(not s.available(), reason=f"needs {s.install}"))
          for s in SPECS]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("real_cache")


@pytest.fixture(scope="module")
def loaded(cache) -> dict:
    """Every installed dataset loaded once through the registry (generated on first use into ``cache``)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLPROMPT_CACHE", str(cache))
        return {s.name: vp.load_dataset(f"real/{s.name}", None) for s in SPECS if s.available()}


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_required_sources_and_listing():
    required = [s for s in SPECS if not s.optional]
    assert {s.name for s in required} >= {"digits", "skimage_patches"}
    status = real_status()
    assert set(status) == {f"real/{s.name}" for s in SPECS}
    for s in SPECS:
        assert status[f"real/{s.name}"] == ("available" if s.available() else f"missing: {s.install}")
        assert f"real/{s.name}" in list_datasets()


@pytest.mark.parametrize("spec", PARAMS)
def test_generated_on_first_use_with_counts_and_template(spec, loaded, cache):
    task = loaded[spec.name]
    assert task.root == cache / "real-suite" / f"v{SUITE_VERSION}" / spec.name
    assert task.name == f"real/{spec.name}" and task.classnames == list(spec.classnames)
    assert task.template == spec.template and "{}" in task.template and task.augment == spec.augment
    n_train, n_val, n_test = spec.per_class
    assert n_train >= 16 and n_test <= 100
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        samples = getattr(task, split)
        counts = [sum(1 for s in samples if s.label == c) for c in range(len(spec.classnames))]
        assert counts == [n] * len(spec.classnames), split
        assert all(Path(s.path).is_file() and s.classname == spec.classnames[s.label] for s in samples)


@pytest.mark.parametrize("spec", PARAMS)
def test_split_file_format_and_no_overlap(spec, loaded):
    root = loaded[spec.name].root
    raw = json.loads((root / f"split_zhou_{spec.display}.json").read_text(encoding="utf-8"))
    assert list(raw) == ["train", "val", "test"]
    entries = read_split_entries(root / f"split_zhou_{spec.display}.json")
    for items in entries.values():
        for rel, label, cname in items:
            assert not rel.startswith("/") and cname == spec.classnames[label]
    digests = _digests(root / "images")
    by_split = {sp: {digests[rel] for rel, _, _ in items} for sp, items in entries.items()}
    assert [len(by_split[sp]) for sp in ("train", "val", "test")] == [len(entries[sp]) for sp in
                                                                      ("train", "val", "test")]  # no duplicates
    assert not by_split["train"] & by_split["test"]
    assert not by_split["val"] & by_split["test"]
    assert not by_split["train"] & by_split["val"]
    assert (root / "classnames.txt").read_text().splitlines() == list(spec.classnames)
    assert (root / "template.txt").read_text().strip() == spec.template
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["version"] == SUITE_VERSION and manifest["classes"] == len(spec.classnames)
    assert [manifest[sp] for sp in ("train", "val", "test")] == [len(entries[sp]) for sp in ("train", "val", "test")]


@pytest.mark.parametrize("name", ["skimage_patches", "fashion_mnist", "textiles"])
def test_generation_is_byte_identical(name, loaded, tmp_path):
    spec = next(s for s in SPECS if s.name == name)
    if not spec.available():
        pytest.skip(f"needs {spec.install}")
    again = generate_dataset(spec, tmp_path / name)
    first = _digests(loaded[name].root)
    assert first == _digests(again) and len(first) > 100


def test_forced_regeneration_swaps_in_place(loaded, tmp_path):
    spec = next(s for s in SPECS if s.name == "skimage_patches")
    target = generate_dataset(spec, tmp_path / "patches")
    before = _digests(target)
    (target / "images" / "stray.txt").write_text("x")
    assert generate_dataset(spec, target) == target and (target / "images" / "stray.txt").exists()  # kept
    assert generate_dataset(spec, target, force=True) == target
    assert _digests(target) == before and sorted(p.name for p in tmp_path.iterdir()) == ["patches"]


def test_few_shot_base_new(loaded, cache, monkeypatch):
    monkeypatch.setenv("VLPROMPT_CACHE", str(cache))
    base = vp.load_dataset("real/digits", None, shots=16, seed=1, subsample="base")
    new = vp.load_dataset("REAL_Digits", None, shots=16, seed=1, subsample="new")
    assert base.classnames == ["0", "1", "2", "3", "4"] and new.classnames == ["5", "6", "7", "8", "9"]
    assert len(base.train) == 16 * 5 and len(new.test) == 500


def test_root_with_a_copy_is_read_and_other_roots_are_ignored(loaded, tmp_path, monkeypatch):
    monkeypatch.setenv("VLPROMPT_CACHE", str(tmp_path / "other_cache"))
    src = loaded["digits"].root
    task = vp.load_dataset("real/digits", src.parent)  # a root holding the dataset folder
    assert task.root == src
    assert not (tmp_path / "other_cache").exists()
    stray = tmp_path / "stray"
    stray.mkdir()
    task = vp.load_dataset("real/skimage_patches", stray)  # not a suite: ignored, generated in the cache
    assert task.root == default_suite_dir() / "skimage_patches" and not any(stray.iterdir())


def test_malformed_copy_names_the_file(loaded, tmp_path):
    spec = next(s for s in SPECS if s.name == "skimage_patches")
    bad = tmp_path / "skimage_patches"
    generate_dataset(spec, bad)
    (bad / f"split_zhou_{spec.display}.json").write_text('{"train": []}')
    with pytest.raises(DatasetError, match="split_zhou_RealSkimagePatches.json"):
        vp.load_dataset("real/skimage_patches", tmp_path)


def test_missing_source_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("VLPROMPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VLPROMPT_FASHION_MNIST", str(tmp_path / "nowhere"))
    assert real_status()["real/fashion_mnist"].startswith("missing: apt-get install dataset-fashion-mnist")
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        vp.load_dataset("real/fashion_mnist", None)
    assert not (tmp_path / "cache" / "real-suite" / f"v{SUITE_VERSION}" / "fashion_mnist").exists()
    assert not list((tmp_path / "cache").rglob("*.tmp*"))


def test_unknown_name_lists_the_suite():
    with pytest.raises(ConfigError, match="real/digits"):
        vp.load_dataset("real/nope", None)


def _benchmark_module():
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "real_base2new.py"
    spec = importlib.util.spec_from_file_location("real_base2new", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_sweep_and_helpers(monkeypatch, capsys):
    import yaml

    from vlprompt.sweep.spec import parse_sweep

    root = Path(__file__).resolve().parent.parent
    data = yaml.safe_load((root / "sweeps" / "real_base2new.yaml").read_text())
    sweep = parse_sweep(data)
    assert sweep.protocols == ["base2new"] and sweep.seeds == [1, 2, 3] and sweep.shots == [16]
    assert {m.name for m in sweep.methods} == {"zeroshot", "coop", "coop+dept", "cocoop", "cocoop+dept", "kgcoop",
                                               "kgcoop+dept"}
    by_name = {s.name: s for s in SPECS}
    for d in sweep.datasets:  # base-to-new needs >= 2 new classes
        assert d.name.startswith("real/") and len(by_name[d.name[5:]].classnames) >= 4
    bench = _benchmark_module()
    monkeypatch.setenv("VLPROMPT_FASHION_MNIST", "/nonexistent")
    keep, skipped = bench.available(["real/digits", "real/fashion_mnist"])
    assert keep == ["real/digits"] and skipped == {"real/fashion_mnist": by_name["fashion_mnist"].install}
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().out
    lines = bench.linear_probe_lines({"real_digits": [90.0, 92.0]})
    assert lines[2] == "| real_digits | 91.00 ± 1.41 | 2 |" and lines[-1] == "| **average** | 91.00 | |"
