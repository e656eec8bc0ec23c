"""Sweep protocols ``cross-dataset`` and ``domain-gen`` (train on a source, evaluate on targets) and their
report tables (methods × source, targets, average)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vlprompt.errors import ConfigError
from vlprompt.report import collect, transfer_tables, write_report
from vlprompt.sweep import is_complete, load_sweep, parse_sweep, sweep_main


def test_transfer_expansion_and_errors(tmp_path):
    runs = parse_sweep({"methods": ["coop", "cocoop"], "datasets": ["imagenet"], "protocol": "cross-dataset",
                        "targets": ["caltech101", {"name": "dtd", "root": "/other", "label": "dtd2"}],
                        "seeds": [1, 2], "data_root": "/data", "out": str(tmp_path)}).expand()
    assert len(runs) == 4 and runs[0].id == "cross-dataset/coop/imagenet/shots16/seed1"
    assert runs[0].targets == (("caltech101", "/data", "caltech101"), ("dtd", "/other", "dtd2"))
    dg = parse_sweep({"methods": ["coop"], "datasets": ["imagenet"], "protocol": "domain-gen",
                      "data_root": "/data"}).expand()[0]
    assert [t[0] for t in dg.targets] == ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
    assert parse_sweep({"methods": ["coop"], "datasets": ["eurosat"], "data_root": "/d"}).expand()[0].targets == ()
    with pytest.raises(ConfigError, match="needs 'targets'"):
        parse_sweep({"methods": ["coop"], "datasets": ["eurosat"], "protocol": "domain-gen",
                     "data_root": "/d"}).expand()
    with pytest.raises(ConfigError, match="'targets' apply to"):
        parse_sweep({"methods": ["coop"], "datasets": ["eurosat"], "targets": ["dtd"]})
    with pytest.raises(ConfigError, match="appear twice"):
        parse_sweep({"methods": ["coop"], "datasets": ["imagenet"], "protocol": "cross-dataset",
                     "targets": ["dtd", "dtd"]})


def _result(path: Path, method: str, seed: int, acc: float, targets: dict[str, float], protocol: str) -> None:
    path.mkdir(parents=True)
    path.joinpath("results.json").write_text(json.dumps({
        "method": method, "dataset": "src", "shots": 16, "seed": seed, "acc": acc, "targets": targets,
        "sweep": {"id": f"{protocol}/{method}/src/shots16/seed{seed}", "protocol": protocol, "dataset": "src"}}))


def test_transfer_report_matches_hand_computed_means(tmp_path):
    _result(tmp_path / "a1", "coop", 1, 70.0, {"t1": 50.0, "t2": 40.0}, "cross-dataset")
    _result(tmp_path / "a2", "coop", 2, 72.0, {"t1": 54.0, "t2": 44.0}, "cross-dataset")
    _result(tmp_path / "b1", "cocoop", 1, 68.0, {"t1": 60.0, "t2": 30.0}, "cross-dataset")
    _result(tmp_path / "c1", "coop", 1, 71.0, {"v2": 63.0}, "domain-gen")
    rows = collect(tmp_path)
    xd = transfer_tables(rows, "cross-dataset")[("src", 16)]
    assert xd["targets"] == ["t1", "t2"]
    coop = xd["methods"]["coop"]
    assert coop["source"][:2] == pytest.approx((71.0, 2 ** 0.5))
    assert coop["targets"]["t1"][:2] == pytest.approx((52.0, 8 ** 0.5)) and coop["targets"]["t2"][0] == 42.0
    assert coop["average"] == pytest.approx(47.0) and xd["methods"]["cocoop"]["average"] == pytest.approx(45.0)
    write_report(tmp_path, plots=False)
    md = (tmp_path / "report" / "cross_dataset.md").read_text()
    assert "| coop | 71.00 ± 1.41 | 52.00 ± 2.83 | 42.00 ± 2.83 | 47.00 |" in md
    cmp = (tmp_path / "report" / "cross_dataset_compare.csv").read_text().splitlines()
    assert cmp[1:] == ["coop,src,16,71.0000,47.0000", "cocoop,src,16,68.0000,45.0000"]
    # one seed: the values alone (before: "71.00 ± 0.00")
    assert "| coop | 71.00 | 63.00 | 63.00 |" in (tmp_path / "report" / "domain_gen.md").read_text()
    assert not (tmp_path / "report" / "accuracy.md").exists()


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    from vlprompt.data.tiny.suite import generate_suite

    return generate_suite(tmp_path_factory.mktemp("suite") / "tiny-suite", tasks=["shapes", "shapes_sketch", "colours"])


def test_domain_gen_sweep_adds_targets_without_retraining(suite, cache_dir, tmp_path, in_process):
    from vlprompt.protocols.runs import evaluate_run

    spec = {"name": "dg", "methods": ["zeroshot", "coop"], "datasets": ["tiny/shapes"], "protocol": "domain-gen",
            "targets": ["tiny/shapes_sketch"], "shots": [2], "seeds": [1],
            "overrides": {"train": {"epochs": 1, "batch_size": 8}}, "data_root": str(suite),
            "cache_dir": cache_dir, "out": str(tmp_path / "runs")}
    f = tmp_path / "dg.yaml"
    f.write_text(yaml.safe_dump(spec))
    assert sweep_main([str(f), "--workers", "1"]) == 0
    runs = load_sweep(f).expand()
    assert [r.id.split("/")[1] for r in runs] == ["zeroshot", "coop"] and all(is_complete(r) for r in runs)
    coop = Path(runs[1].out)
    res = json.loads((coop / "results.json").read_text())
    ev = evaluate_run(coop, "tiny/shapes_sketch", str(suite), "all", cache_dir=cache_dir)
    assert res["targets"] == {"tiny_shapes_sketch": pytest.approx(ev["acc"])}
    assert res["source_acc"] == res["acc"] and res["target_avg"] == pytest.approx(ev["acc"])
    assert res["sweep"]["targets"] == ["tiny_shapes_sketch"]
    # a new target: only evaluated, the trained prompts are not touched
    trained = {p: p.stat().st_mtime_ns for p in coop.rglob("*") if p.is_file() and p.name != "results.json"}
    spec["targets"] = ["tiny/shapes_sketch", "tiny/colours"]
    f.write_text(yaml.safe_dump(spec))
    runs = load_sweep(f).expand()
    assert not any(is_complete(r) for r in runs)
    assert sweep_main([str(f), "--workers", "1"]) == 0
    res2 = json.loads((coop / "results.json").read_text())
    assert {p: p.stat().st_mtime_ns for p in trained} == trained
    assert res2["targets"]["tiny_shapes_sketch"] == res["targets"]["tiny_shapes_sketch"]
    assert set(res2["targets"]) == {"tiny_shapes_sketch", "tiny_colours"} and all(is_complete(r) for r in runs)
    write_report(tmp_path / "runs", plots=False)
    md = (tmp_path / "runs" / "report" / "domain_gen.md").read_text()
    assert "tiny_shapes (source)" in md and "| zeroshot |" in md and "| coop |" in md
