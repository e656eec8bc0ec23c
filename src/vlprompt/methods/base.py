"""The method interface, the method registry, and config helpers.

A method is one file: a frozen ``Config`` dataclass whose defaults are the paper's, and one
:class:`PromptMethod` subclass that owns only its trainable parameters and calls the
backbone seams. Register it with :func:`register_method`; plug-ins such as DePT compose by
name (``"coop+dept"``) through :func:`build_method`.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, Union

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from ..backbones.base import Backbone
from ..errors import ConfigError

Steps = Literal["none", "image-features", "images", "images+masks"]
MaskSource = Literal["data", "model"]
FeatureView = Literal["train", "test"]


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
    """What a method's training consumes and which engine hooks it uses (its declaration).

    The engine (:func:`vlprompt.fit`) reads only this: it never names a method or probes its
    attributes. A method sets it as the class attribute ``plan``; an instance whose needs depend
    on its config (DAPT's mask source, a plug-in that forwards its inner method's plan) assigns
    ``self.plan`` in its constructor.

    Attributes:
        steps: what every gradient step consumes (``batch`` keys of :meth:`PromptMethod.loss`).
            ``"none"``: no gradient steps (zero-shot; a closed-form fit alone).
            ``"image-features"``: features of the frozen, unprompted image tower: cached augmented
            views in ``batch["features"]`` (``TrainConfig.feature_views`` > 0), or images in
            ``batch["images"]`` that the method encodes itself (``feature_views=0``).
            ``"images"``: normalised training images (``batch["images"]``; a prompted image tower).
            ``"images+masks"``: images plus foreground masks ``(B, 1, H, W)`` in ``batch["masks"]``,
            cropped and flipped with their image (the paired transform).
        image_features: the image tower is frozen and unprompted, so evaluation (and a closed-form
            fit) may read cached image features; ``False`` when the method encodes images itself.
        masks: where ``"images+masks"`` steps get their masks: ``"data"`` (mask files of the
            dataset, :mod:`vlprompt.data.masks`) or ``"model"`` (the method's
            :meth:`PromptMethod.epoch_masks`, recomputed by its before-epoch hook).
        fit_features: the hook ``fit_features(train, val) -> dict`` runs before any step on cached
            features of the training images in this view (``"train"``: augmented, ``"test"``:
            plain; ``val`` always plain), e.g. a closed-form classifier; ``None``: no such fit.
            Its dict goes into the results.
        fit_views: with ``fit_features="train"``, how many augmented views the fit gets: 1 (default)
            hands it view 0 as ``(n, D)``; ``V`` > 1 hands it views ``0 .. V-1`` stacked as
            ``(V, n, D)`` (the same cached views the steps draw from), e.g. Tip-Adapter's cache, an
            average over augmented views.
        before_epoch: call :meth:`PromptMethod.prepare_epoch` before every epoch (a resumed run
            calls it for the epochs it still trains).
        after_epoch: call :meth:`PromptMethod.end_epoch` after every epoch's steps, before its
            checkpoint (e.g. to accumulate an average of the prompts over epochs); what the hooks keep
            across epochs goes into every checkpoint through :meth:`PromptMethod.training_state`.
        after_training: call :meth:`PromptMethod.finish_training` once after the last epoch, before
            evaluation and before the prompt is saved; its dict goes into the results.
    """

    steps: Steps = "image-features"
    image_features: bool = True
    masks: MaskSource = "data"
    fit_features: FeatureView | None = None
    fit_views: int = 1
    before_epoch: bool = False
    after_epoch: bool = False
    after_training: bool = False

    def __post_init__(self) -> None:
        if self.steps not in typing.get_args(Steps):
            raise ValueError(f"TrainingPlan.steps must be one of {typing.get_args(Steps)}, got {self.steps!r}")
        if self.steps == "image-features" and not self.image_features:
            raise ValueError("TrainingPlan: steps='image-features' needs image_features=True")
        if self.masks not in typing.get_args(MaskSource):
            raise ValueError(f"TrainingPlan.masks must be 'data' or 'model', got {self.masks!r}")
        if self.fit_features not in (None, *typing.get_args(FeatureView)):
            raise ValueError(f"TrainingPlan.fit_features must be None, 'train' or 'test', got {self.fit_features!r}")
        if isinstance(self.fit_views, bool) or not isinstance(self.fit_views, int) or self.fit_views < 1:
            raise ValueError(f"TrainingPlan.fit_views must be an integer >= 1, got {self.fit_views!r}")
        if self.fit_views > 1 and self.fit_features != "train":
            raise ValueError("TrainingPlan: fit_views > 1 needs fit_features='train' (augmented views)")

    @property
    def trains(self) -> bool:
        """The method learns from the training set (gradient steps or a closed-form fit)."""
        return self.steps != "none" or self.fit_features is not None

    @property
    def mask_source(self) -> MaskSource | None:
        """Where the training masks come from, ``None`` when the steps take no masks."""
        return self.masks if self.steps == "images+masks" else None


class _FromPlan:
    """A read-only attribute derived from the method's :class:`TrainingPlan` (class or instance)."""

    def __init__(self, derive: Callable[[TrainingPlan], Any], doc: str) -> None:
        self.derive = derive
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self.derive(owner.plan if obj is None else obj.plan)

    def __set__(self, obj: Any, value: Any) -> None:
        raise AttributeError(f"{self.name} follows the method's plan; set plan = TrainingPlan(...) instead")


