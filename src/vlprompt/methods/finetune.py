"""Full fine-tuning: the whole image tower and a linear head trained end to end (VPT's "Full" baseline).

The "Full" row of VPT's and E2VPT's tables (KMnP/vpt ``configs/base-finetune.yaml``, ``configs/finetune/*``,
``MODEL.TRANSFER_TYPE: "end2end"``): every parameter of the ViT is trained together with the head, and the
ViT runs in training mode (its dropout acts)::

    logits = W · f_θ(x) + b        θ = all image-tower parameters, trained

* feature ``f_θ(x)``: the tower's pooled output, as ``linear`` (timm ViT: the CLS token after the final
  LayerNorm);
* head: VPT's (``kaiming_normal_`` fan-out weight, bias ``-log(99)``);
* dropout (``dropout``, 0.1): the reference ViT-B's ``dropout_rate``, after the positional embedding and
  inside every MLP (attention dropout 0); set on the timm ViT's ``pos_drop`` / ``mlp.drop1`` /
  ``mlp.drop2`` through :meth:`~vlprompt.backbones.base.Backbone.set_training_dropout`. CLIP towers have
  no such layers and train without dropout;
* optimiser (training options, preset ``paper``): the HuggingFace AdamW the reference uses
  (``optimizer="adamw-hf"``: eps 1e-6, decay applied after the update), weight decay on every parameter
  except those whose name contains ``bias`` (VPT's ``no_decay`` rule; its ``LayerNorm.*`` patterns never
  match its ViT's names, so LayerNorm weights are decayed), lr = base lr × batch / 256 from VPT's grid
  {0.001, 0.0001, 0.0005, 0.005}, batch 384, 100 epochs, VPT's schedule (``linear-warmup-cosine``: 5 linear
  warm-up epochs from 0, then cosine).

How the weights are trained and saved. The backbone a method receives is frozen and shared (a protocol
reuses it for every run), so this method never changes it: it trains its own copy (``self.encoder``, a
deep copy of the backbone made at construction, with the image tower's parameters trainable, found as
the parameters ``encode_image`` uses). The engine needs nothing special: :meth:`trainable_parameters`
(every parameter outside the frozen backbone) holds the copy's tower and the head, so the optimiser, the
checkpoints and ``save_prompt`` cover them, and :meth:`total_parameters` counts the copy in place of the
frozen tower (tuned % = 100 for a timm ViT). ``prompt.safetensors`` then holds the whole tower (fp32: about
344 MB for ViT-B/16) and every epoch's checkpoint the tower plus AdamW's two moment tensors (about 1 GB;
``checkpoint/`` keeps it and the previous one);
loading it rebuilds the copy from the recorded backbone and overwrites the tower, which reproduces the
logits exactly.

Example:
    >>> model = vp.build_method("finetune", bb, task.classnames)
    >>> vp.fit(model, task, optimizer="adamw-hf", lr=0.001 * 384 / 256, weight_decay=0.01, batch_size=384,
    ...        epochs=100, warmup_epochs=5, scheduler="linear-warmup-cosine")
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..backbones.base import Backbone
from ..errors import ConfigError
from .base import PromptMethod, TrainingPlan, register_method
from .linear import HeadClassifier


@dataclass(frozen=True)
class FinetuneConfig:
    """Options of ``finetune`` (defaults: the reference's ViT-B configuration).

    Attributes:
        dropout: dropout rate after the positional embedding and in every MLP of the tower in training
            (the reference ViT-B's ``transformer.dropout_rate`` 0.1; its attention dropout is 0); acts on
            timm ViT towers, CLIP towers have no such layers.
    """

    dropout: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"finetune dropout must be in [0, 1), got {self.dropout}")


def image_tower_parameters(backbone: Backbone) -> list[nn.Parameter]:
    """The parameters ``backbone.encode_image`` depends on: those that get a gradient from one image.

    Works for every backbone without naming its modules (a timm ViT: all of them; CLIP: the visual
    tower, not the text tower or the logit scale). Gradients and ``requires_grad`` are restored.
    """
    params = list(backbone.parameters())
    flags = [p.requires_grad for p in params]
    size = int(backbone.image_size)
    try:
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        with torch.enable_grad():
            out = backbone.encode_image(torch.zeros(1, 3, size, size, device=backbone.device))
            out.float().sum().backward()
        used = [p for p in params if p.grad is not None]
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.grad = None
            p.requires_grad_(flag)
    return used


@register_method
class Finetune(HeadClassifier):
    """VPT's full fine-tuning baseline: a trained copy of the image tower (training mode) + a linear head.

    Example:
        >>> model = vp.build_method("finetune", bb, task.classnames, dropout=0.1)
        >>> model.trainable_parameters()      # the copy's tower and the head; ``bb`` stays frozen
    """

    name = "finetune"
    Config = FinetuneConfig
    plan = TrainingPlan(steps="images", image_features=False)

    @classmethod
    def check_backbone(cls, backbone: Backbone, options: dict[str, Any]) -> None:
        """Refuse backbones without a ViT image tower (VPT's baseline fine-tunes a ViT)."""
        if not backbone.vision_width or not backbone.patch_size:
            raise ConfigError(
                f"finetune trains a ViT image tower (VPT's full fine-tuning baseline); backbone {backbone.name!r} "
                "has none; use a ViT backbone, e.g. tiny-clip, ViT-B-16 or timm:vit_base_patch16_224"
            )

    def __init__(self, backbone: Backbone, classnames: list[str], config: FinetuneConfig) -> None:
        super().__init__(backbone, classnames, config)
        self.check_backbone(backbone, {})
        encoder = copy.deepcopy(backbone)
        tower = {id(p) for p in image_tower_parameters(encoder)}
        for p in encoder.parameters():
            p.requires_grad_(id(p) in tower)
        #: the trained copy of the backbone (only its image-tower parameters are trainable)
        self.encoder = encoder
        self.dropout_layers = encoder.set_training_dropout(config.dropout)
        self._build_head(int(backbone.embed_dim), len(classnames), backbone.device)
        self.train(False)

    def train(self, mode: bool = True) -> PromptMethod:
        """Training mode for the copied tower too (its dropout acts, as the reference's ``end2end``); the
        frozen backbone stays in eval mode."""
        super().train(mode)
        nn.Module.train(self.encoder, mode)  # Backbone.train always selects eval; the copy is trained
        return self

    def total_parameters(self) -> int:
        """The copy and the head: the copy replaces the frozen backbone in the model that computes the logits."""
        frozen = {id(p) for p in self.backbone.parameters()}
        return sum(p.numel() for p in self.parameters() if id(p) not in frozen)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features of the trained tower (with gradients)."""
        return self.encoder.encode_image(images)

    def image_features_of(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "images" not in batch:
            raise ConfigError("finetune trains the image tower and cannot train on cached image features")
        return self.encode_images(batch["images"])
