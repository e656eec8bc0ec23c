"""The backbone interface every method talks to, and the prompt containers it accepts.

Methods never reach into open_clip (or any other model library). They ask a
:class:`Backbone` to tokenize, embed, and run its towers, and hand it prompts as data:

* text: an embedding sequence (with learned context already in it), the EOT positions, and
  optional *deep* prompts — ``{layer: (n_ctx, D) tensor}`` replacing positions ``1..n_ctx``
  before that layer (MaPLe, deep language prompting);
* vision: a :class:`VisualPrompts` with shallow tokens, per-layer deep replacements and
  per-layer key/value prompts (E2VPT), all interpreted by one shared per-layer loop
  (:mod:`vlprompt.backbones.blocks`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

PromptLayout = Literal["append", "after_cls"]


@dataclass
class KVPrompt:
    """Key/value prompt tokens prepended to K and V (after projection) of one attention layer.

    Attributes:
        key: ``(P, width)`` or ``(B, P, width)`` tokens, in the projected key space.
        value: same shape as ``key``, in the projected value space.
    """

    key: torch.Tensor
    value: torch.Tensor


@dataclass
class VisualPrompts:
    """Prompts for a ViT image tower.

    Attributes:
        tokens: shallow prompt tokens ``(P, width)`` or ``(B, P, width)`` inserted after the
            positional embedding (before ``ln_pre``), or ``None``.
        layout: ``"append"`` puts them after the patch tokens (MaPLe, DAPT); ``"after_cls"``
            between CLS and the patches (VPT, E2VPT).
        deep: ``{layer: tokens}``: before block ``layer`` (1-based counting of blocks after the
            first, i.e. ``layer >= 1``) the prompt positions are replaced by these tokens.
        kv: ``{layer: KVPrompt}``: key/value prompts inside the attention of block ``layer``
            (``layer >= 0``); queries are unchanged.
    """

    tokens: torch.Tensor | None = None
    layout: PromptLayout = "append"
    deep: dict[int, torch.Tensor] = field(default_factory=dict)
    kv: dict[int, KVPrompt] = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return 0 if self.tokens is None else int(self.tokens.shape[-2])


@dataclass
class ImageOutput:
    """Result of :meth:`Backbone.encode_image` when tokens are requested.

    Attributes:
        pooled: ``(B, embed_dim)`` image feature (projected CLS / pooled output).
        tokens: ``(B, n_patches, width)`` patch tokens after the final norm (prompts removed).
        block_input: with ``return_block_input``: ``(B, L, width)``, the normalised input
            (``ln_1`` output) of the last transformer block, prompt tokens included; it is the
            tensor the block consumes, so ``torch.autograd.grad(target, block_input)`` gives
            Grad-CAM gradients.
        patch_start: index of the first patch token in ``block_input``.
        grid: ``(rows, cols)`` of the patch grid (patches are ``block_input[:, patch_start:
            patch_start + rows * cols]``, row-major).
    """

    pooled: torch.Tensor
    tokens: torch.Tensor | None = None
    block_input: torch.Tensor | None = None
    patch_start: int = 1
    grid: tuple[int, int] | None = None


class Backbone(nn.Module):
    """A frozen vision-language model with prompt seams.

    Subclasses set the attributes below and implement the methods. All parameters are
    frozen and the module stays in eval mode even when a method calls ``.train()``.

    Attributes:
        name: architecture / registry name.
        weights_id: identifies the weights (sha256 of the file, or ``"random-<seed>"``); used
            in feature-cache keys and recorded in runs.
        embed_dim: dimension of the joint image-text space.
        text_width: width of the text transformer (size of a context vector).
        vision_width: width of the image transformer, or ``None`` for CNN towers.
        image_size: input resolution.
        context_length: maximum number of text tokens.
        n_text_layers, n_vision_layers: number of transformer blocks (0 for CNN towers).
        supports_visual_prompts: whether :class:`VisualPrompts` are accepted.
        patch_size: side of a ViT patch in pixels (``None`` for CNN towers); VPT's prompt
            initialisation uses it.
        vision_heads: attention heads of the image transformer (``None`` for CNN towers).
        image_mean, image_std: input normalisation the weights expect (``None``: CLIP's); the
            engine's transforms read them through :func:`vlprompt.data.transforms.image_norm`.
        prompt_kinds: the visual prompt kinds ``encode_image`` accepts: ``"shallow"`` tokens,
            ``"deep"`` per-layer replacements, ``"kv"`` key/value prompts (Swin: shallow only).
        quick_gelu: CLIP towers: whether they run QuickGELU (OpenAI's activation) rather than
            GELU; ``None`` for backbones where the choice does not exist. Recorded in runs.
        pretrained: the pretrained tag the weights came from (``"openai"``), or ``None``.
        weights_path: the weights file (a ``pretrained`` tag's file in the hub cache), or ``None``.
    """

    name: str
    weights_id: str
    embed_dim: int
    text_width: int
    vision_width: int | None
    image_size: int
    context_length: int
    n_text_layers: int
    n_vision_layers: int
    supports_visual_prompts: bool
    #: whether ``encode_text_shared`` (one pass over a prefix shared by many sequences) is exact and
    #: available: a causal text tower (CLIP); a bidirectional one (MiniLM) cannot share a prefix
    supports_prefix_sharing: bool = False
    patch_size: int | None = None
    vision_heads: int | None = None
    image_mean: tuple[float, ...] | None = None
    image_std: tuple[float, ...] | None = None
    prompt_kinds: tuple[str, ...] = ("shallow", "deep", "kv")
    quick_gelu: bool | None = None
    pretrained: str | None = None
    weights_path: str | None = None

    def train(self, mode: bool = True) -> Backbone:  # noqa: D102 - frozen: always eval
        return super().train(False)

    def set_training_dropout(self, rate: float) -> int:
        """Set the dropout rate of the image tower's embedding and MLP dropouts, which act only when the tower
        is put in training mode by a method that trains a copy of it (full fine-tuning); returns the number of
        dropout layers set. Default: the tower has no such layers (0; CLIP towers)."""
        return 0

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def eot_index(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_text(
        self,
        embeds: torch.Tensor,
        eot_idx: torch.Tensor,
        deep_prompts: dict[int, torch.Tensor] | None = None,
        normalize: bool = False,
    ) -> torch.Tensor:
        raise NotImplementedError

    def encode_image(
        self,
        images: torch.Tensor,
        prompts: VisualPrompts | None = None,
        return_tokens: bool = False,
        normalize: bool = False,
        return_block_input: bool = False,
    ) -> torch.Tensor | ImageOutput:
        raise NotImplementedError

    @property
    def logit_scale(self) -> torch.Tensor:
        raise NotImplementedError

    # Convenience built on the seams -------------------------------------------------
    def encode_texts(self, texts: list[str], normalize: bool = True, chunk: int = 256) -> torch.Tensor:
        """Encode plain strings (no prompts), in chunks, with truncation.

        Example:
            >>> feats = bb.encode_texts(["a photo of a cat.", "a photo of a dog."])
        """
        out = []
        for i in range(0, len(texts), chunk):
            tok = self.tokenize(texts[i : i + chunk]).to(self.device)
            out.append(self.encode_text(self.embed(tok), self.eot_index(tok), normalize=normalize))
        return torch.cat(out)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