class PromptMethod(nn.Module):
    """Base class of all methods.

    Subclasses define ``name``, ``Config`` and implement :meth:`text_features` (for
    CLIP-style methods) or override :meth:`logits_from_features`.

    Class attributes:
        plan: the :class:`TrainingPlan`: what the training steps consume and which hooks
            (:meth:`prepare_epoch`, :meth:`end_epoch`, ``fit_features``, :meth:`finish_training`) the
            engine calls.
            Default: steps on frozen image features, no hooks (CoOp).
        uses_image_features, needs_training, feature_transform, mask_source: read-only views of
            ``plan`` (``plan.image_features``; ``plan.trains``; the view of a closed-form fit, else
            ``"train"``; ``plan.mask_source``).
        has_text_side: the method matches images to class text features (plug-ins that need
            image-text matching, DePT, refuse it otherwise); ``text_side_hint`` says how to get one.
        dataset_templates: hand-crafted templates the method's reference uses instead of a dataset's
            own, by canonical dataset name (KgCoOp's DTD template); the protocols pass the one that
            applies as the ``template`` option of a Config that has one.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = object
    plan: TrainingPlan = TrainingPlan()
    uses_image_features = _FromPlan(lambda p: p.image_features, "The image tower is frozen and unprompted.")
    needs_training = _FromPlan(lambda p: p.trains, "False for training-free methods (zero-shot).")
    feature_transform = _FromPlan(lambda p: p.fit_features or "train", "View of the cached training features.")
    mask_source = _FromPlan(lambda p: p.mask_source, "Where training masks come from (None: no masks).")
    has_text_side: bool = True
    text_side_hint: ClassVar[str] = ""
    dataset_templates: ClassVar[Mapping[str, str]] = types.MappingProxyType({})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        old = [n for n in ("uses_image_features", "needs_training", "feature_transform", "mask_source")
               if n in cls.__dict__ and not isinstance(cls.__dict__[n], _FromPlan)]
        if old:  # the pre-plan way of declaring inputs: the engine would not see it
            raise TypeError(f"{cls.__name__} sets {', '.join(old)}; declare plan = TrainingPlan(...) instead "
                            "(see docs/methods.md)")

    def __init__(self, backbone: Backbone, classnames: list[str], config: Any) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.classnames = list(classnames)

    @classmethod
    def check_backbone(cls, backbone: Backbone, options: dict[str, Any]) -> None:
        """Refuse a backbone this method cannot use with ``options`` (its Config fields as given),
        before any data is loaded; the constructor repeats the checks. Default: nothing to check."""

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

    def matching_features(
        self, image_features: torch.Tensor, text_features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The L2-normalised image features ``(B, D)`` and class text features ``(n_cls, D)`` (or per
        image ``(B, n_cls, D)``) whose dot product, times the logit scale, is the image-text-matching
        logit; ``image_features`` are raw (:meth:`encode_images` or the cached ones).

        Analyses of the matched features (``vlprompt analyze channels``) read this. A method that
        overrides :meth:`logits_from_features` overrides it too, or is refused by those analyses.
        """
        if text_features is None:
            text_features = self.eval_text_features()
        if text_features is None:
            raise ConfigError(f"{self.name} has no class text features to match images with")
        return F.normalize(image_features.float(), dim=-1), F.normalize(text_features.float(), dim=-1)

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

    def total_parameters(self) -> int:
        """Parameters of the whole model that computes the logits: the backbone's plus the method's own
        (each counted once). Tuned % = trainable / total × 100, as in VPT's and E2VPT's tables. A method
        that trains a copy of the image tower in place of the frozen one (full fine-tuning) counts the copy
        instead of the frozen tower."""
        return sum(p.numel() for p in self.parameters())

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

    # ------------------------------------------------------------------ engine hooks (see TrainingPlan)
    def prepare_epoch(self, epoch: int, samples: list[Any], device: torch.device) -> None:
        """Hook before every epoch (0-based ``epoch``, the training samples, the device), called when
        ``plan.before_epoch``; e.g. DAPT's loss schedule and DAPT-G's Grad-CAM masks. Default: nothing."""

    def epoch_masks(self) -> Any:
        """The training masks of the current epoch when ``plan.masks == "model"`` (a
        :class:`~vlprompt.data.masks.ArrayMasks`-like object indexed by sample position)."""
        raise ConfigError(f"{self.name} declares no masks of its own (plan.masks={self.plan.masks!r})")

    def end_epoch(self, epoch: int) -> None:
        """Hook after every epoch's steps, before its checkpoint (``plan.after_epoch``). Default: nothing."""

    def training_state(self) -> dict[str, Any]:
        """What the hooks keep across epochs besides the prompt (tensors and plain values), stored in every
        checkpoint so that a resumed run continues exactly; restored by :meth:`load_training_state`.
        Default: nothing (``{}``, and the checkpoint has no such entry)."""
        return {}

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`training_state` returned, when a run resumes from a checkpoint."""

    def finish_training(self, samples: list[Any], device: torch.device) -> dict[str, Any]:
        """Hook after the last epoch, before evaluation and saving (``plan.after_training``), e.g. to
        install averaged prompts; returns entries for the results. Default: nothing."""
        return {}

    def train(self, mode: bool = True) -> PromptMethod:
        super().train(mode)
        self.backbone.train(False)
        return self


# ---------------------------------------------------------------------- registry
_REGISTRY: dict[str, type[PromptMethod]] = {}
_PLUGINS: dict[str, Callable[..., PromptMethod]] = {}
_PLUGIN_CONFIGS: dict[str, type] = {}
_PLUGIN_SCOPE: dict[str, Callable[[type], bool]] = {}
_PLUGIN_SUMMARIES: dict[str, str] = {}


def register_method(cls: type[PromptMethod]) -> type[PromptMethod]:
    """Class decorator: make a method available by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


