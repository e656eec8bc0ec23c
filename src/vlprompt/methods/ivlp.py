"""IVLP: independent vision-language deep prompts (the MaPLe repository's ``IVLP`` trainer).

The baseline of MaPLe's paper ("independent V-L prompting"): deep prompts in both towers, as in
MaPLe, but the two sets are free parameters with no coupling function between them.

Learned (``J_t`` = ``prompt_depth_text``, ``n_t`` = ``n_ctx_text``, ``J_v``, ``n_v`` likewise):

* ``ctx`` ``P_0`` ``(n_t, text_width)``: the shallow text context, initialised from the first
  ``n_t`` token embeddings of the init phrase;
* ``deep_text_ctx`` ``P_1..P_{J_t-1}`` ``(J_t-1, n_t, text_width)``, N(0, 0.02²);
* ``visual_ctx`` ``V_0`` ``(n_v, vision_width)`` and ``deep_visual_ctx`` ``V_1..V_{J_v-1}``,
  N(0, 0.02²); none when ``J_v = 0`` (the language-only config).

Where they enter the frozen towers (the backbone seams, as MaPLe's):

* text: the input is ``[SOS, P_0, suffix]`` (the suffix follows the first ``n_t`` tokens of
  ``"<init phrase> <class>."``: with the defaults ``[SOS][P_0] of a {class}.``); before text blocks
  ``1..J_t-1`` positions ``1..n_t`` are replaced by ``P_k``;
* vision: ``V_0`` is appended after the patch tokens (after the positional embedding, before
  ``ln_pre``) and the last ``n_v`` tokens are replaced by ``V_k`` before vision blocks ``1..J_v-1``;
  the image feature is the CLS token.

Logits ``logit_scale · cos(f(x; V), g(t; P))``; loss cross-entropy. With visual prompts training
reads images (``plan.steps == "images"``) and needs a ViT image tower; with ``prompt_depth_vision=0``
the image tower is frozen and unprompted, so training reads cached image features.
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
class IVLPConfig:
    """IVLP options (defaults: the base-to-new config ``IVLP/vit_b16_c2_ep5_batch4_2+2ctx``).

    Attributes:
        n_ctx_text: text prompt tokens per layer (2).
        n_ctx_vision: visual prompt tokens per layer (2); unused when ``prompt_depth_vision`` is 0.
        ctx_init: init phrase (``"a photo of a"``); ``P_0`` takes the embeddings of its first
            ``n_ctx_text`` tokens and the rest of the phrase stays in the prompt as fixed words.
            ``""`` = random N(0, 0.02²) init with ``X`` placeholders.
        prompt_depth_text: J_t, the number of text blocks (from the first) that get prompts, >= 1
            (12); at most the text tower's block count.
        prompt_depth_vision: J_v, the number of vision blocks that get prompts (12); 0 = no visual
            prompts (the language-only config ``vit_b16_c2_ep5_batch4_4ctx_language_only``); at
            most the image tower's block count.
        share_prefix: compute ``[SOS][P_0]`` and the fixed phrase words after it once for all classes
            and only the class tokens per class: the same text features to fp32 rounding (see CoOp's
            ``share_prefix``); False forces the full path.
    """

    n_ctx_text: int = 2
    n_ctx_vision: int = 2
    ctx_init: str = "a photo of a"
    prompt_depth_text: int = 12
    prompt_depth_vision: int = 12
    share_prefix: bool = True

    def __post_init__(self) -> None:
        if self.n_ctx_text < 1:
            raise ConfigError(f"ivlp n_ctx_text must be >= 1, got {self.n_ctx_text}")
        if self.prompt_depth_text < 1:
            raise ConfigError(f"ivlp prompt_depth_text must be >= 1 (use vpt-deep for visual prompts alone), "
                              f"got {self.prompt_depth_text}")
        if self.prompt_depth_vision < 0:
            raise ConfigError(f"ivlp prompt_depth_vision must be >= 0, got {self.prompt_depth_vision}")
        if self.prompt_depth_vision > 0 and self.n_ctx_vision < 1:
            raise ConfigError(f"ivlp n_ctx_vision must be >= 1 with prompt_depth_vision={self.prompt_depth_vision}, "
                              f"got {self.n_ctx_vision}")


@register_method
class IVLP(DeepTextPromptMethod):
    """Independent vision-language prompting: uncoupled deep prompts in the text and the image tower.

    Example:
        >>> model = vp.build_method("ivlp", bb, task.classnames)          # 2+2 ctx, depth 12 / 12
        >>> vp.fit(model, task, epochs=5, lr=0.0035, batch_size=4)
    """

    name = "ivlp"
    Config = IVLPConfig
    plan = TrainingPlan(steps="images", image_features=False)

    @classmethod
    def check_backbone(cls, backbone: Backbone, options: dict[str, Any]) -> None:
        """A ViT image tower when there are visual prompts; depths within the towers' block counts."""
        depth_t = options.get("prompt_depth_text", cls.Config.prompt_depth_text)
        depth_v = options.get("prompt_depth_vision", cls.Config.prompt_depth_vision)
        if isinstance(depth_v, int) and depth_v > 0 and (not backbone.supports_visual_prompts
                                                         or not backbone.vision_width):
            raise ConfigError(
                f"{cls.name} with prompt_depth_vision={depth_v} prompts the image transformer and needs a CLIP "
                f"backbone with a ViT image tower (e.g. tiny-clip, ViT-B-16); backbone {backbone.name!r} has none "
                "(set prompt_depth_vision=0 for text prompts alone)"
            )
        for what, depth, top in (("text", depth_t, backbone.n_text_layers),
                                 ("vision", depth_v, backbone.n_vision_layers)):
            if isinstance(depth, int) and depth > (top or 0) and (what == "text" or depth > 0):
                raise ConfigError(
                    f"{cls.name} prompt_depth_{what}={depth} exceeds the {top or 0} {what} layers of backbone "
                    f"{backbone.name!r}: set prompt_depth_{what} to at most {top or 0} "
                    f"(CLI: -o prompt_depth_{what}={top or 0})"
                )

    def __init__(self, backbone: Backbone, classnames: list[str], config: IVLPConfig) -> None:
        super().__init__(backbone, classnames, config)
        self.check_backbone(backbone, {"prompt_depth_text": config.prompt_depth_text,
                                       "prompt_depth_vision": config.prompt_depth_vision})
        n, width, dev = config.n_ctx_text, backbone.text_width, backbone.device
        check_text_tokens(backbone, n)
        self.n_ctx = n
        self.ctx = nn.Parameter(self._init_ctx(backbone, config).to(dev))
        self.deep_text_ctx = nn.Parameter(torch.randn(config.prompt_depth_text - 1, n, width, device=dev) * 0.02)
        depth_v = config.prompt_depth_vision
        self.visual_ctx: nn.Parameter | None = None
        self.deep_visual_ctx: nn.Parameter | None = None
        if depth_v > 0:
            nv, vw = config.n_ctx_vision, backbone.vision_width
            self.visual_ctx = nn.Parameter(torch.randn(nv, vw, device=dev) * 0.02)
            self.deep_visual_ctx = nn.Parameter(torch.randn(depth_v - 1, nv, vw, device=dev) * 0.02)
        else:  # the image tower stays frozen and unprompted: train and evaluate on cached image features
            self.plan = TrainingPlan()
        self.prompts = ClassPrompts(backbone, classnames, n, self._placeholder())

    @staticmethod
    def _init_ctx(backbone: Backbone, config: IVLPConfig) -> torch.Tensor:
        return phrase_context(backbone, config.n_ctx_text, config.ctx_init, "ivlp n_ctx_text")

    # ------------------------------------------------------------------ prompts
    def deep_text_prompts(self) -> dict[int, torch.Tensor]:
        """``{k: P_k}`` for text blocks ``k = 1..J_t-1``."""
        return {k + 1: self.deep_text_ctx[k] for k in range(self.deep_text_ctx.shape[0])}

    def visual_prompts(self) -> VisualPrompts | None:
        """``V_0`` appended after the patches, ``V_k`` before vision block ``k``; ``None`` without them."""
        if self.visual_ctx is None or self.deep_visual_ctx is None:
            return None
        deep = {k + 1: self.deep_visual_ctx[k] for k in range(self.deep_visual_ctx.shape[0])}
        return VisualPrompts(tokens=self.visual_ctx, layout="append", deep=deep)

    # ------------------------------------------------------------------ features
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Raw image features of the (prompted, if there are visual prompts) image tower."""
        prompts = self.visual_prompts()
        if prompts is None:
            return self.backbone.encode_image(images)
        return self.backbone.encode_image(images, prompts)

    def image_features_of(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Prompted image features of ``batch["images"]`` with gradients; without visual prompts the
        frozen features (cached ``features`` or encoded ``images``)."""
        if self.visual_prompts() is None:
            return super().image_features_of(batch)
        if "images" not in batch:
            raise ConfigError("ivlp prompts the image tower and cannot train on cached image features")
        return self.encode_images(batch["images"])
