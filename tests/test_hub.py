"""Pretrained tags through open_clip's / timm's own Hugging Face hub cache, offline.

A cache entry is fabricated the way huggingface_hub lays it out
(``<HF_HOME>/hub/models--<org>--<name>/snapshots/<revision>/<file>`` and ``refs/main`` naming the
revision), holding random weights of a small model, and loaded with ``HF_HUB_OFFLINE=1``. Nothing
here touches the network: offline mode is on in every test (huggingface_hub refuses any request).

open_clip's real table has no tag for a small architecture, so ``tiny-clip`` gets one
(``openai``: hub id ``vlprompt-test/tiny-clip-openai``, ``quick_gelu=True``), added to
``open_clip.pretrained._PRETRAINED`` as open_clip's own entries are; the timm test uses timm's real
``vit_base_patch16_224.augreg_in21k`` entry with a small model config.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import constants as hf_constants
from open_clip import pretrained as oc_pretrained
from safetensors.torch import save_file

import vlprompt as vp
from numerics import assert_fp32_close
from test_activation import _frozen, max_diff
from test_checkpoints import _make_source
from vlprompt.backbones.checkpoints import openai_quick_gelu_archs, uses_quick_gelu
from vlprompt.cli import main
from vlprompt.errors import CheckpointError, ConfigError, VlpromptWarning

REPO = "vlprompt-test/tiny-clip-openai"
REVISION = "0123456789abcdef0123456789abcdef01234567"
SRC = str(Path(__file__).resolve().parents[1] / "src")
TIMM_SMALL = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}


def put_in_cache(hub: Path, repo: str, filename: str, tensors: dict[str, torch.Tensor]) -> Path:
    """Write a file into a Hugging Face hub cache as ``hf_hub_download`` leaves it."""
    repo_dir = hub / ("models--" + repo.replace("/", "--"))
    path = repo_dir / "snapshots" / REVISION / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(REVISION)
    return path


@pytest.fixture()
def offline_hub(tmp_path, monkeypatch):
    """A fresh HF_HOME with offline mode on (env for subprocesses, constants for this process)."""
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return home / "hub"


@pytest.fixture()
def tiny_tag(monkeypatch):
    monkeypatch.setitem(oc_pretrained._PRETRAINED, "tiny-clip",
                        {"openai": oc_pretrained._pcfg(hf_hub=f"{REPO}/", quick_gelu=True)})
    openai_quick_gelu_archs.cache_clear()
    yield
    openai_quick_gelu_archs.cache_clear()


@pytest.fixture(scope="module")
def reference():
    return _frozen(_make_source("tiny-clip", seed=5, quick_gelu=True))


def test_cached_tag_loads_offline_with_quickgelu(offline_hub, tiny_tag, reference):
    path = put_in_cache(offline_hub, REPO, "open_clip_model.safetensors", reference.state_dict())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bb = vp.load_backbone("tiny-clip", pretrained="openai")
    assert not [w for w in caught if issubclass(w.category, VlpromptWarning)]
    assert bb.pretrained == "openai" and bb.quick_gelu and uses_quick_gelu(bb.model)  # from the tag's quick_gelu
    assert Path(bb.weights_path) == path.resolve()
    assert max_diff(bb.model, reference) <= 1e-6


def test_open_clip_pickle_file_loads_without_trust(offline_hub, tiny_tag, reference):
    """open_clip_pytorch_model.bin (no safetensors in the repo): read with torch's weights_only unpickler."""
    repo_dir = offline_hub / ("models--" + REPO.replace("/", "--"))
    path = repo_dir / "snapshots" / REVISION / "open_clip_pytorch_model.bin"
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(REVISION)
    bb = vp.load_backbone("tiny-clip", pretrained="openai")
    assert max_diff(bb.model, reference) <= 1e-6


