"""Self-supervised ViT-B checkpoints (MAE, MoCo-v3) in their published layouts, for timm ViTs.

VPT's self-supervised backbones (``DATA.FEATURE`` ``mae_vitb16`` / ``mocov3_vitb16``) are
timm-layout ViT-B/16 state dicts inside training wrappers. :func:`convert_ssl_state` maps
them onto a timm ``VisionTransformer`` state dict before the strict load of
:func:`vlprompt.backbones.vit.load_timm_weights` (``read_checkpoint`` has already unwrapped
``{"model": ...}`` / ``{"state_dict": ...}`` and stripped ``module.``):

* **MoCo-v3** pre-training (``vit-b-300ep.pth.tar``): ``{"state_dict": {"module.base_encoder.<timm
  keys>", "module.momentum_encoder.*", "module.predictor.*"}, ...}`` → the ``base_encoder``
  entries with the prefix stripped; the momentum encoder, the predictor and the projection
  MLP (``head.*``) are dropped. The linear-probe checkpoint (``linear-vit-b-300ep.pth.tar``,
  ``module.<timm keys>`` + ``head``) is already a timm state dict.
* **MAE** (``mae_pretrain_vit_base.pth``: ``{"model": <timm keys>}``): decoder entries
  (``decoder_*``, ``mask_token``) are dropped when present. VPT reads MAE with global average
  pooling (MAE's fine-tuning default): build the tower with ``model_kwargs={"global_pool":
  "avg"}`` — timm then has no final ``norm`` and a ``fc_norm`` after the pooling. A
  pre-training checkpoint has ``norm`` and no ``fc_norm``: as MAE's fine-tuning does, its
  ``norm`` is dropped and ``fc_norm`` starts as a plain LayerNorm (weight 1, bias 0) — frozen
  there, as VPT trains only prompts and head. A fine-tuned global-pool checkpoint
  (``fc_norm`` + ``head``) loads as it is.

Example:
    >>> mae = load_backbone("timm:vit_base_patch16_224.mae", weights="mae_pretrain_vit_base.pth",
    ...                     trust_checkpoint=True, model_kwargs={"global_pool": "avg"})
    >>> moco = load_backbone("timm:vit_base_patch16_224.mae", weights="vit-b-300ep.pth.tar",
    ...                      trust_checkpoint=True)   # the .mae tag only selects ImageNet mean/std
"""

from __future__ import annotations

import logging

import torch

from ..errors import CheckpointError

logger = logging.getLogger(__name__)

MOCO_PREFIX = "base_encoder."
MOCO_DROPPED = ("momentum_encoder.", "predictor.")
MAE_DECODER = ("decoder_", "mask_token")


def _has_module(model: torch.nn.Module, name: str) -> bool:
    """Whether ``model.<name>`` exists and holds parameters (not an ``Identity``)."""
    sub = getattr(model, name, None)
    return isinstance(sub, torch.nn.Module) and any(True for _ in sub.parameters())


def convert_ssl_state(state: dict[str, torch.Tensor], model: torch.nn.Module, source: str) -> dict[str, torch.Tensor]:
    """Map a MoCo-v3 / MAE state dict onto ``model`` (a timm ViT); other state dicts pass unchanged.

    Args:
        state: the flat state dict read from the checkpoint (wrappers and ``module.`` removed).
        model: the timm ``VisionTransformer`` it will be loaded into.
        source: the checkpoint path, for messages.

    Returns:
        A state dict in ``model``'s layout (apart from a classifier ``head``, dropped later).
    """
    if any(k.startswith(MOCO_PREFIX) for k in state):
        stray = sorted(k for k in state if not k.startswith((MOCO_PREFIX, *MOCO_DROPPED)))
        if stray:
            raise CheckpointError(
                f"Checkpoint '{source}' looks like MoCo-v3 (base_encoder.*) but also holds "
                f"unexpected entries: {', '.join(stray[:5])}"
            )
        state = {k[len(MOCO_PREFIX):]: v for k, v in state.items() if k.startswith(MOCO_PREFIX)}
        logger.info("MoCo-v3 checkpoint %s: using base_encoder (momentum encoder and predictor dropped)", source)
    decoder = [k for k in state if k.startswith(MAE_DECODER)]
    if decoder:
        state = {k: v for k, v in state.items() if k not in set(decoder)}
        logger.info("MAE checkpoint %s: dropped %d decoder entries", source, len(decoder))
    global_pool = _has_module(model, "fc_norm") and not _has_module(model, "norm")
    if global_pool and not any(k.startswith("fc_norm.") for k in state) and any(k.startswith("norm.") for k in state):
        state = {k: v for k, v in state.items() if not k.startswith("norm.")}
        for name, tensor in model.fc_norm.state_dict().items():
            fill = 1.0 if name == "weight" else 0.0
            state[f"fc_norm.{name}"] = torch.full_like(tensor, fill)
        logger.info(
            "Pre-training checkpoint %s on a global-pool ViT: final norm dropped, fc_norm = LayerNorm(1, 0) "
            "(MAE fine-tuning convention)", source,
        )
    return state


def pooling_hint(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> str:
    """A hint for a strict-load failure caused by the pooling variant (token vs global pool)."""
    has_fc_norm = any(k.startswith("fc_norm.") for k in state)
    has_norm = any(k.startswith("norm.") for k in state)
    if has_fc_norm and not has_norm and _has_module(model, "norm"):
        return (
            " Hint: the checkpoint is a global-pool ViT (fc_norm, no final norm; e.g. a fine-tuned MAE): "
            "build the backbone with model_kwargs={'global_pool': 'avg'}."
        )
    if has_norm and not has_fc_norm and _has_module(model, "fc_norm") and _has_module(model, "norm"):
        return " Hint: the checkpoint has no fc_norm; build the backbone with model_kwargs={'fc_norm': False}."
    return ""
