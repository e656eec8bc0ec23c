"""Zero-shot CLIP with the dataset's hand-crafted template (or a template ensemble)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..backbones.base import Backbone
from ..data.templates import ensemble_templates
from .base import PromptMethod, TrainingPlan, register_method
from .prompting import template_features


@dataclass(frozen=True)
class ZeroShotConfig:
    """Zero-shot options.

    Attributes:
        template: the hand-crafted template with ``{}`` for the class name (the dataset's).
        ensemble: average normalised text features over the 7 selected ImageNet templates
            plus ``template`` (CoOp's ZeroshotCLIP2), then renormalise; for ``dataset="imagenet"``
            the 7 alone, as ZeroshotCLIP2 leaves ImageNet's own template out.
        dataset: canonical dataset name (``task.name``) for the ensemble rule above; set from the
            task by the protocols and by ``build_method("zeroshot", bb, task, ...)``; only a caller
            that passes bare class names of ImageNet must give it.
        templates: an explicit template list to average instead (e.g.
            ``vlprompt.data.ensemble_templates("imagenet")``: the 7 without the dataset's own,
            as the reference does for ImageNet). Overrides ``template`` and ``ensemble``.
    """

    template: str = "a photo of a {}."
    ensemble: bool = False
    dataset: str = ""
    templates: tuple[str, ...] = ()


@register_method
class ZeroShot(PromptMethod):
    """Zero-shot CLIP: no training; logits = logit_scale · cos(f(x), g(template(class))).

    Example:
        >>> model = vp.build_method("zeroshot", bb, task)                  # the task's template
        >>> ens = vp.build_method("zeroshot", bb, task, ensemble=True)     # ZeroshotCLIP2's ensemble
        >>> vp.evaluate(model, task.test)
    """

    name = "zeroshot"
    Config = ZeroShotConfig
    plan = TrainingPlan(steps="none")  # no training: the engine only evaluates

    def __init__(self, backbone: Backbone, classnames: list[str], config: ZeroShotConfig) -> None:
        super().__init__(backbone, classnames, config)
        self.set_classnames(classnames)

    def templates(self) -> list[str]:
        if self.config.templates:
            return list(self.config.templates)
        if not self.config.ensemble:
            return [self.config.template]
        return ensemble_templates(self.config.dataset, self.config.template)

    def set_classnames(self, classnames: list[str]) -> None:
        super().set_classnames(classnames)
        self.register_buffer("class_features", template_features(self.backbone, classnames, self.templates()),
                             persistent=False)

    def raw_text_features(self) -> torch.Tensor:
        return self.class_features
