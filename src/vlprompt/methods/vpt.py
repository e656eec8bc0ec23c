"""VPT: Visual Prompt Tuning (Jia et al., ECCV 2022), shallow and deep.

A vision classifier: learned prompt tokens enter the frozen ViT image tower and a linear
head reads the image feature. There is no text side (class names are labels only).

Learned (``p`` = ``num_tokens``, ``d`` = the tower's width, ``N`` = its number of blocks):

* ``prompt`` ``P_0`` ``(p, d)``: inserted after the positional embedding, between CLS and
  the patch tokens (no positional embedding of their own): ``z_0 = [x_cls; P_0; E_0]``;
* ``deep_prompt`` ``P_1..P_{N-1}`` ``(N-1, p, d)`` (``vpt-deep`` only): before block ``i >= 1``
  the ``p`` slots after CLS are *overwritten* by ``P_i`` (the previous block's outputs at
  the prompt positions are discarded);
* ``head``: ``Linear(embed_dim → n_cls)``.

Initialisation as the reference: prompts ``U(-v, v)`` with ``v = sqrt(6 / (3·patch² + d))``
(0.0625 for ViT-B/16); head weight ``N(0, 2 / n_cls)`` (Kaiming normal, fan-out) and bias
``-log(99)`` (the reference MLP's "special bias"). Prompt dropout is applied to every prompt
tensor in training (0.0 shallow, 0.1 deep). The frozen backbone stays in eval mode.

Image feature fed to the head: the backbone's pooled output —

* timm ViT (:mod:`vlprompt.backbones.vit`): the CLS token after the final norm, as VPT;
* CLIP ViT: the CLS token after ``ln_post`` *and* CLIP's projection (``embed_dim``), i.e. a
  fixed linear map of VPT's feature; it keeps methods off the towers' internals and works for
  every backbone that implements ``encode_image`` (see ``docs/deviations.md``).

Classifier (``classifier``):

* ``"linear"`` (default, VPT): the linear head above;
* ``"text"`` (CLIP backbones only; DePT's "VPT" row): no head; the logits are CLIP's
  ``logit_scale · cos(f(x; P), g(template(c)))`` against the *frozen* text features of a hand
  template (``template``, default ``"a photo of a {}."``), computed once per class set. The
  method then has a text side: ``vpt-deep+dept`` adds DePT's CAT head and FiLM layers, and the
  class set can change freely (base → new evaluation).

Class names: with the linear head, the head has one row per training class. ``set_classnames`` accepts names of
the same count (a relabelling, e.g. when a prompt file is loaded) and refuses any other
count; :meth:`VPT.reset_head` starts a fresh head for another label set and keeps the prompts.

A freshly built model is in eval mode (deterministic outputs; the engine switches to
training mode for its epochs, which turns prompt dropout on).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.base import Backbone, VisualPrompts
from ..errors import ConfigError
from .base import PromptMethod, TrainingPlan, register_method
from .prompting import clean_classname

Classifier = Literal["linear", "text"]

#: Largest ``num_tokens`` accepted: 5x the largest value of VPT's search grid (200). Every prompt token
#: joins every block's attention, so a larger count (a typo, a tampered ``prompt.json``) would only
#: allocate memory for minutes before failing; it is refused before anything is built.
MAX_PROMPT_TOKENS = 1000

#: Bias of the reference head ("special bias", prior probability 0.01).
HEAD_BIAS = -math.log((1 - 0.01) / 0.01)


@dataclass(frozen=True)
class VPTConfig:
    """VPT-shallow options (defaults: the reference ``configs/config.py``).

    Attributes:
        num_tokens: prompt tokens ``p`` per layer (reference default 5; the paper picks ``p``
            per task from {1, 5, 10, 50, 100, 200}).
        dropout: dropout on the prompt tokens in training (0.0 for VPT-shallow).
        classifier: ``"linear"`` (VPT's head) or ``"text"`` (CLIP's frozen hand-template class
            text features as a zero-shot-style classifier; DePT's VPT row).
        template: the hand template of ``classifier="text"`` (``{}`` = class name).
    """

    num_tokens: int = 5
    dropout: float = 0.0
    classifier: Classifier = "linear"
    template: str = "a photo of a {}."

    def __post_init__(self) -> None:
        if not 1 <= self.num_tokens <= MAX_PROMPT_TOKENS:
            raise ConfigError(f"vpt num_tokens must be in [1, {MAX_PROMPT_TOKENS}] (VPT's grid goes up to 200), "
                              f"got {self.num_tokens}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"vpt dropout must be in [0, 1), got {self.dropout}")
        if self.classifier not in ("linear", "text"):
            raise ConfigError(f"vpt classifier must be 'linear' or 'text', got {self.classifier!r}")
        if self.template.count("{}") != 1:
            raise ConfigError(f"vpt template must contain exactly one '{{}}', got {self.template!r}")


@dataclass(frozen=True)
class VPTDeepConfig(VPTConfig):
    """VPT-deep options: as :class:`VPTConfig`, with prompt dropout 0.1 (the VPT-deep demos)."""

    dropout: float = 0.1


def prompt_init_bound(patch_size: int, width: int) -> float:
    """VPT's uniform init bound ``sqrt(6 / (3·patch² + width))`` (Xavier-style)."""
    return math.sqrt(6.0 / (3 * patch_size * patch_size + width))


def vpt_head(in_dim: int, n_cls: int, device: torch.device | None = None) -> nn.Linear:
    """The reference head: Kaiming-normal (fan-out) weight, constant bias ``-log(99)``."""
    head = nn.Linear(in_dim, n_cls, device=device)
    nn.init.kaiming_normal_(head.weight, a=0, mode="fan_out")
    nn.init.constant_(head.bias, HEAD_BIAS)
    return head


def head_param_groups(trainable: list[nn.Parameter], head: nn.Linear, base_lr: float) -> list[dict[str, Any]]:
    """VPT's ``make_optimizer`` groups for SGD: every trainable parameter at ``base_lr``, the linear head's
    bias (``last_layer.bias``, initialised at ``-log 99``) without weight decay."""
    bias = head.bias
    rest = [p for p in trainable if p is not bias]
    return [{"params": rest, "lr": base_lr}, {"params": [bias], "lr": base_lr, "weight_decay": 0.0}]


def check_vision_prompt_backbone(backbone: Backbone, method: str, kinds: tuple[str, ...] = ("shallow",)) -> None:
    """Refuse backbones without a ViT image tower that accepts the visual prompt ``kinds``."""
    if not backbone.supports_visual_prompts or not backbone.vision_width or not backbone.patch_size:
        raise ConfigError(
            f"{method} prompts a ViT image tower; backbone {backbone.name!r} has none (CNN towers such as "
            "ResNet or EfficientNet are not supported); use a ViT backbone, e.g. tiny-clip, ViT-B-16 or "
            "timm:vit_base_patch16_224"
        )
    missing = [k for k in kinds if k not in backbone.prompt_kinds]
    if missing:
        raise ConfigError(
            f"{method} needs {' and '.join(missing)} visual prompts, which backbone {backbone.name!r} does not "
            f"support (it takes: {', '.join(backbone.prompt_kinds)}); on Swin use vpt-shallow or linear-probe"
        )


@register_method
class VPT(PromptMethod):
    """VPT-shallow: ``p`` learned tokens after CLS at the input of a frozen ViT, linear head.

    Logits ``head(f(x; P))`` (or, ``classifier="text"`` on CLIP, ``τ·cos(f(x; P), g(template(c)))``);
    loss cross-entropy. Works on timm ViTs and CLIP ViT towers.

    Example:
        >>> bb = vp.load_backbone("timm:vit_base_patch16_224", weights="imagenet21k_ViT-B_16.npz")
        >>> model = vp.build_method("vpt-shallow", bb, task.classnames, num_tokens=50)
        >>> vp.fit(model, task, epochs=100, lr=0.25 * 128 / 256, batch_size=128, weight_decay=1e-4)
        >>> clip_vpt = vp.build_method("vpt-deep+dept", clip_bb, names, classifier="text")  # DePT's VPT row
    """

    name = "vpt-shallow"
    Config = VPTConfig
    plan = TrainingPlan(steps="images", image_features=False)
    #: No text encoder is involved with the linear head (plug-ins that need image-text matching
    #: refuse it); ``classifier="text"`` sets it to ``True`` on the instance.
    has_text_side = False
    #: Visual prompt kinds the backbone must accept (see ``Backbone.prompt_kinds``).
    prompt_kinds: tuple[str, ...] = ("shallow",)
    #: How to give it one (shown by plug-ins that need a text side, e.g. DePT).
    text_side_hint = "build it with classifier='text' on a CLIP backbone: frozen hand-template class features"
    deep = False

    def __init__(self, backbone: Backbone, classnames: list[str], config: VPTConfig) -> None:
        super().__init__(backbone, classnames, config)
        check_vision_prompt_backbone(backbone, self.name, self.prompt_kinds)
        n, width = config.num_tokens, int(backbone.vision_width)
        val = prompt_init_bound(int(backbone.patch_size), width)
        device = backbone.device
        self.prompt = nn.Parameter(torch.empty(n, width, device=device).uniform_(-val, val))
        if self.deep:
            depth = max(backbone.n_vision_layers - 1, 0)
            self.deep_prompt = nn.Parameter(torch.empty(depth, n, width, device=device).uniform_(-val, val))
        self.prompt_dropout = nn.Dropout(config.dropout)
        if config.classifier == "text":
            if not backbone.text_width:
                raise ConfigError(
                    f"{self.name} classifier='text' needs a backbone with a text tower (CLIP); "
                    f"{backbone.name!r} is image-only: use classifier='linear'"
                )
            self.has_text_side = True
            self.head = None
            self._build_class_features()
        else:
            self.head = vpt_head(backbone.embed_dim, len(classnames), device)
        self.train(False)

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        """Every trainable parameter at ``base_lr``; the linear head's bias without weight decay.

        VPT's ``make_optimizer`` (SGD, the released configs) gives each parameter its own group and sets
        weight decay 0 for ``last_layer.bias``, the head's bias (initialised at ``-log 99``).
        """
        if self.head is None:
            return super().param_groups(base_lr)
        return head_param_groups(self.trainable_parameters(), self.head, base_lr)

    def _build_class_features(self) -> None:
        """Normalised frozen text features of the template for every class (non-persistent buffer)."""
        texts = [self.config.template.format(clean_classname(c)) for c in self.classnames]
        with torch.no_grad():
            feats = self.backbone.encode_texts(texts, normalize=True).float()
        self.register_buffer("class_features", feats, persistent=False)

    # ------------------------------------------------------------------ class set
    def set_classnames(self, classnames: list[str]) -> None:
        """Relabel the head's rows (same count only; see :meth:`reset_head` for other label sets),
        or, with the text classifier, encode the new class names (any set)."""
        if self.head is None:
            super().set_classnames(classnames)
            self._build_class_features()
            return
        if len(classnames) != self.head.out_features:
            raise ConfigError(
                f"{self.name} has a trained linear head for {self.head.out_features} classes and cannot "
                f"predict {len(classnames)} others; call reset_head(classnames) to start a new head "
                "(the prompts are kept) and train it"
            )
        super().set_classnames(classnames)

    def reset_head(self, classnames: list[str]) -> None:
        """A freshly initialised head for ``classnames``; the learned prompts are kept."""
        if self.head is None:
            self.set_classnames(classnames)
            return
        self.head = vpt_head(self.backbone.embed_dim, len(classnames), self.prompt.device)
        super().set_classnames(classnames)

    # ------------------------------------------------------------------ prompts
    def visual_prompts(self) -> VisualPrompts:
        """``P_0`` after CLS (layout ``after_cls``) and, for VPT-deep, ``P_i`` before block ``i``."""
        drop = self.prompt_dropout
        deep = {}
        if self.deep:
            deep = {k + 1: drop(self.deep_prompt[k]) for k in range(self.deep_prompt.shape[0])}
        return VisualPrompts(tokens=drop(self.prompt), layout="after_cls", deep=deep)

    # ------------------------------------------------------------------ features / logits
    def raw_text_features(self) -> torch.Tensor:
        """The frozen template text features (``classifier="text"`` only)."""
        if self.head is not None:
            raise ConfigError(f"{self.name} with a linear head is a vision classifier and has no class text features")
        return self.class_features

    def eval_text_features(self) -> torch.Tensor | None:
        return None if self.head is not None else self.class_features

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features of the prompted image tower (with gradients to the prompts)."""
        return self.backbone.encode_image(images, self.visual_prompts())

    def image_features_of(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "images" not in batch:
            raise ConfigError(f"{self.name} prompts the image tower and cannot train on cached image features")
        return self.encode_images(batch["images"])

    def matching_features(
        self, image_features: torch.Tensor, text_features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """With the text classifier: the prompted image features and the template class features."""
        if self.head is not None:
            raise ConfigError(f"{self.name} with a linear head is a vision classifier and matches no text features")
        return super().matching_features(image_features, text_features)

    def logits_from_features(
        self, image_features: torch.Tensor, text_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``head(features)`` (``text_features`` ignored), or with the text classifier
        ``logit_scale · cos(features, text)``."""
        if self.head is None:
            return super().logits_from_features(image_features, text_features)
        return self.head(image_features.to(self.head.weight.dtype))

    def train_outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``image`` (prompted features), ``logits``, ``ce`` and ``loss`` (= ``ce``); ``text`` (the
        frozen class features) with the text classifier only."""
        image = self.image_features_of(batch)
        logits = self.logits_from_features(image)
        ce = F.cross_entropy(logits.float(), batch["labels"])
        out = {"image": image, "logits": logits, "ce": ce, "loss": ce}
        if self.head is None:
            out["text"] = self.class_features
        return out


@register_method
class VPTDeep(VPT):
    """VPT-deep: VPT-shallow plus per-layer prompts overwriting the prompt slots before every block.

    Example:
        >>> model = vp.build_method("vpt-deep", bb, task.classnames, num_tokens=10)
    """

    name = "vpt-deep"
    Config = VPTDeepConfig
    deep = True
    prompt_kinds = ("shallow", "deep")
