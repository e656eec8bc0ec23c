"""Saving and loading trained prompts: ``prompt.safetensors`` + ``prompt.json``."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from . import __version__
from .backbones import load_backbone
from .backbones.base import Backbone
from .engine.run import atomic_write
from .errors import CheckpointError, ConfigError
from .methods import build_method
from .methods.base import PromptMethod, config_to_dict


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
        "classnames": model.classnames,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"method": meta["method"]})
    tmp.replace(path)
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
            must then be loadable by name, e.g. ``tiny-clip``).
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
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != "vlprompt-prompt":
        raise CheckpointError(f"{meta_path} is not a vlprompt prompt description")
    if backbone is None:
        backbone = load_backbone(meta["backbone"])
    if backbone.name != meta["backbone"]:
        raise ConfigError(f"prompt was trained on backbone {meta['backbone']!r}, got {backbone.name!r}")
    model = build_method(meta["method"], backbone, meta["classnames"], **meta["config"])
    model.load_prompt_state_dict(load_file(str(path)))
    if classnames is not None:
        model.set_classnames(classnames)
    return model
