"""timm ViT image towers (image only) with prompt seams (no copied model code).

The tower is built by ``timm.create_model(arch, pretrained=False, num_classes=0)`` — nothing
is ever downloaded — and :meth:`TimmViTBackbone.encode_image` runs timm's own modules:

``patch_embed`` → ``_pos_embed`` (CLS / register tokens + positional embedding) →
``patch_drop`` → optional prompt tokens → ``norm_pre`` → ``blocks`` through the shared
per-layer loop :func:`~vlprompt.backbones.blocks.run_blocks` (deep replacement, key/value
prompts) → prompts removed → ``norm`` → timm's ``forward_head(pre_logits=True)`` (the CLS
token, or the model's own pooling, then ``fc_norm``).

Without prompts the output equals timm's ``forward_features`` / ``forward`` (tested
≤ 1e-5). Prompt tokens get no positional embedding (VPT: they are inserted after it).

Names: ``"timm:<timm model name>"``, e.g. ``"timm:vit_base_patch16_224.augreg_in21k"``
(a pretrained tag is allowed; it only selects timm's config, never a download).

Weights (``weights=PATH``), detected by content:

* ``.safetensors`` / ``.pth`` / ``.bin`` timm state dicts (pickle needs ``trust_checkpoint``),
  passed through timm's ``checkpoint_filter_fn`` (which also converts open_clip / OpenAI CLIP
  image towers and old timm layouts); the classifier ``head.*`` is dropped (the backbone
  has ``num_classes=0``); then loaded strictly — a mismatch raises :class:`CheckpointError`
  naming the keys;
* MAE and MoCo-v3 ViT-B checkpoints in their published layouts (``{"model": ...}``;
  ``{"state_dict": {"module.base_encoder.*", ...}}``), see :mod:`vlprompt.backbones.ssl`
  (MAE as VPT: global average pooling, ``model_kwargs={"global_pool": "avg"}``);
* Google's JAX ``.npz`` (e.g. ``imagenet21k_ViT-B_16.npz``, the VPT / E2VPT backbone), read
  by timm's own ``load_pretrained`` after a strict check of widths, patch size, sequence
  length and depth; ``pre_logits`` and ``head`` entries are ignored, as in VPT.
"""

from __future__ import annotations

import difflib
import logging
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import CheckpointError, ConfigError
from .base import Backbone, ImageOutput, VisualPrompts
from .blocks import run_blocks

logger = logging.getLogger(__name__)

PREFIX = "timm:"
_MAX_LISTED = 5


