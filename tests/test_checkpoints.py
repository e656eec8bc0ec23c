"""Tests for vlprompt.backbones.checkpoints (CPU only, tiny architectures, no downloads)."""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip import factory as oc_factory
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from vlprompt.backbones.checkpoints import (
    build_model,
    checkpoint_format,
    convert_checkpoint,
    file_sha256,
    read_checkpoint,
)
from vlprompt.backbones.configs import register_configs
from vlprompt.errors import CheckpointError, ConfigError

ARCHS = ["tiny-clip", "tiny-clip-rn"]
OPENAI_EXTRAS = {"input_resolution": 64, "context_length": 77, "vocab_size": 49408}


# --------------------------------------------------------------------------- helpers


def _make_source(arch: str, seed: int, quick_gelu: bool = False) -> nn.Module:
    """A randomly initialised model whose every persistent entry is distinctive."""
    register_configs()
    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None, pretrained_text=False, force_quick_gelu=quick_gelu)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            # Non-default BatchNorm statistics, so eval outputs depend on the loaded buffers.
            if name.endswith("running_mean"):
                buf.normal_(0.0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
        model.logit_scale.fill_(3.0)
    return model.eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    image = torch.randn(2, 3, 64, 64, generator=g)
    text = torch.randint(1, 49407, (2, 77), generator=g)
    text[:, 10] = 49407  # an end-of-text token (argmax position) in each row
    return image, text


def _outputs(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    image, text = _inputs()
    with torch.no_grad():
        return model.encode_image(image), model.encode_text(text)


def _assert_same_outputs(a: nn.Module, b: nn.Module) -> None:
    ia, ta = _outputs(a)
    ib, tb = _outputs(b)
    torch.testing.assert_close(ia, ib, rtol=0, atol=0)
    torch.testing.assert_close(ta, tb, rtol=0, atol=0)


def _assert_same_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    ref = model.state_dict()
    assert set(state) == set(ref)
    for key, value in ref.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, check_dtype=False)


class _OpenAIStyleArchive(nn.Module):
    """Holds a CLIP model's tensors under OpenAI/open_clip key names, plus OpenAI's extras."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        for name, param in model.named_parameters(recurse=False):
            self.register_parameter(name, param)
        for name, value in OPENAI_EXTRAS.items():
            self.register_buffer(name, torch.tensor(value))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)


def _save_torchscript(model: nn.Module, path: Path) -> Path:
    archive = _OpenAIStyleArchive(copy.deepcopy(model)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript deprecation + tracer warnings
        traced = torch.jit.trace(archive, torch.randn(1, 3, 64, 64))
        torch.jit.save(traced, str(path))
    return path


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", params=ARCHS)
def source(request: pytest.FixtureRequest) -> tuple[str, nn.Module]:
    arch = request.param
    return arch, _make_source(arch, seed=1234)


@pytest.fixture(scope="module")
def vit_source() -> nn.Module:
    return _make_source("tiny-clip", seed=7)


@pytest.fixture()
def pickle_ckpt(tmp_path: Path, vit_source: nn.Module) -> Path:
    path = tmp_path / "tiny.pth"
    torch.save({"state_dict": vit_source.state_dict(), "epoch": 3}, path)
    return path


# --------------------------------------------------------------------------- round trips


def test_safetensors_round_trip(tmp_path: Path, source: tuple[str, nn.Module]) -> None:
    arch, model = source
    path = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(path))
    assert checkpoint_format(path) == "safetensors"
    loaded = build_model(arch, weights=path)  # no trust needed
    assert not loaded.training
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    _assert_same_outputs(model, loaded)


@pytest.mark.parametrize("wrapper", ["plain", "state_dict", "model", "module_prefix"])
def test_pickle_round_trip(tmp_path: Path, source: tuple[str, nn.Module], wrapper: str) -> None:
    arch, model = source
    state = model.state_dict()
    obj: object = {
        "plain": state,
        "state_dict": {"state_dict": state, "epoch": 10, "name": "run"},
        "model": {"model": state, "optimizer": {}},
        "module_prefix": {"state_dict": {f"module.{k}": v for k, v in state.items()}},
    }[wrapper]
    path = tmp_path / "w.pt"
    torch.save(obj, path)
    assert checkpoint_format(path) == "pickle"
    _assert_same_state(model, read_checkpoint(path, trust_checkpoint=True))
    loaded = build_model(arch, weights=path, trust_checkpoint=True)
    _assert_same_outputs(model, loaded)


def test_legacy_pickle_and_fp16_cast(tmp_path: Path, vit_source: nn.Module) -> None:
    half = {k: v.half() if v.is_floating_point() else v for k, v in vit_source.state_dict().items()}
    path = tmp_path / "legacy.bin"
    torch.save(half, path, _use_new_zipfile_serialization=False)
    assert checkpoint_format(path) == "pickle"
    state = read_checkpoint(path, trust_checkpoint=True)
    assert all(v.dtype == torch.float32 for v in state.values())
    torch.testing.assert_close(state["visual.proj"], half["visual.proj"].float(), rtol=0, atol=0)
    model = build_model("tiny-clip", weights=path, trust_checkpoint=True)
    assert model.visual.proj.dtype == torch.float32


def test_format_by_content_not_extension(tmp_path: Path, vit_source: nn.Module) -> None:
    path = tmp_path / "actually_safetensors.pt"
    save_file(vit_source.state_dict(), str(path))
    assert checkpoint_format(path) == "safetensors"
    _assert_same_state(vit_source, read_checkpoint(path))


# --------------------------------------------------------------------------- TorchScript (OpenAI)


@pytest.mark.parametrize("arch", ARCHS)
def test_torchscript_archive_loads_with_trust(tmp_path: Path, arch: str) -> None:
    model = _make_source(arch, seed=99, quick_gelu=True)  # OpenAI weights use QuickGELU
    path = _save_torchscript(model, tmp_path / f"{arch}-openai.pt")
    assert checkpoint_format(path) == "torchscript"

    state = read_checkpoint(path, trust_checkpoint=True)
    assert not set(OPENAI_EXTRAS) & set(state)
    _assert_same_state(model, state)

    loaded = build_model(arch, weights=path, trust_checkpoint=True)
    assert any(isinstance(m, open_clip.transformer.QuickGELU) for m in loaded.modules())
    _assert_same_outputs(model, loaded)

    explicit = build_model(arch, weights=path, trust_checkpoint=True, force_quick_gelu=False)
    assert not any(isinstance(m, open_clip.transformer.QuickGELU) for m in explicit.modules())


def test_torchscript_without_trust_is_refused(tmp_path: Path, vit_source: nn.Module) -> None:
    path = _save_torchscript(vit_source, tmp_path / "ViT-openai.pt")
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    msg = str(err.value)
    assert "TorchScript" in msg and "--trust-checkpoint" in msg and "vlprompt convert" in msg


# --------------------------------------------------------------------------- trust


def test_pickle_without_trust_is_refused(pickle_ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def _forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load must not be called on an untrusted file")

    monkeypatch.setattr(torch, "load", _forbidden)
    for call in (lambda: read_checkpoint(pickle_ckpt), lambda: build_model("tiny-clip", weights=pickle_ckpt)):
        with pytest.raises(CheckpointError) as err:
            call()
        msg = str(err.value)
        assert "pickle" in msg and "execute" in msg
        assert "--trust-checkpoint" in msg and "trust_checkpoint=True" in msg
        assert f"vlprompt convert {pickle_ckpt}" in msg and ".safetensors --trust-checkpoint" in msg


# --------------------------------------------------------------------------- mismatches


def test_wrong_architecture_is_named(tmp_path: Path, vit_source: nn.Module) -> None:
    path = tmp_path / "vit.safetensors"
    save_file(vit_source.state_dict(), str(path))
    with pytest.raises(CheckpointError) as err:
        build_model("tiny-clip-rn", weights=path)
    msg = str(err.value)
    assert "tiny-clip-rn" in msg and str(path) in msg
    assert "missing keys: visual.bn1.weight" in msg
    assert "unexpected keys: transformer.resblocks.2." in msg  # tiny-clip has one more text layer
    assert "visual.conv1.weight: checkpoint (192, 3, 8, 8) vs tiny-clip-rn (8, 3, 3, 3)" in msg
    assert "image tower is a ViT" in msg  # tower hint


def test_shape_mismatch_is_named(
    tmp_path: Path, vit_source: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = copy.deepcopy(oc_factory._MODEL_CONFIGS["tiny-clip"])
    cfg["vision_cfg"]["patch_size"] = 16
    monkeypatch.setitem(oc_factory._MODEL_CONFIGS, "tiny-clip-p16", cfg)
    path = tmp_path / "vit.safetensors"
    save_file(vit_source.state_dict(), str(path))
    with pytest.raises(CheckpointError) as err:
        build_model("tiny-clip-p16", weights=path)
    msg = str(err.value)
    assert "shape mismatches" in msg
    assert "visual.conv1.weight: checkpoint (192, 3, 8, 8) vs tiny-clip-p16 (192, 3, 16, 16)" in msg
    assert "visual.positional_embedding: checkpoint (65, 192) vs tiny-clip-p16 (17, 192)" in msg
    assert "missing keys" not in msg and "unexpected keys" not in msg


def test_missing_and_unexpected_keys(tmp_path: Path, vit_source: nn.Module) -> None:
    state = dict(vit_source.state_dict())
    del state["ln_final.weight"]
    state["extra.head.weight"] = torch.zeros(3)
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=r"1 missing keys: ln_final\.weight.*1 unexpected keys: extra"):
        build_model("tiny-clip", weights=path)


def test_transient_buffers_and_scalar_shapes_are_tolerated(tmp_path: Path) -> None:
    model = _make_source("tiny-clip-rn", seed=5)
    state = dict(model.state_dict())
    state["attn_mask"] = model.attn_mask.clone()  # older open_clip versions persisted it
    state["logit_scale"] = state["logit_scale"].reshape(1)
    for key in [k for k in state if k.endswith("num_batches_tracked")]:
        del state[key]
    path = tmp_path / "old.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    loaded = build_model("tiny-clip-rn", weights=path)
    _assert_same_outputs(model, loaded)


# --------------------------------------------------------------------------- conversion


def test_convert_round_trip(tmp_path: Path, pickle_ckpt: Path, vit_source: nn.Module) -> None:
    dst = tmp_path / "out" / "tiny.safetensors"
    assert convert_checkpoint(pickle_ckpt, dst, trust_checkpoint=True) == dst
    assert checkpoint_format(dst) == "safetensors"
    with safe_open(str(dst), framework="pt") as f:
        assert f.metadata() == {"format": "vlprompt-converted", "source_format": "pickle"}
    assert sorted(p.name for p in dst.parent.iterdir()) == ["tiny.safetensors"]  # no temp left
    loaded = build_model("tiny-clip", weights=dst)  # no trust flag needed any more
    _assert_same_outputs(vit_source, loaded)


def test_convert_torchscript(tmp_path: Path, vit_source: nn.Module) -> None:
    src = _save_torchscript(vit_source, tmp_path / "openai.pt")
    dst = convert_checkpoint(src, tmp_path / "openai.safetensors", trust_checkpoint=True)
    with safe_open(str(dst), framework="pt") as f:
        assert f.metadata()["source_format"] == "torchscript"
    _assert_same_state(vit_source, read_checkpoint(dst))
    # The converted OpenAI weights still get QuickGELU automatically, without the trust flag.
    loaded = build_model("tiny-clip", weights=dst)
    assert any(isinstance(m, open_clip.transformer.QuickGELU) for m in loaded.modules())
    plain = tmp_path / "plain.safetensors"
    save_file(vit_source.state_dict(), str(plain))
    assert not any(
        isinstance(m, open_clip.transformer.QuickGELU) for m in build_model("tiny-clip", plain).modules()
    )


def test_convert_without_trust_writes_nothing(tmp_path: Path, pickle_ckpt: Path) -> None:
    dst = tmp_path / "out.safetensors"
    before = set(tmp_path.iterdir())
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        convert_checkpoint(pickle_ckpt, dst)
    assert not dst.exists()
    assert set(tmp_path.iterdir()) == before


def test_convert_requires_safetensors_suffix(tmp_path: Path, pickle_ckpt: Path) -> None:
    with pytest.raises(CheckpointError, match=r"\.safetensors"):
        convert_checkpoint(pickle_ckpt, tmp_path / "out.pt", trust_checkpoint=True)
    assert not (tmp_path / "out.pt").exists()


# --------------------------------------------------------------------------- errors and misc


def test_unknown_arch_lists_close_matches(tmp_path: Path) -> None:
    missing = tmp_path / "never-read.safetensors"
    with pytest.raises(ConfigError, match="tiny-clip") as err:
        build_model("tiny-clp", weights=missing)
    assert "Unknown architecture 'tiny-clp'" in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    for call in (
        lambda: checkpoint_format(missing),
        lambda: read_checkpoint(missing, trust_checkpoint=True),
        lambda: build_model("tiny-clip", weights=missing),
        lambda: file_sha256(missing),
    ):
        with pytest.raises(CheckpointError, match="not found"):
            call()


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, not a checkpoint", b"PK\x03\x04 truncated zip", b"\x80\x04 truncated pickle"],
    ids=["empty", "text", "bad-zip", "bad-pickle"],
)
def test_corrupt_file_names_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="broken.pt"):
        read_checkpoint(path, trust_checkpoint=True)


def test_truncated_safetensors(tmp_path: Path, vit_source: nn.Module) -> None:
    good = tmp_path / "good.safetensors"
    save_file(vit_source.state_dict(), str(good))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        read_checkpoint(bad)


def test_random_init_without_weights(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="vlprompt"):
        model = build_model("tiny-clip")
    assert isinstance(model, open_clip.CLIP) and not model.training
    assert "randomly initialised" in caplog.text


def test_file_sha256(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"abc" * 1000)
    assert file_sha256(path) == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert file_sha256(str(path)) == file_sha256(path)  # cached
    path.write_bytes(b"different content")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert file_sha256(path) == hashlib.sha256(b"different content").hexdigest()
