"""Saving and loading trained prompts: ``prompt.safetensors`` + ``prompt.json``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from . import __version__
from .backbones import load_backbone
from .backbones.base import Backbone
from .engine.run import atomic_write
from .errors import CheckpointError, ConfigError, VlpromptWarning
from .methods import build_method
from .methods.base import PromptMethod, config_to_dict, parse_method_options


def method_identity(model: PromptMethod) -> str:
    """The registry name of a built method, plug-ins included (``"coop+dept"``)."""
    return getattr(model, "method_id", model.name)


def save_prompt(model: PromptMethod, path: str | Path) -> Path:
    """Write the trained weights (``.safetensors``) and ``prompt.json`` beside them.

    The JSON records the method (with plug-ins), its config, the backbone and weights id
    and the class names, so :func:`load_prompt` needs nothing else.

    Example:
        >>> vp.save_prompt(model, "run/prompt.safetensors")
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ConfigError(f"prompt files are .safetensors; got {path.name!r}")
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in model.prompt_state_dict().items()}
    meta = {
        "format": "vlprompt-prompt", "version": 1, "vlprompt": __version__,
        "method": method_identity(model), "config": config_to_dict(model.config),
        "backbone": model.backbone.name, "weights": model.backbone.weights_id,
        "quick_gelu": model.backbone.quick_gelu, "pretrained": model.backbone.pretrained,
        "classnames": model.classnames,
    }
    if getattr(model.backbone, "model_kwargs", None):  # timm create_model arguments (e.g. global_pool)
        meta["model_kwargs"] = dict(model.backbone.model_kwargs)
    atomic_write(path, save_safetensors(tensors, metadata={"method": meta["method"]}))
    atomic_write(_meta_path(path), json.dumps(meta, indent=2) + "\n")
    return path


def _meta_path(path: Path) -> Path:
    return path.with_name("prompt.json") if path.name == "prompt.safetensors" else path.with_suffix(".json")


def load_prompt(
    path: str | Path, backbone: Backbone | None = None, classnames: list[str] | None = None
) -> PromptMethod:
    """Rebuild a method from a prompt file; optionally re-target it to other class names.

    Args:
        path: the ``.safetensors`` written by :func:`save_prompt` (``prompt.json`` beside it),
            or a run directory.
        backbone: the backbone to attach (default: load the one recorded in the file, which
            must then be loadable by name, e.g. ``tiny-clip``, or by its recorded pretrained tag;
            the recorded activation is used).
        classnames: new class names (base → new evaluation); default: the trained ones.

    Example:
        >>> model = vp.load_prompt("runs/coop/prompt.safetensors", bb, classnames=new_names)
    """
    path = Path(path)
    if path.is_dir():
        path = path / "prompt.safetensors"
    meta_path = _meta_path(path)
    if not path.exists() or not meta_path.exists():
        raise CheckpointError(f"no prompt at {path} (expected {path.name} and {meta_path.name} side by side)")
    # Everything read from the two files is checked before anything is built from it.
    meta = _read_meta(meta_path)
    tensors = _read_tensors(path)
    recorded = meta.get("quick_gelu")
    recorded = recorded if isinstance(recorded, bool) else None
    if backbone is None:  # by name (and pretrained tag, through the hub cache), with the recorded activation
        tag = meta.get("pretrained") if isinstance(meta.get("pretrained"), str) else None
        backbone = load_backbone(meta["backbone"], force_quick_gelu=recorded, pretrained=tag,
                                 model_kwargs=meta.get("model_kwargs") or None)
    if backbone.name != meta["backbone"]:
        raise ConfigError(f"prompt was trained on backbone {meta['backbone']!r}, got {backbone.name!r}")
    if recorded is not None and backbone.quick_gelu is not None and backbone.quick_gelu != recorded:
        warnings.warn(
            f"{path.name} was trained on {meta['backbone']} with {'QuickGELU' if recorded else 'GELU'}, but the "
            f"backbone given runs {'QuickGELU' if backbone.quick_gelu else 'GELU'}: its features differ; load it "
            f"with force_quick_gelu={recorded} (--{'' if recorded else 'no-'}quick-gelu)",
            VlpromptWarning, stacklevel=2,
        )
    try:
        model = build_method(meta["method"], backbone, meta["classnames"], **meta["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{meta_path}: the recorded configuration does not build: {exc}") from exc
    _check_shapes(path, meta_path, tensors, model)
    model.load_prompt_state_dict(tensors)
    if classnames is not None:
        model.set_classnames(classnames)
    return model


_RETRAIN = "re-run the run's `vlprompt train` command to write it again"


def _read_meta(meta_path: Path) -> dict[str, Any]:
    """``prompt.json``, checked: the keys :func:`load_prompt` uses, and the config values' types
    against the method's config dataclass (a tampered ``n_ctx: 1e9`` stops here)."""
    try:
        meta = json.loads(meta_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{meta_path} is unreadable (truncated or corrupt: {exc}); {_RETRAIN}") from exc
    if not isinstance(meta, dict) or meta.get("format") != "vlprompt-prompt":
        raise CheckpointError(f"{meta_path} is not a vlprompt prompt description")
    expected = {"method": str, "backbone": str, "config": dict, "classnames": list}
    for key, kind in expected.items():
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(f"{meta_path}: {key!r} must be a {kind.__name__}, got {meta.get(key)!r:.80}")
    if not meta["classnames"] or not all(isinstance(c, str) for c in meta["classnames"]):
        raise CheckpointError(f"{meta_path}: 'classnames' must be a non-empty list of strings")
    try:  # typed values, checked by the method's and plug-ins' Config field types (no string parsing)
        meta["config"] = parse_method_options(meta["method"], meta["config"], parse_strings=False)
    except ConfigError as exc:
        raise CheckpointError(f"{meta_path}: {exc}") from exc
    return meta


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The prompt tensors, refused when the file is truncated or holds non-finite values."""
    try:
        tensors = load_safetensors(path.read_bytes())
    except Exception as exc:  # safetensors raises its own SafetensorError (and others) on damaged files
        if isinstance(exc, OSError):
            raise
        raise CheckpointError(f"{path} is unreadable (truncated or corrupt: {exc}); {_RETRAIN}") from exc
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(
                f"{path}: tensor {key!r} holds non-finite values (NaN or inf): the training diverged or the "
                f"file is damaged; retrain the run (vlprompt train --restart, a lower --lr)"
            )
    return tensors


def _check_shapes(path: Path, meta_path: Path, tensors: dict[str, torch.Tensor], model: PromptMethod) -> None:
    built = model.prompt_state_dict()
    missing, unexpected = sorted(set(built) - set(tensors)), sorted(set(tensors) - set(built))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match the method described by {meta_path}: missing tensors {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(built[key].shape):
            raise CheckpointError(
                f"{path}: tensor {key!r} has shape {tuple(value.shape)}, the method described by {meta_path} "
                f"builds {tuple(built[key].shape)}"
            )