class ImageOnlyBackbone(Backbone):
    """Base of the timm image towers: no text tower (the text seams raise a clear error)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.text_width = 0
        self.context_length = 0
        self.n_text_layers = 0

    def _adopt(self, model: torch.nn.Module, weights_id: str, model_kwargs: dict | None) -> None:
        """Freeze the timm ``model`` and read what both timm towers share: widths, input size, patch
        size, the pretrained config's mean/std (ImageNet's by default)."""
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.weights_id = weights_id
        self.model_kwargs = dict(model_kwargs or {})
        self.embed_dim = int(model.num_features)
        self.vision_width = int(model.embed_dim)
        pe = model.patch_embed
        self.image_size = int(pe.img_size[0]) if pe.img_size is not None else 224
        self.patch_size = int(pe.patch_size[0])
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self.image_mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.image_std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
        self.supports_visual_prompts = True

    def _no_text(self) -> ConfigError:
        return ConfigError(
            f"{self.name} is an image-only backbone (timm): it has no text tower; use a "
            "vision-classifier method (linear-probe, vpt-shallow, vpt-deep) or a CLIP backbone"
        )

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        raise self._no_text()

    def eot_index(self, tokens: torch.Tensor) -> torch.Tensor:
        raise self._no_text()

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        raise self._no_text()

    def encode_text(self, embeds, eot_idx, deep_prompts=None, normalize=False) -> torch.Tensor:
        raise self._no_text()

    @property
    def logit_scale(self) -> torch.Tensor:
        raise self._no_text()


class TimmViTBackbone(ImageOnlyBackbone):
    """A frozen timm ``VisionTransformer`` exposed through vlprompt's image seams (no text tower).

    Attributes beyond :class:`Backbone`: ``num_prefix_tokens`` (CLS + register
    tokens), ``image_mean`` / ``image_std`` (the normalisation of timm's pretrained config)
    and ``model_kwargs`` (extra ``create_model`` arguments).

    Example:
        >>> bb = load_backbone("timm:vit_base_patch16_224", weights="imagenet21k_ViT-B_16.npz")
        >>> feats = bb.encode_image(torch.randn(2, 3, 224, 224))          # (2, 768) CLS after norm
    """

    def __init__(
        self, model: torch.nn.Module, name: str, weights_id: str = "random", model_kwargs: dict | None = None
    ) -> None:
        super().__init__(name)
        from timm.models.vision_transformer import VisionTransformer

        if not isinstance(model, VisionTransformer):
            raise ConfigError(f"{name}: {type(model).__name__} is not a timm VisionTransformer")
        self._adopt(model, weights_id, model_kwargs)
        self.n_vision_layers = len(model.blocks)
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.vision_heads = int(model.blocks[0].attn.num_heads) if len(model.blocks) else None

    def set_training_dropout(self, rate: float) -> int:
        """Dropout ``rate`` after the positional embedding (``pos_drop``) and after the activation and the
        second linear layer of every MLP (``mlp.drop1`` / ``mlp.drop2``): the sites of the ``dropout_rate``
        of the ViT port VPT fine-tunes (its attention dropouts are 0 and stay 0 here). Returns the count."""
        m = self.model
        found = [getattr(m, "pos_drop", None)] + [getattr(getattr(b, "mlp", None), n, None)
                                                  for b in m.blocks for n in ("drop1", "drop2")]
        sites = [d for d in found if isinstance(d, torch.nn.Dropout)]
        for m in sites:
            m.p = float(rate)
        return len(sites)

    # ---------------------------------------------------------------- vision
    def encode_image(
        self,
        images: torch.Tensor,
        prompts: VisualPrompts | None = None,
        return_tokens: bool = False,
        normalize: bool = False,
    ) -> torch.Tensor | ImageOutput:
        """Pooled image features (CLS after the final norm), optionally with visual prompts.

        Args:
            images: ``(B, 3, H, W)`` normalised images.
            prompts: shallow tokens (``after_cls``: after the CLS/register tokens, VPT;
                ``append``: after the patches), deep replacements, key/value prompts.
            return_tokens: also return the patch tokens after the final norm (prompts removed).
            normalize: L2-normalise the pooled feature.

        Returns:
            ``(B, embed_dim)`` features, equal to timm's ``forward`` (``num_classes=0``) without
            prompts, or an :class:`ImageOutput` when ``return_tokens``.
        """
        m = self.model
        x = m.patch_embed(images)
        x = m._pos_embed(x)
        x = m.patch_drop(x)
        prompts = prompts or VisualPrompts()
        n_p = prompts.n_tokens
        start = x.shape[1] if prompts.layout == "append" else self.num_prefix_tokens
        if prompts.tokens is not None:
            p = prompts.tokens
            p = (p.unsqueeze(0).expand(x.shape[0], -1, -1) if p.dim() == 2 else p).to(x.dtype)
            x = torch.cat([x[:, :start], p, x[:, start:]], dim=1)
        elif prompts.deep:
            raise ConfigError("deep visual prompts need shallow prompt tokens at layer 0")
        x = m.norm_pre(x)
        replace = {k: (start, t) for k, t in prompts.deep.items()}
        x = run_blocks(m.blocks, x, batch_first=True, replace=replace, kv=prompts.kv)
        if n_p:
            x = torch.cat([x[:, :start], x[:, start + n_p :]], dim=1)
        x = m.norm(x)
        pooled = m.forward_head(x, pre_logits=True)
        if normalize:
            pooled = F.normalize(pooled, dim=-1)
        if return_tokens:
            return ImageOutput(pooled, x[:, self.num_prefix_tokens :])
        return pooled


# -------------------------------------------------------------------- building and loading
def create_timm_vit(arch: str, **model_kwargs: Any) -> torch.nn.Module:
    """``timm.create_model(arch, pretrained=False, num_classes=0, **model_kwargs)`` with clear errors."""
    import timm

    base = arch.split(".", 1)[0]
    if not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(["vit_*", "swin_*"]), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown timm model {arch!r}.{hint} See timm.list_models('vit_*') / ('swin_*').")
    kwargs = {**model_kwargs, "pretrained": False, "num_classes": 0}
    try:
        model = timm.create_model(arch, **kwargs)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ConfigError(f"cannot build timm model {arch!r} with {model_kwargs}: {e}") from e
    return model.eval()


def _is_npz(p: Path) -> bool:
    if not zipfile.is_zipfile(p):
        return False
    with zipfile.ZipFile(p) as z:
        names = z.namelist()
    return bool(names) and all(n.endswith(".npy") for n in names)


def _npz_prefix(keys: set[str]) -> str:
    for prefix in ("", "opt/target/", "params/"):
        if f"{prefix}embedding/kernel" in keys:
            return prefix
    raise CheckpointError(
        "not a Google ViT .npz checkpoint: no 'embedding/kernel' entry "
        f"(first entries: {sorted(keys)[:_MAX_LISTED]})"
    )


def _check_npz(model: torch.nn.Module, arch: str, p: Path) -> None:
    """Strict shape / depth check of a Google ViT ``.npz`` against ``model`` (timm would resample)."""
    import numpy as np

    with np.load(p, allow_pickle=False) as w:
        shapes = {k: tuple(w[k].shape) for k in w.files}
    prefix = _npz_prefix(set(shapes))
    problems: list[str] = []

    def expect(key: str, want: tuple[int, ...]) -> None:
        got = shapes.get(prefix + key)
        if got is None:
            problems.append(f"missing {prefix + key}")
        elif got != want:
            problems.append(f"{prefix + key}: checkpoint {got} vs {arch} {want}")

    width, cin, kh, kw = model.patch_embed.proj.weight.shape
    expect("embedding/kernel", (kh, kw, cin, width))
    if model.cls_token is not None:
        expect("cls", tuple(model.cls_token.shape))
    pos_key = "pos_embedding" if f"{prefix}pos_embedding" in shapes else "Transformer/posembed_input/pos_embedding"
    expect(pos_key, tuple(model.pos_embed.shape))
    blocks = {
        int(k[len(prefix) + len("Transformer/encoderblock_"):].split("/", 1)[0])
        for k in shapes if k.startswith(f"{prefix}Transformer/encoderblock_")
    }
    if blocks and len(blocks) != len(model.blocks):
        problems.append(f"checkpoint has {len(blocks)} blocks vs {arch} {len(model.blocks)}")
    mlp = model.blocks[0].mlp.fc1.weight.shape[0] if len(model.blocks) else None
    if blocks and mlp is not None:
        expect("Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel", (width, mlp))
    if problems:
        more = f", ... ({len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
        raise CheckpointError(
            f"Checkpoint '{p}' does not match timm architecture '{arch}': "
            + "; ".join(problems[:_MAX_LISTED]) + more + "."
        )


def load_timm_weights(
    model: torch.nn.Module, arch: str, weights: str | Path, trust_checkpoint: bool = False, safe_pickle: bool = False
) -> None:
    """Load a local checkpoint into a timm ViT / Swin strictly (see the module docstring for formats).

    ``safe_pickle`` reads a ``torch.save`` file with torch's restricted unpickler without
    ``trust_checkpoint`` (files timm fetched from the hub, see :func:`~vlprompt.backbones.checkpoints.read_checkpoint`).
    """
    from timm.models import swin_transformer, vision_transformer

    from .checkpoints import _existing_file, _match_state_dict, read_checkpoint
    from .ssl import convert_ssl_state, pooling_hint

    p = _existing_file(weights)
    is_swin = isinstance(model, swin_transformer.SwinTransformer)
    checkpoint_filter_fn = (swin_transformer if is_swin else vision_transformer).checkpoint_filter_fn
    if _is_npz(p) and not is_swin:
        _check_npz(model, arch, p)
        try:
            with torch.no_grad():
                model.load_pretrained(str(p))
        except (KeyError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"Checkpoint '{p}' does not match timm architecture '{arch}': {e}") from e
        return
    state = convert_ssl_state(read_checkpoint(p, trust_checkpoint=trust_checkpoint, safe_pickle=safe_pickle), model,
                              str(p))
    try:
        state = checkpoint_filter_fn(state, model)
    except Exception as e:  # timm's converters raise many types on foreign layouts
        raise CheckpointError(f"Checkpoint '{p}' cannot be converted for timm '{arch}': {e}") from e
    own = set(model.state_dict())
    dropped = [k for k in state if k.startswith("head.") and k not in own]
    for k in dropped:
        del state[k]
    if dropped:
        logger.info("Ignoring the classifier of %s: %s", p, dropped)
    try:
        matched = _match_state_dict(arch, model, state, p)
    except CheckpointError as e:
        raise CheckpointError(f"{e}{pooling_hint(model, state)}") from None
    model.load_state_dict(matched, strict=True)


def load_timm_backbone(
    name: str,
    weights: str | Path | None = None,
    trust_checkpoint: bool = False,
    seed: int = 0,
    model_kwargs: dict | None = None,
    safe_pickle: bool = False,
) -> ImageOnlyBackbone:
    """Build ``"timm:<arch>"``, a ViT or a Swin (random with ``seed``, or with local ``weights``).

    Example:
        >>> bb = load_timm_backbone("timm:vit_base_patch16_224.augreg_in21k", weights="vit.safetensors")
    """
    from .checkpoints import file_sha256

    if not name.startswith(PREFIX):
        raise ConfigError(f"timm backbone names start with {PREFIX!r}, got {name!r}")
    arch = name[len(PREFIX):]
    kwargs = dict(model_kwargs or {})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_timm_vit(arch, **kwargs)
    if weights is None:
        weights_id = f"random-seed{seed}"
    else:
        load_timm_weights(model, arch, weights, trust_checkpoint=trust_checkpoint, safe_pickle=safe_pickle)
        weights_id = f"sha256:{file_sha256(weights)[:16]}"
    from timm.models.swin_transformer import SwinTransformer

    from .swin import TimmSwinBackbone

    cls = TimmSwinBackbone if isinstance(model, SwinTransformer) else TimmViTBackbone
    bb = cls(model, name=name, weights_id=weights_id, model_kwargs=kwargs)
    bb.weights_path = None if weights is None else str(Path(weights).resolve())
    return bb
