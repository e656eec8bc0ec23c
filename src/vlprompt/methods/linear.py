"""Linear: a linear head trained by SGD on the frozen image tower's pooled feature (VPT's "Linear" baseline).

The "Linear" row of VPT's and E2VPT's tables (KMnP/vpt ``configs/base-linear.yaml``, ``configs/linear/*``,
``MODEL.TRANSFER_TYPE: "linear"``): the whole backbone is frozen and kept in eval mode, and one linear
layer maps its pooled feature to the class logits::

    logits = W · f(x) + b        f(x) = the backbone's pooled image feature

* timm ViT (the reference's backbone): ``f(x)`` is the CLS token after the final LayerNorm, i.e. timm's
  ``forward_features(x)[:, 0]`` (``forward_head(pre_logits=True)``); MAE-style towers built with
  ``global_pool="avg"`` use their own pooling, as VPT's MAE linear runs;
* CLIP ViT: CLIP's pooled output (CLS after ``ln_post`` and the projection, see ``docs/deviations.md`` V3).

Head as the reference's ``MLP(mlp_dims=[n_cls], special_bias=True)`` (``MODEL.MLP_NUM = 0``): weight
``kaiming_normal_(fan_out)`` = N(0, 2 / n_cls), bias ``-log(99)``. Optimiser (the engine's, set by the
preset): SGD momentum 0.9, weight decay on the weight only (VPT's ``make_optimizer`` gives the head's bias
no decay), lr = base lr × batch / 256 from VPT's grid {50, 25, 10, 5, 2.5, 1, 0.5, 0.25, 0.1, 0.05},
batch 1024, 100 epochs, VPT's schedule (``scheduler="linear-warmup-cosine"``: 10 linear warm-up epochs
from 0, then cosine).

Unlike ``linear-probe`` (CoOp's closed-form logistic regression on CLIP features), this head is trained
by the engine's gradient steps. The tower is frozen and unprompted, so training reads cached image
features (``plan.steps = "image-features"``); ``feature_views=0`` encodes every step's images instead
(the reference's pattern; identical features for VTAB-1k, which trains without augmentation).

Example:
    >>> bb = vp.load_backbone("timm:vit_base_patch16_224.augreg_in21k", weights="imagenet21k_ViT-B_16.npz")
    >>> model = vp.build_method("linear", bb, task.classnames)
    >>> vp.fit(model, task, lr=0.1 * 1024 / 256, weight_decay=1e-4, batch_size=1024, epochs=100, warmup_epochs=10,
    ...        scheduler="linear-warmup-cosine")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..backbones.base import Backbone
from ..errors import ConfigError
from .base import PromptMethod, TrainingPlan, register_method
from .vpt import head_param_groups, vpt_head


@dataclass(frozen=True)
class LinearConfig:
    """Options of ``linear``. The reference's head has none (``MODEL.MLP_NUM = 0``: one linear layer); the
    optimiser, learning rate, weight decay, epochs and batch size are training options (preset ``paper``)."""


class HeadClassifier(PromptMethod):
    """Shared by ``linear`` and ``finetune``: a VPT head on a pooled image feature; per-class rows.

    ``set_classnames`` relabels the rows (same count only); :meth:`reset_head` starts a fresh head for
    another label set.
    """

    has_text_side = False
    text_side_hint = "it is a vision classifier (a linear head on image features); it has no class text features"

    def _build_head(self, in_dim: int, n_cls: int, device: torch.device) -> None:
        self.head = vpt_head(in_dim, n_cls, device)

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        """Every trainable parameter at ``base_lr``; the head's bias without weight decay (VPT's SGD rule)."""
        return head_param_groups(self.trainable_parameters(), self.head, base_lr)

    def set_classnames(self, classnames: list[str]) -> None:
        """Relabel the head's rows (same count only; see :meth:`reset_head` for another label set)."""
        if len(classnames) != self.head.out_features:
            raise ConfigError(
                f"{self.name} has a trained linear head for {self.head.out_features} classes and cannot "
                f"predict {len(classnames)} others; call reset_head(classnames) to start a new head and train it"
            )
        super().set_classnames(classnames)

    def reset_head(self, classnames: list[str]) -> None:
        """A freshly initialised head (VPT's init) for ``classnames``."""
        self._build_head(self.head.in_features, len(classnames), self.head.weight.device)
        super().set_classnames(classnames)

    def raw_text_features(self) -> torch.Tensor:
        raise ConfigError(f"{self.name} is a vision classifier and has no class text features")

    def eval_text_features(self) -> torch.Tensor | None:
        return None

    def logits_from_features(
        self, image_features: torch.Tensor, text_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``head(features)`` (``text_features`` is ignored)."""
        return self.head(image_features.to(self.head.weight.dtype))

    def train_outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``image`` (pooled features), ``logits``, ``ce`` and ``loss`` (= ``ce``, softmax cross-entropy)."""
        image = self.image_features_of(batch)
        logits = self.logits_from_features(image)
        ce = F.cross_entropy(logits.float(), batch["labels"])
        return {"image": image, "logits": logits, "ce": ce, "loss": ce}


@register_method
class Linear(HeadClassifier):
    """VPT's linear baseline: frozen backbone (eval mode), one linear head on its pooled image feature.

    Example:
        >>> model = vp.build_method("linear", bb, task.classnames)
        >>> logits = model(images)                      # head(bb.encode_image(images))
    """

    name = "linear"
    Config = LinearConfig
    plan = TrainingPlan(steps="image-features", image_features=True)

    def __init__(self, backbone: Backbone, classnames: list[str], config: LinearConfig) -> None:
        super().__init__(backbone, classnames, config)
        self._build_head(int(backbone.embed_dim), len(classnames), backbone.device)
        self.train(False)