def test_missing_tag_file_is_one_error_naming_tag_cache_and_weights(offline_hub, capsys, tmp_path):
    # the real open_clip entry of ViT-B-16 / openai; nothing cached, offline: no network is tried
    with pytest.raises(CheckpointError) as info:
        vp.load_backbone("ViT-B-16", pretrained="openai")
    msg = str(info.value)
    assert "openai" in msg and "--weights" in msg and "HF_HUB_OFFLINE" in msg
    assert str(offline_hub / "models--timm--vit_base_patch16_clip_224.openai") in msg
    out = tmp_path / "run"
    assert main(["train", "--method", "zeroshot", "--dataset", "imagefolder", "--root", str(tmp_path), "--out",
                 str(out), "--backbone", "ViT-B-16", "--pretrained", "openai"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--weights" in err[0]
    assert not out.exists()


def test_unknown_tag_lists_known_ones(offline_hub):
    with pytest.raises(ConfigError, match="known tags: .*openai"):
        vp.load_backbone("ViT-B-16", pretrained="opneai")
    with pytest.raises(ConfigError, match="no pretrained tags"):
        vp.load_backbone("tiny-clip", pretrained="openai")
    with pytest.raises(ConfigError, match="not both"):
        vp.load_backbone("tiny-clip", weights="x.safetensors", pretrained="openai")


def test_timm_tag_loads_offline(offline_hub):
    import timm

    torch.manual_seed(3)
    src = timm.create_model("vit_base_patch16_224.augreg_in21k", pretrained=False, num_classes=0, **TIMM_SMALL)
    put_in_cache(offline_hub, "timm/vit_base_patch16_224.augreg_in21k", "model.safetensors", src.state_dict())
    for name in ("timm:vit_base_patch16_224", "timm:vit_base_patch16_224.augreg_in21k"):
        bb = vp.load_backbone(name, pretrained="augreg_in21k", model_kwargs=TIMM_SMALL)
        assert bb.name == "timm:vit_base_patch16_224.augreg_in21k" and bb.pretrained == "augreg_in21k"
        assert bb.image_mean == (0.5, 0.5, 0.5)  # the tag's own normalisation
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            assert_fp32_close(bb.encode_image(x), _frozen(src.eval())(x))
    with pytest.raises(ConfigError, match="names the tag"):
        vp.load_backbone("timm:vit_base_patch16_224.augreg_in21k", pretrained="augreg_in1k", model_kwargs=TIMM_SMALL)
    with pytest.raises(CheckpointError, match="--weights"):  # a real tag that is not cached
        vp.load_backbone("timm:vit_base_patch16_224", pretrained="augreg_in1k", model_kwargs=TIMM_SMALL)
    with pytest.raises(ConfigError, match="CLIP architectures only"):
        vp.load_backbone("timm:vit_base_patch16_224", force_quick_gelu=True, model_kwargs=TIMM_SMALL)


def test_cli_pretrained_run_is_recorded_and_evaluates_offline(offline_hub, tiny_tag, reference, shapes_root,
                                                              cache_dir, tmp_path, capsys):
    from vlprompt.protocols import runs

    put_in_cache(offline_hub, REPO, "open_clip_model.safetensors", reference.state_dict())
    out = tmp_path / "run"
    assert main(["train", "--method", "zeroshot", "--dataset", "imagefolder", "--root", str(shapes_root),
                 "--out", str(out), "--cache-dir", cache_dir, "--pretrained", "openai"]) == 0
    assert "warning:" not in capsys.readouterr().err
    bcfg = yaml.safe_load((out / "config.yaml").read_text())["backbone"]
    assert bcfg["pretrained"] == "openai" and bcfg["quick_gelu"] is True and bcfg["name"] == "tiny-clip"
    assert json.loads((out / "prompt.json").read_text())["pretrained"] == "openai"
    runs._BACKBONES.clear()
    assert main(["eval", "--run", str(out), "--cache-dir", cache_dir]) == 0
    (bb,) = runs._BACKBONES.values()
    assert bb.pretrained == "openai" and bb.quick_gelu and max_diff(bb.model, reference) <= 1e-6
    # the API alone rebuilds the backbone from the prompt's record: tag (hub cache) and activation
    bb = vp.load_prompt(out).backbone
    assert bb.pretrained == "openai" and bb.quick_gelu and max_diff(bb.model, reference) <= 1e-6


def test_fresh_process_with_hf_hub_offline(offline_hub, reference, tmp_path):
    """As a user would run it: HF_HOME and HF_HUB_OFFLINE=1 in the environment of a new process."""
    put_in_cache(offline_hub, REPO, "open_clip_model.safetensors", reference.state_dict())
    script = textwrap.dedent(f"""
        import json
        from open_clip import pretrained as p
        p._PRETRAINED["tiny-clip"] = {{"openai": p._pcfg(hf_hub="{REPO}/", quick_gelu=True)}}
        import vlprompt as vp
        bb = vp.load_backbone("tiny-clip", pretrained="openai")
        print(json.dumps({{"path": bb.weights_path, "quick_gelu": bb.quick_gelu}}))
    """)
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HOME": str(offline_hub.parent), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["quick_gelu"] is True and got["path"].startswith(str(offline_hub.resolve()))


def test_backbones_command_lists_architectures_and_tags(capsys):
    assert main(["backbones", "ViT-B-16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    (row,) = [line for line in lines if line.startswith("ViT-B-16 ")]
    assert "openai*" in row and "laion2b_s34b_b88k," in row  # * = trained with QuickGELU
    assert main(["backbones", "timm:vit_base_patch16_224"]) == 0
    out = capsys.readouterr().out
    assert "augreg_in21k" in out
    assert main(["backbones", "--no-timm"]) == 0
    out = capsys.readouterr().out
    assert "tiny-clip" in out and "timm:" not in out.split("\n\n")[0]
    assert main(["backbones", "nothing-like-this*"]) == 2