def register_plugin(
    name: str, wrap: Callable[..., PromptMethod], config: type | None = None,
    applies_to: Callable[[type], bool] | None = None, summary: str = "",
) -> None:
    """Register a plug-in: ``wrap(inner_method, **options) -> PromptMethod`` (e.g. ``dept``).

    The plug-in's options are named ``<name>_<field>`` so they never clash with a method's;
    ``config`` is its options dataclass, so that :func:`parse_method_options` and
    :func:`vlprompt.load_prompt` can check them. ``applies_to(method_class)`` says which registered
    methods it takes (``wrap`` refuses the others with a clear error); default: every method that
    trains with a text side (DePT's rule, checked by ``wrap``). ``summary``: one line for ``vlprompt methods``.
    """
    _PLUGINS[name] = wrap
    if summary:
        _PLUGIN_SUMMARIES[name] = summary
    if config is not None:
        _PLUGIN_CONFIGS[name] = config
    if applies_to is not None:
        _PLUGIN_SCOPE[name] = applies_to


def plugin_applies(plugin: str, method_cls: type) -> bool:
    """Whether plug-in ``plugin`` declares that it takes method class ``method_cls`` (see :func:`register_plugin`).

    Example:
        >>> plugin_applies("dapt", get_method_class("coop")), plugin_applies("dapt", get_method_class("vpt-deep"))
        (True, False)
    """
    scope = _PLUGIN_SCOPE.get(plugin)
    return True if scope is None else bool(scope(method_cls))


