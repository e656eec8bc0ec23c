"""MAE / MoCo-v3 ViT checkpoints in their published layouts load into the timm ViT backbone."""

from __future__ import annotations

import pytest
import timm
import torch

import vlprompt as vp
from numerics import assert_fp32_close
from vlprompt.errors import CheckpointError

ARCH = "vit_tiny_patch16_224"
KW = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def _timm(seed: int, **extra) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(ARCH, pretrained=False, **KW, **extra).eval()
    with torch.no_grad():  # LayerNorms away from (1, 0) so a wrong norm would show
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _features(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_head(model.forward_features(images), pre_logits=True)


def test_mocov3_pretraining_layout(tmp_path):
    ref = _timm(0, num_classes=8)  # the projection MLP stands in as a Linear head; dropped anyway
    other = _timm(1, num_classes=8)
    sd = {f"module.base_encoder.{k}": v for k, v in ref.state_dict().items()}
    sd |= {f"module.momentum_encoder.{k}": v for k, v in other.state_dict().items()}
    sd |= {"module.predictor.0.weight": torch.randn(8, 8), "module.predictor.1.running_mean": torch.zeros(8)}
    torch.save({"epoch": 300, "arch": "vit_base", "state_dict": sd, "optimizer": {}}, tmp_path / "moco.pth.tar")
    bb = vp.load_backbone(f"timm:{ARCH}", weights=tmp_path / "moco.pth.tar", trust_checkpoint=True, model_kwargs=KW)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = bb.encode_image(images)
    assert_fp32_close(ours, _features(ref, images))  # CLS after the final norm


def test_mocov3_linear_layout(tmp_path):
    ref = _timm(2, num_classes=5)
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, tmp_path / "lin.pth.tar")
    bb = vp.load_backbone(f"timm:{ARCH}", weights=tmp_path / "lin.pth.tar", trust_checkpoint=True, model_kwargs=KW)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_fp32_close(bb.encode_image(images), _features(ref, images))


def test_mae_finetuned_global_pool_layout(tmp_path):
    ref = _timm(3, num_classes=4, global_pool="avg")  # fc_norm + head, no final norm
    assert "fc_norm.weight" in ref.state_dict() and "norm.weight" not in ref.state_dict()
    torch.save({"model": ref.state_dict()}, tmp_path / "mae_ft.pth")
    kw = {**KW, "global_pool": "avg"}
    bb = vp.load_backbone(f"timm:{ARCH}", weights=tmp_path / "mae_ft.pth", trust_checkpoint=True, model_kwargs=kw)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_fp32_close(bb.encode_image(images), _features(ref, images))
    with pytest.raises(CheckpointError, match=r"fc_norm.*global_pool"):  # into a token-pool tower
        vp.load_backbone(f"timm:{ARCH}", weights=tmp_path / "mae_ft.pth", trust_checkpoint=True, model_kwargs=KW)


def test_mae_pretraining_layout(tmp_path):
    ref = _timm(4)  # the encoder: final norm, no fc_norm, no head; plus decoder entries
    sd = dict(ref.state_dict())
    sd |= {"mask_token": torch.zeros(1, 1, 16), "decoder_embed.weight": torch.randn(16, 32),
           "decoder_blocks.0.norm1.weight": torch.ones(16), "decoder_pred.bias": torch.zeros(192)}
    torch.save({"model": sd}, tmp_path / "mae_pretrain.pth")
    # token pooling: the pre-training encoder as it is (CLS after the final norm)
    bb = vp.load_backbone(f"timm:{ARCH}", weights=tmp_path / "mae_pretrain.pth", trust_checkpoint=True,
                          model_kwargs=KW)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_fp32_close(bb.encode_image(images), _features(ref, images))
    # VPT's global pool: norm dropped, fc_norm = LayerNorm(1, 0) (MAE fine-tuning convention)
    kw = {**KW, "global_pool": "avg"}
    gp = vp.load_backbone(f"timm:{ARCH}", weights=tmp_path / "mae_pretrain.pth", trust_checkpoint=True,
                          model_kwargs=kw)
    with torch.no_grad():
        tokens = ref.blocks(ref.norm_pre(ref._pos_embed(ref.patch_embed(images))))
        pooled = torch.nn.functional.layer_norm(tokens[:, 1:].mean(1), (32,), eps=1e-6)
        assert_fp32_close(gp.encode_image(images), pooled)
    assert torch.equal(gp.model.fc_norm.weight, torch.ones(32)) and torch.equal(gp.model.fc_norm.bias, torch.zeros(32))


def test_mismatches_name_the_keys(tmp_path):
    ref = _timm(5)
    sd = {f"module.base_encoder.{k}": v for k, v in ref.state_dict().items() if not k.startswith("blocks.1.")}
    torch.save({"state_dict": sd}, tmp_path / "moco_cut.pth.tar")
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.1\."):
        vp.load_backbone(f"timm:{ARCH}", weights=tmp_path / "moco_cut.pth.tar", trust_checkpoint=True, model_kwargs=KW)
    sd = {f"module.base_encoder.{k}": v for k, v in ref.state_dict().items()} | {"module.queue": torch.zeros(3)}
    torch.save({"state_dict": sd}, tmp_path / "moco_stray.pth.tar")
    with pytest.raises(CheckpointError, match="MoCo-v3.*queue"):
        vp.load_backbone(f"timm:{ARCH}", weights=tmp_path / "moco_stray.pth.tar", trust_checkpoint=True,
                         model_kwargs=KW)
    wide = {**KW, "embed_dim": 64}
    torch.save({"model": ref.state_dict()}, tmp_path / "mae.pth")
    with pytest.raises(CheckpointError, match=r"cls_token: checkpoint \(1, 1, 32\)"):
        vp.load_backbone(f"timm:{ARCH}", weights=tmp_path / "mae.pth", trust_checkpoint=True, model_kwargs=wide)
