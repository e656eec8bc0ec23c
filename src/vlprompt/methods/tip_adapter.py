"""Tip-Adapter and Tip-Adapter-F: a key-value cache of few-shot image features (Zhang et al., ECCV 2022).

Computed (gaopengcuhk/Tip-Adapter ``utils.py`` / ``main.py``):

* cache keys ``K``: the raw image features of every few-shot training image, averaged over
  ``augment_views`` augmented views (the reference's ``augment_epoch`` passes of its training
  transform), *then* L2-normalised; ``(N, D)``;
* cache values ``L``: one-hot labels of those images ``(N, n_cls)``;
* for a test feature ``f`` (L2-normalised): ``A = f · Kᵀ``, cache logits ``exp(-(β - β·A)) · L``;
* logits ``100 · f · Wᵀ + α · cache logits``, with ``W`` CLIP's classifier: per class the normalised
  text features of the templates, averaged and renormalised (the dataset's one template; ImageNet:
  CLIP's 7 "select" templates), and 100 the reference's hard-coded scale (``logit_scale``);
* α and β searched on the validation features over the reference's grid
  (``i · (scale - 0.1) / steps + 0.1`` for ``i < steps``; β outer, α inner; the first strictly best
  accuracy wins; :func:`search_alpha_beta`).

``tip-adapter`` is training-free: the cache and the search are one closed-form fit on cached features
(``plan.fit_features="train"`` with ``fit_views`` augmented views). ``tip-adapter-f`` builds the same
cache, then trains the keys as the weight of a linear layer (cross-entropy of the logits above with
the initial α/β; AdamW, eps 1e-4) and searches α/β again on the validation features after training.

Class sets: the values are one-hot over the classes the cache was built on (``cache_classes``). After
:meth:`~TipAdapter.set_classnames` a class keeps its cache column when it is one of those (matched by
name), and a class that is not gets none: on new classes only, the model is zero-shot CLIP.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.base import Backbone
from ..data.templates import IMAGENET_SELECT_TEMPLATES
from ..errors import ConfigError
from .base import PromptMethod, TrainingPlan, register_method
from .prompting import template_features


@dataclass(frozen=True)
class TipAdapterConfig:
    """Tip-Adapter options (defaults: the reference's ``configs/imagenet.yaml``; the per-dataset
    values are the ``paper`` preset, ``vlprompt.presets``).

    Attributes:
        init_alpha: residual ratio α of the cache logits before the search (and during Tip-Adapter-F's
            training, which uses the initial α/β as the reference does); ImageNet 1.17.
        init_beta: sharpness β of the affinities before the search (and during training); 1.
        search: search α and β on the validation features (the reference's ``search_hp: True``); with
            no validation images the initial values stay.
        search_scale: upper ends ``(β, α)`` of the search grid (ImageNet ``[7, 3]``).
        search_step: grid sizes ``(β, α)``: value ``i`` is ``i · (scale - 0.1) / step + 0.1`` for
            ``i < step`` (``[200, 20]``).
        augment_views: augmented views of each training image averaged into its cache key (the
            reference's ``augment_epoch``: 10).
        logit_scale: scale of the CLIP logits ``scale · f · Wᵀ`` (the reference hard-codes 100).
        template: the dataset's hand-crafted template (``{}`` = class name); the protocols pass it.
        dataset: canonical dataset name; ``"imagenet"`` uses CLIP's 7 select templates instead of
            ``template``, as the reference does. The protocols pass it.
        templates: an explicit template list whose normalised text features are averaged
            (overrides ``template`` and ``dataset``).
        cache_size: number of cached training images; set by the fit (0 before it) and recorded in
            ``prompt.json`` so that :func:`vlprompt.load_prompt` rebuilds the cache's shape. Leave unset.
        cache_classes: the class names of the cache values' columns; set by the fit. Leave unset.
    """

    init_alpha: float = 1.17
    init_beta: float = 1.0
    search: bool = True
    search_scale: tuple[float, float] = (7.0, 3.0)
    search_step: tuple[int, int] = (200, 20)
    augment_views: int = 10
    logit_scale: float = 100.0
    template: str = "a photo of a {}."
    dataset: str = ""
    templates: tuple[str, ...] = ()
    cache_size: int = 0
    cache_classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.augment_views < 1:
            raise ConfigError(f"tip-adapter augment_views must be >= 1, got {self.augment_views}")
        if any(s < 1 for s in self.search_step):
            raise ConfigError(f"tip-adapter search_step must be >= 1 per entry, got {list(self.search_step)}")
        if self.cache_size < 0:
            raise ConfigError(f"tip-adapter cache_size must be >= 0, got {self.cache_size}")
        if bool(self.cache_size) != bool(self.cache_classes):
            raise ConfigError("tip-adapter cache_size and cache_classes are set together by the fit; leave both unset")
        for t in (self.template, *self.templates):
            if "{}" not in t:
                raise ConfigError(f"tip-adapter template must contain '{{}}' for the class name, got {t!r}")


@dataclass(frozen=True)
class TipAdapterFConfig(TipAdapterConfig):
    """Tip-Adapter-F options: Tip-Adapter's, plus the optimiser's epsilon.

    Attributes:
        adam_eps: epsilon of AdamW for the cache keys (the reference's ``eps=1e-4``), set on the
            parameter group; lr, weight decay (PyTorch's AdamW default 0.01), epochs, batch size and
            schedule are training options (the ``paper`` preset).
    """

    adam_eps: float = 1e-4


def _f32(x: float) -> float:
    """``x`` rounded to float32 (the precision α and β are saved in)."""
    return float(torch.tensor(float(x), dtype=torch.float32))


def search_grid(scale: float, steps: int) -> list[float]:
    """The reference's grid of one hyper-parameter: ``[i · (scale - 0.1) / steps + 0.1 for i < steps]``
    (starts at 0.1 and stops one step short of ``scale``).

    Example:
        >>> search_grid(3, 20)[:3]
        [0.1, 0.245, 0.39]
    """
    return [i * (scale - 0.1) / steps + 0.1 for i in range(steps)]


def cache_logits(features: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, beta: float) -> torch.Tensor:
    """``exp(-(β - β · f·Kᵀ)) · L`` for normalised features ``(B, D)``, keys ``(N, D)``, values ``(N, C)``."""
    affinity = features @ keys.t()
    return (-1 * (beta - beta * affinity)).exp() @ values


def search_alpha_beta(
    features: torch.Tensor, labels: torch.Tensor, clip_logits: torch.Tensor, keys: torch.Tensor,
    values: torch.Tensor, scale: tuple[float, float], steps: tuple[int, int],
) -> tuple[float, float, float]:
    """The reference's ``search_hp``: every ``(β, α)`` of the grid (β outer, α inner), accuracy of
    ``clip_logits + α · cache logits``; the first setting with a strictly higher accuracy than all
    before it wins (none above 0 %: ``(0, 0)``, as the reference's initial values).

    Returns:
        ``(beta, alpha, accuracy in percent)``.
    """
    best = (0.0, 0.0, 0)
    n = max(len(labels), 1)
    for beta in search_grid(scale[0], steps[0]):
        cached = cache_logits(features, keys, values, beta)
        for alpha in search_grid(scale[1], steps[1]):
            correct = int(((clip_logits + cached * alpha).argmax(-1) == labels).sum())
            if correct > best[2]:
                best = (beta, alpha, correct)
    return best[0], best[1], 100.0 * best[2] / n


@register_method
class TipAdapter(PromptMethod):
    """Tip-Adapter (training-free): CLIP logits plus a cache model of the few-shot features.

    Example:
        >>> model = vp.build_method("tip-adapter", bb, task)        # the dataset's template
        >>> vp.fit(model, task)                                     # cache + α/β search on val
    """

    name = "tip-adapter"
    Config = TipAdapterConfig
    plan = TrainingPlan(steps="none", fit_features="train", fit_views=10)

    def __init__(self, backbone: Backbone, classnames: list[str], config: TipAdapterConfig) -> None:
        super().__init__(backbone, classnames, config)
        self.plan = dataclasses.replace(type(self).plan, fit_views=config.augment_views)
        n, dim = config.cache_size, backbone.embed_dim
        self.cache_keys = nn.Parameter(torch.zeros(n, dim, device=backbone.device), requires_grad=self.trains_keys)
        # labels index cache_classes; -1 = no image yet (a zero row of the values)
        self.register_buffer("cache_labels", torch.full((n,), -1, dtype=torch.long, device=backbone.device))
        #: α and β in use (float32 values, so that a saved and reloaded model computes the same logits)
        self.alpha, self.beta = _f32(config.init_alpha), _f32(config.init_beta)
        self._val: tuple[torch.Tensor, torch.Tensor] | None = None
        self.set_classnames(classnames)

    #: the keys are trained (Tip-Adapter-F) or only built (Tip-Adapter)
    trains_keys = False

    # ---------------------------------------------------------------- classes and text side
    def templates(self) -> list[str]:
        """The templates of CLIP's classifier (the dataset's one; ImageNet: the 7 select ones)."""
        if self.config.templates:
            return list(self.config.templates)
        if self.config.dataset == "imagenet":
            return list(IMAGENET_SELECT_TEMPLATES)
        return [self.config.template]

    def set_classnames(self, classnames: list[str]) -> None:
        super().set_classnames(classnames)
        self.register_buffer("class_features", template_features(self.backbone, classnames, self.templates()),
                             persistent=False)
        self._build_values()

    def _build_values(self) -> None:
        """The values ``(N, n_cls)``: one-hot cache labels mapped by name onto the current classes."""
        cached = list(self.config.cache_classes)
        n_cls = len(self.classnames)
        if cached == self.classnames:
            column = torch.arange(n_cls)
        else:
            index = {c: i for i, c in enumerate(self.classnames)}
            column = torch.tensor([index.get(c, -1) for c in cached], dtype=torch.long)
        labels = self.cache_labels.cpu()
        cols = column[labels.clamp(min=0)] if len(cached) else torch.full_like(labels, -1)
        cols = torch.where(labels >= 0, cols, torch.full_like(cols, -1))
        values = torch.zeros(len(labels), n_cls)
        rows = torch.nonzero(cols >= 0).flatten()
        values[rows, cols[rows]] = 1.0
        self.register_buffer("cache_values", values.to(self.cache_keys.device), persistent=False)

    def raw_text_features(self) -> torch.Tensor:
        return self.class_features

    # ---------------------------------------------------------------- logits
    def clip_logits(self, features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """``logit_scale · f · Wᵀ`` for normalised image features ``f``."""
        return self.config.logit_scale * features @ text_features.float().t()

    def logits_from_features(
        self, image_features: torch.Tensor, text_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        if text_features is None:
            text_features = self.text_features()
        # fp32 whatever the run's autocast: exp(-β(1 - A)) magnifies the affinity's rounding by β (up to 50
        # in the reference's grids), and the α/β search ran in fp32 on the same formula
        with torch.autocast(image_features.device.type, enabled=False):
            f = F.normalize(image_features.float(), dim=-1)
            logits = self.clip_logits(f, text_features.float())
            if self.cache_keys.shape[0] == 0:
                return logits
            return logits + cache_logits(f, self.cache_keys.float(), self.cache_values, self.beta) * self.alpha

    # ---------------------------------------------------------------- the cache
    def fit_features(
        self, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor] | None
    ) -> dict[str, Any]:
        """Build the cache from the augmented views ``(V, n, D)`` (or one view ``(n, D)``) and labels;
        Tip-Adapter then searches α/β on ``val`` (plain-view features), Tip-Adapter-F keeps them
        for after training."""
        views, labels = train
        views = views.float() if views.dim() == 3 else views.float()[None]
        keys = F.normalize(views.mean(0), dim=-1)
        device = self.cache_keys.device
        self.config = dataclasses.replace(self.config, cache_size=int(keys.shape[0]),
                                          cache_classes=tuple(self.classnames))
        self.cache_keys = nn.Parameter(keys.to(device), requires_grad=self.trains_keys)
        self.cache_labels = labels.to(device=device, dtype=torch.long).clone()
        self.alpha, self.beta = _f32(self.config.init_alpha), _f32(self.config.init_beta)
        self._build_values()
        self._val = (val[0].to(device), val[1].to(device)) if val is not None and len(val[1]) else None
        info: dict[str, Any] = {"cache_size": int(keys.shape[0]), "augment_views": int(views.shape[0])}
        if not self.trains_keys:
            info.update(self.search())
        return info

    @torch.no_grad()
    def search(self) -> dict[str, Any]:
        """Search α/β on the validation features kept by the fit (the reference's ``search_hp``) and
        install them; without a search or validation images the current values stay."""
        if not self.config.search or self._val is None:
            return {"alpha": self.alpha, "beta": self.beta, "searched": False}
        x, y = self._val
        f = F.normalize(x.float(), dim=-1)
        clip = self.clip_logits(f, self.text_features())
        beta, alpha, acc = search_alpha_beta(f, y, clip, self.cache_keys.float(), self.cache_values,
                                             self.config.search_scale, self.config.search_step)
        self.alpha, self.beta = _f32(alpha), _f32(beta)
        return {"alpha": self.alpha, "beta": self.beta, "searched": True, "search_val_acc": acc}

    # ---------------------------------------------------------------- saving
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.cache_keys] if self.trains_keys else []

    def prompt_state_dict(self) -> dict[str, torch.Tensor]:
        """The cache (keys, labels) and the α/β in use: everything :func:`vlprompt.load_prompt` needs."""
        return {"cache_keys": self.cache_keys.detach(), "cache_labels": self.cache_labels,
                "alpha": torch.tensor(self.alpha), "beta": torch.tensor(self.beta)}

    def load_prompt_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.prompt_state_dict())
        if set(state) != expected:
            raise ConfigError(f"{self.name}: prompt file does not match the method: expected tensors "
                              f"{sorted(expected)}, got {sorted(state)}")
        if tuple(state["cache_keys"].shape) != tuple(self.cache_keys.shape):
            raise ConfigError(f"{self.name}: cache keys of shape {tuple(state['cache_keys'].shape)}, the method "
                              f"expects {tuple(self.cache_keys.shape)}")
        with torch.no_grad():
            self.cache_keys.copy_(state["cache_keys"])
            self.cache_labels.copy_(state["cache_labels"].round().long())
        self.alpha, self.beta = _f32(float(state["alpha"])), _f32(float(state["beta"]))
        self._build_values()


@register_method
class TipAdapterF(TipAdapter):
    """Tip-Adapter-F: the Tip-Adapter cache with trained keys, then α/β searched again on val.

    Example:
        >>> model = vp.build_method("tip-adapter-f", bb, task)
        >>> vp.fit(model, task, preset="paper")  # or: optimizer="adamw", lr=0.001, weight_decay=0.01,
        ...                                     # epochs=20, batch_size=256, warmup_epochs=0
    """

    name = "tip-adapter-f"
    Config = TipAdapterFConfig
    plan = TrainingPlan(steps="image-features", fit_features="train", fit_views=10, after_training=True)
    trains_keys = True

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        """One group: the cache keys, with the reference's AdamW epsilon (ignored by SGD)."""
        return [{"params": self.trainable_parameters(), "lr": base_lr, "eps": self.config.adam_eps}]

    def finish_training(self, samples: list[Any], device: torch.device) -> dict[str, Any]:
        """After the last epoch: search α/β with the trained keys (the reference's second search)."""
        return self.search()