def plugin_summary(name: str) -> str:
    """One line on plug-in ``name`` (its ``summary``, else the first line of its wrap function's docstring)."""
    plugin_config(name)  # unknown: ConfigError
    doc = (_PLUGINS[name].__doc__ or "").strip().splitlines()
    return _PLUGIN_SUMMARIES.get(name) or (doc[0] if doc else "")


def plugin_targets(name: str) -> list[str] | None:
    """The registered methods plug-in ``name`` declares it takes (``applies_to``), or ``None`` when it declares
    no scope (its wrap function decides when the method is built; DePT: every method that trains prompts
    against class text features)."""
    plugin_config(name)  # unknown: ConfigError
    if name not in _PLUGIN_SCOPE:
        return None
    return [m for m in sorted(_REGISTRY) if plugin_applies(name, _REGISTRY[m])]


def plugin_options(name: str) -> dict[str, tuple[Any, Any, str]]:
    """Plug-in ``name``'s options as ``build_method("<method>+<name>", ...)`` takes them:
    ``{option: (type, default, documented meaning)}``."""
    cfg = plugin_config(name)
    if cfg is None:
        return {}
    docs = {k if k.startswith(f"{name}_") or k in _plugin_fields(name) else f"{name}_{k}": v
            for k, v in _attribute_docs(cfg).items()}
    return {k: (tp, default, docs.get(k, "")) for k, (tp, default) in config_fields(cfg).items()}


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


def reads_training_data(name: str) -> bool:
    """Whether method ``name`` (plug-ins included) uses the training images: ``False`` only for a registered
    method that neither trains nor fits on features (zero-shot), whose results therefore do not depend on
    the few-shot sample (shots). Unknown names count as reading them.

    Example:
        >>> reads_training_data("zeroshot"), reads_training_data("coop"), reads_training_data("linear-probe")
        (False, True, True)
    """
    base, *plugins = str(name).split("+")
    if plugins or base not in _REGISTRY:
        return True
    cls = _REGISTRY[base]
    return cls.needs_training or hasattr(cls, "fit_features")


# ---------------------------------------------------------------------- options
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def describe_type(tp: Any) -> str:
    """A Config field's type in words for error messages (``int``, ``one of 'end', 'middle'`` ...)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(describe_type(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        args = typing.get_args(tp)
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            return f"a list of {describe_type(args[0]) if args else 'values'}"
        return "[" + ", ".join(describe_type(a) for a in args) + "]"
    if tp is type(None):
        return "none"
    if tp is bool:
        return "bool (true/false/1/0)"
    return getattr(tp, "__name__", str(tp))


class _BadValue(Exception):
    """Internal: ``value`` does not fit the field type (turned into one ConfigError by the caller)."""


def coerce_value(value: Any, tp: Any, parse_strings: bool = True) -> Any:
    """``value`` converted to the type ``tp`` of a Config field.

    A string (``-o KEY=VALUE`` on the command line) is parsed by the type: ``int``, ``float``, ``bool``
    (``true``/``false``/``yes``/``no``/``on``/``off``/``1``/``0``), ``str`` as is, ``Literal`` choices,
    ``X | None`` (``none`` / ``null``), tuples and lists (``[a, b]`` in YAML / JSON flow syntax, or
    ``a,b``). Other values (from the API, YAML or JSON) are checked against the type; lists become
    tuples where the field is a tuple. Raises ``_BadValue`` when the value does not fit.
    With ``parse_strings=False`` (typed files such as ``prompt.json``) a string is only accepted
    where the field holds strings.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if not parse_strings and isinstance(value, str):
        members = args if origin in (Union, types.UnionType) else (tp,)
        if not any(m is str or (typing.get_origin(m) is Literal and value in typing.get_args(m)) for m in members):
            raise _BadValue  # a typed file holds a string where the field holds no strings
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.strip().lower() in ("none", "null") and type(None) in args \
                and str not in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce_value(value, a, parse_strings)
            except _BadValue:
                pass
        raise _BadValue
    if origin is Literal:
        if value in args and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            for choice in args:
                if str(choice) == value.strip():
                    return choice
        raise _BadValue
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _BadValue
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise _BadValue from None
        raise _BadValue
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        if isinstance(value, str):  # "8" stays 8 (as the YAML reading of -o gave), so run configs do not change
            for number in (int, float):
                try:
                    return number(value.strip())
                except ValueError:
                    pass
        raise _BadValue
    if tp is str:
        if isinstance(value, str):
            return value
        raise _BadValue
    if origin in (tuple, list):
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = yaml.safe_load(text)
                except yaml.YAMLError:
                    raise _BadValue from None
            else:
                value = [v.strip() for v in text.split(",")] if text else []
        if not isinstance(value, (list, tuple)):
            raise _BadValue
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            items = [coerce_value(v, args[0], parse_strings) if args else v for v in value]
        else:
            if len(value) != len(args):
                raise _BadValue
            items = [coerce_value(v, a, parse_strings) for v, a in zip(value, args, strict=True)]
        return tuple(items) if origin is tuple else items
    if isinstance(value, str) and isinstance(tp, type) and not issubclass(tp, str):
        # a type this parser does not know (dict, ...): read the string as YAML, as the CLI did before
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            raise _BadValue from None
    return value


