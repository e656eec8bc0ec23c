"""Robustness (issue 14): a diverging loss, mistyped -o options, --shots above what a class holds, a class
without training images, and split-file paths that leave the image folder. Each case: one clear error
(exit 2, nothing or only the earlier work written) or a recorded warning."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import warnings
from typing import Literal

import pytest
import yaml

import vlprompt as vp
from data_fixtures import BUILDERS
from vlprompt.cli import main
from vlprompt.data import load_dataset, save_split
from vlprompt.data.fewshot import shots_shortfall, train_counts
from vlprompt.data.task import Sample, Task
from vlprompt.errors import ConfigError, DatasetError, VlpromptError, VlpromptWarning
from vlprompt.methods import method_options, parse_method_options
from vlprompt.methods.base import coerce_options
from vtab_fixtures import make_vtab


def _train(root, out, cache_dir, *extra, shots="4"):
    return ["train", "--method", "coop", "--dataset", "imagefolder", "--root", str(root), "--shots", shots,
            "--out", str(out), "--epochs", "1", "--batch-size", "4", "--cache-dir", cache_dir, "-o", "n_ctx=2",
            *extra]


def _fails(argv, capsys, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in err, err
    return err


# ------------------------------------------------------------------ 1. NaN / inf loss
def test_diverging_loss_is_a_training_error_and_keeps_earlier_work(shapes_root, cache_dir, tmp_path, capsys):
    # before: FloatingPointError traceback, exit 1. Warm-up epoch 1 (lr 1e-5) is fine; the first step at
    # lr 1e30 still has a finite loss, its update makes the prompts overflow, so step 2 of epoch 2 is NaN.
    out = tmp_path / "run"
    err = _fails(_train(shapes_root, out, cache_dir, "--epochs", "2", "--lr", "1e30", "--precision", "bf16"), capsys,
                 "epoch 2/2, step 2/5 (lr 1e+30)", "lower the learning rate (--lr)", "--precision fp32")
    assert "loss is nan" in err or "loss is inf" in err
    assert (out / "config.yaml").is_file() and (out / "split.json").is_file()
    assert any((out / "checkpoint").iterdir())  # the checkpoint of epoch 1 is kept
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [0]
    assert not (out / "results.json").exists()
    assert "error: the training loss is" in (out / "log.txt").read_text()


def test_diverging_loss_in_fp32_has_no_precision_hint(shapes_root, cache_dir, tmp_path, capsys):
    err = _fails(_train(shapes_root, tmp_path / "run", cache_dir, "--epochs", "2", "--lr", "1e30",
                        "--precision", "fp32"), capsys, "epoch 2/2")
    assert "--precision" not in err


def test_training_error_from_the_api(shapes_root, cache_dir, tiny_bb):
    task = load_dataset("imagefolder", shapes_root, shots=2)
    model = vp.build_method("coop", tiny_bb, task.classnames, n_ctx=2)
    with pytest.raises(VlpromptError, match=r"loss is (nan|inf) at epoch 2/2, step 2/2") as info:
        vp.fit(model, task, epochs=2, lr=1e30, batch_size=4, cache_dir=cache_dir, evaluate_test=False)
    assert type(info.value).__name__ == "TrainingError"


# ------------------------------------------------------------------ 2. -o KEY=VALUE typed by the Config
@pytest.mark.parametrize("method, opt, fragments", [
    ("coop", "n_ctx=four", ["option n_ctx of coop expects int, got 'four'"]),
    ("coop", "csc=maybe", ["option csc of coop expects bool (true/false/1/0), got 'maybe'"]),
    ("coop", "class_token_position=top", ["class_token_position", "'end', 'middle', 'front'", "'top'"]),
    ("coop+dept", "dept_weight=heavy", ["option dept_weight of coop+dept expects float, got 'heavy'"]),
    ("coop+dept", "n_ctxx=3", ["unknown option(s) ['n_ctxx']", "coop: n_ctx", "dept: dept_weight"]),
])
def test_mistyped_method_option_fails_before_anything(method, opt, fragments, shapes_root, cache_dir, tmp_path,
                                                       capsys):
    # before: n_ctx=four reached the method as the string 'four': TypeError traceback, exit 1
    out = tmp_path / "run"
    argv = ["train", "--method", method, "--dataset", "imagefolder", "--root", str(shapes_root), "--out", str(out),
            "--cache-dir", cache_dir, "-o", opt]
    _fails(argv, capsys, *fragments)
    assert not out.exists()


def test_option_strings_are_parsed_by_field_type():
    got = parse_method_options("coop+dept", {"n_ctx": "4", "csc": "false", "ctx_init": "1", "dept_weight": "0.5",
                                             "dept_fusion": "probs"})
    assert got == {"n_ctx": 4, "csc": False, "ctx_init": "1", "dept_weight": 0.5, "dept_fusion": "probs"}
    assert parse_method_options("coop", {"csc": "1"}) == {"csc": True}
    assert parse_method_options("kgcoop", {"weight": "8", "ctx_init": ""}) == {"weight": 8, "ctx_init": ""}
    assert parse_method_options("kgcoop", {"weight": "1e-3"}) == {"weight": 0.001}
    assert parse_method_options("zeroshot", {"templates": '["a photo of a {}, a pet.", "itap of a {}."]'}) == {
        "templates": ("a photo of a {}, a pet.", "itap of a {}.")}
    assert parse_method_options("dapt", {"background_classes": "sky, ground"}) == {
        "background_classes": ("sky", "ground")}
    # JSON / YAML values (prompt.json, a sweep file) are checked, lists become the field's tuples
    assert parse_method_options("softcpt-nata", {"tasks": [["a", 3], ["b", 4]]}) == {"tasks": (("a", 3), ("b", 4))}
    assert parse_method_options("softcpt-nata", {"tasks": "[[a, 3], [b, 4]]"}) == {"tasks": (("a", 3), ("b", 4))}
    with pytest.raises(ConfigError, match=r"option tasks of softcpt-nata expects a list of \[str, int\]"):
        parse_method_options("softcpt-nata", {"tasks": [["a", "b"]]})
    with pytest.raises(ConfigError, match="option n_ctx of coop expects int, got 4.5"):
        parse_method_options("coop", {"n_ctx": 4.5})
    assert method_options("coop+dept")["dept_weight"] == (float, 0.7)


def test_optional_list_and_literal_fields():
    @dataclasses.dataclass(frozen=True)
    class Cfg:
        k: int | None = None
        names: list[str] = dataclasses.field(default_factory=list)
        mode: Literal["a", "b"] = "a"

    assert coerce_options(Cfg, {"k": "none", "names": "x,y", "mode": "b"}, "m") == {
        "k": None, "names": ["x", "y"], "mode": "b"}
    assert coerce_options(Cfg, {"k": "3", "names": ""}, "m") == {"k": 3, "names": []}
    with pytest.raises(ConfigError, match="option k of m expects int or none, got 'x'"):
        coerce_options(Cfg, {"k": "x"}, "m")


def test_build_method_gives_the_api_the_same_errors(tiny_bb):
    with pytest.raises(ConfigError, match="option n_ctx of coop expects int, got 'four'"):
        vp.build_method("coop", tiny_bb, ["cat", "dog"], n_ctx="four")
    model = vp.build_method("coop+dept", tiny_bb, ["cat", "dog"], n_ctx="2", dept_weight="0.5")
    assert model.inner.config.n_ctx == 2 and model.dept.dept_weight == 0.5


def test_train_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 10, or the --preset's value)" in text and "(default: 0.002" in text


def test_every_command_help_states_its_defaults(capsys):
    """Before: `vlprompt few-shot --help` showed --shots-list, --seeds, --backbone without their defaults."""
    from vlprompt.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.default in (None, False, "", []) or action.required or action.help is None and not \
                    action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            assert "default" in (action.help or ""), (name, action.option_strings)
    with pytest.raises(SystemExit):
        main(["few-shot", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for part in ("--shots-list SHOTS_LIST [SHOTS_LIST ...] (default: 1 2 4 8 16)", "(default: 1 2 3)",
                 "lists them) (default: tiny-clip)", "(default: 10, or the --preset's value)"):
        assert part in text, part


# ------------------------------------------------------------------ 3. --shots above the images of a class
def test_shots_above_available_warns_and_records_counts(shapes_root, cache_dir, tmp_path, capsys):
    # before: trained on 8 per class, recorded "shots": 50 and nothing else, no word
    out = tmp_path / "run"
    assert main(_train(shapes_root, out, cache_dir, shots="50")) == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1, err
    assert "5 of 5 classes have fewer than shots=50" in warning[0] and "'red circle': 8" in warning[0]
    results = json.loads((out / "results.json").read_text())
    assert results["shots"] == 50 and results["n_train"] == 40
    assert results["train_per_class"] == {"min": 8, "max": 8}
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["n_train"] == 40 and config["train_per_class"] == {"min": 8, "max": 8}
    assert "warning: imagefolder: 5 of 5 classes" in (out / "log.txt").read_text()


def test_shortfall_names_only_the_short_classes():
    train = [Sample(f"/d/{c}/{i}.jpg", c, f"c{c}") for c, n in ((0, 4), (1, 2), (2, 4)) for i in range(n)]
    task = Task("toy", ["c0", "c1", "c2"], "{}", train, [], train, root="/d", shots=4)
    msg = shots_shortfall(task)
    assert msg is not None and "1 of 3 classes" in msg and "'c1': 2" in msg and "'c0'" not in msg
    assert train_counts(task) == {"n_train": 10, "train_per_class": {"min": 2, "max": 4}}
    assert shots_shortfall(Task("toy", ["c0", "c1", "c2"], "{}", train, [], train, root="/d", shots=2)) is None
    assert shots_shortfall(Task("toy", ["c0", "c1", "c2"], "{}", train, [], train, root="/d")) is None


def test_fit_warns_from_the_api(shapes_root, cache_dir, tiny_bb):
    task = load_dataset("imagefolder", shapes_root, shots=20)
    model = vp.build_method("zeroshot", tiny_bb, task.classnames)
    with warnings.catch_warnings():
        warnings.simplefilter("error", VlpromptWarning)  # zero-shot trains on nothing: no warning
        vp.fit(model, task, cache_dir=cache_dir, evaluate_test=False)
    model = vp.build_method("linear-probe", tiny_bb, task.classnames)
    with pytest.warns(VlpromptWarning, match="fewer than shots=20"):
        res = vp.fit(model, task, cache_dir=cache_dir, evaluate_test=False)
    assert res["train_per_class"] == {"min": 8, "max": 8}


# ------------------------------------------------------------------ 4. a class without training images
@pytest.fixture
def empty_class_root(shapes_root, tmp_path):
    root = tmp_path / "shapes0"
    shutil.copytree(shapes_root, root)
    for p in (root / "train" / "red_circle").iterdir():
        p.unlink()
    return root


@pytest.mark.parametrize("shots", ["4", None])
def test_class_without_training_images_is_an_error(empty_class_root, shots, cache_dir, tmp_path, capsys):
    # before: trained (and reported an accuracy) with 'red circle' never seen, exit 0
    out = tmp_path / "run"
    argv = _train(empty_class_root, out, cache_dir)
    if shots is None:
        argv = [a for i, a in enumerate(argv) if a != "--shots" and argv[i - 1] != "--shots"]
    _fails(argv, capsys, "dataset 'imagefolder'", "1 of 5 classes have no training images", "'red circle'",
           str(empty_class_root))
    assert not out.exists()


def test_empty_class_outside_the_trained_half_is_fine(empty_class_root):
    # red circle is label 3 of 5: a 'new' class; training on the base half does not need it
    task = load_dataset("imagefolder", empty_class_root, shots=2, subsample="base")
    assert task.num_classes == 3 and len(task.train) == 6
    with pytest.raises(DatasetError, match="new classes.*'red circle'"):
        load_dataset("imagefolder", empty_class_root, shots=2, subsample="new")


def test_evaluation_only_needs_no_training_images(empty_class_root, cache_dir, tmp_path, capsys):
    # before: zero-shot and the evaluation of a trained run on the new half were refused like training
    task = load_dataset("imagefolder", empty_class_root, subsample="new", check_train=False)
    assert "red_circle" in task.classnames or "red circle" in [c.replace("_", " ") for c in task.classnames]
    with pytest.raises(DatasetError, match="no training images"):
        load_dataset("imagefolder", empty_class_root, subsample="new")  # the default still checks
    out = tmp_path / "zs"
    argv = ["train", "--method", "zeroshot", "--dataset", "imagefolder", "--root", str(empty_class_root),
            "--out", str(out), "--cache-dir", cache_dir]
    assert main(argv) == 0, capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["n_test"] > 0
    trained = tmp_path / "base"
    assert main(_train(empty_class_root, trained, cache_dir, "--subsample", "base")) == 0
    capsys.readouterr()
    assert main(["eval", "--run", str(trained), "--subsample", "new", "--cache-dir", cache_dir]) == 0, \
        capsys.readouterr().err


def test_split_file_class_only_in_test_is_an_error(tmp_path):
    ddir = BUILDERS["dtd"](tmp_path)
    path = ddir / "split_zhou_DescribableTextures.json"
    data = json.loads(path.read_text())
    data["train"] = [e for e in data["train"] if e[1] != 1]
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"dataset 'dtd'.*split_zhou_DescribableTextures.json.*'bubbly'"):
        load_dataset("dtd", tmp_path, shots=1)


def test_legitimate_missing_training_classes_still_load(tmp_path):
    make_vtab(tmp_path, "dtd", 47)  # train800 holds 6 images: most of the 47 classes have none (VTAB-1k rule)
    task = load_dataset("vtab/dtd", tmp_path, split="final")
    assert task.num_classes == 47 and len(task.train) == 9
    BUILDERS["imagenet_a"](tmp_path)  # test-only datasets have no training split at all
    assert load_dataset("imagenet_a", tmp_path).train == []


# ------------------------------------------------------------------ 5. split-file paths outside the image folder
@pytest.mark.parametrize("bad", ["../../../../../../etc/passwd", "/etc/passwd"])
def test_few_shot_split_file_paths_must_stay_inside(bad, shapes_root, cache_dir, tmp_path, capsys):
    # before: '../' entries were read from outside the folder (error only if not an image); '/x' was made
    # relative by stripping the slash
    split = save_split(tmp_path / "split.json", load_dataset("imagefolder", shapes_root, shots=2))
    data = json.loads(split.read_text())
    data["train"][1][0] = bad
    split.write_text(json.dumps(data))
    out = tmp_path / "run"
    argv = ["train", "--method", "coop", "--dataset", "imagefolder", "--root", str(shapes_root), "--split-file",
            str(split), "--out", str(out), "--epochs", "1", "--cache-dir", cache_dir]
    reason = "is an absolute path" if bad.startswith("/") else "leads outside the folder through '..'"
    _fails(argv, capsys, f"split file '{split}': entry 1 of 'train': path {bad!r} {reason}")
    assert not out.exists()


def test_dataset_split_files_refuse_outside_paths(tmp_path):
    ddir = BUILDERS["dtd"](tmp_path / "a")
    path = ddir / "split_zhou_DescribableTextures.json"
    data = json.loads(path.read_text())
    data["test"][0][0] = "../../secret.jpg"
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"split_zhou_DescribableTextures.json': entry 0 of 'test': path "
                                           r"'../../secret.jpg' leads outside"):
        load_dataset("dtd", tmp_path / "a")

    tdir = make_vtab(tmp_path / "b", "svhn", 10)
    with open(tdir / "test.txt", "a") as fh:
        fh.write("/etc/passwd 3\n")
    with pytest.raises(DatasetError, match=r"line 6 of '.*test.txt': path '/etc/passwd' is an absolute path"):
        load_dataset("vtab/svhn", tmp_path / "b")

    ddir = BUILDERS["fgvc_aircraft"](tmp_path / "c")
    with open(ddir / "images_variant_test.txt", "a") as fh:
        fh.write("../../x A300B4\n")
    with pytest.raises(DatasetError, match=r"images_variant_test.txt': path '../../x' leads outside"):
        load_dataset("fgvc_aircraft", tmp_path / "c")


def test_fgvc_json_and_split_dk_refuse_outside_paths(tmp_path):
    from vtab_fixtures import make_cub

    ddir = make_cub(tmp_path / "a")
    anno = json.loads((ddir / "train.json").read_text())
    anno["/abs/elsewhere.jpg"] = 1
    (ddir / "train.json").write_text(json.dumps(anno))
    with pytest.raises(DatasetError, match=r"train.json': path '/abs/elsewhere.jpg' is an absolute path"):
        load_dataset("fgvc/cub", tmp_path / "a")

    from vlprompt.data import read_split_dk

    dk = tmp_path / "b" / "split_dk_Toy.json"
    dk.parent.mkdir()
    meta = {"taskid2cname": [["x", "y"]], "taskid2tname": ["toy"]}
    dk.write_text(json.dumps({"train": [["../x.jpg", [0], [0]]], "val": [], "test": [], "meta": meta}))
    with pytest.raises(DatasetError, match=r"split_dk_Toy.json': entry 0 of 'train': path '../x.jpg' leads outside"):
        read_split_dk(dk)


# ------------------------------------------------------------------ --model-kwargs (timm backbones)
def test_model_kwargs_from_the_cli_reach_timm_and_the_run(shapes_root, cache_dir, tmp_path, capsys):
    """Before: the API's model_kwargs (MAE's global_pool) had no CLI flag; the feature cache key ignored them."""
    import torch

    from vlprompt.engine.features import FeatureCache
    from vlprompt.engine.run import RunDir
    from vlprompt.protocols.runs import get_backbone

    kw = ["--model-kwargs", "img_size=32", "--model-kwargs", "patch_size=8", "--model-kwargs", "embed_dim=32",
          "--model-kwargs", "depth=2", "--model-kwargs", "num_heads=2"]
    base = ["train", "--method", "linear-probe", "--dataset", "imagefolder", "--root", str(shapes_root), "--shots",
            "2", "--backbone", "timm:vit_tiny_patch16_224", "--cache-dir", cache_dir, "--precision", "fp32", *kw]
    assert main([*base, "--out", str(tmp_path / "tok")]) == 0
    assert main([*base, "--model-kwargs", "global_pool=avg", "--out", str(tmp_path / "avg")]) == 0
    capsys.readouterr()
    tok, avg = RunDir(tmp_path / "tok").read_config(), RunDir(tmp_path / "avg").read_config()
    assert tok["backbone"]["model_kwargs"] == {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2,
                                               "num_heads": 2}  # parsed as YAML: ints
    assert avg["backbone"]["model_kwargs"]["global_pool"] == "avg" and tok["fingerprint"] != avg["fingerprint"]
    bb_tok = get_backbone("timm:vit_tiny_patch16_224", None, False, "cpu", model_kwargs=tok["backbone"]["model_kwargs"])
    bb_avg = get_backbone("timm:vit_tiny_patch16_224", None, False, "cpu", model_kwargs=avg["backbone"]["model_kwargs"])
    assert bb_avg.model.global_pool == "avg" and bb_tok.model.global_pool == "token"
    from vlprompt import load_dataset

    test = load_dataset("imagefolder", str(shapes_root)).test
    cpu = torch.device("cpu")
    keys = {FeatureCache(b, "fp32", cpu, cache_dir).key(test, "test", 0, 0) for b in (bb_tok, bb_avg)}
    assert len(keys) == 2  # other pooling, other features: not read from the other's cache
    # eval rebuilds the backbone with the run's kwargs (a default vit_tiny would not load the 32-wide prompt)
    assert main(["eval", "--run", str(tmp_path / "avg"), "--cache-dir", cache_dir]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):])["acc"] == json.loads((tmp_path / "avg" / "results.json").read_text())["acc"]
    _fails([*base, "--model-kwargs", "global_pool", "--out", str(tmp_path / "bad")], capsys,
           "--model-kwargs 'global_pool' is not KEY=VALUE")
