"""open_clip architecture configs that vlprompt adds to open_clip's registry.

``tiny-clip`` is the embedded offline default: an ordinary open_clip ``CLIP`` (ViT image
tower, causal transformer text tower, the real CLIP BPE tokenizer) small enough to run on
two CPU cores. ``tiny-clip-rn`` is the same text tower over a small ModifiedResNet image
tower; it exists so tests can exercise the ResNet code path cheaply.
"""

from __future__ import annotations

import copy

import open_clip
from open_clip import factory as _oc_factory

TINY_CONFIGS: dict[str, dict] = {
    "tiny-clip": {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 64, "layers": 4, "width": 192, "patch_size": 8, "head_width": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3},
    },
    "tiny-clip-rn": {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 2},
    },
}


def register_configs() -> None:
    """Add vlprompt's architectures to open_clip's model-config registry (idempotent)."""
    for name, cfg in TINY_CONFIGS.items():
        if name not in _oc_factory._MODEL_CONFIGS:
            _oc_factory._MODEL_CONFIGS[name] = copy.deepcopy(cfg)


#: Suffix of an architecture name that builds the architecture with QuickGELU (open_clip's convention).
QUICKGELU_SUFFIX = "-quickgelu"


def ensure_quickgelu_variant(name: str) -> bool:
    """Register ``<arch>-quickgelu`` for any known ``<arch>`` that open_clip ships no such config for.

    open_clip has ``-quickgelu`` configs for the OpenAI architectures only (``ViT-B-16-quickgelu`` ...);
    vlprompt accepts the suffix on every architecture (``tiny-clip-quickgelu``), so the name alone always
    says which activation a model uses. Returns whether ``name`` is (now) a registered architecture.
    """
    register_configs()
    if name in _oc_factory._MODEL_CONFIGS:
        return True
    if not name.endswith(QUICKGELU_SUFFIX):
        return False
    base = name[: -len(QUICKGELU_SUFFIX)]
    cfg = _oc_factory._MODEL_CONFIGS.get(base)
    if cfg is None:
        return False
    _oc_factory._MODEL_CONFIGS[name] = {**copy.deepcopy(cfg), "quick_gelu": True}
    return True


def config_quick_gelu(name: str) -> bool:
    """Whether the architecture's own config builds QuickGELU (``-quickgelu`` names do)."""
    ensure_quickgelu_variant(name)
    cfg = _oc_factory._MODEL_CONFIGS.get(name) or {}
    return bool(cfg.get("quick_gelu", False))


def list_architectures() -> list[str]:
    """All architecture names open_clip can build (including vlprompt's)."""
    register_configs()
    return sorted(open_clip.list_models())
