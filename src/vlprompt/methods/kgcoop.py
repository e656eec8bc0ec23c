"""KgCoOp: knowledge-guided context optimisation (Yao et al., CVPR 2023).

CoOp's learned context plus a regulariser that keeps the learned class text features
``w_i = g(t_i)`` close to the frozen CLIP features of the dataset's hand-crafted template,
``w_i^clip = g("a photo of a {class}.")``:

``L = CE + λ · L_kg``, ``L_kg = 1 − (1/N_c) Σ_i cos(w_i, w_i^clip)``.

The paper writes ``L_kg = (1/N_c) Σ_i ‖w_i − w_i^clip‖²``; for unit vectors that is
``2 − 2 cos``, i.e. twice the code's form (the factor is absorbed in λ). vlprompt uses the
code's form, so λ = 8.0 means what it means in the released scripts.

The targets are computed once per class set with the same frozen backbone (its plain
``encode_texts`` seam): no second CLIP copy is kept, as the reference does.
"""

from __future__ import annotations

import copy
import types
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..backbones.base import Backbone
from ..data.templates import KGCOOP_DTD_TEMPLATE
from ..errors import ConfigError
from .base import register_method
from .coop import CoOp, CoOpConfig
from .prompting import clean_classname


@dataclass(frozen=True)
class KgCoOpConfig(CoOpConfig):
    """KgCoOp options (defaults: KgCoOp's base-to-new scripts, ``vit_b16_ep100_ctxv1``).

    Attributes:
        n_ctx: number of context tokens (4; ignored when ``ctx_init`` is given: the phrase's
            token count is used).
        ctx_init: init phrase (``"a photo of a"``). Unlike the reference, which always uses
            "a photo of a" whatever phrase is configured, the given phrase is used; ``""``
            means random N(0, 0.02²) init of ``n_ctx`` vectors.
        weight: λ, the weight of ``L_kg`` (8.0 in all of KgCoOp's released scripts; DePT's
            KgCoOp runs use 2.0).
        template: the hand-crafted template of the dataset (``{}`` = class name) whose frozen
            CLIP text features are the targets; pass ``task.template`` (KgCoOp's DTD template
            is ``vlprompt.data.templates.KGCOOP_DTD_TEMPLATE``).
        csc, class_token_position: as in CoOp (the reference only has unified context at the end).
        target_precision: ``"fp32"`` encodes the targets with the backbone as loaded; ``"fp16"``
            with a temporary fp16 copy of it, as the reference's second CLIP (built in fp16 and never
            ``.float()``-ed, whatever ``PREC`` says); the targets then carry fp16 rounding.
    """

    n_ctx: int = 4
    ctx_init: str = "a photo of a"
    weight: float = 8.0
    template: str = "a photo of a {}."
    target_precision: Literal["fp32", "fp16"] = "fp32"

    def __post_init__(self) -> None:
        if self.target_precision not in ("fp32", "fp16"):
            raise ConfigError(f"kgcoop target_precision must be 'fp32' or 'fp16', got {self.target_precision!r}")
        if self.template.count("{}") != 1:
            raise ConfigError(f"kgcoop template must contain exactly one '{{}}', got {self.template!r}")
        if self.weight < 0:
            raise ConfigError(f"kgcoop weight must be >= 0, got {self.weight}")


def kg_loss(text_features: torch.Tensor, clip_features: torch.Tensor) -> torch.Tensor:
    """``1 − mean_i cos(w_i, w_i^clip)`` for ``(n_cls, D)`` features (any scale; normalised here).

    Example:
        >>> kg_loss(torch.eye(2), torch.eye(2))
        tensor(0.)
    """
    w = F.normalize(text_features.float(), dim=-1)
    w_clip = F.normalize(clip_features.float(), dim=-1)
    return 1.0 - (w * w_clip).sum(-1).mean()


@register_method
class KgCoOp(CoOp):
    """Knowledge-guided CoOp: CoOp's prompts, loss ``CE + λ·(1 − mean_i cos(w_i, w_i^clip))``.

    ``train_outputs`` returns ``ce`` (the cross-entropy alone), ``kg`` (``L_kg``) and
    ``loss = ce + weight · kg``; inference is CoOp's.

    Example:
        >>> model = vp.build_method("kgcoop", bb, task.classnames, template=task.template)
        >>> vp.fit(model, task, epochs=10, lr=0.0035, batch_size=4)
    """

    name = "kgcoop"
    Config = KgCoOpConfig
    #: KgCoOp's scripts give DTD a template of their own (CoOp's is "{} texture.")
    dataset_templates = types.MappingProxyType({"dtd": KGCOOP_DTD_TEMPLATE})

    def __init__(self, backbone: Backbone, classnames: list[str], config: KgCoOpConfig) -> None:
        super().__init__(backbone, classnames, config)
        self._build_targets()

    def _build_targets(self) -> None:
        """Normalised frozen text features of the template for every class (non-persistent buffer)."""
        texts = [self.config.template.format(clean_classname(c)) for c in self.classnames]
        with torch.no_grad():
            if self.config.target_precision == "fp16":  # the reference's fp16 second CLIP, then dropped
                feats = copy.deepcopy(self.backbone).half().encode_texts(texts, normalize=True).float()
            else:
                feats = self.backbone.encode_texts(texts, normalize=True).float()
        self.register_buffer("clip_text_features", feats, persistent=False)

    def set_classnames(self, classnames: list[str]) -> None:
        super().set_classnames(classnames)
        self._build_targets()

    def train_outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = super().train_outputs(batch)
        kg = kg_loss(out["text"], self.clip_text_features)
        return {**out, "kg": kg, "loss": out["ce"] + self.config.weight * kg}
