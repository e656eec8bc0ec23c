"""E2VPT: Effective and Efficient Visual Prompt Tuning (Han et al., ICCV 2023).

A vision classifier on a frozen ViT, VPT-deep plus key-value prompts, with pruning of the
visual prompts:

* visual prompts: VPT-deep (``num_tokens`` = N_p per layer after CLS, overwritten before every
  block, VPT's uniform init, prompt dropout 0.1);
* key-value prompts: in every block, ``num_kv_tokens`` = N_kv tokens prepended to the projected
  keys and values of the self-attention (queries unchanged), one tensor per layer shared by K
  and V (``share_kv``), Kaiming-uniform init as the reference (``ORIGIN_INIT=2``: per layer a
  ``(heads, N_kv, d_h)`` tensor, bound ``sqrt(6 / (N_kv·d_h))``), dropout ``kv_dropout`` (0.0;
  off in training unless ``kv_dropout_in_training``, as in the reference);
* masks: a token mask γ ``(N_p,)`` and a segment mask ρ ``(N_p, pieces)`` multiply the visual
  prompts of every layer (after dropout); ``segments="strided"`` (the reference code: piece j
  covers dims j, j+pieces, ...) or ``"contiguous"`` (width/pieces-dim chunks). Masks are fixed
  buffers (1 = kept), saved with the prompts.

Pruning (:func:`importance_scores`, :func:`masks_for_level`; the whole train → score → rewind
grid is :func:`vlprompt.protocols.e2vpt_prune.prune_and_rewind`): the importance of every mask
entry is the mean over training batches of ∂L/∂γ and ∂L/∂ρ (signed, as the reference; ``abs``
optional); at a pruning level ``t%`` the ``floor(N_p·t/100)`` lowest-scoring tokens (keeping at
least 1) and, per token, the ``floor(pieces·s/100)`` lowest-scoring pieces (keeping at least 4)
are zeroed; the model is then rewound (fresh initialisation) and retrained with the masks fixed.

Example:
    >>> model = vp.build_method("e2vpt", bb, task.classnames, num_tokens=10, num_kv_tokens=5)
    >>> vp.fit(model, task, epochs=100, lr=..., batch_size=64)
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.base import Backbone, KVPrompt, VisualPrompts
from ..errors import ConfigError, VlpromptWarning
from .base import register_method
from .vpt import MAX_PROMPT_TOKENS, VPTDeep, VPTDeepConfig

#: Cumulative pruning levels (percent) of the reference schedule.
PRUNE_LEVELS = (10, 20, 30, 40, 50, 60, 70, 80, 90)


@dataclass(frozen=True)
class E2VPTConfig(VPTDeepConfig):
    """E2VPT options (defaults: the released VTAB commands, ``command.txt``).

    Attributes:
        num_tokens: visual prompt tokens N_p per layer (10 for most VTAB tasks; 5 on FGVC).
        dropout: visual prompt dropout (``DROPOUT_P`` 0.1).
        num_kv_tokens: key-value prompt tokens N_kv per layer (5 for most tasks).
        kv_dropout: dropout rate on the key-value prompts (``DROPOUT`` 0.0); it acts only with
            ``kv_dropout_in_training``.
        kv_dropout_in_training: apply ``kv_dropout`` in training mode. False (the reference): the
            released model's ``train()`` keeps the encoder, where this dropout lives, in eval mode, so
            it never fires whatever ``DROPOUT`` says; a non-zero ``kv_dropout`` then warns.
        share_kv: one tensor per layer for both K and V (``SHARE_PARAM_KV``, True).
        pieces: segments per visual prompt token (``CLS_TOKEN_P_PIECES_NUM`` 16).
        segments: ``"strided"`` (the reference code's tiling) or ``"contiguous"``.
        importance: ``"signed"`` mean gradient (reference code) or ``"abs"`` (its magnitude).
    """

    num_tokens: int = 10
    dropout: float = 0.1
    num_kv_tokens: int = 5
    kv_dropout: float = 0.0
    kv_dropout_in_training: bool = False
    share_kv: bool = True
    pieces: int = 16
    segments: Literal["strided", "contiguous"] = "strided"
    importance: Literal["signed", "abs"] = "signed"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.num_kv_tokens <= MAX_PROMPT_TOKENS:
            raise ConfigError(f"e2vpt num_kv_tokens must be in [0, {MAX_PROMPT_TOKENS}], got {self.num_kv_tokens}")
        if not 0.0 <= self.kv_dropout < 1.0:
            raise ConfigError(f"e2vpt kv_dropout must be in [0, 1), got {self.kv_dropout}")
        if self.kv_dropout and not self.kv_dropout_in_training:
            warnings.warn(f"e2vpt kv_dropout={self.kv_dropout} has no effect, as in the reference (its encoder "
                          "stays in eval mode in training); pass kv_dropout_in_training=True to apply it",
                          VlpromptWarning, stacklevel=2)
        if self.pieces < 1:
            raise ConfigError(f"e2vpt pieces must be >= 1, got {self.pieces}")
        if self.segments not in ("strided", "contiguous"):
            raise ConfigError(f"e2vpt segments must be strided or contiguous, got {self.segments!r}")
        if self.importance not in ("signed", "abs"):
            raise ConfigError(f"e2vpt importance must be signed or abs, got {self.importance!r}")


def expand_pieces(piece_mask: torch.Tensor, width: int, segments: str) -> torch.Tensor:
    """``(N_p, pieces)`` → ``(N_p, width)``: strided tiling (dim d ↦ piece d mod pieces) or chunks."""
    reps = width // piece_mask.shape[-1]
    if segments == "strided":
        return piece_mask.repeat(1, reps)
    return piece_mask.repeat_interleave(reps, dim=-1)


@register_method
class E2VPT(VPTDeep):
    """VPT-deep + per-layer key-value prompts + token/segment masks for pruning; linear head.

    Example:
        >>> model = vp.build_method("e2vpt", bb, task.classnames)
        >>> model.set_masks(*masks_for_level(*importance_scores(model, batches), 50, 25))
    """

    name = "e2vpt"
    Config = E2VPTConfig
    prompt_kinds = ("shallow", "deep", "kv")

    def __init__(self, backbone: Backbone, classnames: list[str], config: E2VPTConfig) -> None:
        super().__init__(backbone, classnames, config)
        width, heads = int(backbone.vision_width), backbone.vision_heads
        if not heads or width % heads:
            raise ConfigError(f"e2vpt needs the attention head count of {backbone.name!r}'s image tower")
        if width % config.pieces:
            raise ConfigError(f"e2vpt pieces={config.pieces} must divide the tower width {width}")
        n_layers, n_kv, device = backbone.n_vision_layers, config.num_kv_tokens, backbone.device
        self.kv_prompt = nn.Parameter(_kv_init(n_layers, heads, n_kv, width // heads, device))
        if not config.share_kv:
            self.kv_value = nn.Parameter(_kv_init(n_layers, heads, n_kv, width // heads, device))
        self.kv_dropout = nn.Dropout(config.kv_dropout if config.kv_dropout_in_training else 0.0)
        self.register_buffer("token_mask", torch.ones(config.num_tokens, device=device))
        self.register_buffer("piece_mask", torch.ones(config.num_tokens, config.pieces, device=device))
        self.train(False)

    # ------------------------------------------------------------------ masks
    def set_masks(self, token_mask: torch.Tensor, piece_mask: torch.Tensor) -> None:
        """Fix the token ``(N_p,)`` and segment ``(N_p, pieces)`` masks (1 = kept, 0 = pruned)."""
        if token_mask.shape != self.token_mask.shape or piece_mask.shape != self.piece_mask.shape:
            raise ConfigError(
                f"e2vpt masks must have shapes {tuple(self.token_mask.shape)} and {tuple(self.piece_mask.shape)}"
            )
        with torch.no_grad():
            self.token_mask.copy_(token_mask)
            self.piece_mask.copy_(piece_mask)

    def _masked(self, prompt: torch.Tensor, token_mask: torch.Tensor, piece_mask: torch.Tensor) -> torch.Tensor:
        pieces = expand_pieces(piece_mask, prompt.shape[-1], self.config.segments)
        return prompt * pieces.to(prompt.dtype) * token_mask.to(prompt.dtype)[:, None]

    def visual_prompts(
        self, token_mask: torch.Tensor | None = None, piece_mask: torch.Tensor | None = None
    ) -> VisualPrompts:
        """Masked VPT-deep prompts (after CLS) and the key-value prompts of every block.

        ``token_mask`` / ``piece_mask`` override the stored masks (importance scoring passes
        leaf tensors to take gradients with respect to them).
        """
        tm = self.token_mask if token_mask is None else token_mask
        pm = self.piece_mask if piece_mask is None else piece_mask
        drop = self.prompt_dropout
        tokens = self._masked(drop(self.prompt), tm, pm)
        deep = {k + 1: self._masked(drop(self.deep_prompt[k]), tm, pm) for k in range(self.deep_prompt.shape[0])}
        kv = {}
        if self.config.num_kv_tokens:
            values = self.kv_prompt if self.config.share_kv else self.kv_value
            for i in range(self.kv_prompt.shape[0]):
                key = self.kv_dropout(self.kv_prompt[i])
                kv[i] = KVPrompt(key, key if self.config.share_kv else self.kv_dropout(values[i]))
        return VisualPrompts(tokens=tokens, layout="after_cls", deep=deep, kv=kv)

    # ------------------------------------------------------------------ prompt files
    def prompt_state_dict(self) -> dict[str, torch.Tensor]:
        """Trainable tensors plus the pruning masks."""
        state = super().prompt_state_dict()
        if getattr(self, "_with_masks", True):
            state.update(token_mask=self.token_mask, piece_mask=self.piece_mask)
        return state

    def load_prompt_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        masks = {k: state.pop(k) for k in ("token_mask", "piece_mask") if k in state}
        if len(masks) != 2:
            raise ConfigError("e2vpt: prompt file lacks the pruning masks (token_mask, piece_mask)")
        self._with_masks = False  # the base check compares the trainable tensors only
        try:
            super().load_prompt_state_dict(state)
        finally:
            self._with_masks = True
        self.set_masks(masks["token_mask"], masks["piece_mask"])


def _kv_init(n_layers: int, heads: int, n_kv: int, head_dim: int, device) -> torch.Tensor:
    """Per layer: ``kaiming_uniform_(a=0, fan_in)`` on ``(heads, N_kv, d_h)``, laid out as ``(N_kv, width)``."""
    out = torch.empty(n_layers, n_kv, heads * head_dim, device=device)
    if n_kv == 0:
        return out
    for i in range(n_layers):
        t = torch.empty(heads, n_kv, head_dim, device=device)
        nn.init.kaiming_uniform_(t, a=0, mode="fan_in", nonlinearity="leaky_relu")
        out[i] = t.transpose(0, 1).reshape(n_kv, heads * head_dim)
    return out


def importance_scores(model: E2VPT, batches: Iterable[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over ``batches`` (dicts with ``images``, ``labels``) of ∂CE/∂γ and ∂CE/∂ρ at the current masks.

    No optimizer step is taken and the model's parameters are untouched. Runs in eval mode
    (no prompt dropout). Returns ``(token_scores (N_p,), piece_scores (N_p, pieces))``,
    signed or absolute per ``model.config.importance``.
    """
    was_training = model.training
    model.eval()
    tm = model.token_mask.detach().clone().requires_grad_(True)
    pm = model.piece_mask.detach().clone().requires_grad_(True)
    tok, pie, n = torch.zeros_like(tm), torch.zeros_like(pm), 0
    try:
        for batch in batches:
            feats = model.backbone.encode_image(batch["images"], model.visual_prompts(tm, pm))
            loss = F.cross_entropy(model.logits_from_features(feats).float(), batch["labels"])
            g_t, g_p = torch.autograd.grad(loss, [tm, pm])
            tok, pie, n = tok + g_t, pie + g_p, n + 1
    finally:
        model.train(was_training)
    if n == 0:
        raise ConfigError("e2vpt importance scores need at least one training batch")
    tok, pie = tok / n, pie / n
    if model.config.importance == "abs":
        tok, pie = tok.abs(), pie.abs()
    return tok.detach(), pie.detach()


def masks_for_level(
    token_scores: torch.Tensor, piece_scores: torch.Tensor, token_pct: float, piece_pct: float,
    min_tokens: int = 1, min_pieces: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token and segment masks of one pruning level (percent), lowest scores pruned first.

    Tokens: ``min(floor(N_p·t/100), N_p − min_tokens)`` pruned; pieces of every token:
    ``min(floor(pieces·s/100), pieces − min_pieces)``. Ties keep index order (stable sort).
    """
    n_p, pieces = piece_scores.shape
    n_tok = max(0, min(int(n_p * token_pct / 100), n_p - min_tokens))
    n_pie = max(0, min(int(pieces * piece_pct / 100), pieces - min_pieces))
    token_mask = torch.ones(n_p)
    token_mask[torch.sort(token_scores.float().cpu(), stable=True).indices[:n_tok]] = 0.0
    piece_mask = torch.ones(n_p, pieces)
    order = torch.sort(piece_scores.float().cpu(), dim=-1, stable=True).indices[:, :n_pie]
    piece_mask.scatter_(1, order, 0.0)
    return token_mask, piece_mask


def pruned_fraction(model: E2VPT) -> float:
    """Fraction of visual prompt entries zeroed by the masks (for reports)."""
    width = model.prompt.shape[-1]
    full = model.token_mask[:, None] * expand_pieces(model.piece_mask, width, model.config.segments)
    return 1.0 - float(full.mean())


__all__ = ["PRUNE_LEVELS", "E2VPT", "E2VPTConfig", "expand_pieces", "importance_scores", "masks_for_level",
           "pruned_fraction"]
