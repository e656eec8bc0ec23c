"""OpenAI weights never load with the wrong activation (GELU vs QuickGELU), whatever their file format.

The same random weights are saved as an OpenAI TorchScript archive, an open_clip state dict (``.pt``),
a plain ``.safetensors`` and a ``vlprompt convert``-ed ``.safetensors``; each is loaded automatically,
with a ``-quickgelu`` architecture name and with ``force_quick_gelu=True`` (``--quick-gelu``). Every load
either equals open_clip's own QuickGELU model (≤ 1e-6 max abs) or emits exactly one warning naming the fix.

``tiny-clip`` stands in for ViT-B-16 (seconds instead of minutes): the ``openai_tag`` fixture gives it an
``openai`` pretrained tag with ``quick_gelu=True`` in open_clip's table, which is what makes ViT-B-16,
RN50 ... "architectures whose OpenAI release uses QuickGELU".
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
import yaml
from open_clip import pretrained as oc_pretrained
from safetensors import safe_open
from safetensors.torch import save_file

import vlprompt as vp
from test_checkpoints import _make_source, _save_torchscript
from vlprompt.backbones.checkpoints import (
    activation_metadata,
    build_model,
    convert_checkpoint,
    openai_quick_gelu_archs,
    recorded_activation,
    uses_quick_gelu,
)
from vlprompt.cli import build_parser, main
from vlprompt.errors import ConfigError, VlpromptWarning

ARCH = "tiny-clip"
TOL = 1e-6


@pytest.fixture()
def openai_tag(monkeypatch):
    """tiny-clip gets an ``openai`` tag (QuickGELU) in open_clip's pretrained table, like ViT-B-16."""
    entry = {"openai": oc_pretrained._pcfg(hf_hub="vlprompt-test/tiny-clip-openai/", quick_gelu=True)}
    monkeypatch.setitem(oc_pretrained._PRETRAINED, ARCH, entry)
    openai_quick_gelu_archs.cache_clear()
    yield
    openai_quick_gelu_archs.cache_clear()


def _frozen(model: torch.nn.Module) -> torch.nn.Module:
    """Frozen, as a backbone is (frozen parameters take torch's inference attention path: ~2e-6 apart)."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


@pytest.fixture(scope="module")
def reference():
    """open_clip's QuickGELU model with distinctive random weights (the OpenAI release stand-in)."""
    return _frozen(_make_source(ARCH, seed=31, quick_gelu=True))


