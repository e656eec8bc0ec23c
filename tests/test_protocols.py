"""Protocols and presets: summaries against hand-computed numbers, end-to-end runs on generated data."""

from __future__ import annotations

import json

import pytest

from vlprompt.data import make_image_folder
from vlprompt.engine.run import RunDir
from vlprompt.errors import ConfigError
from vlprompt.presets import coop_epochs, resolve_preset
from vlprompt.protocols import RunSpec, base2new, cross_dataset, few_shot
from vlprompt.protocols.tables import summarize_base2new


def test_base2new_average_is_hm_of_averages():
    rows = [
        {"dataset": "a", "seed": 1, "base_acc": 80.0, "new_acc": 60.0},
        {"dataset": "a", "seed": 2, "base_acc": 90.0, "new_acc": 70.0},
        {"dataset": "b", "seed": 1, "base_acc": 50.0, "new_acc": 100.0},
    ]
    s = summarize_base2new(rows)
    a, b = s["rows"]
    assert (a["base_acc"], a["new_acc"]) == (85.0, 65.0)
    assert a["hm"] == pytest.approx(2 * 85 * 65 / 150)
    assert s["average"]["base_acc"] == 67.5 and s["average"]["new_acc"] == 82.5
    assert s["average"]["hm"] == pytest.approx(2 * 67.5 * 82.5 / 150)  # not the mean of per-dataset H


def test_presets():
    assert resolve_preset("kgcoop+dept", "dept")["method"]["weight"] == 2.0
    assert resolve_preset("kgcoop", "paper")["method"]["weight"] == 8.0
    assert resolve_preset("zeroshot", "dept") == {"method": {}, "train": {}}  # training-free: defaults
    assert resolve_preset("coop", "dept")["train"] == {"epochs": 10, "batch_size": 4, "lr": 0.0035}
    assert resolve_preset("coop", "paper", shots=1, dataset="eurosat")["train"]["epochs"] == 50
    assert [coop_epochs(k, "dtd") for k in (1, 2, 4, 8, 16)] == [50, 100, 100, 200, 200]
    assert coop_epochs(16, "imagenet") == 50
    assert resolve_preset("maple", "paper")["method"]["prompt_depth"] == 9
    with pytest.raises(ConfigError, match="no preset"):
        resolve_preset("coop", "papr")


def test_dataset_rules_name_real_presets_and_fields():
    """Values a paper picks by shots / dataset live in presets.DATASET_RULES (no method names in resolve_preset):
    each rule belongs to an existing preset and only sets options the method's Config or TrainConfig has."""
    import dataclasses

    from vlprompt.engine.config import TrainConfig
    from vlprompt.methods.base import get_method_class
    from vlprompt.presets import DATASET_RULES, PRESETS

    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for method, rules in DATASET_RULES.items():
        fields = {f.name for f in dataclasses.fields(get_method_class(method).Config)}
        for preset, rule in rules.items():
            assert preset in PRESETS[method], (method, preset)
            for shots in (None, 1, 4, 16):
                for dataset in ("", "imagenet", "eurosat", "dtd", "stanford_cars", "tiny_shapes"):
                    out = rule(shots, dataset)
                    assert set(out) <= {"method", "train"} and set(out["method"]) <= fields, (method, preset)
                    assert set(out["train"]) <= train_fields, (method, preset)
    assert resolve_preset("tip-adapter-f", "paper", dataset="eurosat")["train"]["epochs"] == 100
    assert "epochs" not in resolve_preset("tip-adapter", "paper", dataset="eurosat")["train"]
    assert resolve_preset("promptsrc", "paper-fs", dataset="dtd")["method"]["gpa_std"] == 5.0
    assert resolve_preset("promptsrc", "paper-fs", dataset="imagenet")["method"]["gpa_std"] == 30.0
    assert resolve_preset("clip-adapter+dept", "reference", shots=2, dataset="dtd")["train"]["epochs"] == 100


