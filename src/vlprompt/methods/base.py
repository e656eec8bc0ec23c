"""The method interface, the method registry, and config helpers.

A method is one file: a frozen ``Config`` dataclass whose defaults are the paper's, and one
:class:`PromptMethod` subclass that owns only its trainable parameters and calls the
backbone seams. Register it with :func:`register_method`; plug-ins such as DePT compose by
name (``"coop+dept"``) through :func:`build_method`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.base import Backbone
from ..errors import ConfigError


class PromptMethod(nn.Module):
    """Base class of all methods.

    Subclasses define ``name``, ``Config`` and implement :meth:`text_features` (for
    CLIP-style methods) or override :meth:`logits_from_features`.

    Class attributes:
        uses_image_features: ``True`` when the image tower is frozen and unprompted, so the
            engine may feed cached image features (``batch["features"]``) instead of images.
        needs_training: ``False`` for zero-shot methods (the engine skips the loop).
        feature_transform: ``"train"`` (augmented views) or ``"test"`` (plain view, e.g.
            the linear probe) for the cached training features.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = object
    uses_image_features: ClassVar[bool] = True
    needs_training: ClassVar[bool] = True
    feature_transform: ClassVar[str] = "train"

    def __init__(self, backbone: Backbone, classnames: list[str], config: Any) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.classnames = list(classnames)

    # ------------------------------------------------------------------ interface
    def set_classnames(self, classnames: list[str]) -> None:
        """Re-target the method to other class names; trained prompts are kept."""
        self.classnames = list(classnames)

    def raw_text_features(self) -> torch.Tensor:
        """Class text features ``(n_cls, embed_dim)`` before normalisation (with gradients in training)."""
        raise NotImplementedError

    def text_features(self) -> torch.Tensor:
        """L2-normalised class text features ``(n_cls, embed_dim)``."""
        return F.normalize(self.raw_text_features().float(), dim=-1)

    def eval_text_features(self) -> torch.Tensor | None:
        """Class text features computed once per evaluation (``None`` if the method has none)."""
        return self.text_features()

    def logits_from_features(
        self, image_features: torch.Tensor, text_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits ``(B, n_cls)`` from raw image features ``(B, embed_dim)``.

        ``text_features`` may be passed in (evaluation computes them once for all batches).
        """
        if text_features is None:
            text_features = self.text_features()
        img = F.normalize(image_features.float(), dim=-1)
        return self.backbone.logit_scale * img @ text_features.float().t()

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Raw image features of the (frozen, unprompted) image tower."""
        return self.backbone.encode_image(images)

    def image_features_of(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Image features of a batch: cached ``features`` if present, else from ``images``."""
        if "features" in batch:
            return batch["features"]
        with torch.no_grad():
            return self.encode_images(batch["images"])

    def forward(self, images: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, n_cls)`` for a batch of normalised images.

        ``text_features`` (from :meth:`eval_text_features`) lets evaluation encode the class
        prompts once instead of once per batch.
        """
        return self.logits_from_features(self.encode_images(images), text_features)

    def train_outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Everything a training step computes, for the loss and for plug-ins (DePT).

        Returns a dict with ``image`` (raw image features ``(B, D)``), ``text`` (raw class text
        features ``(n_cls, D)``, or ``(B, n_cls, D)`` for image-conditioned prompts), ``logits``
        (image-text matching logits ``(B, n_cls)``), ``ce`` (their cross-entropy) and ``loss``
        (the method's full loss: ``ce`` plus its own regularisers, if any). Multi-task methods
        (SoftCPT) add ``class_mask`` ``(B, n_cls)`` bool: the classes in each sample's label space.
        """
        image = self.image_features_of(batch)
        text = self.raw_text_features()
        logits = self.logits_from_features(image, F.normalize(text.float(), dim=-1))
        ce = F.cross_entropy(logits, batch["labels"])
        return {"image": image, "text": text, "logits": logits, "ce": ce, "loss": ce}

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training loss (key ``loss``) and batch accuracy (key ``acc``)."""
        out = self.train_outputs(batch)
        acc = (out["logits"].argmax(-1) == batch["labels"]).float().mean()
        return {"loss": out["loss"], "acc": acc}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimizer updates (never the backbone's)."""
        frozen = {id(p) for p in self.backbone.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in frozen]

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups; plug-ins override to scale learning rates."""
        return [{"params": self.trainable_parameters(), "lr": base_lr}]

    def prompt_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained state that :func:`vlprompt.save_prompt` writes (trainable params only)."""
        names = {id(p) for p in self.trainable_parameters()}
        return {n: p.detach() for n, p in self.named_parameters() if id(p) in names}

    def load_prompt_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load tensors written by :meth:`prompt_state_dict` (shapes must match)."""
        own = dict(self.named_parameters())
        missing = [k for k in self.prompt_state_dict() if k not in state]
        unexpected = [k for k in state if k not in own]
        if missing or unexpected:
            raise ConfigError(
                f"{self.name}: prompt file does not match the method: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        with torch.no_grad():
            for k, v in state.items():
                if own[k].shape != v.shape:
                    raise ConfigError(
                        f"{self.name}: prompt tensor {k} has shape {tuple(v.shape)}, "
                        f"the method expects {tuple(own[k].shape)}"
                    )
                own[k].copy_(v)

    def train(self, mode: bool = True) -> PromptMethod:
        super().train(mode)
        self.backbone.train(False)
        return self


# ---------------------------------------------------------------------- registry
_REGISTRY: dict[str, type[PromptMethod]] = {}
_PLUGINS: dict[str, Callable[..., PromptMethod]] = {}
_PLUGIN_CONFIGS: dict[str, type] = {}


def register_method(cls: type[PromptMethod]) -> type[PromptMethod]:
    """Class decorator: make a method available by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


def register_plugin(name: str, wrap: Callable[..., PromptMethod], config: type | None = None) -> None:
    """Register a plug-in: ``wrap(inner_method, **options) -> PromptMethod`` (e.g. ``dept``).

    The plug-in's options are named ``<name>_<field>`` so they never clash with a method's.
    ``config`` is its options dataclass (fields ``<name>_...``), so options can be checked
    without building a model (:func:`plugin_config`).
    """
    _PLUGINS[name] = wrap
    if config is not None:
        _PLUGIN_CONFIGS[name] = config


def list_methods() -> list[str]:
    """Names of registered methods (plug-ins listed as ``+name``)."""
    return sorted(_REGISTRY) + [f"+{p}" for p in sorted(_PLUGINS)]


def plugin_config(name: str) -> type | None:
    """The options dataclass of plug-in ``name`` (None when it registered none).

    Raises:
        ConfigError: unknown plug-in.
    """
    if name not in _PLUGINS:
        raise ConfigError(f"unknown plug-in {name!r}; known plug-ins: {sorted(_PLUGINS)}")
    return _PLUGIN_CONFIGS.get(name)


def get_method_class(name: str) -> type[PromptMethod]:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown method {name!r}; known methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def make_config(config_cls: type, overrides: dict[str, Any], where: str) -> Any:
    """Build a frozen config dataclass from keyword overrides, with clear errors."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown}; valid options: {sorted(fields)}")
    return config_cls(**overrides)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A plain dict of a config dataclass (or a copy of a dict config)."""
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    return dict(config) if isinstance(config, dict) else {}


def build_method(name: str, backbone: Backbone, classnames: list[str], **config: Any) -> PromptMethod:
    """Build a method (or ``method+plugin``) by name.

    Args:
        name: registry name, e.g. ``"coop"``, ``"zeroshot"``, ``"coop+dept"``.
        backbone: a loaded :class:`~vlprompt.backbones.base.Backbone`.
        classnames: class names of the training task.
        **config: fields of the method's ``Config``; options of a plug-in carry its name as a
            prefix (``dept_weight=0.7``). Unknown fields are an error.

    Example:
        >>> model = build_method("coop", bb, ["cat", "dog"], n_ctx=4)
        >>> model = build_method("kgcoop+dept", bb, names, weight=2.0, dept_weight=0.7)
    """
    base, *plugins = name.split("+")
    for p in plugins:
        if p not in _PLUGINS:
            raise ConfigError(f"unknown plug-in {p!r} in {name!r}; known plug-ins: {sorted(_PLUGINS)}")
    if not classnames:
        raise ConfigError("build_method needs at least one class name")
    plugin_opts = {p: {k: v for k, v in config.items() if k.startswith(f"{p}_")} for p in plugins}
    taken = {k for opts in plugin_opts.values() for k in opts}
    cls = get_method_class(base)
    model: PromptMethod = cls(
        backbone, classnames, make_config(cls.Config, {k: v for k, v in config.items() if k not in taken}, base)
    )
    for p in plugins:
        model = _PLUGINS[p](model, **plugin_opts[p])
    model.method_id = name
    return model
