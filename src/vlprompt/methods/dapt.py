"""DAPT: Decouple before Align (Zhang et al., T-PAMI 2025): a plug-in, and ``dapt`` / ``dapt-g`` on MaPLe.

DAPT keeps a method's prompts and adds three loss terms computed from each training image ``x``
split with a foreground mask ``m`` (applied to the normalised image, so masked pixels become the
mean colour). Three image features of the method's image tower, L2-normalised:
``z_I = f(x)``, ``z_f = f(x ⊙ m)``, ``z_b = f(x ⊙ (1 − m))``; the method's class text features
give ``z_T`` and the hand-crafted background classes (template ``"a clean origami {}."``) give
``z_Tb``. With ``s`` the logit scale (100 for CLIP):

* ``L_cls``: the method's own loss (MaPLe: ``CE(s · z_I z_Tᵀ, y)``; plus its regularisers, if any);
* ``L_v = max(‖z_I − sg(z_f)‖ − ‖z_I − sg(z_b)‖ + 1.5, 0)`` (visual pull-push triplet);
* ``L_f = CE(s · sg(z_f) z_Tᵀ, y)`` (foreground–class alignment, trains the text side);
* ``L_b = CE(s · z_b z_Tbᵀ, ŷ_b)``, ``ŷ_b = argmax z_b z_Tbᵀ`` (background alignment with
  self pseudo-labels).

``L = L_cls + w_v·L_v + w_f·L_f + w_b·L_b`` with ``w = (0.8, 0.1, 0.5)``:

* ``loss_schedule="paper"`` (default): all four terms in every epoch, the loss as the paper
  writes it;
* ``loss_schedule="reference"``: the released code's epoch switch — epoch index ≤ 6 uses
  ``L_cls + 0.8 L_v``, later epochs ``L_cls + 0.1 L_f + 0.5 L_b``. The published numbers were
  produced by the released code, so this preset is the one that corresponds to them (with the
  5-epoch base-to-new config only ``L_v`` is ever active); see docs/deviations.md (DA1–DA15).

The background prompts go through the method's text tower as the released code sends them
through MaPLe's: the fixed token sequences, with the method's *deep* text prompts replacing
positions ``1..n_ctx`` before the deeper blocks (MaPLe, IVLP and its subclasses, in the same pass
as the class prompts); the input-layer context is not inserted. A method without deep text
prompts (CoOp, CoCoOp, KgCoOp) therefore gives frozen background features.

Masks (``masks`` option; two names):

* DAPT-S (``masks="data"``): segmentation masks read from disk (layouts in
  :mod:`vlprompt.data.masks`; the tiny suite ships exact masks), cropped and flipped with the
  image by the engine's paired transform and passed in ``batch["masks"]``;
* DAPT-G (``masks="gradcam"``): Grad-CAM of the prompted model itself at the last
  ViT block (``ln_1`` output, gradients of ``mean(logits ⊙ onehot(y))`` averaged over the
  patches, ReLU, bilinear upsampling, divided by the per-image maximum, values below 0.5
  zeroed; ``gradcam_rule="reference"``: the released training rule, batch maximum and
  binarised), recomputed over the training set at the start of every epoch (before training and
  after each epoch, as the paper intends) and then paired-transformed like disk masks.

Names:

* ``<method>+dapt`` / ``<method>+dapt-g`` on CoOp, CoCoOp, KgCoOp, IVLP (and its subclasses, e.g.
  PromptSRC) and MaPLe; options ``dapt_<field>`` (``dapt_loss_schedule="reference"``). The plug-in
  changes the method in place (its class gains :class:`DAPTMixin`), so its parameters, their
  names and the saved prompt keys stay the method's own. Combined with DePT in either order
  (``maple+dapt+dept``, ``maple+dept+dapt``): DePT's loss on top of the DAPT-trained method.
* ``dapt`` / ``dapt-g``: ``maple+dapt`` / ``maple+dapt-g`` under their own names, with the options
  unprefixed (``loss_schedule="reference"``) and DAPT's presets; the same model, logits, loss
  and prompt keys.

The DAPT repository carries DAPT only in its MaPLe trainer; its CoOp, CoCoOp, IVLP and VPT trainers
are the MaPLe repository's, without masks or DAPT terms. On a method with a frozen, unprompted image
tower (CoOp, CoCoOp) ``z_I``, ``z_f`` and ``z_b`` are frozen features, so ``L_v`` and ``L_b`` have no
trainable path (they are computed and reported, constant in the gradient) and ``L_f`` trains the
text context; CoCoOp's ``L_f`` uses each image's own conditional class features. At test time the
method is unchanged.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import transforms as T

from ..backbones.base import Backbone
from ..data.images import open_image
from ..data.masks import ArrayMasks
from ..data.transforms import ToRGB, image_norm
from ..errors import ConfigError
from .base import PromptMethod, TrainingPlan, config_to_dict, make_config, register_method, register_plugin
from .coop import CoOp
from .dept import DePT
from .ivlp import IVLP
from .maple import MaPLe, MaPLeConfig
from .prompting import DeepTextPromptMethod

#: DAPT's background classes: 25 generic scene words, then 7 food-scene words (32 in all).
BACKGROUND_GENERIC = (
    "ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river", "sea", "railway",
    "railroad", "keyboard", "helmet", "cloud", "house", "mountain", "ocean", "road", "rock", "street", "valley",
    "bridge", "sign",
)
BACKGROUND_FOOD = ("table", "forks", "tablecloth", "hands", "spoon", "glasses", "dishes")
BACKGROUND_CLASSES = BACKGROUND_GENERIC + BACKGROUND_FOOD
BACKGROUND_TEMPLATE = "a clean origami {}."

MaskKind = Literal["data", "gradcam"]
Schedule = Literal["paper", "reference"]
GradcamRule = Literal["image", "reference"]


@dataclass(frozen=True)
class DAPTSettings:
    """DAPT's options as one value: the fields of :class:`DAPTConfig` after MaPLe's, and of the ``+dapt`` /
    ``+dapt-g`` plug-ins' configs with the prefix ``dapt_``.

    Attributes:
        masks: ``"data"`` (DAPT-S: masks from disk, in ``batch["masks"]``) or ``"gradcam"``
            (DAPT-G: Grad-CAM masks of the prompted model, recomputed every epoch).
        loss_schedule: ``"paper"`` (all terms every epoch) or ``"reference"`` (the released
            code's switch at ``switch_epoch``).
        weight_visual: ``w_v`` of the pull-push triplet ``L_v`` (0.8, the code's ``para_vd``).
        weight_fg: ``w_f`` of the foreground alignment ``L_f`` (0.1, ``para_fg``).
        weight_bg: ``w_b`` of the background alignment ``L_b`` (0.5, ``para_bg``).
        margin: triplet margin (1.5).
        switch_epoch: last 0-based epoch index that uses ``L_v`` under the reference schedule (6).
        background_classes: the hand-crafted background classes (DAPT's 32 words).
        background_template: their prompt template (``"a clean origami {}."``).
        gradcam_threshold: Grad-CAM values (after division by the maximum) below it are zeroed (0.5).
        gradcam_batch_size: images per Grad-CAM pass over the training set (the reference's
            ``SELECTION_BATCH_SIZE`` is 50; it matters only with ``gradcam_rule="reference"``).
        gradcam_rule: how a CAM becomes a training mask. ``"image"``: bilinear upsampling
            (``align_corners=False``), divided by each image's own maximum, values below the
            threshold zeroed, the rest kept (a soft mask independent of the batch). ``"reference"``:
            the released training path (``GradCAM.forward_train``): ``align_corners=True``, divided by
            the maximum over the whole Grad-CAM batch (+ 1e-6), binarised at the threshold.
    """

    masks: MaskKind = "data"
    loss_schedule: Schedule = "paper"
    weight_visual: float = 0.8
    weight_fg: float = 0.1
    weight_bg: float = 0.5
    margin: float = 1.5
    switch_epoch: int = 6
    background_classes: tuple[str, ...] = BACKGROUND_CLASSES
    background_template: str = BACKGROUND_TEMPLATE
    gradcam_threshold: float = 0.5
    gradcam_batch_size: int = 32
    gradcam_rule: GradcamRule = "image"

    def __post_init__(self) -> None:
        object.__setattr__(self, "background_classes", tuple(self.background_classes))  # lists from JSON
        if self.masks not in ("data", "gradcam"):
            raise ConfigError(f"dapt masks must be 'data' or 'gradcam', got {self.masks!r}")
        if self.loss_schedule not in ("paper", "reference"):
            raise ConfigError(f"dapt loss_schedule must be 'paper' or 'reference', got {self.loss_schedule!r}")
        if not self.background_classes:
            raise ConfigError("dapt needs at least one background class")
        if "{}" not in self.background_template:
            raise ConfigError(f"dapt background_template needs a '{{}}': {self.background_template!r}")
        if self.gradcam_rule not in ("image", "reference"):
            raise ConfigError(f"dapt gradcam_rule must be 'image' or 'reference', got {self.gradcam_rule!r}")
        if self.gradcam_batch_size < 1:
            raise ConfigError(f"dapt gradcam_batch_size must be >= 1, got {self.gradcam_batch_size}")
        if not 0.0 <= self.gradcam_threshold <= 1.0:
            raise ConfigError(f"dapt gradcam_threshold must be in [0, 1], got {self.gradcam_threshold}")

    @classmethod
    def of(cls, config: Any, prefix: str = "") -> DAPTSettings:
        """The settings held by ``config`` under the field names ``prefix + <field>``."""
        return cls(**{f.name: getattr(config, prefix + f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class DAPTConfig(DAPTSettings, MaPLeConfig):
    """DAPT options (MaPLe's ``n_ctx=2``, ``ctx_init="a photo of a"``, ``prompt_depth=9`` plus these).

    The fields are MaPLe's, then :class:`DAPTSettings`'s (the base classes' order gives that field order;
    their meanings are documented there).
    """

    def __post_init__(self) -> None:
        MaPLeConfig.__post_init__(self)
        DAPTSettings.__post_init__(self)  # the tuple conversion and the checks


@dataclass(frozen=True)
class DAPTGConfig(DAPTConfig):
    """DAPT-G: :class:`DAPTConfig` with ``masks="gradcam"``."""

    masks: MaskKind = "gradcam"


def _plugin_config(name: str, masks: MaskKind, doc: str) -> type:
    """A plug-in's options: :class:`DAPTSettings`' fields prefixed ``dapt_`` (same order, types and defaults,
    ``dapt_masks`` defaulting to ``masks``), checked as :class:`DAPTSettings` checks them."""

    def __post_init__(self: Any) -> None:
        object.__setattr__(self, "dapt_background_classes", tuple(self.dapt_background_classes))  # lists from JSON
        self.settings()  # the checks

    def settings(self: Any) -> DAPTSettings:
        """The options as :class:`DAPTSettings` (unprefixed)."""
        return DAPTSettings.of(self, "dapt_")

    fields = [(f"dapt_{f.name}", f.type, dataclasses.field(default=masks if f.name == "masks" else f.default))
              for f in dataclasses.fields(DAPTSettings)]
    cls = dataclasses.make_dataclass(name, fields, frozen=True,
                                     namespace={"__post_init__": __post_init__, "settings": settings})
    cls.__module__, cls.__qualname__, cls.__doc__ = __name__, name, doc
    return cls


#: DAPTSettings' ``Attributes:`` section with every name prefixed ``dapt_`` (the plug-in configs' docs)
_PREFIXED_ATTRIBUTES = re.sub(r"^( {4})(\w+):", r"\1dapt_\2:",
                              inspect.cleandoc(DAPTSettings.__doc__ or "").split("\n\n", 1)[1], flags=re.M)
#: Options of the ``+dapt`` plug-in: :class:`DAPTSettings` prefixed ``dapt_``.
DAPTPluginConfig = _plugin_config("DAPTPluginConfig", "data", "Options of the ``+dapt`` plug-in: the fields of "
                                  ":class:`DAPTSettings` prefixed ``dapt_``.\n\n" + _PREFIXED_ATTRIBUTES)
#: Options of the ``+dapt-g`` plug-in: as ``+dapt``'s with ``dapt_masks="gradcam"``.
DAPTGPluginConfig = _plugin_config("DAPTGPluginConfig", "gradcam", "Options of the ``+dapt-g`` plug-in: "
                                   "``+dapt``'s with ``dapt_masks=\"gradcam\"``.\n\n" + _PREFIXED_ATTRIBUTES)


# ---------------------------------------------------------------------- loss terms
def pull_push_loss(z_img: torch.Tensor, z_fg: torch.Tensor, z_bg: torch.Tensor, margin: float = 1.5) -> torch.Tensor:
    """``L_v``: mean of ``max(‖z_I − sg(z_f)‖₂ − ‖z_I − sg(z_b)‖₂ + margin, 0)`` (inputs normalised)."""
    return F.triplet_margin_loss(z_img, z_fg.detach(), z_bg.detach(), margin=margin, p=2)


def fg_alignment_loss(
    z_fg: torch.Tensor, z_text: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor | float
) -> torch.Tensor:
    """``L_f = CE(s · sg(z_f) z_Tᵀ, y)``; ``z_text`` is ``(n_cls, D)``, or ``(B, n_cls, D)`` per image (CoCoOp)."""
    if z_text.dim() == 3:
        return F.cross_entropy(scale * torch.einsum("bd,bcd->bc", z_fg.detach(), z_text), labels)
    return F.cross_entropy(scale * z_fg.detach() @ z_text.t(), labels)


def bg_alignment_loss(z_bg: torch.Tensor, z_text_bg: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """``L_b = CE(s · z_b z_Tbᵀ, argmax z_b z_Tbᵀ)`` (self pseudo-labels, no gradient through the argmax)."""
    logits = scale * z_bg @ z_text_bg.t()
    return F.cross_entropy(logits, logits.detach().argmax(-1))


def loss_weights(config: Any, epoch: int) -> tuple[float, float, float]:
    """``(w_v, w_f, w_b)`` of 0-based ``epoch`` under the schedule of ``config`` (a :class:`DAPTConfig`
    or :class:`DAPTSettings`)."""
    if config.loss_schedule == "reference":
        if epoch <= config.switch_epoch:
            return config.weight_visual, 0.0, 0.0
        return 0.0, config.weight_fg, config.weight_bg
    return config.weight_visual, config.weight_fg, config.weight_bg


def gradcam_from_block(
    block_input: torch.Tensor, grad: torch.Tensor, patch_start: int, grid: tuple[int, int],
    size: tuple[int, int], threshold: float = 0.5, rule: GradcamRule = "image",
) -> torch.Tensor:
    """Grad-CAM masks ``(B, H, W)`` from the last block's input ``(B, L, C)`` and its gradient.

    Channel weights = gradient averaged over the patch tokens; CAM = ReLU(Σ_c feature · weight)
    on the patch grid, bilinear-upsampled to ``size``. ``rule="image"``: divided by each image's
    maximum, values below ``threshold`` become 0, the rest keep their value (a soft mask).
    ``rule="reference"`` (DAPT's training path): upsampled with ``align_corners=True``, divided by
    the maximum over the batch + 1e-6, then 1 where ``>= threshold`` and 0 elsewhere.
    """
    rows, cols = grid
    sl = slice(patch_start, patch_start + rows * cols)
    feat, g = block_input[:, sl].float(), grad[:, sl].float()
    weights = g.mean(dim=1, keepdim=True)
    cam = F.relu((feat * weights).sum(-1)).reshape(-1, 1, rows, cols)
    if rule == "reference":
        cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=True)[:, 0]
        cam = cam / (cam.max() + 1e-6)
        return (cam >= threshold).to(cam.dtype)
    cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0]
    cam = cam / cam.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return torch.where(cam >= threshold, cam, torch.zeros_like(cam))


#: The base methods DAPT applies to (subclasses included: CoCoOp, KgCoOp, PromptSRC ...).
SUPPORTED: tuple[type[PromptMethod], ...] = (CoOp, IVLP, MaPLe)


class _Step:
    """What one DAPT training step shares between the method's feature seams and the DAPT terms."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, weights: tuple[float, float, float]) -> None:
        self.images, self.masks, self.weights = images, masks, weights
        self.z_bg: torch.Tensor | None = None  # normalised f(x ⊙ (1 − m)) of the joint pass (with L_b)
        self.text: torch.Tensor | None = None  # raw class text features of the joint text pass
        self.text_bg: torch.Tensor | None = None  # raw background text features
        self.z_img: torch.Tensor | None = None  # normalised f(x) and class text of the method's logits
        self.z_text: torch.Tensor | None = None


def _plain_logits(cls: type) -> bool:
    """The class after :class:`DAPTMixin` in ``cls``'s MRO keeps :class:`PromptMethod`'s cosine logits."""
    for klass in cls.__mro__:
        if klass is DAPTMixin:
            continue
        if "logits_from_features" in klass.__dict__:
            return klass is PromptMethod
    return False


class DAPTMixin:
    """DAPT on top of a method: put before the method's class (``class DAPT(DAPTMixin, MaPLe)``).

    It overrides the method's training seams only: ``train_outputs`` (the DAPT terms added to the
    method's own loss), ``image_features_of`` (``x`` and ``x ⊙ (1 − m)`` in one pass when ``L_b`` is on),
    ``raw_text_features`` during a step (class and background prompts in one pass of a deep-prompted
    text tower), the before-epoch hook (loss schedule, DAPT-G's Grad-CAM masks) and ``epoch_masks``.
    Evaluation, parameters and saved prompts are the method's.
    """

    dapt: DAPTSettings
    epoch: int

    def _init_dapt(self, settings: DAPTSettings) -> None:
        me: Any = self
        self.dapt = settings
        me.plan = dataclasses.replace(me.plan, steps="images+masks", masks="data" if settings.masks == "data"
                                      else "model", before_epoch=True)
        self.epoch = 0
        self._epoch_masks: ArrayMasks | None = None
        self._step: _Step | None = None
        backbone = me.backbone
        texts = [settings.background_template.format(c) for c in settings.background_classes]
        tok = backbone.tokenize(texts)
        with torch.no_grad():
            emb = backbone.embed(tok).detach()
        me.register_buffer("bg_embeds", emb.clone(), persistent=False)
        me.register_buffer("bg_eot", backbone.eot_index(tok).to(emb.device), persistent=False)

    # ------------------------------------------------------------------ features
    def _deep_text(self) -> bool:
        """The method has deep text prompts (MaPLe, IVLP): the background prompts go through them."""
        return isinstance(self, DeepTextPromptMethod)

    def visual_prompts_or_none(self) -> Any:
        """The method's visual prompts (``None`` for an unprompted image tower)."""
        return self.visual_prompts() if isinstance(self, DeepTextPromptMethod) else None

    def class_and_background_text(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw text features of the class prompts ``(n_cls, D)`` and the background prompts
        ``(n_bg, D)``. With deep text prompts: one pass of the prompted text tower (the deep prompts
        overwrite positions ``1..n_ctx`` of the background sequences too, as in the reference);
        without: the method's class features and frozen background features."""
        me: Any = self
        if not self._deep_text():
            return me.raw_text_features(), self.background_text()
        cls_embeds = me.prompts.assemble(me.ctx)
        n = cls_embeds.shape[0]
        embeds = torch.cat([cls_embeds, me.bg_embeds.to(cls_embeds.dtype)])
        eot = torch.cat([me.prompts.eot_idx, me.bg_eot])
        text = me.backbone.encode_text(embeds, eot, deep_prompts=me.deep_text_prompts())
        return text[:n], text[n:]

    def background_text(self) -> torch.Tensor:
        """Raw background text features ``(n_bg, D)`` of a method without deep text prompts: the frozen text
        tower on the fixed sequences (no trainable path, computed without gradients)."""
        me: Any = self
        with torch.no_grad():
            return me.backbone.encode_text(me.bg_embeds, me.bg_eot)

    def raw_text_features(self) -> torch.Tensor:
        step = self._step
        if step is not None and step.text is not None:  # inside a step: the joint class + background pass
            return step.text
        return super().raw_text_features()  # type: ignore[misc]

    def image_features_of(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Inside a step with ``L_b`` on: ``f(x)`` and ``f(x ⊙ (1 − m))`` in one pass of the method's image
        tower (with gradients where it is prompted); ``f(x)`` is returned, ``f(x ⊙ (1 − m))`` kept."""
        step = self._step
        if step is None or step.weights[2] <= 0 or "images" not in batch:
            return super().image_features_of(batch)  # type: ignore[misc]
        images, masks = step.images, step.masks
        feats = super().image_features_of({**batch, "images": torch.cat([images, images * (1 - masks)])})  # type: ignore[misc]
        b = images.shape[0]
        step.z_bg = F.normalize(feats[b:].float(), dim=-1)
        return feats[:b]

    def logits_from_features(
        self, image_features: torch.Tensor, text_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The method's logits. Inside a step, for a method with the plain cosine logits, the normalised image
        and text features are kept, so the DAPT terms use the same tensors as ``L_cls`` (one normalisation
        node each, as the released code computes them)."""
        step = self._step
        if step is None or text_features is None or not _plain_logits(type(self)):
            return super().logits_from_features(image_features, text_features)  # type: ignore[misc]
        me: Any = self
        img = F.normalize(image_features.float(), dim=-1)
        if step.z_img is None:  # the first logits of the step are the method's L_cls logits
            step.z_img, step.z_text = img, text_features
        return me.backbone.logit_scale * img @ text_features.float().t()

    def _frozen_step_features(self, images: torch.Tensor) -> torch.Tensor:
        """Raw image features without gradients (the stop-gradient passes)."""
        me: Any = self
        with torch.no_grad():
            return me.encode_images(images)

    def loss_weights(self) -> tuple[float, float, float]:
        return loss_weights(self.dapt, self.epoch)

    def train_outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        me: Any = self
        if "images" not in batch:
            raise ConfigError(f"{me.name} with DAPT trains on images and masks and cannot train on cached image "
                              "features")
        images, y = batch["images"], batch["labels"]
        masks = batch.get("masks")
        if masks is None:
            if self.dapt.masks != "gradcam":
                raise ConfigError(
                    f"{me.name} (DAPT-S) needs foreground masks in batch['masks'] (B, 1, H, W); vp.fit loads them "
                    "from <dataset>/mask/ — or use Grad-CAM masks (dapt-g)"
                )
            masks = self.gradcam_masks(images, y).unsqueeze(1)
        masks = masks.to(images.dtype)
        if masks.dim() == 3:
            masks = masks.unsqueeze(1)
        w_v, w_f, w_b = weights = self.loss_weights()
        step = _Step(images, masks, weights)
        if self._deep_text():
            step.text, step.text_bg = self.class_and_background_text()
        self._step = step
        try:
            out = super().train_outputs(batch)  # type: ignore[misc]
        finally:
            self._step = None
        scale = me.backbone.logit_scale
        b = images.shape[0]
        z_t = step.z_text if step.z_text is not None else F.normalize(out["text"].float(), dim=-1)
        z_i = step.z_img if step.z_img is not None else F.normalize(out["image"].float(), dim=-1)
        z_b = step.z_bg
        if w_b > 0 and z_b is None:  # the method did not read its images through image_features_of
            z_b = F.normalize(me.encode_images(images * (1 - masks)).float(), dim=-1)
        reg = torch.zeros((), device=out["ce"].device)
        if w_v > 0 or w_f > 0:
            with torch.no_grad():
                if w_v > 0 and z_b is None:
                    fb = self._frozen_step_features(torch.cat([images * masks, images * (1 - masks)]))
                    z_f, z_b_sg = F.normalize(fb[:b].float(), dim=-1), F.normalize(fb[b:].float(), dim=-1)
                else:
                    z_f = F.normalize(self._frozen_step_features(images * masks).float(), dim=-1)
                    z_b_sg = z_b
        extra: dict[str, torch.Tensor] = {}
        if w_v > 0:
            extra["loss_visual"] = pull_push_loss(z_i, z_f, z_b_sg, self.dapt.margin)
            reg = reg + w_v * extra["loss_visual"]
        if w_f > 0:
            extra["loss_fg"] = fg_alignment_loss(z_f, z_t, y, scale)
            reg = reg + w_f * extra["loss_fg"]
        if w_b > 0:
            text_bg = step.text_bg if step.text_bg is not None else self.background_text()
            extra["loss_bg"] = bg_alignment_loss(z_b, F.normalize(text_bg.float(), dim=-1), scale)
            reg = reg + w_b * extra["loss_bg"]
        return {**out, **extra, "loss": out["loss"] + reg}

    # ------------------------------------------------------------------ Grad-CAM (DAPT-G)
    def gradcam_masks(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Grad-CAM masks ``(B, H, W)`` of the method's logits for the true classes (no parameter gradients)."""
        me: Any = self
        with torch.no_grad():
            z_t = me.eval_text_features()  # None for image-conditioned text (CoCoOp): made from the feature
            prompts = self.visual_prompts_or_none()
        with torch.enable_grad():
            x = images.detach().requires_grad_(True)  # puts the block input in a graph; no parameter grads
            out = me.backbone.encode_image(x, prompts, return_block_input=True)
            h = out.block_input
            logits = me.logits_from_features(out.pooled, z_t)
            target = (logits * F.one_hot(labels, logits.shape[1]).to(logits.dtype)).mean()
            (grad,) = torch.autograd.grad(target, h)
        return gradcam_from_block(h.detach(), grad, out.patch_start, out.grid, tuple(images.shape[-2:]),
                                  self.dapt.gradcam_threshold, self.dapt.gradcam_rule)

    def prepare_epoch(self, epoch: int, samples: list, device: torch.device) -> None:
        """Engine hook at the start of every epoch: the method's own hook, then remember the epoch (loss
        schedule); DAPT-G recomputes its Grad-CAM masks over the training set with the current prompts.

        Grad-CAM sees each image resized to the input size without cropping, so the mask
        covers the whole image and the paired transform can crop it with the image.
        """
        me: Any = self
        super().prepare_epoch(epoch, samples, device)  # type: ignore[misc]
        self.epoch = epoch
        if self.dapt.masks != "gradcam":
            return
        size = me.backbone.image_size
        tf = T.Compose([ToRGB(), T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC),
                        T.ToTensor(), T.Normalize(*image_norm(me.backbone))])
        was_training = me.training
        me.eval()
        arrays: dict[int, np.ndarray] = {}
        step = self.dapt.gradcam_batch_size
        for start in range(0, len(samples), step):
            chunk = samples[start:start + step]
            x = torch.stack([tf(open_image(s, "train")) for s in chunk]).to(device)
            y = torch.tensor([s.label for s in chunk], device=device)
            cams = self.gradcam_masks(x, y)
            for j, cam in enumerate(cams):
                arrays[start + j] = (cam.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        self._epoch_masks = ArrayMasks(arrays)
        me.train(was_training)

    def epoch_masks(self) -> ArrayMasks:
        """The Grad-CAM masks of the current epoch (set by :meth:`prepare_epoch`)."""
        if self._epoch_masks is None:
            raise ConfigError("dapt-g: no Grad-CAM masks yet; prepare_epoch computes them at the start of an epoch")
        return self._epoch_masks


@register_method
class DAPT(DAPTMixin, MaPLe):
    """DAPT-S: MaPLe prompts trained with foreground/background decoupling from disk masks
    (``maple+dapt`` under its own name, options unprefixed).

    Training batches carry ``masks`` ``(B, 1, H, W)`` in [0, 1] (the engine loads them with the
    image's crop and flip). Test-time logits are MaPLe's.

    Example:
        >>> model = vp.build_method("dapt", bb, task.classnames)          # masks from <data>/mask
        >>> vp.fit(model, task, epochs=5, lr=0.0035, batch_size=4)
        >>> model = vp.build_method("dapt", bb, names, loss_schedule="reference")  # released code
    """

    name = "dapt"
    Config = DAPTConfig
    #: images + masks; the before-epoch hook sets the loss schedule's epoch (and makes DAPT-G's masks)
    plan = TrainingPlan(steps="images+masks", image_features=False, masks="data", before_epoch=True)

    def __init__(self, backbone: Backbone, classnames: list[str], config: DAPTConfig) -> None:
        MaPLe.__init__(self, backbone, classnames, config)
        self._init_dapt(DAPTSettings.of(config))


@register_method
class DAPTG(DAPT):
    """DAPT-G: DAPT with Grad-CAM masks of the prompted model, recomputed every epoch (``maple+dapt-g``).

    Example:
        >>> model = vp.build_method("dapt-g", bb, task.classnames)
        >>> vp.fit(model, task, epochs=5, lr=0.0035, batch_size=4)
    """

    name = "dapt-g"
    Config = DAPTGConfig


# ---------------------------------------------------------------------- the plug-in
def _module_class(name: str, make: Any) -> Any:
    """A class made once per base class, kept in this module under ``name`` (so it pickles)."""
    module = sys.modules[__name__]
    cls = getattr(module, name, None)
    if cls is None:
        cls = make()
        cls.__module__, cls.__qualname__ = __name__, name
        setattr(module, name, cls)
    return cls


def dapt_class(base: type) -> type:
    """``base`` with :class:`DAPTMixin` in front (one class per base, e.g. ``MaPLe_DAPT``)."""
    if issubclass(base, DAPTMixin):
        return base
    return _module_class(f"{base.__name__}_DAPT", lambda: type(f"{base.__name__}_DAPT", (DAPTMixin, base), {}))


def dapt_config_class(base: type) -> type:
    """The method's Config dataclass extended by the ``dapt_*`` fields (what ``prompt.json`` records)."""
    def make() -> type:
        fields = [(f.name, f.type, dataclasses.field(default=f.default)) for f in dataclasses.fields(DAPTPluginConfig)]
        return dataclasses.make_dataclass(f"{base.__name__}_DAPT", fields, bases=(base,), frozen=True)
    return _module_class(f"{base.__name__}_DAPT", make)


def _apply_dapt(model: PromptMethod, config: DAPTPluginConfig, plugin: str) -> PromptMethod:
    if isinstance(model, DePT):  # "+dept+dapt": DAPT trains the method inside DePT, as "+dapt+dept"
        _apply_dapt(model.inner, config, plugin)
        model.plan = model.inner.plan
        model.config = {**config_to_dict(model.inner.config), **config_to_dict(model.dept)}
        return model
    if isinstance(model, DAPTMixin):
        raise ConfigError(f"{getattr(model, 'method_id', model.name)!r} already trains with DAPT; "
                          f"+{plugin} can be applied once")
    if not isinstance(model, SUPPORTED):
        raise ConfigError(
            f"+{plugin} applies to coop, cocoop, kgcoop, ivlp (and its subclasses) and maple; {model.name!r} is not "
            "one of them (DAPT needs the method's class text features and its image tower)"
        )
    settings = config.settings()
    bb = model.backbone
    if settings.masks == "gradcam" and not (bb.supports_visual_prompts and bb.vision_width):
        raise ConfigError(f"+{plugin} computes Grad-CAM masks at the last ViT block; backbone {bb.name!r} has no ViT "
                          "image tower (use +dapt with mask files)")
    if not dataclasses.is_dataclass(model.config):
        raise ConfigError(f"+{plugin} needs {model.name!r} to have a Config dataclass")
    merged = dapt_config_class(type(model.config))(**config_to_dict(model.config), **config_to_dict(config))
    model.__class__ = dapt_class(type(model))
    model.config = merged
    model._init_dapt(settings)  # type: ignore[attr-defined]
    return model


def wrap_dapt(inner: PromptMethod, **options: Any) -> PromptMethod:
    """Plug-in entry: ``build_method("<method>+dapt", ...)`` (DAPT-S, masks from disk)."""
    return _apply_dapt(inner, make_config(DAPTPluginConfig, options, "dapt"), "dapt")


def wrap_dapt_g(inner: PromptMethod, **options: Any) -> PromptMethod:
    """Plug-in entry: ``build_method("<method>+dapt-g", ...)`` (DAPT-G, Grad-CAM masks)."""
    return _apply_dapt(inner, make_config(DAPTGPluginConfig, options, "dapt-g"), "dapt-g")


def applies_to(method_cls: type) -> bool:
    """The plug-ins take CoOp, CoCoOp, KgCoOp, IVLP (and subclasses) and MaPLe; not a method that is DAPT already."""
    return issubclass(method_cls, SUPPORTED) and not issubclass(method_cls, DAPTMixin)


register_plugin("dapt", wrap_dapt, DAPTPluginConfig, applies_to,
                summary="DAPT-S: foreground/background decoupling with masks from the dataset (mask files)")
register_plugin("dapt-g", wrap_dapt_g, DAPTGPluginConfig, applies_to,
                summary="DAPT-G: DAPT with Grad-CAM masks of the prompted model, recomputed every epoch (a ViT)")
