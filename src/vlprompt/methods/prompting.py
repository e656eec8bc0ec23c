"""Shared text-prompt machinery: frozen class-token buffers and context insertion.

For every class the prompt ``"<placeholder words> <classname>."`` is tokenized and embedded
once with the frozen token embedding. The learned context replaces the placeholder
positions ``1..n_ctx``; the class-name tokens, the period, EOT and padding are kept as a
frozen "suffix". Placeholders are ``X`` words for random init and the init phrase itself
otherwise, so EOT positions are right. Moving the class name to the ``front`` or the
``middle`` of the context is a single gather with a per-class index, not a loop.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.base import Backbone, VisualPrompts
from ..errors import ConfigError
from .base import PromptMethod

ClassPosition = Literal["end", "middle", "front"]


def clean_classname(name: str) -> str:
    """Class names as the reference code puts them into prompts (underscores → spaces)."""
    return name.replace("_", " ")


def phrase_length(backbone: Backbone, phrase: str) -> int:
    """Number of BPE tokens of ``phrase`` (without SOS/EOT)."""
    tok = backbone.tokenize([phrase])
    return int(backbone.eot_index(tok)[0]) - 1


def check_text_tokens(backbone: Backbone, n_tokens: int, what: str = "n_ctx") -> None:
    """Refuse a learned-context length that cannot fit the backbone's text context (start and end
    tokens included) before anything of that size is allocated."""
    if not getattr(backbone, "context_length", 0):
        return  # an image-only backbone: its text seams refuse the method with their own error
    room = int(backbone.context_length) - 2
    if n_tokens > room:
        raise ConfigError(
            f"{what}={n_tokens} does not fit the text context of backbone {backbone.name!r}: "
            f"{backbone.context_length} tokens, at most {room} besides the start and end tokens"
        )


def template_features(backbone: Backbone, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """``(n_cls, D)`` float32: per class, the mean over ``templates`` of the L2-normalised frozen text features
    of ``template.format(class name)``, L2-normalised again (CLIP's prompt ensembling; one template: its
    normalised features). Computed without gradients."""
    names = [clean_classname(c) for c in classnames]
    with torch.no_grad():
        per_template = [backbone.encode_texts([t.format(n) for n in names]) for t in templates]
        return F.normalize(torch.stack(per_template).float().mean(0), dim=-1)


def init_context(backbone: Backbone, n_ctx: int, init: str | None, std: float = 0.02) -> torch.Tensor:
    """Initial context vectors ``(n_ctx, width)``: N(0, std²) or the embedding of ``init``.

    With a phrase, ``n_ctx`` is the phrase's token count (as CoOp's word count for plain
    English phrases such as "a photo of a").
    """
    if init:
        tok = backbone.tokenize([init])
        n = int(backbone.eot_index(tok)[0]) - 1
        with torch.no_grad():
            return backbone.embed(tok)[0, 1 : 1 + n].detach().float().cpu().clone()
    if n_ctx < 1:
        raise ConfigError(f"n_ctx must be >= 1 without an init phrase, got {n_ctx}")
    check_text_tokens(backbone, n_ctx)
    return torch.randn(n_ctx, backbone.text_width) * std


def phrase_context(backbone: Backbone, n_ctx: int, init: str, what: str, std: float = 0.02) -> torch.Tensor:
    """MaPLe / IVLP context ``(n_ctx, width)``: the first ``n_ctx`` token embeddings of ``init``, or
    N(0, std²) without a phrase. ``what`` names the option in the error (e.g. ``"maple n_ctx"``)."""
    if not init:
        return torch.randn(n_ctx, backbone.text_width) * std
    length = phrase_length(backbone, init)
    if n_ctx > length:
        raise ConfigError(f"{what}={n_ctx} exceeds the {length} tokens of ctx_init {init!r}; "
                          "use a longer phrase or ctx_init='' (random init)")
    tok = backbone.tokenize([init])
    with torch.no_grad():
        return backbone.embed(tok)[0, 1 : 1 + n_ctx].detach().float().cpu().clone()


class ClassPrompts(nn.Module):
    """Frozen per-class token buffers and the gather that assembles full prompts.

    Buffers are non-persistent: they are rebuilt from class names, so trained context can
    be loaded for other classes (base → new).
    """

    def __init__(
        self, backbone: Backbone, classnames: list[str], n_ctx: int, placeholder: str | None,
        position: ClassPosition = "end",
    ) -> None:
        super().__init__()
        if position not in ("end", "middle", "front"):
            raise ConfigError(f"class_token_position must be end, middle or front, got {position!r}")
        self.n_ctx = n_ctx
        self.position = position
        self.build(backbone, classnames, placeholder)

    def build(self, backbone: Backbone, classnames: list[str], placeholder: str | None) -> None:
        prefix_words = placeholder if placeholder else " ".join(["X"] * self.n_ctx)
        names = [clean_classname(c) for c in classnames]
        tok = backbone.tokenize([f"{prefix_words} {n}." for n in names])
        if int(backbone.eot_index(tok).max()) >= backbone.context_length - 1:
            raise ConfigError(
                f"prompt too long for the text context ({backbone.context_length} tokens); "
                "use fewer context tokens or shorter class names"
            )
        name_lens = torch.tensor([phrase_length(backbone, n) for n in names])
        with torch.no_grad():
            emb = backbone.embed(tok).detach()
        dev = emb.device
        self.register_buffer("token_prefix", emb[:, :1].clone(), persistent=False)
        self.register_buffer("token_suffix", emb[:, 1 + self.n_ctx :].clone(), persistent=False)
        self.register_buffer("eot_idx", backbone.eot_index(tok).to(dev), persistent=False)
        self.register_buffer("order", self._order(name_lens, tok.shape[1]).to(dev), persistent=False)
        # fixed tokens right after the context that every class has (MaPLe's "of a", a shared first word):
        # they join the shared prefix, which must end before the first EOT
        rest = tok[:, 1 + self.n_ctx:]
        same = (rest == rest[:1]).all(dim=0).long()
        common = int(same.cumprod(0).sum())
        self.common_len = max(min(common, int(backbone.eot_index(tok).min()) - 1 - self.n_ctx), 0)

    def _order(self, name_lens: torch.Tensor, length: int) -> torch.Tensor:
        """Per-class source index of every output position, relative to the ``end`` layout."""
        m = self.n_ctx
        rows = []
        for n in name_lens.tolist():
            ctx = list(range(1, 1 + m))
            name = list(range(1 + m, 1 + m + n))
            rest = list(range(1 + m + n, length))
            if self.position == "end":
                seq = [0, *ctx, *name, *rest]
            elif self.position == "front":
                seq = [0, *name, *ctx, *rest]
            else:
                half = m // 2
                seq = [0, *ctx[:half], *name, *ctx[half:], *rest]
            rows.append(seq)
        return torch.tensor(rows, dtype=torch.long)

    def shared_parts(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prefix (G, P, W), suffix (n_cls, L - P, W))`` for a shared-prefix text pass (class at the end).

        ``ctx`` is a unified context ``(n_ctx, W)`` or one per group ``(G, n_ctx, W)``; the prefix is
        ``[SOS][ctx]`` plus the fixed tokens every class has right after it (``common_len``).
        """
        if self.position != "end":
            raise ConfigError("a shared prefix needs the class name at the end")
        ctx = ctx.unsqueeze(0) if ctx.dim() == 2 else ctx
        k = self.common_len
        fixed = torch.cat([self.token_prefix[:1], self.token_suffix[:1, :k]], dim=1).to(ctx.dtype)
        fixed = fixed.expand(ctx.shape[0], -1, -1)
        prefix = torch.cat([fixed[:, :1], ctx, fixed[:, 1:]], dim=1)
        return prefix, self.token_suffix[:, k:]

    def assemble(self, ctx: torch.Tensor) -> torch.Tensor:
        """Full embedding sequences ``(n_cls, L, width)`` with ``ctx`` inserted.

        ``ctx`` is ``(n_ctx, width)`` (unified), ``(n_cls, n_ctx, width)`` (class-specific)
        or ``(B, n_cls, n_ctx, width)``-flattened by the caller.
        """
        n_cls = self.token_prefix.shape[0]
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(n_cls, -1, -1)
        x = torch.cat([self.token_prefix.to(ctx.dtype), ctx, self.token_suffix.to(ctx.dtype)], dim=1)
        if self.position == "end":
            return x
        return torch.gather(x, 1, self.order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class DeepTextPromptMethod(PromptMethod):
    """The text side of deep prompt methods (MaPLe, IVLP): a context ``ctx`` ``P_0`` from the init phrase
    (``config.ctx_init``; ``X`` placeholders when empty) inserted at positions ``1..n_ctx`` of each class
    prompt, and deep prompts ``P_k`` that replace those positions before text block ``k``.

    A subclass sets ``ctx``, ``n_ctx`` and ``prompts`` (a :class:`ClassPrompts` built with
    :meth:`_placeholder`) and defines :meth:`deep_text_prompts`; its Config has ``ctx_init`` and
    ``share_prefix``.
    """

    ctx: nn.Parameter
    n_ctx: int
    prompts: ClassPrompts

    def _placeholder(self) -> str:
        return self.config.ctx_init or " ".join(["X"] * self.n_ctx)

    def deep_text_prompts(self) -> dict[int, torch.Tensor]:
        """``{k: P_k}`` for the prompted text blocks after the first."""
        raise NotImplementedError

    def visual_prompts(self) -> VisualPrompts | None:
        """The image-tower prompts (MaPLe's coupled ones, IVLP's own); ``None`` when the tower is not prompted."""
        return None

    def set_classnames(self, classnames: list[str]) -> None:
        super().set_classnames(classnames)
        self.prompts.build(self.backbone, classnames, self._placeholder())

    def shares_prefix(self) -> bool:
        """Whether the class prompts go through the shared-prefix text path (see ``share_prefix``)."""
        return self.config.share_prefix and getattr(self.backbone, "supports_prefix_sharing", False)

    def raw_text_features(self) -> torch.Tensor:
        if self.shares_prefix():  # deep prompts replace positions 1..n_ctx: inside the shared prefix
            prefix, suffix = self.prompts.shared_parts(self.ctx)
            return self.backbone.encode_text_shared(prefix, suffix, self.prompts.eot_idx,
                                                    deep_prompts=self.deep_text_prompts())[0]
        embeds = self.prompts.assemble(self.ctx)
        return self.backbone.encode_text(embeds, self.prompts.eot_idx, deep_prompts=self.deep_text_prompts())