@pytest.fixture(scope="module")
def files(tmp_path_factory, reference):
    """The same weights in every format a user may hold them in."""
    d = tmp_path_factory.mktemp("weights")
    sd = {k: v.contiguous() for k, v in reference.state_dict().items()}
    out = {"torchscript": _save_torchscript(reference, d / "openai.pt"), "statedict": d / "openai_sd.pt",
           "safetensors": d / "openai_sd.safetensors"}
    torch.save(sd, out["statedict"])
    save_file(sd, str(out["safetensors"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VlpromptWarning)
        out["converted"] = convert_checkpoint(out["torchscript"], d / "converted.safetensors", trust_checkpoint=True)
    return out


def _inputs():
    g = torch.Generator().manual_seed(0)
    image = torch.randn(2, 3, 64, 64, generator=g)
    text = torch.randint(1, 49407, (2, 77), generator=g)
    text[:, 12] = 49407
    return image, text


def max_diff(model: torch.nn.Module, reference: torch.nn.Module) -> float:
    """Largest absolute difference of image and text features between two open_clip models."""
    image, text = _inputs()
    with torch.no_grad():
        return max(float((model.encode_image(image) - reference.encode_image(image)).abs().max()),
                   float((model.encode_text(text) - reference.encode_text(text)).abs().max()))


def _load(name: str, path: Path, force: bool | None) -> tuple[vp.backbones.Backbone, list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bb = vp.load_backbone(name, weights=path, trust_checkpoint=True, force_quick_gelu=force)
    return bb, [w for w in caught if issubclass(w.category, VlpromptWarning)]


WAYS = {"auto": (ARCH, None), "name": (f"{ARCH}-quickgelu", None), "flag": (ARCH, True)}


@pytest.mark.parametrize("fmt", ["torchscript", "statedict", "safetensors", "converted"])
@pytest.mark.parametrize("way", list(WAYS))
def test_every_format_and_way_equals_quickgelu_or_warns(openai_tag, files, reference, fmt, way):
    name, force = WAYS[way]
    bb, warned = _load(name, files[fmt], force)
    if way == "auto" and fmt in ("statedict", "safetensors"):
        # nothing says which activation: GELU (the architecture's), and one warning with the exact fix
        assert not bb.quick_gelu and not uses_quick_gelu(bb.model)
        assert len(warned) == 1, [str(w.message) for w in warned]
        msg = str(warned[0].message)
        assert "--quick-gelu" in msg and f"'{ARCH}-quickgelu'" in msg and "--no-quick-gelu" in msg
        assert max_diff(bb.model, reference) > 1e-3  # what the silent GELU would have cost
    else:
        assert warned == [], [str(w.message) for w in warned]
        assert bb.quick_gelu and uses_quick_gelu(bb.model)
        assert max_diff(bb.model, reference) <= TOL


def test_no_quick_gelu_flag_silences_and_builds_gelu(openai_tag, files):
    bb, warned = _load(ARCH, files["safetensors"], False)
    assert warned == [] and bb.quick_gelu is False
    gelu = open_clip.create_model(ARCH, pretrained=None)
    gelu.load_state_dict(bb.model.state_dict())
    assert max_diff(bb.model, _frozen(gelu)) <= TOL


def test_no_warning_without_an_openai_release(files):
    """tiny-clip has no openai tag in open_clip's real table: a plain state dict is just GELU, silently."""
    assert ARCH not in openai_quick_gelu_archs()
    assert {"ViT-B-16", "ViT-B-32", "ViT-L-14", "ViT-L-14-336", "RN50"} <= openai_quick_gelu_archs()
    bb, warned = _load(ARCH, files["safetensors"], None)
    assert warned == [] and bb.quick_gelu is False


def test_weights_id_follows_the_activation(files):
    """Feature caches and run fingerprints never mix the two activations of one file; the activation the
    file or the name implies keeps the plain id (as before this option existed)."""
    gelu, _ = _load(ARCH, files["safetensors"], False)
    quick, _ = _load(ARCH, files["safetensors"], True)
    named, _ = _load(f"{ARCH}-quickgelu", files["safetensors"], None)
    assert quick.weights_id == gelu.weights_id + "+quickgelu"
    assert named.weights_id == gelu.weights_id  # the name already says it
    archive, _ = _load(ARCH, files["torchscript"], None)
    archive_gelu, _ = _load(ARCH, files["torchscript"], False)
    assert "+" not in archive.weights_id and archive_gelu.weights_id == archive.weights_id + "+gelu"


def test_quickgelu_name_contradicting_flag_is_an_error(files):
    with pytest.raises(ConfigError, match="contradicts"):
        vp.load_backbone(f"{ARCH}-quickgelu", weights=files["safetensors"], force_quick_gelu=False)
    with pytest.raises(ConfigError, match="Unknown architecture"):
        vp.load_backbone("no-such-arch-quickgelu")


def test_recorded_activation_is_honoured_and_explicit_choice_warns(openai_tag, tmp_path, reference):
    sd = {k: v.contiguous() for k, v in reference.state_dict().items()}
    quick, gelu = tmp_path / "quick.safetensors", tmp_path / "gelu.safetensors"
    save_file(sd, str(quick), metadata=activation_metadata(True))
    save_file(sd, str(gelu), metadata=activation_metadata(False))
    assert (recorded_activation(quick), recorded_activation(gelu)) == (True, False)
    bb, warned = _load(ARCH, quick, None)
    assert warned == [] and bb.quick_gelu and max_diff(bb.model, reference) <= TOL
    bb, warned = _load(ARCH, gelu, None)
    assert warned == [] and not bb.quick_gelu  # the file says GELU: no openai warning
    bb, warned = _load(ARCH, gelu, True)
    assert bb.quick_gelu and len(warned) == 1 and "records that its weights need GELU" in str(warned[0].message)


def test_convert_records_the_activation(openai_tag, files, tmp_path, reference):
    with safe_open(str(files["converted"]), framework="pt") as f:
        assert f.metadata()["activation"] == "quick_gelu"  # from a TorchScript archive: OpenAI's
    # a plain state dict: recorded as told ...
    dst = convert_checkpoint(files["statedict"], tmp_path / "told.safetensors", trust_checkpoint=True,
                             quick_gelu=True)
    with safe_open(str(dst), framework="pt") as f:
        assert f.metadata() == {"format": "vlprompt-converted", "source_format": "pickle", "activation": "quick_gelu"}
    bb, warned = _load(ARCH, dst, None)
    assert warned == [] and max_diff(bb.model, reference) <= TOL
    # ... and a warning when nobody says
    with pytest.warns(VlpromptWarning, match="--quick-gelu"):
        dst = convert_checkpoint(files["statedict"], tmp_path / "unknown.safetensors", trust_checkpoint=True)
    assert recorded_activation(dst) is None
    # CLI: vlprompt convert --quick-gelu
    cli_dst = tmp_path / "cli.safetensors"
    assert main(["convert", str(files["statedict"]), str(cli_dst), "--trust-checkpoint", "--quick-gelu"]) == 0
    assert recorded_activation(cli_dst) is True
    assert main(["convert", str(files["statedict"]), str(cli_dst), "--trust-checkpoint", "--no-quick-gelu"]) == 0
    assert recorded_activation(cli_dst) is False


def test_build_model_directly(openai_tag, files, reference):
    assert max_diff(_frozen(build_model(f"{ARCH}-quickgelu", files["safetensors"])), reference) <= TOL
    with pytest.warns(VlpromptWarning, match="--quick-gelu"):
        assert not uses_quick_gelu(build_model(ARCH, files["safetensors"]))


@pytest.mark.parametrize("command", ["train", "base2new", "few-shot", "cross-dataset", "domain-gen", "multitask",
                                     "vtab", "data-efficient", "eval", "predict", "demo", "convert"])
def test_every_backbone_command_takes_the_flag(command):
    required = {
        "train": ["--method", "coop", "--dataset", "x", "--root", "r", "--out", "o"],
        "base2new": ["--method", "coop", "--datasets", "x", "--root", "r", "--out", "o"],
        "few-shot": ["--method", "coop", "--datasets", "x", "--root", "r", "--out", "o"],
        "cross-dataset": ["--method", "coop", "--source", "x", "--targets", "y", "--root", "r", "--out", "o"],
        "domain-gen": ["--method", "coop", "--source", "x", "--root", "r", "--out", "o"],
        "multitask": ["--method", "softcpt-nata", "--groups", "g", "--out", "o"],
        "vtab": ["--method", "vpt", "--datasets", "x", "--out", "o"],
        "data-efficient": ["--method", "coop", "--datasets", "x", "--root", "r", "--out", "o"],
        "eval": ["--run", "r"], "predict": ["--run", "r", "img.png"], "demo": [], "convert": ["a.pt", "b.safetensors"],
    }[command]
    parser = build_parser()
    assert parser.parse_args([command, *required]).quick_gelu is None
    assert parser.parse_args([command, *required, "--quick-gelu"]).quick_gelu is True
    assert parser.parse_args([command, *required, "--no-quick-gelu"]).quick_gelu is False
    if command not in ("eval", "predict", "convert"):
        assert parser.parse_args([command, *required, "--pretrained", "openai"]).pretrained == "openai"


def _train(root, out, cache_dir, *extra):
    return ["train", "--method", "zeroshot", "--dataset", "imagefolder", "--root", str(root), "--out", str(out),
            "--cache-dir", cache_dir, *extra]


def test_cli_warns_once_then_flag_and_name_are_recorded_and_reused(openai_tag, files, shapes_root, cache_dir,
                                                                    tmp_path, capsys):
    from vlprompt.protocols import runs

    weights = str(files["safetensors"])
    assert main(_train(shapes_root, tmp_path / "plain", cache_dir, "--weights", weights)) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "--quick-gelu" in warned[0] and "tiny-clip-quickgelu" in warned[0]

    for extra, out in ((["--quick-gelu"], "flag"), (["--backbone", "tiny-clip-quickgelu"], "name")):
        assert main(_train(shapes_root, tmp_path / out, cache_dir, "--weights", weights, *extra)) == 0
        assert "warning:" not in capsys.readouterr().err
        bcfg = yaml.safe_load((tmp_path / out / "config.yaml").read_text())["backbone"]
        assert bcfg["quick_gelu"] is True and bcfg["weights"] == str(Path(weights).resolve())
        assert json.loads((tmp_path / out / "prompt.json").read_text())["quick_gelu"] is True
        # eval reloads the run's backbone with the recorded activation: no warning, QuickGELU
        runs._BACKBONES.clear()
        assert main(["eval", "--run", str(tmp_path / out), "--cache-dir", cache_dir]) == 0
        assert "warning:" not in capsys.readouterr().err
        (bb,) = runs._BACKBONES.values()
        assert bb.quick_gelu is True


def test_load_prompt_warns_on_an_activation_mismatch(tiny_bb, tmp_path):
    quick = vp.load_backbone("tiny-clip", force_quick_gelu=True)
    model = vp.build_method("coop", quick, ["cat", "dog"], n_ctx=2)
    path = vp.save_prompt(model, tmp_path / "prompt.safetensors")
    assert json.loads((tmp_path / "prompt.json").read_text())["quick_gelu"] is True
    assert vp.load_prompt(path).backbone.quick_gelu is True  # rebuilt from the record
    with pytest.warns(VlpromptWarning, match="QuickGELU"):
        vp.load_prompt(path, tiny_bb)


def test_sweep_accepts_quickgelu_names_and_flags(tmp_path):
    from vlprompt.sweep.spec import parse_sweep

    base = {"methods": ["zeroshot"], "datasets": ["eurosat"], "protocol": "few-shot", "data_root": str(tmp_path)}
    (run,) = parse_sweep({**base, "backbone": "ViT-B-16-quickgelu"}).expand()
    assert run.backbone == "ViT-B-16-quickgelu" and run.quick_gelu is None and run.pretrained is None
    (run,) = parse_sweep({**base, "backbone": "ViT-B-16", "pretrained": "openai", "quick_gelu": True}).expand()
    assert run.pretrained == "openai" and run.quick_gelu is True
    for bad, fragment in (({"quick_gelu": "yes"}, "quick_gelu"), ({"pretrained": 3}, "pretrained"),
                          ({"pretrained": "openai", "weights": "w.pt"}, "not both")):
        with pytest.raises(ConfigError, match=fragment):
            parse_sweep({**base, **bad})


def test_sweep_run_uses_the_quickgelu_name(shapes_root, cache_dir, tmp_path):
    from vlprompt.sweep.run import execute
    from vlprompt.sweep.spec import parse_sweep

    (run,) = parse_sweep({
        "methods": ["zeroshot"], "datasets": [{"name": "imagefolder", "root": str(shapes_root), "label": "shapes"}],
        "protocol": "few-shot", "shots": [2], "backbone": "tiny-clip-quickgelu", "out": str(tmp_path / "sweep"),
        "cache_dir": cache_dir,
    }).expand()
    assert execute(run)["status"] == "done"
    bcfg = yaml.safe_load((Path(run.out) / "config.yaml").read_text())["backbone"]
    assert bcfg["name"] == "tiny-clip-quickgelu" and bcfg["quick_gelu"] is True


def test_sweep_command_line_replaces_the_backbone_source(tmp_path):
    from vlprompt.sweep.spec import load_sweep

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"methods": ["zeroshot"], "datasets": ["eurosat"], "backbone": "ViT-B-16",
                                    "weights": str(tmp_path / "w.pt"), "data_root": str(tmp_path)}))
    (run,) = load_sweep(path, pretrained="openai", quick_gelu=True).expand()
    assert run.pretrained == "openai" and run.weights is None and run.quick_gelu is True
    (run,) = load_sweep(path).expand()
    assert run.weights == str(tmp_path / "w.pt") and run.pretrained is None and run.quick_gelu is None
