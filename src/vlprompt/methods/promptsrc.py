"""PromptSRC: prompting with self-regulating constraints (Khattak et al., ICCV 2023).

IVLP's independent deep prompts in both towers (:mod:`vlprompt.methods.ivlp`), trained with three
self-regulating terms that tie the prompted model to the frozen CLIP, and averaged over epochs:

* ``f̂ = f(x; V) / ‖·‖`` the prompted image feature, ``ĝ_c = g(t_c; P) / ‖·‖`` the prompted text feature
  of class ``c``; ``f̃ = f(x) / ‖·‖`` the frozen (unprompted) image feature of the same augmented image;
  ``g̃_c = m_c / ‖m_c‖`` with ``m_c = (1/T) Σ_t g(template_t(c))`` the mean of the frozen, *un-normalised*
  text features of ``T`` hand-crafted templates (textual diversity; the reference's 60 ImageNet templates);
* logits ``z = s · f̂ ĝᵀ`` and frozen logits ``z̃ = s · f̃ g̃ᵀ``, ``s`` = CLIP's ``logit_scale.exp()``;
* loss ``CE(z, y) + λ_t · mean|ĝ − g̃| + λ_i · mean|f̂ − f̃| + (1/(B·C)) Σ_{b,c} p̃ (log p̃ − log p)``,
  the L1 means over all ``n_cls × D`` resp. ``B × D`` entries, the last term the KL divergence of the
  prompted from the frozen class distribution (``p = softmax(z)``, ``p̃ = softmax(z̃)``) summed over the
  batch and classes and divided by their count (the reference's ``kl_div(..., reduction="sum") / numel``);
  ``λ_t`` = ``text_loss_weight`` (25), ``λ_i`` = ``image_loss_weight`` (10);
* Gaussian prompt aggregation (GPA): after epoch ``e = 1..N`` the prompts ``θ_e`` enter the sum
  ``Σ_e w_e θ_e`` with ``w_e = N(e; gpa_mean, gpa_std²) / Σ_{e'=1..N} N(e'; ·)`` (the normal density at
  the 1-based epoch, normalised over the epochs trained); after the last epoch the average replaces the
  prompts, before evaluation and before the prompt is saved. Every trainable tensor is averaged (the
  text and the visual prompts, shallow and deep). The running sum lives in :meth:`training_state`, so
  a killed and resumed run ends with the same average.

The frozen text targets are encoded lazily, once per class set, by the same frozen backbone in fp32
(the reference keeps a second CLIP for them and a third for the frozen image features; here the
frozen backbone without prompts is both). Inference is IVLP's.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..backbones.base import Backbone
from ..data.templates import PROMPTSRC_TEMPLATES
from ..errors import ConfigError
from .base import register_method
from .ivlp import IVLP, IVLPConfig
from .prompting import clean_classname


@dataclass(frozen=True)
class PromptSRCConfig(IVLPConfig):
    """PromptSRC options (defaults: the base-to-new config ``PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx``).

    Attributes:
        n_ctx_text: text prompt tokens per layer (4).
        n_ctx_vision: visual prompt tokens per layer (4).
        ctx_init: init phrase of the shallow text prompt (``"a photo of a"``; see IVLP).
        prompt_depth_text: J_t, text blocks with prompts (9).
        prompt_depth_vision: J_v, vision blocks with prompts (9; 0 = text prompts alone, the image
            consistency term is then 0).
        text_loss_weight: λ_t, weight of the L1 distance between the prompted and the frozen
            (template-averaged) normalised class text features (25).
        image_loss_weight: λ_i, weight of the L1 distance between the prompted and the frozen
            normalised image features (10).
        gpa: Gaussian prompt aggregation over epochs (True); False keeps the last epoch's prompts.
        gpa_mean: mean of the Gaussian over the 1-based epoch number (15).
        gpa_std: its standard deviation (1), > 0.
        text_templates: templates (``{}`` = class name) of the frozen text targets; ``()`` = the reference's
            60 ImageNet templates (``vlprompt.data.templates.PROMPTSRC_TEMPLATES``).
    """

    n_ctx_text: int = 4
    n_ctx_vision: int = 4
    ctx_init: str = "a photo of a"
    prompt_depth_text: int = 9
    prompt_depth_vision: int = 9
    text_loss_weight: float = 25.0
    image_loss_weight: float = 10.0
    gpa: bool = True
    gpa_mean: float = 15.0
    gpa_std: float = 1.0
    text_templates: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        for what, value in (("text_loss_weight", self.text_loss_weight), ("image_loss_weight", self.image_loss_weight)):
            if value < 0:
                raise ConfigError(f"promptsrc {what} must be >= 0, got {value}")
        if not self.gpa_std > 0:
            raise ConfigError(f"promptsrc gpa_std must be > 0, got {self.gpa_std}")
        bad = [t for t in self.text_templates if t.count("{}") != 1]
        if bad:
            raise ConfigError(f"promptsrc text_templates must each contain exactly one '{{}}', got {bad[0]!r}")


def gaussian_density(x: float, mean: float, std: float) -> float:
    """The normal density ``N(x; mean, std²)`` in float64 (PromptSRC's un-normalised epoch weight)."""
    return math.exp(-0.5 * ((x - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))


def gpa_weights(epochs: int, mean: float, std: float) -> list[float]:
    """GPA's weights of epochs ``1..epochs``: the normal density at each epoch, normalised to sum 1.

    Example:
        >>> [round(w, 4) for w in gpa_weights(3, 2.0, 1.0)]
        [0.2741, 0.4519, 0.2741]
    """
    raw = [gaussian_density(e, mean, std) for e in range(1, epochs + 1)]
    total = sum(raw)
    if not total > 0:
        raise ConfigError(f"promptsrc GPA weights N(e; {mean}, {std}^2) are all 0 for epochs 1..{epochs}: "
                          "set gpa_mean within the epochs or a larger gpa_std")
    return [w / total for w in raw]


def _fp32_or_wider(x: torch.Tensor) -> torch.Tensor:
    """fp32 for autocast's half types; float64 stays float64 (gradient checks)."""
    return x if x.dtype == torch.float64 else x.float()


def scl_terms(
    image: torch.Tensor, text: torch.Tensor, frozen_image: torch.Tensor, frozen_text: torch.Tensor,
    logit_scale: torch.Tensor | float,
) -> dict[str, torch.Tensor]:
    """PromptSRC's self-regulating terms (unweighted) from raw prompted and frozen features.

    Args:
        image, text: prompted image ``(B, D)`` and class text ``(n_cls, D)`` features (any scale).
        frozen_image: frozen image features ``(B, D)`` of the same images (any scale).
        frozen_text: frozen class text targets ``(n_cls, D)`` (any scale; normalised here).
        logit_scale: CLIP's temperature ``s`` (``logit_scale.exp()``).

    Returns:
        ``logits`` (prompted, ``s · f̂ ĝᵀ``), ``frozen_logits`` (``s · f̃ g̃ᵀ``), ``text_l1`` (mean
        ``|ĝ − g̃|``), ``image_l1`` (mean ``|f̂ − f̃|``) and ``kl`` (``Σ p̃ (log p̃ − log p) / (B·n_cls)``).
    """
    img = F.normalize(_fp32_or_wider(image), dim=-1)
    txt = F.normalize(_fp32_or_wider(text), dim=-1)
    img0 = F.normalize(_fp32_or_wider(frozen_image), dim=-1)
    txt0 = F.normalize(_fp32_or_wider(frozen_text), dim=-1)
    logits = logit_scale * img @ txt.t()
    frozen_logits = logit_scale * img0 @ txt0.t()
    kl = F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(frozen_logits, dim=1), reduction="sum",
                  log_target=True) / logits.numel()
    return {"logits": logits, "frozen_logits": frozen_logits, "text_l1": F.l1_loss(txt, txt0),
            "image_l1": F.l1_loss(img, img0), "kl": kl}


@register_method
class PromptSRC(IVLP):
    """PromptSRC: IVLP prompts regulated by the frozen CLIP, averaged over epochs with Gaussian weights.

    The regulation: consistency of the prompted image and text features and logits with the frozen ones.

    ``train_outputs`` returns IVLP's ``ce`` plus ``scl_text`` (``λ_t · mean|ĝ − g̃|``), ``scl_image``
    (``λ_i · mean|f̂ − f̃|``), ``scl_logits`` (the KL term) and ``loss`` = their sum with ``ce``; a plug-in
    such as DePT keeps the three terms (``loss − ce``).

    Example:
        >>> model = vp.build_method("promptsrc", bb, task.classnames)      # 4+4 ctx, depth 9 / 9
        >>> vp.fit(model, task, epochs=20, lr=0.0025, batch_size=4)       # GPA over the 20 epochs
    """

    name = "promptsrc"
    Config = PromptSRCConfig

    def __init__(self, backbone: Backbone, classnames: list[str], config: PromptSRCConfig) -> None:
        super().__init__(backbone, classnames, config)
        # IVLP's plan (images, or cached features without visual prompts) plus the GPA hooks
        self.plan = dataclasses.replace(self.plan, after_epoch=config.gpa, after_training=config.gpa)
        self.register_buffer("frozen_text", None, persistent=False)
        self._reset_gpa()

    # ------------------------------------------------------------------ frozen targets
    def set_classnames(self, classnames: list[str]) -> None:
        super().set_classnames(classnames)
        self.frozen_text = None  # the targets belong to a class set: re-encoded when training needs them

    def templates(self) -> tuple[str, ...]:
        """The templates of the frozen text targets."""
        return self.config.text_templates or PROMPTSRC_TEMPLATES

    def frozen_text_features(self) -> torch.Tensor:
        """``(n_cls, D)`` mean over the templates of the frozen, un-normalised text features (fp32, no
        autocast), computed once per class set; :func:`scl_terms` normalises it."""
        if self.frozen_text is None:
            names = [clean_classname(c) for c in self.classnames]
            device = self.backbone.device
            templates = self.templates()
            texts = [t.format(n) for t in templates for n in names]  # template-major, in chunks of 256
            with torch.no_grad(), torch.autocast(device.type, enabled=False):
                feats = self.backbone.encode_texts(texts, normalize=False)
            self.frozen_text = _fp32_or_wider(feats.view(len(templates), len(names), -1).mean(dim=0))
        return self.frozen_text

    def frozen_image_features(self, batch: dict[str, torch.Tensor], prompted: torch.Tensor) -> torch.Tensor:
        """Frozen, unprompted image features of the batch's images (the prompted ones when the image tower
        carries no prompts: then they are the frozen ones)."""
        if self.visual_prompts() is None:
            return prompted.detach()
        with torch.no_grad():
            return self.backbone.encode_image(batch["images"])

    # ------------------------------------------------------------------ training
    def train_outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image = self.image_features_of(batch)
        text = self.raw_text_features()
        terms = scl_terms(image, text, self.frozen_image_features(batch, image), self.frozen_text_features(),
                          self.backbone.logit_scale)
        logits = terms["logits"]
        ce = F.cross_entropy(logits, batch["labels"])
        scl_text = self.config.text_loss_weight * terms["text_l1"]
        scl_image = self.config.image_loss_weight * terms["image_l1"]
        scl_logits = terms["kl"]
        loss = ce + (scl_logits + scl_text + scl_image)
        return {"image": image, "text": text, "logits": logits, "ce": ce, "scl_text": scl_text,
                "scl_image": scl_image, "scl_logits": scl_logits, "loss": loss}

    # ------------------------------------------------------------------ Gaussian prompt aggregation
    def _reset_gpa(self) -> None:
        self._gpa_sum: dict[str, torch.Tensor] = {}
        self._gpa_weight = 0.0
        self._gpa_epochs: list[int] = []

    def end_epoch(self, epoch: int) -> None:
        """Add this epoch's prompts with the un-normalised weight ``N(epoch + 1; gpa_mean, gpa_std²)``
        (float64 sums; normalised by the weights' total in :meth:`finish_training`). An epoch at or before
        one already summed starts a new aggregation (the model is trained again by another ``fit``)."""
        if self._gpa_epochs and epoch <= self._gpa_epochs[-1]:
            self._reset_gpa()
        w = gaussian_density(epoch + 1, self.config.gpa_mean, self.config.gpa_std)
        for name, p in self.prompt_state_dict().items():
            term = p.detach().double() * w
            self._gpa_sum[name] = self._gpa_sum[name] + term if name in self._gpa_sum else term
        self._gpa_weight += w
        self._gpa_epochs.append(epoch)

    def training_state(self) -> dict[str, Any]:
        if not self._gpa_epochs:
            return {}
        return {"gpa_weight": self._gpa_weight, "gpa_epochs": list(self._gpa_epochs),
                **{f"gpa_sum.{k}": v.clone() for k, v in self._gpa_sum.items()}}

    def load_training_state(self, state: dict[str, Any]) -> None:
        self._reset_gpa()
        if not state:
            return
        self._gpa_weight = float(state["gpa_weight"])
        self._gpa_epochs = [int(e) for e in state["gpa_epochs"]]
        self._gpa_sum = {k.removeprefix("gpa_sum."): v.clone() for k, v in state.items() if k.startswith("gpa_sum.")}

    def gpa_average(self) -> dict[str, torch.Tensor]:
        """The Gaussian-weighted average of the prompts over the epochs seen so far (float64)."""
        if not self._gpa_epochs:
            raise ConfigError("promptsrc: no epoch has been aggregated yet (GPA needs at least one trained epoch)")
        if not self._gpa_weight > 0:
            last = max(self._gpa_epochs) + 1
            raise ConfigError(f"promptsrc GPA weights N(e; {self.config.gpa_mean}, {self.config.gpa_std}^2) are all "
                              f"0 for epochs 1..{last}: set gpa_mean within the epochs or a larger gpa_std")
        return {k: v / self._gpa_weight for k, v in self._gpa_sum.items()}

    def finish_training(self, samples: list, device: torch.device) -> dict[str, Any]:
        """Install the Gaussian-weighted average of the prompts (before evaluation and saving)."""
        if not self._gpa_epochs:  # no epoch trained (epochs=0): nothing to average
            return {}
        average = self.gpa_average()
        own = dict(self.named_parameters())
        with torch.no_grad():
            for name, value in average.items():
                own[name].copy_(value.to(own[name].dtype))
        return {"gpa_epochs": len(self._gpa_epochs)}
