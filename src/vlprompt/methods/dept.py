"""DePT: Decoupled Prompt Tuning (Zhang et al., CVPR 2024), a plug-in for any feature-exposing method.

DePT keeps the wrapped method's prompts and image-text-matching (ITM) head and adds a
Channel-Adjusted Transfer (CAT) head used for the base (training) classes only:

* FiLM transforms ``x → γ ⊙ x + β`` on the *raw* image and text features (γ = 1, β = 0 at init);
* a linear head ``Linear(D → n_base)`` trained on image features and, as extra samples, on the
  text feature of each image's ground-truth class;
* loss ``(1 − λ)·CE(s_itm, y) + λ·CE([head(FiLM_t(g(t_y))); head(FiLM_i(f(x)))], [y; y])`` plus the
  wrapped method's own regularisers (e.g. KgCoOp's), λ = 0.7;
* the head and FiLM train at ``lr × 6.5``;
* at test time on the base classes: ``(1 − λ)·s_itm + λ·z_img`` (logit fusion: the reference code),
  or ``λ·softmax(z_img) + (1 − λ)·softmax(s_itm)`` (probability fusion: the paper), or the CAT head
  alone; on a subset of the training classes (ImageNet-A/-R of an ImageNet prompt) with the
  head's rows for those classes; on any other class set the ITM head alone.

DePT knows nothing of the method it wraps beyond :meth:`PromptMethod.train_outputs`,
``eval_text_features`` / ``logits_from_features`` / ``encode_images`` and ``set_classnames``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import PromptMethod, config_to_dict, make_config, register_plugin

Fusion = Literal["logits", "probs", "cat"]


@dataclass(frozen=True)
class DePTConfig:
    """DePT options (prefixed ``dept_`` when passed to ``build_method``).

    Attributes:
        dept_weight: λ, the weight of the CAT loss and of the CAT head in the fusion (0.7).
        dept_lr_mult: learning-rate multiplier of the CAT head and FiLM layers (6.5).
        dept_fusion: base-class test rule: ``logits`` (reference code, default), ``probs``
            (the paper's probability fusion) or ``cat`` (the CAT head alone, fusion off).
    """

    dept_weight: float = 0.7
    dept_lr_mult: float = 6.5
    dept_fusion: Fusion = "logits"

    def __post_init__(self) -> None:
        if not 0.0 <= self.dept_weight <= 1.0:
            raise ConfigError(f"dept_weight must be in [0, 1], got {self.dept_weight}")
        if self.dept_fusion not in ("logits", "probs", "cat"):
            raise ConfigError(f"dept_fusion must be logits, probs or cat, got {self.dept_fusion!r}")


class FiLM(nn.Module):
    """Channel-wise affine transform ``γ ⊙ x + β`` (γ = 1, β = 0 at init)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.to(x.dtype) + self.beta.to(x.dtype)


def fuse_logits(itm: torch.Tensor, cat: torch.Tensor, weight: float, fusion: Fusion) -> torch.Tensor:
    """Base-class test-time fusion of ITM and CAT logits (see module docstring).

    ``probs`` returns probabilities (their argmax is the prediction), the others logits.
    """
    if fusion == "cat":
        return cat
    if fusion == "probs":
        return weight * cat.float().softmax(-1) + (1 - weight) * itm.float().softmax(-1)
    return (1 - weight) * itm + weight * cat


class DePT(PromptMethod):
    """DePT wrapped around a method: ``build_method("coop+dept", bb, names)``.

    Example:
        >>> model = vp.build_method("coop+dept", bb, task.classnames, dept_weight=0.7)
        >>> vp.fit(model, task, epochs=10, lr=0.0035, batch_size=4)   # head at 0.0035 × 6.5
    """

    name = "dept"
    Config = DePTConfig

    def __init__(self, inner: PromptMethod, config: DePTConfig) -> None:
        super().__init__(inner.backbone, inner.classnames, {**config_to_dict(inner.config), **config_to_dict(config)})
        if inner.plan.steps == "none" or inner.plan.fit_features is not None:
            raise ConfigError(f"DePT wraps prompt-learning methods; {inner.name!r} has no prompts to tune")
        if not inner.has_text_side:
            hint = inner.text_side_hint
            raise ConfigError(
                f"DePT needs image-text matching; {inner.name!r} is a vision classifier without text"
                + (f" ({hint})" if hint else "")
            )
        self.inner = inner
        self.dept = config
        self.plan = inner.plan  # same inputs and hooks (DAPT: masks pass through in the batch)
        dim = inner.backbone.embed_dim
        self.film_img = FiLM(dim)
        self.film_text = FiLM(dim)
        self.head = nn.Linear(dim, len(inner.classnames))
        self.base_classnames = list(inner.classnames)

    # ---------------------------------------------------------------- class sets
    @property
    def head_rows(self) -> list[int] | None:
        """Rows of the CAT head for the current classes: all of them are training classes
        (the training set itself, or a subset such as ImageNet-A/-R of ImageNet), else ``None``."""
        if self.classnames == self.base_classnames:  # also with repeated names (tasks of a group)
            return list(range(len(self.base_classnames)))
        index = {c: i for i, c in enumerate(self.base_classnames)}
        if not all(c in index for c in self.classnames):
            return None
        return [index[c] for c in self.classnames]

    @property
    def head_active(self) -> bool:
        """The CAT head applies to the classes it was trained on (or a subset of them)."""
        return self.head_rows is not None

    def set_classnames(self, classnames: list[str], **options: Any) -> None:
        self.inner.set_classnames(classnames, **options)  # e.g. tasks= of a multi-task method
        super().set_classnames(classnames)

    def prepare_epoch(self, epoch: int, samples: list, device: torch.device) -> None:
        """Forward the engine's per-epoch hook to the wrapped method (e.g. DAPT's epoch switch)."""
        self.inner.prepare_epoch(epoch, samples, device)

    def epoch_masks(self) -> Any:
        """The wrapped method's masks of the current epoch (DAPT-G)."""
        return self.inner.epoch_masks()

    def end_epoch(self, epoch: int) -> None:
        """Forward the engine's after-epoch hook to the wrapped method."""
        self.inner.end_epoch(epoch)

    def training_state(self) -> dict[str, Any]:
        return self.inner.training_state()

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.inner.load_training_state(state)

    def finish_training(self, samples: list, device: torch.device) -> dict[str, Any]:
        """Forward the engine's after-training hook to the wrapped method."""
        return self.inner.finish_training(samples, device)

    # ---------------------------------------------------------------- training
    def cat_logits(self, features: torch.Tensor, film: FiLM) -> torch.Tensor:
        return self.head(film(features))

    def train_outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.classnames != self.base_classnames:
            raise ConfigError("DePT trains on the class set it was built for; rebuild it for other classes")
        out = self.inner.train_outputs(batch)
        y = batch["labels"]
        text = out["text"]
        text_y = text[y] if text.dim() == 2 else text[torch.arange(len(y), device=y.device), y]
        z_txt = self.cat_logits(text_y, self.film_text)
        z_img = self.cat_logits(out["image"], self.film_img)
        mask = out.get("class_mask")  # a multi-task method restricts each sample's label space (SoftCPT)
        if mask is not None:
            z_txt, z_img = (z.float().masked_fill(~mask, float("-inf")) for z in (z_txt, z_img))
        cat_ce = F.cross_entropy(torch.cat([z_txt, z_img]).float(), torch.cat([y, y]))
        lam = self.dept.dept_weight
        extra = out["loss"] - out["ce"]  # the wrapped method's own regularisers
        loss = (1 - lam) * out["ce"] + lam * cat_ce + extra
        return {**out, "cat_ce": cat_ce, "z_img": z_img, "loss": loss}

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        new = [*self.film_img.parameters(), *self.film_text.parameters(), *self.head.parameters()]
        return [*self.inner.param_groups(base_lr), {"params": new, "lr": base_lr * self.dept.dept_lr_mult}]

    # ---------------------------------------------------------------- inference
    def raw_text_features(self) -> torch.Tensor:
        return self.inner.raw_text_features()

    def eval_text_features(self) -> torch.Tensor | None:
        return self.inner.eval_text_features()

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.inner.encode_images(images)

    def matching_features(
        self, image_features: torch.Tensor, text_features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The wrapped method's (ITM head's) matched features; the CAT head's FiLM features are not
        matched with text at test time (DePT's own channel statistics read the ITM features too)."""
        return self.inner.matching_features(image_features, text_features)

    def logits_from_features(
        self, image_features: torch.Tensor, text_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        itm = self.inner.logits_from_features(image_features, text_features)
        rows = self.head_rows
        if rows is None:
            return itm
        cat = self.cat_logits(image_features, self.film_img).float()
        if rows != list(range(len(self.base_classnames))):
            cat = cat[:, rows]
        return fuse_logits(itm.float(), cat, self.dept.dept_weight, self.dept.dept_fusion)


def wrap_dept(inner: PromptMethod, **options: Any) -> DePT:
    """Plug-in entry: ``build_method("<method>+dept", ...)``."""
    return DePT(inner, make_config(DePTConfig, options, "dept"))


register_plugin("dept", wrap_dept, DePTConfig,
                summary="DePT: a channel-adjusted (CAT) head trained next to the method, fused at test time on base "
                "classes")
