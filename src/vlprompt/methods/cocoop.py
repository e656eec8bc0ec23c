"""CoCoOp: image-conditioned context vectors (Zhou et al., CVPR 2022).

A small Meta-Net ``h`` maps the L2-normalised image feature to a bias ``π = h(f(x)/‖f(x)‖)``
that is added to every learned context token, ``v_m(x) = v_m + π``. The class prompts
therefore differ per image: for a batch of ``B`` images there are ``B × n_cls`` prompts.
They are assembled with index gathers and encoded by one truncated text forward (split
into chunks of at most ``text_chunk`` sequences to bound memory), never by a Python loop
over images. The image tower stays frozen, so training runs on cached image features.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.base import Backbone
from ..errors import ConfigError
from .base import register_method
from .coop import CoOp
from .prompting import ClassPosition


@dataclass(frozen=True)
class CoCoOpConfig:
    """CoCoOp options (defaults: the paper's ``vit_b16_c4_ep10_batch1_ctxv1`` config).

    Attributes:
        n_ctx: number of context tokens M (ignored when ``ctx_init`` is given: the phrase's
            token count is used; "a photo of a" gives 4).
        ctx_init: init phrase of the context; empty = random N(0, 0.02²) init.
        csc: class-specific context (one context per class, each shifted by the same π(x)).
            The reference has no such option; off by default.
        class_token_position: where the class name goes: ``end`` (reference), ``middle`` or
            ``front``.
        meta_reduction: the Meta-Net's hidden width is ``embed_dim // meta_reduction``
            (reference: 512 // 16 = 32).
        text_chunk: at most this many prompt sequences go through one text-encoder forward
            (a batch of ``B`` images has ``B × n_cls`` prompts); bounds memory, not results.
        share_prefix: per image, compute ``[SOS][v + π(x)]`` once for all classes and only the class
            tokens per class (see CoOp's ``share_prefix``): the same features to fp32 rounding. Used
            with a unified context, the class at the ``end`` and a causal CLIP text tower.
    """

    n_ctx: int = 4
    ctx_init: str = "a photo of a"
    csc: bool = False
    class_token_position: ClassPosition = "end"
    meta_reduction: int = 16
    text_chunk: int = 1024
    share_prefix: bool = True

    def __post_init__(self) -> None:
        if self.meta_reduction < 1:
            raise ConfigError(f"cocoop: meta_reduction must be >= 1, got {self.meta_reduction}")
        if self.text_chunk < 1:
            raise ConfigError(f"cocoop: text_chunk must be >= 1, got {self.text_chunk}")


def build_meta_net(embed_dim: int, text_width: int, reduction: int = 16) -> nn.Sequential:
    """CoCoOp's Meta-Net: ``Linear(D → D//r) → ReLU → Linear(D//r → text_width)``.

    With ViT-B/16 dims (D = text_width = 512, r = 16) it has 16,416 + 16,896 = 33,312
    parameters.
    """
    hidden = max(1, embed_dim // reduction)
    return nn.Sequential(OrderedDict([
        ("linear1", nn.Linear(embed_dim, hidden)),
        ("relu", nn.ReLU(inplace=True)),
        ("linear2", nn.Linear(hidden, text_width)),
    ]))


@register_method
class CoCoOp(CoOp):
    """Conditional Context Optimization: ``t_i(x) = [SOS][v_1+π(x) .. v_M+π(x)][CLASS_i][.][EOT]``.

    ``π(x) = MetaNet(f(x)/‖f(x)‖)``; logits for image ``b`` use only its own prompts:
    ``logits[b, i] = logit_scale · cos(f(x_b), g(t_i(x_b)))``; loss is cross-entropy.
    There are no class text features shared by all images, so :meth:`eval_text_features`
    is ``None`` and :meth:`logits_from_features` encodes the conditional prompts.
    Trainable parameters: ``ctx`` (M × width) and the Meta-Net (35,360 in all for ViT-B/16).

    Example:
        >>> model = vp.build_method("cocoop", bb, task.classnames)  # M=4, "a photo of a"
        >>> vp.fit(model, task, epochs=10, lr=0.002, batch_size=1)
    """

    name = "cocoop"
    Config = CoCoOpConfig

    def __init__(self, backbone: Backbone, classnames: list[str], config: CoCoOpConfig) -> None:
        super().__init__(backbone, classnames, config)
        self.meta_net = build_meta_net(backbone.embed_dim, backbone.text_width, config.meta_reduction).to(
            device=backbone.device, dtype=torch.float32
        )

    # ------------------------------------------------------------------ conditional prompts
    def meta_bias(self, image_features: torch.Tensor) -> torch.Tensor:
        """``π(x)`` ``(B, text_width)`` from raw image features (normalised here)."""
        weight = self.meta_net.linear1.weight
        return self.meta_net(F.normalize(image_features.to(weight.dtype), dim=-1))

    def shifted_context(self, image_features: torch.Tensor) -> torch.Tensor:
        """Per-image context ``v + π(x)``: ``(B, n_ctx, W)``, or ``(B, n_cls, n_ctx, W)`` with csc."""
        pi = self.meta_bias(image_features)
        if self.ctx.dim() == 2:
            return self.ctx.unsqueeze(0) + pi[:, None, :]
        return self.ctx.unsqueeze(0) + pi[:, None, None, :]

    def _assemble_rows(self, ctx: torch.Tensor, rows: torch.Tensor, length: int) -> torch.Tensor:
        """Embedding sequences ``(R, length, W)`` for flat prompt indices ``rows`` (= b·n_cls + c)."""
        p = self.prompts
        n_cls = p.token_prefix.shape[0]
        b, c = rows // n_cls, rows % n_cls
        ctx_rows = ctx[b] if ctx.dim() == 3 else ctx[b, c]
        keep = max(length - 1 - self.n_ctx, 0)
        x = torch.cat([
            p.token_prefix[c].to(ctx_rows.dtype),
            ctx_rows,
            p.token_suffix[c, :keep].to(ctx_rows.dtype),
        ], dim=1)[:, :length]
        if p.position == "end":
            return x
        order = p.order[c, :length]
        return torch.gather(x, 1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))

    def conditional_text_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) per-image class text features ``(B, n_cls, embed_dim)``.

        All ``B × n_cls`` prompts go through the truncated text encoder in chunks of at
        most ``config.text_chunk`` sequences (one forward when they fit).
        """
        ctx = self.shifted_context(image_features)
        batch = ctx.shape[0]
        eot = self.prompts.eot_idx
        n_cls = eot.shape[0]
        if self.shares_prefix():
            per = max(self.config.text_chunk // n_cls, 1)  # images per forward: <= text_chunk sequences
            out = []
            for start in range(0, batch, per):
                prefix, suffix = self.prompts.shared_parts(ctx[start:start + per])
                out.append(self.backbone.encode_text_shared(prefix, suffix, eot))
            return torch.cat(out)
        length = int(eot.max().item()) + 1
        total = batch * n_cls
        chunk = self.config.text_chunk
        feats = []
        for start in range(0, total, chunk):
            rows = torch.arange(start, min(start + chunk, total), device=ctx.device)
            embeds = self._assemble_rows(ctx, rows, length)
            feats.append(self.backbone.encode_text(embeds, eot[rows % n_cls]))
        return torch.cat(feats).reshape(batch, n_cls, -1)

    def shares_prefix(self) -> bool:
        """Whether the per-image prompts go through the shared-prefix path (see ``share_prefix``)."""
        return (self.config.share_prefix and self.ctx.dim() == 2 and self.prompts.position == "end"
                and getattr(self.backbone, "supports_prefix_sharing", False))

    # ------------------------------------------------------------------ interface
    def raw_text_features(self) -> torch.Tensor:
        raise NotImplementedError(
            "cocoop has no image-independent class text features; use conditional_text_features(image_features)"
        )

    def eval_text_features(self) -> None:
        """``None``: CoCoOp's text features depend on each test image."""
        return None

    def logits_from_features(
        self, image_features: torch.Tensor, text_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits ``(B, n_cls)``; ``text_features`` may be normalised per-image ``(B, n_cls, D)``."""
        if text_features is None:
            text_features = F.normalize(self.conditional_text_features(image_features).float(), dim=-1)
        elif text_features.dim() != 3:
            raise ValueError(
                "cocoop needs per-image text features (B, n_cls, D); pass None to compute them from the images"
            )
        img = F.normalize(image_features.float(), dim=-1)
        return self.backbone.logit_scale * torch.einsum("bd,bcd->bc", img, text_features.float())

    def matching_features(
        self, image_features: torch.Tensor, text_features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised image features ``(B, D)`` and their own class text features ``(B, n_cls, D)``."""
        if text_features is None:
            text_features = self.conditional_text_features(image_features)
        return F.normalize(image_features.float(), dim=-1), F.normalize(text_features.float(), dim=-1)

    def train_outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """As the base class, with ``text`` the raw per-image class text features ``(B, n_cls, D)``."""
        image = self.image_features_of(batch)
        text = self.conditional_text_features(image)
        logits = self.logits_from_features(image, F.normalize(text.float(), dim=-1))
        ce = F.cross_entropy(logits, batch["labels"])
        return {"image": image, "text": text, "logits": logits, "ce": ce, "loss": ce}
