"""MaPLe: multi-modal prompt learning (Khattak et al., CVPR 2023).

Learned (``J`` = ``prompt_depth``, ``n`` = ``n_ctx``):

* ``ctx`` ``P_0`` ``(n, text_width)``: the shallow text context, initialised from the first
  ``n`` token embeddings of the init phrase;
* ``deep_ctx`` ``P_1..P_{J-1}`` ``(J-1, n, text_width)``, N(0, 0.02²);
* ``couplings`` ``F_0..F_{J-1}``: ``Linear(text_width → vision_width)``; the vision prompts are
  not free parameters but ``V_k = F_k(P_k)``, so the image loss trains the text prompts too.

Where they enter the frozen towers (through the backbone seams):

* text: the input is ``[SOS, P_0, suffix]``, where the suffix is what follows the first ``n``
  tokens of ``"<init phrase> <class>."`` — with the defaults the effective prompt is
  ``[SOS][P_0] of a {class}.``, exactly as the reference; before text blocks ``1..J-1`` the
  positions ``1..n`` are replaced by ``P_k``;
* vision: ``V_0`` is appended after the patch tokens (before ``ln_pre``) and replaced by
  ``V_k`` before vision blocks ``1..J-1``; the image feature is still the CLS token.

The image tower is prompted, so training reads images (``plan.steps == "images"``) and
needs a ViT image tower.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..backbones.base import Backbone, VisualPrompts
from ..errors import ConfigError
from .base import TrainingPlan, register_method
from .prompting import ClassPrompts, DeepTextPromptMethod, check_text_tokens, phrase_context


@dataclass(frozen=True)
class MaPLeConfig:
    """MaPLe options (defaults: MaPLe's base-to-new config ``vit_b16_c2_ep5_batch4_2ctx``).

    Attributes:
        n_ctx: prompt tokens per layer (2).
        ctx_init: init phrase (``"a photo of a"``); ``P_0`` takes the embeddings of its first
            ``n_ctx`` tokens and the rest of the phrase stays in the prompt as fixed words.
            ``""`` = random N(0, 0.02²) init with ``X`` placeholders.
        prompt_depth: J, the number of layers (from the first) that get prompts in both towers
            (9 for base-to-new, 3 in MaPLe's cross-dataset config); at most the number of
            blocks of either tower.
        share_prefix: compute ``[SOS][P_0]`` and the fixed phrase words after it once for all classes
            (the deep prompts replace positions inside it) and only the class tokens per class: the same
            text features to fp32 rounding (see CoOp's ``share_prefix``); False forces the full path.
    """

    n_ctx: int = 2
    ctx_init: str = "a photo of a"
    prompt_depth: int = 9
    share_prefix: bool = True

    def __post_init__(self) -> None:
        if self.n_ctx < 1:
            raise ConfigError(f"maple n_ctx must be >= 1, got {self.n_ctx}")
        if self.prompt_depth < 1:
            raise ConfigError(f"maple prompt_depth must be >= 1, got {self.prompt_depth}")


@register_method
class MaPLe(DeepTextPromptMethod):
    """Multi-modal prompt learning: coupled deep prompts in the text and the image tower.

    Logits ``logit_scale · cos(f(x; V), g(t; P))``; loss cross-entropy. ViT backbones only.

    Example:
        >>> model = vp.build_method("maple", bb, task.classnames)          # 2 ctx, depth 9
        >>> vp.fit(model, task, epochs=5, lr=0.0035, batch_size=4)
    """

    name = "maple"
    Config = MaPLeConfig
    plan = TrainingPlan(steps="images", image_features=False)

    @classmethod
    def check_backbone(cls, backbone: Backbone, options: dict[str, Any]) -> None:
        """A ViT image tower and ``prompt_depth`` within both towers' block counts."""
        if not backbone.supports_visual_prompts or not backbone.vision_width:
            raise ConfigError(
                f"{cls.name} prompts the image transformer and needs a CLIP backbone with a ViT image tower "
                f"(e.g. tiny-clip, ViT-B-16); backbone {backbone.name!r} has none (CNN towers such as ResNet "
                "or EfficientNet are not supported, as in the reference)"
            )
        depth = options.get("prompt_depth", cls.Config.prompt_depth)
        top = min(backbone.n_text_layers, backbone.n_vision_layers)
        if isinstance(depth, int) and depth > top:
            raise ConfigError(
                f"{cls.name} prompt_depth={depth} exceeds the backbone {backbone.name!r} "
                f"({backbone.n_text_layers} text / {backbone.n_vision_layers} vision layers): "
                f"set prompt_depth to at most {top} (CLI: -o prompt_depth={top})"
            )

    def __init__(self, backbone: Backbone, classnames: list[str], config: MaPLeConfig) -> None:
        super().__init__(backbone, classnames, config)
        self.check_backbone(backbone, {"prompt_depth": config.prompt_depth})
        depth = config.prompt_depth
        n, width = config.n_ctx, backbone.text_width
        check_text_tokens(backbone, n)
        self.n_ctx = n
        self.ctx = nn.Parameter(self._init_ctx(backbone, config).to(backbone.device))
        self.deep_ctx = nn.Parameter(torch.randn(depth - 1, n, width, device=backbone.device) * 0.02)
        # The reference builds F_0 on its own and F_1..F_{J-1} as deep copies of one layer
        # (same initial weights, trained independently).
        first = nn.Linear(width, backbone.vision_width)
        deep = nn.Linear(width, backbone.vision_width)
        self.couplings = nn.ModuleList([first] + [_copy_linear(deep) for _ in range(depth - 1)])
        self.couplings.to(backbone.device)
        self.prompts = ClassPrompts(backbone, classnames, n, self._placeholder())

    @staticmethod
    def _init_ctx(backbone: Backbone, config: MaPLeConfig) -> torch.Tensor:
        return phrase_context(backbone, config.n_ctx, config.ctx_init, "maple n_ctx")

    # ------------------------------------------------------------------ prompts
    def deep_text_prompts(self) -> dict[int, torch.Tensor]:
        """``{k: P_k}`` for text blocks ``k = 1..J-1``."""
        return {k + 1: self.deep_ctx[k] for k in range(self.deep_ctx.shape[0])}

    def visual_prompts(self) -> VisualPrompts:
        """``V_0 = F_0(P_0)`` appended after the patches, ``V_k = F_k(P_k)`` before block ``k``."""
        deep = {k + 1: self.couplings[k + 1](self.deep_ctx[k]) for k in range(self.deep_ctx.shape[0])}
        return VisualPrompts(tokens=self.couplings[0](self.ctx), layout="append", deep=deep)

    # ------------------------------------------------------------------ features
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Raw image features of the prompted image tower (with gradients to the prompts)."""
        return self.backbone.encode_image(images, self.visual_prompts())

    def image_features_of(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Prompted image features of ``batch["images"]``, with gradients (for ``train_outputs``)."""
        if "images" not in batch:
            raise ConfigError("maple prompts the image tower and cannot train on cached image features")
        return self.encode_images(batch["images"])


def _copy_linear(layer: nn.Linear) -> nn.Linear:
    out = nn.Linear(layer.in_features, layer.out_features)
    with torch.no_grad():
        out.weight.copy_(layer.weight)
        out.bias.copy_(layer.bias)
    return out
