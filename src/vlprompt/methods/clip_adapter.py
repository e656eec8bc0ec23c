"""CLIP-Adapter: a residual feature adapter on CLIP's image features (Gao et al., IJCV 2023).

Learned: the adapter ``A(x) = ReLU(W_2 · ReLU(W_1 · x))`` with ``W_1: D → D/r`` and
``W_2: D/r → D``, both without bias (PyTorch's default Linear init), ``r`` = ``reduction``.

Computed (the reference's ``CustomCLIP.forward``):

* ``x = f(image)``, the frozen CLIP image feature (raw, not normalised);
* ``x' = α · A(x) + (1 − α) · x`` with the residual ratio ``α`` (0.2);
* text features ``g(template(class))`` of the frozen text tower with the dataset's hand-crafted
  template (CLIP-Adapter's ``CUSTOM_TEMPLATES``: the same templates as CoOp's zero-shot CLIP);
* logits ``logit_scale · cos(x', g)``; loss cross-entropy.

The image tower is frozen and unprompted, so training steps read cached image features
(``plan.steps == "image-features"``) and the adapter is applied in :meth:`logits_from_features`.
``train_outputs()["image"]`` is the frozen feature ``x`` (what :meth:`logits_from_features`
receives at evaluation), so a plug-in such as DePT sees the same image feature in training and at
test time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.base import Backbone
from ..errors import ConfigError
from .base import PromptMethod, register_method
from .prompting import clean_classname


@dataclass(frozen=True)
class CLIPAdapterConfig:
    """CLIP-Adapter options (defaults: the released ``clip_adapter.py``).

    Attributes:
        ratio: residual ratio α: ``x' = α · A(x) + (1 − α) · x`` (0.2, hard-coded in the reference).
        reduction: bottleneck reduction r: the hidden width is ``D // r`` (4).
        template: hand-crafted template with ``{}`` for the class name; the protocols pass the
            dataset's (CLIP-Adapter's ``CUSTOM_TEMPLATES``, which are CoOp's zero-shot templates).
    """

    ratio: float = 0.2
    reduction: int = 4
    template: str = "a photo of a {}."

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio <= 1.0:
            raise ConfigError(f"clip-adapter ratio must be in [0, 1], got {self.ratio}")
        if self.reduction < 1:
            raise ConfigError(f"clip-adapter reduction must be >= 1, got {self.reduction}")
        if "{}" not in self.template:
            raise ConfigError(f"clip-adapter template must contain '{{}}' for the class name, got {self.template!r}")


@register_method
class CLIPAdapter(PromptMethod):
    """CLIP-Adapter: ``logit_scale · cos(α·A(f(x)) + (1−α)·f(x), g(template(class)))``.

    Example:
        >>> model = vp.build_method("clip-adapter", bb, task.classnames, template=task.template)
        >>> vp.fit(model, task, epochs=200, lr=0.002, batch_size=32)
    """

    name = "clip-adapter"
    Config = CLIPAdapterConfig

    def __init__(self, backbone: Backbone, classnames: list[str], config: CLIPAdapterConfig) -> None:
        super().__init__(backbone, classnames, config)
        dim = backbone.embed_dim
        hidden = dim // config.reduction
        if hidden < 1:
            raise ConfigError(f"clip-adapter reduction={config.reduction} leaves no hidden unit of the {dim}-d feature")
        self.adapter = nn.Sequential(
            nn.Linear(dim, hidden, bias=False),
            nn.ReLU(),
            nn.Linear(hidden, dim, bias=False),
            nn.ReLU(),
        ).to(backbone.device)
        self.set_classnames(classnames)

    def set_classnames(self, classnames: list[str]) -> None:
        super().set_classnames(classnames)
        texts = [self.config.template.format(clean_classname(c)) for c in classnames]
        with torch.no_grad():
            feats = self.backbone.encode_texts(texts, normalize=False).float()
        self.register_buffer("class_features", feats, persistent=False)

    def raw_text_features(self) -> torch.Tensor:
        """Frozen text features of the hand-crafted prompts ``(n_cls, D)`` (not normalised)."""
        return self.class_features

    def adapt(self, image_features: torch.Tensor) -> torch.Tensor:
        """``α · A(x) + (1 − α) · x`` on raw image features ``(B, D)``."""
        x = image_features.float()
        ratio = self.config.ratio
        return ratio * self.adapter(x) + (1 - ratio) * x

    def matching_features(
        self, image_features: torch.Tensor, text_features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The adapted image features and the template text features, both L2-normalised."""
        return super().matching_features(self.adapt(image_features), text_features)

    def logits_from_features(
        self, image_features: torch.Tensor, text_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        if text_features is None:
            text_features = self.text_features()
        img = F.normalize(self.adapt(image_features), dim=-1)
        return self.backbone.logit_scale * img @ text_features.float().t()
