"""DAPT: Decouple before Align (Zhang et al., T-PAMI 2025), on top of MaPLe.

Same prompts as MaPLe (coupled deep text/vision prompts). Each training image ``x`` is split
with a foreground mask ``m`` (applied to the normalised image, so masked pixels become the
mean colour) and three prompted image features are computed, L2-normalised:
``z_I = f(x)``, ``z_f = f(x ⊙ m)``, ``z_b = f(x ⊙ (1 − m))``; the class prompts give ``z_T``
and the hand-crafted background classes (template ``"a clean origami {}."``, encoded by the
same prompted text tower) give ``z_Tb``. With ``s`` the logit scale (100 for CLIP):

* ``L_cls = CE(s · z_I z_Tᵀ, y)``;
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
  5-epoch base-to-new config only ``L_v`` is ever active); see docs/deviations.md (DA1–DA11).

Masks (``masks`` option; two registry names):

* ``dapt`` (DAPT-S, ``masks="data"``): segmentation masks read from disk (layouts in
  :mod:`vlprompt.data.masks`; the tiny suite ships exact masks), cropped and flipped with the
  image by the engine's paired transform and passed in ``batch["masks"]``;
* ``dapt-g`` (DAPT-G, ``masks="gradcam"``): Grad-CAM of the prompted model itself at the last
  ViT block (``ln_1`` output, gradients of ``mean(logits ⊙ onehot(y))`` averaged over the
  patches, ReLU, bilinear upsampling, divided by the per-image maximum, values below 0.5
  zeroed; ``gradcam_rule="reference"``: the released training rule, batch maximum and
  binarised), recomputed over the training set at the start of every epoch (before training and
  after each epoch, as the paper intends) and then paired-transformed like disk masks.

At test time DAPT is MaPLe: logits over the class prompts only. ViT backbones only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import transforms as T

from ..backbones.base import Backbone
from ..data.images import open_image
from ..data.masks import ArrayMasks
from ..data.transforms import CLIP_MEAN, CLIP_STD, ToRGB
from ..errors import ConfigError
from .base import TrainingPlan, register_method
from .maple import MaPLe, MaPLeConfig

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
class DAPTConfig(MaPLeConfig):
    """DAPT options (MaPLe's ``n_ctx=2``, ``ctx_init="a photo of a"``, ``prompt_depth=9`` plus these).

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
        super().__post_init__()
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


@dataclass(frozen=True)
class DAPTGConfig(DAPTConfig):
    """DAPT-G: :class:`DAPTConfig` with ``masks="gradcam"``."""

    masks: MaskKind = "gradcam"


# ---------------------------------------------------------------------- loss terms
def pull_push_loss(z_img: torch.Tensor, z_fg: torch.Tensor, z_bg: torch.Tensor, margin: float = 1.5) -> torch.Tensor:
    """``L_v``: mean of ``max(‖z_I − sg(z_f)‖₂ − ‖z_I − sg(z_b)‖₂ + margin, 0)`` (inputs normalised)."""
    return F.triplet_margin_loss(z_img, z_fg.detach(), z_bg.detach(), margin=margin, p=2)


def fg_alignment_loss(
    z_fg: torch.Tensor, z_text: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor | float
) -> torch.Tensor:
    """``L_f = CE(s · sg(z_f) z_Tᵀ, y)``."""
    return F.cross_entropy(scale * z_fg.detach() @ z_text.t(), labels)


def bg_alignment_loss(z_bg: torch.Tensor, z_text_bg: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """``L_b = CE(s · z_b z_Tbᵀ, argmax z_b z_Tbᵀ)`` (self pseudo-labels, no gradient through the argmax)."""
    logits = scale * z_bg @ z_text_bg.t()
    return F.cross_entropy(logits, logits.detach().argmax(-1))


def loss_weights(config: DAPTConfig, epoch: int) -> tuple[float, float, float]:
    """``(w_v, w_f, w_b)`` of 0-based ``epoch`` under the config's schedule."""
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


@register_method
class DAPT(MaPLe):
    """DAPT-S: MaPLe prompts trained with foreground/background decoupling from disk masks.

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
        super().__init__(backbone, classnames, config)
        self.plan = dataclasses.replace(type(self).plan, masks="data" if config.masks == "data" else "model")
        self.epoch = 0
        self._epoch_masks: ArrayMasks | None = None
        texts = [config.background_template.format(c) for c in config.background_classes]
        tok = backbone.tokenize(texts)
        with torch.no_grad():
            emb = backbone.embed(tok).detach()
        self.register_buffer("bg_embeds", emb.clone(), persistent=False)
        self.register_buffer("bg_eot", backbone.eot_index(tok).to(emb.device), persistent=False)

    # ------------------------------------------------------------------ features
    def class_and_background_text(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw text features of the class prompts ``(n_cls, D)`` and the background prompts
        ``(n_bg, D)``, in one pass of the prompted text tower (the deep prompts overwrite
        positions ``1..n_ctx`` of the background sequences too, as in the reference)."""
        cls_embeds = self.prompts.assemble(self.ctx)
        n = cls_embeds.shape[0]
        embeds = torch.cat([cls_embeds, self.bg_embeds.to(cls_embeds.dtype)])
        eot = torch.cat([self.prompts.eot_idx, self.bg_eot])
        text = self.backbone.encode_text(embeds, eot, deep_prompts=self.deep_text_prompts())
        return text[:n], text[n:]

    def loss_weights(self) -> tuple[float, float, float]:
        return loss_weights(self.config, self.epoch)

    def train_outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "images" not in batch:
            raise ConfigError("dapt prompts the image tower and cannot train on cached image features")
        images, y = batch["images"], batch["labels"]
        masks = batch.get("masks")
        if masks is None:
            if self.config.masks != "gradcam":
                raise ConfigError(
                    "dapt (DAPT-S) needs foreground masks in batch['masks'] (B, 1, H, W); vp.fit loads them from "
                    "<dataset>/mask/ — or use dapt-g (Grad-CAM masks)"
                )
            masks = self.gradcam_masks(images, y).unsqueeze(1)
        masks = masks.to(images.dtype)
        if masks.dim() == 3:
            masks = masks.unsqueeze(1)
        w_v, w_f, w_b = self.loss_weights()
        scale = self.backbone.logit_scale
        prompts = self.visual_prompts()
        text, text_bg = self.class_and_background_text()
        z_t = F.normalize(text.float(), dim=-1)
        b = images.shape[0]
        if w_b > 0:  # L_b trains through the background feature: one pass over [x; x ⊙ (1 − m)]
            feats = self.backbone.encode_image(torch.cat([images, images * (1 - masks)]), prompts)
            image, z_b = feats[:b], F.normalize(feats[b:].float(), dim=-1)
        else:
            image = self.backbone.encode_image(images, prompts)
            z_b = None
        z_i = F.normalize(image.float(), dim=-1)
        logits = scale * z_i @ z_t.t()
        ce = F.cross_entropy(logits, y)
        out = {"image": image, "text": text, "logits": logits, "ce": ce}
        reg = torch.zeros((), device=ce.device)
        if w_v > 0 or w_f > 0:
            with torch.no_grad():
                if w_v > 0 and z_b is None:
                    fb = self.backbone.encode_image(torch.cat([images * masks, images * (1 - masks)]), prompts)
                    z_f, z_b_sg = F.normalize(fb[:b].float(), dim=-1), F.normalize(fb[b:].float(), dim=-1)
                else:
                    z_f = F.normalize(self.backbone.encode_image(images * masks, prompts).float(), dim=-1)
                    z_b_sg = z_b
        if w_v > 0:
            out["loss_visual"] = pull_push_loss(z_i, z_f, z_b_sg, self.config.margin)
            reg = reg + w_v * out["loss_visual"]
        if w_f > 0:
            out["loss_fg"] = fg_alignment_loss(z_f, z_t, y, scale)
            reg = reg + w_f * out["loss_fg"]
        if w_b > 0:
            out["loss_bg"] = bg_alignment_loss(z_b, F.normalize(text_bg.float(), dim=-1), scale)
            reg = reg + w_b * out["loss_bg"]
        out["loss"] = ce + reg
        return out

    # ------------------------------------------------------------------ Grad-CAM (DAPT-G)
    def gradcam_masks(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Grad-CAM masks ``(B, H, W)`` of the prompted model for the true classes (no parameter gradients)."""
        with torch.no_grad():
            z_t = F.normalize(self.raw_text_features().float(), dim=-1)
            prompts = self.visual_prompts()
        with torch.enable_grad():
            x = images.detach().requires_grad_(True)  # puts the block input in a graph; no parameter grads
            out = self.backbone.encode_image(x, prompts, return_block_input=True)
            h = out.block_input
            logits = self.backbone.logit_scale * F.normalize(out.pooled.float(), dim=-1) @ z_t.t()
            target = (logits * F.one_hot(labels, logits.shape[1]).to(logits.dtype)).mean()
            (grad,) = torch.autograd.grad(target, h)
        return gradcam_from_block(h.detach(), grad, out.patch_start, out.grid, tuple(images.shape[-2:]),
                                  self.config.gradcam_threshold, self.config.gradcam_rule)

    def prepare_epoch(self, epoch: int, samples: list, device: torch.device) -> None:
        """Engine hook at the start of every epoch: remember the epoch (loss schedule); DAPT-G
        recomputes its Grad-CAM masks over the training set with the current prompts.

        Grad-CAM sees each image resized to the input size without cropping, so the mask
        covers the whole image and the paired transform can crop it with the image.
        """
        self.epoch = epoch
        if self.config.masks != "gradcam":
            return
        size = self.backbone.image_size
        tf = T.Compose([ToRGB(), T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC),
                        T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])
        was_training = self.training
        self.eval()
        arrays: dict[int, np.ndarray] = {}
        step = self.config.gradcam_batch_size
        for start in range(0, len(samples), step):
            chunk = samples[start:start + step]
            x = torch.stack([tf(open_image(s, "train")) for s in chunk]).to(device)
            y = torch.tensor([s.label for s in chunk], device=device)
            cams = self.gradcam_masks(x, y)
            for j, cam in enumerate(cams):
                arrays[start + j] = (cam.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        self._epoch_masks = ArrayMasks(arrays)
        self.train(was_training)

    def epoch_masks(self) -> ArrayMasks:
        """The Grad-CAM masks of the current epoch (set by :meth:`prepare_epoch`)."""
        if self._epoch_masks is None:
            raise ConfigError("dapt-g: no Grad-CAM masks yet; prepare_epoch computes them at the start of an epoch")
        return self._epoch_masks


@register_method
class DAPTG(DAPT):
    """DAPT-G: DAPT with Grad-CAM masks of the prompted model, recomputed every epoch.

    Example:
        >>> model = vp.build_method("dapt-g", bb, task.classnames)
        >>> vp.fit(model, task, epochs=5, lr=0.0035, batch_size=4)
    """

    name = "dapt-g"
    Config = DAPTGConfig