def value_fits(value: Any, tp: Any) -> bool:
    """Whether a typed value (YAML, JSON, the API) fits a Config field of type ``tp`` as it is:
    :func:`coerce_value` with ``parse_strings=False`` (``bool`` is not an ``int``; an ``int`` is a
    valid ``float``; a list is a valid ``tuple[...]``).

    Example:
        >>> value_fits(4, int), value_fits(True, int), value_fits(2, float), value_fits(["a"], tuple[str, ...])
        (True, False, True, True)
    """
    try:
        coerce_value(value, tp, parse_strings=False)
    except _BadValue:
        return False
    return True


def config_fields(config_cls: type) -> dict[str, tuple[Any, Any]]:
    """``{field: (type, default)}`` of a Config dataclass (types resolved; ``MISSING`` for no default)."""
    try:
        hints = typing.get_type_hints(config_cls)
    except Exception:  # an annotation that does not resolve: accept any value for it
        hints = {}
    out = {}
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        out[f.name] = (hints.get(f.name, Any), default)
    return out


def coerce_options(
    config_cls: type, options: Mapping[str, Any], where: str, parse_strings: bool = True
) -> dict[str, Any]:
    """``options`` checked and converted against the fields of ``config_cls`` (see :func:`coerce_value`;
    ``parse_strings=False`` for typed files, where a string stands only for a string).

    Raises:
        ConfigError: an unknown option (the message lists the valid ones), or a value of the wrong
            type (``option n_ctx of coop expects int, got 'four'``).
    """
    fields = config_fields(config_cls)
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown}; valid options: {sorted(fields)}")
    out = {}
    for key, value in options.items():
        tp = fields[key][0]
        try:
            out[key] = coerce_value(value, tp, parse_strings)
        except _BadValue:
            raise ConfigError(f"option {key} of {where} expects {describe_type(tp)}, got {value!r}") from None
    return out


def _plugin_fields(plugin: str) -> set[str]:
    """The option names of a plug-in's config (``dept_weight``; ``+dapt-g`` shares ``dapt_*`` with ``+dapt``)."""
    cfg = _PLUGIN_CONFIGS.get(plugin)
    return set(config_fields(cfg)) if cfg is not None else set()


def _split_name(name: str) -> tuple[str, list[str]]:
    base, *plugins = name.split("+")
    for p in plugins:
        if p not in _PLUGINS:
            raise ConfigError(f"unknown plug-in {p!r} in {name!r}; known plug-ins: {sorted(_PLUGINS)}")
    return base, plugins


