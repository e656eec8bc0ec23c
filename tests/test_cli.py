"""End-to-end CLI runs and bad-input handling (each: one clear error, nothing written)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

import vlprompt as vp
from vlprompt.cli import main


def _train_args(root, out, cache_dir, *extra):
    return ["train", "--method", "coop", "--dataset", "imagefolder", "--root", str(root), "--shots", "4",
            "--out", str(out), "--epochs", "2", "--batch-size", "4", "--lr", "0.002", "--cache-dir", cache_dir,
            "-o", "n_ctx=4", *extra]


def test_train_eval_predict_end_to_end(shapes_root, cache_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train_args(shapes_root, out, cache_dir, "--subsample", "base")) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "coop" and results["subsample"] == "base" and results["num_classes"] == 3
    capsys.readouterr()
    assert main(["eval", "--run", str(out), "--subsample", "new", "--cache-dir", cache_dir]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["subsample"] == "new" and 0 <= printed["acc"] <= 100
    updated = json.loads((out / "results.json").read_text())
    assert updated["new_acc"] == printed["acc"]
    b, n = updated["base_acc"], updated["new_acc"]
    assert updated["hm"] == pytest.approx(0 if b + n == 0 else 2 * b * n / (b + n))
    image = next((shapes_root / "test").rglob("*.jpg"))
    assert main(["predict", "--run", str(out), "--topk", "2", str(image)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(image)) and line.count("(") == 2
    model = vp.load_prompt(out)
    assert model.classnames == vp.load_dataset("imagefolder", shapes_root, subsample="base").classnames
    assert model.classnames == ["blue triangle", "green square", "purple cross"]
    # re-targeted to other class names (comma list, then a file); same prompt, the new classes' text features
    new = vp.load_dataset("imagefolder", shapes_root, subsample="new").classnames
    assert main(["predict", "--run", str(out), "--topk", "1", "--classnames", ",".join(new), str(image)]) == 0
    line = capsys.readouterr().out.strip()
    assert any(f"\t{n} (" in line for n in new)
    names_file = tmp_path / "names.txt"
    names_file.write_text("\n".join(new) + "\n")
    retarget = vp.load_prompt(out)
    retarget.set_classnames(new)
    probs = vp.predict(retarget, [str(image)], topk=1)[0][0]
    assert main(["predict", "--run", str(out), "--topk", "1", "--classnames", str(names_file), str(image)]) == 0
    assert capsys.readouterr().out.strip() == f"{image}\t{probs[0]} ({probs[1]:.3f})"
    assert main(["predict", "--run", str(out), "--classnames", "a,a", str(image)]) == 2
    assert "more than once" in capsys.readouterr().err


def test_methods_and_datasets_commands(capsys):
    assert main(["methods"]) == 0
    listed = capsys.readouterr().out
    for name in ("zeroshot", "linear-probe", "coop"):
        assert name in listed
    assert main(["datasets"]) == 0
    listed = capsys.readouterr().out
    for name in ("imagenet", "eurosat", "imagefolder", "csv"):
        assert name in listed


def _fails(argv, capsys, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") >= 1
    for f in fragments:
        assert f in err, err
    return err


def test_missing_dataset_root(tmp_path, cache_dir, capsys):
    out = tmp_path / "run"
    err = _fails(["train", "--method", "coop", "--dataset", "eurosat", "--root", str(tmp_path / "nowhere"),
                  "--out", str(out), "--cache-dir", cache_dir], capsys, "eurosat")
    assert "split_zhou_EuroSAT.json" in err and "2750" in err  # the expected layout is shown
    assert not out.exists()


def test_missing_split_file(tmp_path, cache_dir, capsys):
    (tmp_path / "eurosat" / "2750" / "Forest").mkdir(parents=True)
    out = tmp_path / "run"
    _fails(["train", "--method", "coop", "--dataset", "eurosat", "--root", str(tmp_path), "--out", str(out),
            "--cache-dir", cache_dir], capsys, "split_zhou_EuroSAT.json")
    assert not out.exists()


def test_unreadable_image(tmp_path, cache_dir, capsys):
    from vlprompt.data import make_image_folder

    root = tmp_path / "shapes"
    make_image_folder(root, n_train=4, n_val=1, n_test=2, size=32, seed=0)
    bad = sorted((root / "train").rglob("*.jpg"))[-1]
    bad.write_bytes(b"not a jpeg")
    out = tmp_path / "run"
    _fails(_train_args(root, out, str(tmp_path / "cache")), capsys, str(bad))
    assert not out.exists()


def test_wrong_architecture_checkpoint(tmp_path, cache_dir, shapes_root, capsys):
    rn = vp.load_backbone("tiny-clip-rn")
    weights = tmp_path / "rn.safetensors"
    save_file({k: v.contiguous() for k, v in rn.model.state_dict().items()}, str(weights))
    out = tmp_path / "run"
    _fails(_train_args(shapes_root, out, cache_dir, "--weights", str(weights)), capsys, "tiny-clip", "visual")
    assert not out.exists()


def test_pickle_checkpoint_needs_trust_flag(tmp_path, cache_dir, shapes_root, capsys):
    weights = tmp_path / "model.pt"
    torch.save(vp.load_backbone("tiny-clip").model.state_dict(), weights)
    out = tmp_path / "run"
    _fails(_train_args(shapes_root, out, cache_dir, "--weights", str(weights)), capsys, "--trust-checkpoint")
    assert not out.exists()
    converted = tmp_path / "model.safetensors"
    _fails(["convert", str(weights), str(converted)], capsys, "--trust-checkpoint")
    assert not converted.exists()
    assert main(["convert", str(weights), str(converted), "--trust-checkpoint"]) == 0
    assert main(_train_args(shapes_root, out, cache_dir, "--weights", str(converted), "--epochs", "1")) == 0


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--method", "cop", "--dataset", "imagefolder"], "unknown method 'cop'"),
        (["--method", "coop", "--dataset", "imagefolders"], "imagefolders"),
        (["--method", "coop", "--dataset", "imagefolder", "-o", "n_ctxx=3"], "n_ctxx"),
    ],
)
def test_unknown_names(argv, fragment, shapes_root, tmp_path, cache_dir, capsys):
    out = tmp_path / "run"
    _fails(["train", *argv, "--root", str(shapes_root), "--out", str(out), "--cache-dir", cache_dir], capsys,
           fragment)
    assert not out.exists()
    assert not os.listdir(tmp_path)


def test_methods_name_lists_options_types_defaults_docs_and_presets(capsys):
    from vlprompt.methods.maple import MaPLeConfig

    assert main(["methods", "maple"]) in (None, 0)
    out = capsys.readouterr().out
    assert "prompt_depth = 9   [int]" in out and "at most the number of blocks" in out  # from MaPLeConfig's doc
    assert f"n_ctx = {MaPLeConfig().n_ctx}" in out
    assert "reference: " in out and "precision='fp16-gpu'" in out and "paper-xd:" in out
    assert main(["methods", "coop+dept"]) in (None, 0)
    out = capsys.readouterr().out
    assert "dept_weight = 0.7   [float]" in out and "CAT" in out
    assert main(["methods", "cop"]) == 2
    assert "unknown method 'cop'" in capsys.readouterr().err


def test_datasets_root_reports_present_incomplete_missing_and_checks_images(tmp_path, capsys):
    from data_fixtures import BUILDERS

    assert main(["datasets", "--root", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err
    BUILDERS["dtd"](tmp_path)
    BUILDERS["eurosat"](tmp_path)
    assert main(["datasets", "--root", str(tmp_path)]) == 0
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines() if ln.strip()}
    assert "incomplete" in lines["dtd"] and "of 47 classes" in lines["dtd"]  # the fixture has 2 of DTD's 47
    assert "missing" in lines["caltech101"] and "caltech-101" in lines["caltech101"]
    bad = next((tmp_path / "eurosat").rglob("*.jpg"))
    bad.write_bytes(b"not an image")
    assert main(["datasets", "--root", str(tmp_path), "--check"]) == 1
    out = capsys.readouterr().out
    assert f"unreadable: {bad}" in out and "1 unreadable image(s)" in out


def test_methods_lists_and_describes_plugins(capsys):
    from vlprompt.methods.base import plugin_targets

    assert main(["methods"]) == 0
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    for p in ("+dept", "+dapt", "+dapt-g"):
        assert len(listed[p].split(maxsplit=1)) == 2, p  # a description, not an empty row
    assert "(on: cocoop, coop, ivlp, kgcoop, maple, promptsrc)" in listed["+dapt"]
    assert plugin_targets("dept") is None and "vpt-deep" not in plugin_targets("dapt-g")
    assert main(["methods", "+dapt-g"]) in (None, 0)
    out = capsys.readouterr().out
    assert out.startswith("+dapt-g: DAPT-G") and "dapt_masks = 'gradcam'" in out and "Grad-CAM" in out
    assert "reference: dapt_loss_schedule='reference'" in out
    assert main(["methods", "+dept"]) in (None, 0)
    out = capsys.readouterr().out
    assert "dept_weight = 0.7   [float]" in out and "checked when built" in out
    assert main(["methods", "+nope"]) == 2
    assert "unknown plug-in 'nope'" in capsys.readouterr().err
