"""CoOp: learnable context vectors for the text prompt (Zhou et al., IJCV 2022)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..backbones.base import Backbone
from ..errors import ConfigError
from .base import PromptMethod, register_method
from .prompting import ClassPosition, ClassPrompts, init_context


@dataclass(frozen=True)
class CoOpConfig:
    """CoOp options (defaults: the CoOp paper / DePT's 10-epoch re-run).

    Attributes:
        n_ctx: number of context tokens M (ignored when ``ctx_init`` is given: the phrase's
            token count is used).
        ctx_init: init phrase, e.g. ``"a photo of a"``; empty = random N(0, 0.02²) init.
        csc: class-specific context (one context per class) instead of one unified context.
        class_token_position: where the class name goes: ``end``, ``middle`` or ``front``.
        share_prefix: compute the text tower on ``[SOS][v_1..v_M]`` once for all classes (the causal
            mask makes it identical for every class) and run only the class tokens per class: the same
            features to fp32 rounding, far cheaper with many classes. Used with a unified context, the
            class at the ``end`` and a causal CLIP text tower; False forces the full per-class path.
    """

    n_ctx: int = 16
    ctx_init: str = ""
    csc: bool = False
    class_token_position: ClassPosition = "end"
    share_prefix: bool = True


@register_method
class CoOp(PromptMethod):
    """Context Optimization: ``t_i = [SOS][v_1..v_M][CLASS_i][.][EOT]`` with learned ``v``.

    Logits are ``logit_scale · cos(f(x), g(t_i))``; loss is cross-entropy.

    Example:
        >>> model = vp.build_method("coop", bb, task.classnames, n_ctx=16)
        >>> vp.fit(model, task, epochs=10, lr=0.0035, batch_size=4)
    """

    name = "coop"
    Config = CoOpConfig

    def __init__(self, backbone: Backbone, classnames: list[str], config: CoOpConfig) -> None:
        super().__init__(backbone, classnames, config)
        ctx = init_context(backbone, config.n_ctx, config.ctx_init or None)
        self.n_ctx = ctx.shape[0]
        if config.csc:
            ctx = ctx.unsqueeze(0).repeat(len(classnames), 1, 1)
        self.ctx = nn.Parameter(ctx.to(backbone.device))
        self.prompts = ClassPrompts(
            backbone, classnames, self.n_ctx, config.ctx_init or None, config.class_token_position
        )

    def set_classnames(self, classnames: list[str]) -> None:
        if self.config.csc and len(classnames) != self.ctx.shape[0]:
            raise ConfigError(
                f"coop with class-specific context (csc) learned {self.ctx.shape[0]} contexts and "
                f"cannot be re-targeted to {len(classnames)} other classes"
            )
        super().set_classnames(classnames)
        self.prompts.build(self.backbone, classnames, self.config.ctx_init or None)

    def prompt_embeddings(self) -> torch.Tensor:
        """Assembled prompt embeddings ``(n_cls, L, width)``."""
        return self.prompts.assemble(self.ctx)

    def shares_prefix(self) -> bool:
        """Whether the text features go through the shared-prefix path (see ``share_prefix``)."""
        return (self.config.share_prefix and not self.config.csc and self.prompts.position == "end"
                and getattr(self.backbone, "supports_prefix_sharing", False))

    def raw_text_features(self) -> torch.Tensor:
        if self.shares_prefix():
            prefix, suffix = self.prompts.shared_parts(self.ctx)
            return self.backbone.encode_text_shared(prefix, suffix, self.prompts.eot_idx)[0]
        return self.backbone.encode_text(self.prompt_embeddings(), self.prompts.eot_idx)