def method_options(name: str) -> dict[str, tuple[Any, Any]]:
    """Every option ``build_method(name, ...)`` accepts: ``{option: (type, default)}``, the method's
    Config fields followed by its plug-ins' (``dept_weight`` ...).

    Example:
        >>> method_options("coop+dept")["dept_weight"]
        (<class 'float'>, 0.7)
    """
    base, plugins = _split_name(name)
    out = dict(config_fields(get_method_class(base).Config))
    for p in plugins:
        if p in _PLUGIN_CONFIGS:
            out.update(config_fields(_PLUGIN_CONFIGS[p]))
    return out


def _attribute_docs(config_cls: type) -> dict[str, str]:
    """``{field: description}`` from the ``Attributes:`` sections of a Config dataclass and its bases
    (a line ``name: text`` or ``a, b: text``, continued by more deeply indented lines)."""
    out: dict[str, str] = {}
    for klass in reversed(config_cls.__mro__):
        doc = inspect.getdoc(klass) if klass.__dict__.get("__doc__") else None
        if not doc or "Attributes:" not in doc:
            continue
        current: list[str] = []
        for line in doc.split("Attributes:", 1)[1].splitlines():
            if not line.strip():
                continue
            indent = len(line) - len(line.lstrip())
            m = re.match(r"^\s{4}([A-Za-z_][\w, ]*):\s*(.*)$", line)
            if m and indent == 4:
                current = [n.strip() for n in m.group(1).split(",")]
                for n in current:
                    out[n] = m.group(2).strip()
            elif indent > 4 and current:
                for n in current:
                    out[n] = f"{out[n]} {line.strip()}"
            elif indent < 4:
                break
    return out


def option_docs(name: str) -> dict[str, str]:
    """The documented meaning of every option of :func:`method_options` (``""`` where undocumented)."""
    base, plugins = _split_name(name)
    docs = _attribute_docs(get_method_class(base).Config)
    for p in plugins:
        docs.update({k: doc for k, (_, _, doc) in plugin_options(p).items()})
    return {k: docs.get(k, "") for k in method_options(name)}


def parse_method_options(name: str, options: Mapping[str, Any], parse_strings: bool = True) -> dict[str, Any]:
    """Check and convert the options of method ``name`` (``"coop"``, ``"coop+dept"``) by their Config types.

    Values may be strings (``-o KEY=VALUE``: parsed by the field's type) or already typed (API, YAML).
    :func:`build_method` calls this, so the API, the CLI and a sweep give the same errors; call it to
    check a run's options before loading anything. ``parse_strings=False`` checks typed values (a file
    such as ``prompt.json``): a string is then accepted only where the field holds strings.

    Raises:
        ConfigError: unknown method or plug-in; an unknown option (the message lists the valid ones of
            the method and of each plug-in); a value that does not fit its field's type.

    Example:
        >>> parse_method_options("coop+dept", {"n_ctx": "4", "dept_weight": "0.5"})
        {'n_ctx': 4, 'dept_weight': 0.5}
    """
    base, plugins = _split_name(name)
    # the method first, then its plug-ins (a plug-in may share its name with a method: "dapt+dept" vs "+dapt")
    owners: dict[str, type] = {base: get_method_class(base).Config}
    owners.update({f"+{p}" if p == base else p: _PLUGIN_CONFIGS[p] for p in plugins if p in _PLUGIN_CONFIGS})
    known = {k: owner for owner, cls in owners.items() for k in config_fields(cls)}
    unchecked = [p for p in plugins if p not in _PLUGIN_CONFIGS]  # plug-ins registered without a config
    unknown = [k for k in options if k not in known and not any(k.startswith(f"{p}_") for p in unchecked)]
    if unknown:
        valid = "; ".join(f"{owner}: {', '.join(config_fields(cls))}" for owner, cls in owners.items())
        raise ConfigError(f"{name}: unknown option(s) {sorted(unknown)}; valid options: {valid}")
    out = dict(options)
    for owner, cls in owners.items():
        mine = {k: v for k, v in options.items() if known.get(k) == owner}
        out.update(coerce_options(cls, mine, name, parse_strings))
    return out


def make_config(config_cls: type, overrides: Mapping[str, Any], where: str) -> Any:
    """Build a frozen config dataclass from keyword overrides, with clear errors (:func:`coerce_options`)."""
    return config_cls(**coerce_options(config_cls, overrides, where))