def test_reference_preset_exists_for_every_trained_method_of_the_seeds():
    """The reference pattern: the paper configuration, fp16 CLIP on a GPU / fp32 on CPU, no feature cache,
    and the reference's own rules (KgCoOp fp16 targets, DAPT loss switch + Grad-CAM rule);
    VPT and CLIP-Adapter in fp32."""
    import torch

    from vlprompt.engine.config import TrainConfig
    from vlprompt.engine.precision import resolve_precision
    from vlprompt.methods.base import _REGISTRY

    trained = sorted(n for n, cls in _REGISTRY.items() if getattr(cls, "needs_training", True)
                     and n != "linear-probe")
    assert {"coop", "cocoop", "kgcoop", "maple", "dapt", "dapt-g", "softcpt", "vpt-deep", "e2vpt"} <= set(trained)
    for name in trained:
        ref = resolve_preset(name, "reference", shots=16, dataset="dtd")
        TrainConfig.from_kwargs(**ref["train"])
        assert ref["train"]["feature_views"] == 0, name
        # clip_adapter.py: clip_model.float(); VPT's repository (its linear / finetune baselines too) trains in fp32
        fp32 = name.startswith(("vpt", "e2vpt")) or name in ("clip-adapter", "linear", "finetune")
        assert ref["train"]["precision"] == ("fp32" if fp32 else "fp16-gpu"), name
        if name in ("dapt", "dapt-g"):
            assert ref["method"]["loss_schedule"] == "reference" and ref["method"]["gradcam_rule"] == "reference"
            continue
        paper = resolve_preset(name, "paper", shots=16, dataset="dtd")
        extra = {"kgcoop": {"target_precision": "fp16"}}.get(name, {})
        assert ref["method"] == {**paper["method"], **extra}, name
        assert {k: v for k, v in ref["train"].items() if k not in ("precision", "feature_views")} == paper["train"]
    assert resolve_precision("fp16-gpu", torch.device("cpu")) == "fp32"
    assert resolve_precision("fp16-gpu", torch.device("cuda")) == "fp16"
    assert resolve_preset("coop+dept", "reference")["train"]["precision"] == "fp16-gpu"  # plug-ins: the base's
    # every registered method has it: the linear probe's is lpclip's fp16 feature extraction, zero-shot its defaults
    for name in _REGISTRY:
        resolve_preset(name, "reference", shots=16, dataset="dtd")
    assert resolve_preset("linear-probe", "reference") == {"method": {}, "train": {"precision": "fp16-gpu"}}
    assert resolve_preset("zeroshot", "reference") == {"method": {}, "train": {}}


def test_reference_preset_trains_end_to_end(shapes_root, cache_dir, tmp_path):
    from vlprompt.protocols.runs import train_run

    spec = RunSpec("kgcoop", "imagefolder", str(shapes_root), out=str(tmp_path / "run"), shots=2, preset="reference",
                   device="cpu", train_options={"epochs": 1, "batch_size": 4, "cache_dir": cache_dir})
    res = train_run(spec)
    config = RunDir(tmp_path / "run").read_config()
    assert config["train"]["precision"] == "fp16-gpu" and config["train"]["feature_views"] == 0
    assert config["method_config"]["target_precision"] == "fp16" and 0 <= res["acc"] <= 100


def _spec(root, out, cache_dir, **kw):
    train = {"epochs": 1, "batch_size": 4, "cache_dir": cache_dir}
    return RunSpec("coop", "imagefolder", str(root), out=str(out), shots=2, method_options={"n_ctx": 2},
                   train_options=train, **kw)


def test_base2new_protocol_writes_tables_and_skips_done_runs(shapes_root, cache_dir, tmp_path):
    spec = _spec(shapes_root, tmp_path / "b2n", cache_dir, preset="dept")
    s = base2new(spec, ["imagefolder"], seeds=[1])
    res = RunDir(tmp_path / "b2n" / "imagefolder" / "seed1").read_results()
    assert res["new_acc"] == s["rows"][0]["new_acc"] and res["base_acc"] == s["rows"][0]["base_acc"]
    config = RunDir(tmp_path / "b2n" / "imagefolder" / "seed1").read_config()
    assert config["train"]["lr"] == 0.0035 and config["train"]["epochs"] == 1  # preset, then explicit option
    assert (tmp_path / "b2n" / "base2new.md").read_text().count("|") > 10
    mtime = (tmp_path / "b2n" / "imagefolder" / "seed1" / "prompt.safetensors").stat().st_mtime_ns
    again = base2new(spec, ["imagefolder"], seeds=[1])
    assert again["average"] == s["average"]
    assert (tmp_path / "b2n" / "imagefolder" / "seed1" / "prompt.safetensors").stat().st_mtime_ns == mtime


def test_cross_dataset_and_few_shot(shapes_root, cache_dir, tmp_path):
    other = tmp_path / "other"
    make_image_folder(other, classes=("red circle", "green square"), n_train=2, n_val=1, n_test=3, size=32, seed=5)
    s = cross_dataset(_spec(shapes_root, tmp_path / "xd", cache_dir), [f"imagefolder@{other}"], seeds=[1])
    names = [r["dataset"] for r in s["rows"]]
    assert names == ["imagefolder (source)", "imagefolder"]
    assert s["average"]["acc"] == s["rows"][1]["acc"]
    res = RunDir(tmp_path / "xd" / "imagefolder" / "seed1").read_results()  # the source run carries its targets
    assert res["protocol"] == "cross-dataset" and res["targets"] == {"imagefolder": s["rows"][1]["acc"]}
    assert res["source_acc"] == res["acc"] == s["rows"][0]["acc"] and res["target_avg"] == s["average"]["acc"]
    from vlprompt.report import write_report

    write_report(tmp_path / "xd", tmp_path / "rep", plots=False)  # one seed: no "± 0.00"
    assert (f"| coop | {res['acc']:.2f} | {res['targets']['imagefolder']:.2f} | {res['target_avg']:.2f} |"
            in (tmp_path / "rep" / "cross_dataset.md").read_text())
    fs = few_shot(_spec(shapes_root, tmp_path / "fs", cache_dir), ["imagefolder"], shots=[1, 2], seeds=[1])
    assert set(fs["rows"][0]) == {"dataset", "1-shot", "2-shot"}
    data = json.loads((tmp_path / "fs" / "few_shot.json").read_text())
    assert len(data["runs"]) == 2