def config_to_dict(config: Any) -> dict[str, Any]:
    """A plain dict of a config dataclass (or a copy of a dict config)."""
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    return dict(config) if isinstance(config, dict) else {}


def task_options(name: str, task: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` completed with what a method takes from the dataset, as every protocol run does.

    For the fields the method's ``Config`` has and ``options`` leaves unset: ``template`` (the
    dataset's hand-crafted template; KgCoOp's own on DTD), ``tasks`` (SoftCPT: the group's task
    names and class counts), ``dataset`` (zero-shot: the canonical name, which decides the ensemble
    rule: CoOp's ZeroshotCLIP2 leaves ImageNet's own template out) and, for ``ensemble=True``,
    ``templates`` (the dataset's ensemble). :func:`build_method` applies it when given a task.

    Args:
        name: method name, plug-ins included (``"kgcoop+dept"``); the base method's fields count.
        task: a loaded :class:`~vlprompt.data.task.Task` (or task group).
        options: the user's method options (they win over the dataset's).

    Example:
        >>> task_options("zeroshot", imagenet_task, {"ensemble": True})["dataset"]
        'imagenet'
    """
    from ..data.multitask import task_structure
    from ..data.templates import ensemble_templates

    base, _ = _split_name(name)
    method_cls = get_method_class(base)
    fields = {f.name for f in dataclasses.fields(method_cls.Config)}
    out = dict(options)
    if "template" in fields:  # zero-shot, KgCoOp: the dataset's hand-crafted template, or the method's own
        out.setdefault("template", method_cls.dataset_templates.get(task.name, task.template))
    if "tasks" in fields:  # multi-task methods (SoftCPT): the group's task names and class counts
        out.setdefault("tasks", task_structure(task))
    if "dataset" in fields:  # zero-shot: the dataset's ensemble rule (ImageNet: the 7 select templates)
        out.setdefault("dataset", task.name)
    if out.get("ensemble") and "templates" in fields and "templates" not in out:
        out["templates"] = tuple(ensemble_templates(task.name, task.template))
    return out


def build_method(name: str, backbone: Backbone, classnames: list[str] | Any, **config: Any) -> PromptMethod:
    """Build a method (or ``method+plugin``) by name.

    Args:
        name: registry name, e.g. ``"coop"``, ``"zeroshot"``, ``"coop+dept"``.
        backbone: a loaded :class:`~vlprompt.backbones.base.Backbone`.
        classnames: class names of the training task, or the loaded
            :class:`~vlprompt.data.task.Task` itself: then its class names, and the options a method
            takes from the dataset (template, zero-shot ensemble rule, SoftCPT's tasks) are filled in
            as the protocols fill them (:func:`task_options`).
        **config: fields of the method's ``Config``; options of a plug-in carry its name as a
            prefix (``dept_weight=0.7``). Unknown fields and values of the wrong type are an error
            (:func:`parse_method_options`; strings are parsed by the field's type).

    Example:
        >>> model = build_method("coop", bb, ["cat", "dog"], n_ctx=4)
        >>> model = build_method("kgcoop+dept", bb, names, weight=2.0, dept_weight=0.7)
        >>> model = build_method("zeroshot", bb, task, ensemble=True)  # ImageNet: the 7 templates
    """
    from ..data.task import Task

    if isinstance(classnames, Task):
        get_method_class(_split_name(name)[0])  # an unknown name fails as before
        config = task_options(name, classnames, config)
        classnames = classnames.classnames
    base, plugins = _split_name(name)
    if not classnames:
        raise ConfigError("build_method needs at least one class name")
    config = parse_method_options(name, config)
    plugin_opts = {p: {k: v for k, v in config.items() if k.startswith(f"{p}_") or k in _plugin_fields(p)}
                   for p in plugins}
    taken = {k for opts in plugin_opts.values() for k in opts}
    cls = get_method_class(base)
    model: PromptMethod = cls(
        backbone, classnames, make_config(cls.Config, {k: v for k, v in config.items() if k not in taken}, base)
    )
    for p in plugins:
        model = _PLUGINS[p](model, **plugin_opts[p])
    model.method_id = name
    return model
