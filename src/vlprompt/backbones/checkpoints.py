"""Reading CLIP checkpoints safely and building open_clip models from them.

Three on-disk formats are recognised, by content rather than by file extension:

* ``"safetensors"``: a plain tensor file. Always safe to read.
* ``"torchscript"``: a TorchScript zip archive, e.g. the OpenAI ``ViT-B-16.pt`` files that
  ``clip.load`` downloads and that every CoOp-family repository uses.
* ``"pickle"``: anything written by ``torch.save`` (a state dict, or a training checkpoint
  holding one under ``"state_dict"`` / ``"model"``), usually ``.pt`` / ``.pth`` / ``.bin``.

Both pickle-based formats can run arbitrary code when they are loaded, so reading them
requires an explicit ``trust_checkpoint=True`` (``--trust-checkpoint`` on the command line).
:func:`convert_checkpoint` turns such a file into ``.safetensors`` once, after which it loads
without the flag.

:func:`build_model` creates an fp32 open_clip model on the CPU and loads weights *strictly*:
every key and every shape must match, and a mismatch raises a :class:`CheckpointError` that
names the offending keys instead of silently leaving layers randomly initialised.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import logging
import os
import struct
import tempfile
import threading
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import open_clip
import torch

from vlprompt.backbones.configs import QUICKGELU_SUFFIX, config_quick_gelu, ensure_quickgelu_variant, register_configs
from vlprompt.errors import CheckpointError, ConfigError, VlpromptWarning

__all__ = [
    "ACTIVATION_KEY",
    "CHECKPOINT_FORMATS",
    "activation_metadata",
    "build_model",
    "checkpoint_format",
    "convert_checkpoint",
    "file_sha256",
    "openai_quick_gelu_archs",
    "read_checkpoint",
    "recorded_activation",
    "resolve_activation",
    "uses_quick_gelu",
]

logger = logging.getLogger(__name__)

StrPath = str | os.PathLike[str]

#: The values :func:`checkpoint_format` can return.
CHECKPOINT_FORMATS: tuple[str, ...] = ("safetensors", "torchscript", "pickle")

#: Entries of OpenAI's TorchScript state dicts that are metadata, not model parameters.
OPENAI_EXTRA_KEYS: tuple[str, ...] = ("input_resolution", "context_length", "vocab_size")

#: Prefixes added by ``DistributedDataParallel`` / ``DataParallel`` and by ``torch.compile``.
_WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")

#: How many offending keys an error message lists per category.
_MAX_LISTED = 5

_SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024  # the limit the safetensors library itself enforces
_JIT_DEPRECATION = r".*torch\.jit\.load.* is deprecated"
_PICKLE_PROTO = 0x80  # first byte of any pickle written with protocol >= 2 (legacy torch.save)


# --------------------------------------------------------------------------- format detection


def _existing_file(path: StrPath) -> Path:
    """Return ``path`` as a :class:`Path`, raising :class:`CheckpointError` unless it is a file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"Checkpoint not found: '{p}'.")
    if not p.is_file():
        raise CheckpointError(f"Checkpoint path is not a file: '{p}'.")
    return p


def _looks_like_safetensors(p: Path) -> bool:
    """True when ``p`` starts with a safetensors header (u64 length + JSON object)."""
    with p.open("rb") as f:
        head = f.read(8)
        if len(head) != 8:
            return False
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > _SAFETENSORS_MAX_HEADER or n + 8 > p.stat().st_size:
            return False
        first = f.read(1)
    return first == b"{"


def _is_torchscript_zip(names: list[str]) -> bool:
    """True when zip member names are those of a ``torch.jit.save`` archive."""
    for name in names:
        parts = name.split("/")
        if "code" in parts[:-1] or parts[-1] == "constants.pkl":
            return True
    return False


def checkpoint_format(path: StrPath) -> str:
    """Detect the format of a checkpoint file from its content.

    Args:
        path: The checkpoint file.

    Returns:
        ``"safetensors"``, ``"torchscript"`` (a ``torch.jit.save`` zip archive such as OpenAI's
        CLIP ``.pt`` files) or ``"pickle"`` (anything written by ``torch.save``, zip or legacy).

    Raises:
        CheckpointError: The file is missing, empty, or in none of these formats.
    """
    p = _existing_file(path)
    try:
        if _looks_like_safetensors(p):
            return "safetensors"
        if zipfile.is_zipfile(p):
            try:
                with zipfile.ZipFile(p) as zf:
                    names = zf.namelist()
            except (zipfile.BadZipFile, OSError) as e:
                raise CheckpointError(f"Checkpoint '{p}' is a corrupt zip archive: {e}") from e
            return "torchscript" if _is_torchscript_zip(names) else "pickle"
        with p.open("rb") as f:
            first = f.read(1)
    except OSError as e:
        raise CheckpointError(f"Cannot read checkpoint '{p}': {e}") from e
    if first and first[0] == _PICKLE_PROTO:
        return "pickle"
    raise CheckpointError(
        f"Checkpoint '{p}' is not a recognised format (expected safetensors, a TorchScript archive "
        "or a torch.save'd state dict); the file may be truncated or corrupt."
    )


# --------------------------------------------------------------------------- reading


def _untrusted_message(p: Path, fmt: str) -> str:
    kind = "a TorchScript archive" if fmt == "torchscript" else "a pickle file (torch.save)"
    suggested = p.with_suffix(".safetensors").name
    return (
        f"Checkpoint '{p}' is {kind}: pickle-based formats may execute arbitrary code when loaded, "
        "so vlprompt does not read them by default. If you trust this file, pass "
        "--trust-checkpoint (API: trust_checkpoint=True), or convert it once with "
        f"`vlprompt convert {p} {suggested} --trust-checkpoint` and use the .safetensors file."
    )


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                changed = True
    return key


def _normalize_state_dict(obj: object, p: Path) -> dict[str, torch.Tensor]:
    """Unwrap, clean and cast a loaded checkpoint object to a flat fp32 state dict."""
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            inner = obj.get(wrapper)
            if isinstance(inner, torch.nn.Module):
                inner = inner.state_dict()
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"Checkpoint '{p}' holds a {type(obj).__name__}, "
            "not a state dict (a mapping of names to tensors)."
        )
    out: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for raw_key, value in obj.items():
        key = _strip_prefixes(str(raw_key))
        if key in OPENAI_EXTRA_KEYS:
            continue
        if not isinstance(value, torch.Tensor):
            skipped.append(key)
            continue
        if key in out:
            raise CheckpointError(
                f"Checkpoint '{p}' has key '{key}' twice (with and without a wrapper prefix)."
            )
        value = value.detach()
        out[key] = value.float() if value.is_floating_point() else value
    if skipped:
        logger.debug("Ignoring %d non-tensor entries of %s: %s", len(skipped), p, skipped[:_MAX_LISTED])
    if not out:
        raise CheckpointError(f"Checkpoint '{p}' contains no tensors.")
    return out


def read_checkpoint(
    path: StrPath, trust_checkpoint: bool = False, safe_pickle: bool = False
) -> dict[str, torch.Tensor]:
    """Read a checkpoint into a flat, float32, CPU state dict with open_clip key names.

    Safetensors files are always read. Pickle-based files (``torch.save`` state dicts and
    TorchScript archives) can execute code on load and are only read with
    ``trust_checkpoint=True``.

    The result is cleaned up the way CLIP checkpoints need: a ``"state_dict"`` (or
    ``"model"``) wrapper is unwrapped, ``module.`` prefixes are stripped, OpenAI's metadata
    entries (``input_resolution``, ``context_length``, ``vocab_size``) are dropped and floating
    tensors are cast to float32 (OpenAI archives are partly float16).

    Args:
        path: The checkpoint file.
        trust_checkpoint: Allow reading pickle-based formats.
        safe_pickle: Read a ``torch.save`` file without ``trust_checkpoint`` through torch's
            restricted ``weights_only`` unpickler (tensors and plain containers only; it cannot run
            code). Used for files that open_clip / timm fetched from the Hugging Face hub, which
            those libraries read the same way.

    Returns:
        A mapping from parameter/buffer name to tensor.

    Raises:
        CheckpointError: The file is missing, unreadable, untrusted or holds no state dict.
    """
    p = _existing_file(path)
    fmt = checkpoint_format(p)
    restricted = fmt == "pickle" and safe_pickle and not trust_checkpoint
    if fmt != "safetensors" and not trust_checkpoint and not restricted:
        raise CheckpointError(_untrusted_message(p, fmt))
    try:
        if fmt == "safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(p), device="cpu")
        elif fmt == "torchscript":
            with warnings.catch_warnings():
                # torch >= 2.9 deprecates TorchScript; reading the weights out once is still fine.
                warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=FutureWarning)
                obj = torch.jit.load(str(p), map_location="cpu").state_dict()
        else:
            obj = torch.load(str(p), map_location="cpu", weights_only=restricted)
    except CheckpointError:
        raise
    except Exception as e:  # corrupt files surface as many different exception types
        raise CheckpointError(f"Cannot read {fmt} checkpoint '{p}': {type(e).__name__}: {e}") from e
    return _normalize_state_dict(obj, p)


# --------------------------------------------------------------------------- model building


class _DropMessages(logging.Filter):
    """Logging filter that drops records whose message starts with a given prefix."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


@contextlib.contextmanager
def _quiet_random_init_warning() -> Iterator[None]:
    """Hide open_clip's "initialized randomly" warning: vlprompt loads weights itself."""
    flt = _DropMessages("No pretrained weights loaded for model")
    root = logging.getLogger()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def _check_arch(arch: str) -> None:
    register_configs()
    if ensure_quickgelu_variant(arch):
        return
    known = open_clip.list_models()
    if arch in known:
        return
    close = difflib.get_close_matches(arch, known, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"Unknown architecture '{arch}'.{hint} See open_clip.list_models() (or "
        "vlprompt.backbones.configs.list_architectures()) for all names."
    )


def _tower_hint(arch: str, model_keys: set[str], ckpt_keys: set[str]) -> str:
    """A one-line guess at what the checkpoint is, when it clearly is something else."""
    model_vit = "visual.class_embedding" in model_keys
    model_rn = any(k.startswith("visual.layer1.") for k in model_keys)
    ckpt_vit = "visual.class_embedding" in ckpt_keys
    ckpt_rn = any(k.startswith("visual.layer1.") for k in ckpt_keys)
    if model_vit and ckpt_rn:
        return f" Hint: the checkpoint's image tower is a ResNet (RN50-style) but '{arch}' is a ViT."
    if model_rn and ckpt_vit:
        return f" Hint: the checkpoint's image tower is a ViT but '{arch}' is a ResNet."
    if any(k.startswith(("vision_model.", "text_model.")) for k in ckpt_keys):
        return (
            " Hint: this looks like a Hugging Face transformers CLIP checkpoint; vlprompt expects "
            "open_clip / OpenAI key names."
        )
    return ""


def _fmt_shape(shape: torch.Size) -> str:
    return str(tuple(shape))


def _match_state_dict(
    arch: str, model: torch.nn.Module, state: dict[str, torch.Tensor], p: Path
) -> dict[str, torch.Tensor]:
    """Check ``state`` against ``model`` key by key and shape by shape; return what to load."""
    model_sd = model.state_dict()
    persistent = set(model_sd)
    # Buffers open_clip does not persist (e.g. the causal ``attn_mask``) may appear in older
    # checkpoints; they are rebuilt by the model, so such entries are ignored.
    transient = {name for name, _ in model.named_buffers()} - persistent
    state = dict(state)
    for key in list(state):
        if key in transient or (key not in persistent and key.rsplit(".", 1)[-1] == "attn_mask"):
            del state[key]

    # Scalars saved as shape () vs (1,) (open_clip's logit_scale/logit_bias history).
    for key in ("logit_scale", "logit_bias"):
        if key in state and key in model_sd and state[key].shape != model_sd[key].shape:
            if state[key].numel() == model_sd[key].numel() == 1:
                state[key] = state[key].reshape(model_sd[key].shape)

    missing = [k for k in model_sd if k not in state]
    # BatchNorm's step counter does not affect eval outputs; tolerate checkpoints without it.
    tolerated = [k for k in missing if k.endswith("num_batches_tracked")]
    missing = [k for k in missing if k not in tolerated]
    unexpected = [k for k in state if k not in model_sd]
    mismatched = [
        f"{k}: checkpoint {_fmt_shape(state[k].shape)} vs {arch} {_fmt_shape(model_sd[k].shape)}"
        for k in model_sd
        if k in state and state[k].shape != model_sd[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        ):
            if items:
                more = f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:_MAX_LISTED])}{more}")
        raise CheckpointError(
            f"Checkpoint '{p}' does not match architecture '{arch}': "
            + "; ".join(parts)
            + "."
            + _tower_hint(arch, set(model_sd), set(state))
        )
    for key in tolerated:
        state[key] = model_sd[key]
    return state


# --------------------------------------------------------------------------- activation (GELU / QuickGELU)

#: safetensors metadata key in which vlprompt records the activation a CLIP checkpoint needs.
ACTIVATION_KEY = "activation"
_ACTIVATION_VALUES = {"quick_gelu": True, "gelu": False}


def activation_metadata(quick_gelu: bool) -> dict[str, str]:
    """The safetensors metadata entry recording a CLIP checkpoint's activation.

    Example:
        >>> activation_metadata(True)
        {'activation': 'quick_gelu'}
    """
    return {ACTIVATION_KEY: "quick_gelu" if quick_gelu else "gelu"}


def _safetensors_metadata(p: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # corrupt header: read_checkpoint reports it with the file name
        logger.debug("Cannot read safetensors metadata of %s: %s", p, e)
        return {}


def recorded_activation(path: StrPath) -> bool | None:
    """The activation a checkpoint file says its weights need: ``True`` = QuickGELU, ``False`` = GELU.

    * a TorchScript archive is OpenAI's own format: QuickGELU;
    * a ``.safetensors`` file with an ``activation`` metadata entry (``"quick_gelu"`` / ``"gelu"``,
      written by :func:`convert_checkpoint`; ``vlprompt pretrain-tiny`` writes it inside its one
      ``vlprompt`` JSON entry): that value;
      one that :func:`convert_checkpoint` made from a TorchScript archive before the entry existed:
      QuickGELU;
    * anything else (a plain open_clip state dict): ``None``, the file does not say.

    Raises:
        CheckpointError: The file is missing or in no known format.
    """
    p = _existing_file(path)
    fmt = checkpoint_format(p)
    if fmt == "torchscript":
        return True
    if fmt != "safetensors":
        return None
    meta = _safetensors_metadata(p)
    value = meta.get(ACTIVATION_KEY)
    if value is None and "vlprompt" in meta:  # pretrain-tiny keeps one JSON metadata entry (deterministic bytes)
        try:
            inner = json.loads(meta["vlprompt"])
        except ValueError:
            inner = None
        value = inner.get(ACTIVATION_KEY) if isinstance(inner, dict) else None
    if value is not None:
        if value not in _ACTIVATION_VALUES:
            raise CheckpointError(
                f"Checkpoint '{p}' records {ACTIVATION_KEY}={value!r}; expected one of {sorted(_ACTIVATION_VALUES)}."
            )
        return _ACTIVATION_VALUES[value]
    if meta.get("format") == "vlprompt-converted" and meta.get("source_format") == "torchscript":
        return True
    return None


@functools.lru_cache(maxsize=1)
def openai_quick_gelu_archs() -> frozenset[str]:
    """Architectures whose OpenAI release (open_clip's ``openai`` pretrained tag) uses QuickGELU.

    Read from open_clip's pretrained table: ``RN50``, ``RN101``, ``RN50x4``, ``RN50x16``, ``RN50x64``,
    ``ViT-B-32``, ``ViT-B-16``, ``ViT-L-14``, ``ViT-L-14-336`` with open_clip 3.3.
    """
    from open_clip.pretrained import get_pretrained_cfg

    return frozenset(
        arch for arch, tag in open_clip.list_pretrained()
        if tag == "openai" and get_pretrained_cfg(arch, tag).get("quick_gelu", False)
    )


def uses_quick_gelu(model: torch.nn.Module) -> bool:
    """Whether a built open_clip model runs QuickGELU activations."""
    return any(isinstance(m, open_clip.transformer.QuickGELU) for m in model.modules())


def _ambiguous_message(arch: str, p: Path) -> str:
    base = arch[: -len(QUICKGELU_SUFFIX)] if arch.endswith(QUICKGELU_SUFFIX) else arch
    return (
        f"'{p}' is a plain state dict that does not record its activation, loaded into {arch}, whose OpenAI "
        "release uses QuickGELU; it is built with GELU. If these are OpenAI weights every feature would be "
        f"wrong: pass --quick-gelu (API: force_quick_gelu=True) or use the architecture '{base}{QUICKGELU_SUFFIX}'. "
        "If they were trained with GELU (e.g. LAION), pass --no-quick-gelu (API: force_quick_gelu=False)."
    )


def resolve_activation(arch: str, weights: StrPath | None = None, force_quick_gelu: bool | None = None) -> bool:
    """Decide whether ``arch`` is built with QuickGELU (``True``) or its config's activation.

    In order: ``force_quick_gelu`` when given, or a ``-quickgelu`` architecture name (the user's
    explicit choice; when the file records the other activation a :class:`VlpromptWarning` says so);
    then what the weights file records (:func:`recorded_activation`); otherwise the architecture's
    own setting. In that last case, when ``arch`` is one whose OpenAI release uses QuickGELU
    (:func:`openai_quick_gelu_archs`) and weights were given, one :class:`VlpromptWarning` gives the
    exact fix: OpenAI weights saved as a plain state dict would otherwise silently run with GELU.

    Raises:
        ConfigError: ``force_quick_gelu=False`` for a ``-quickgelu`` architecture (contradiction).
    """
    named = config_quick_gelu(arch)
    if named and force_quick_gelu is False:
        base = arch[: -len(QUICKGELU_SUFFIX)] if arch.endswith(QUICKGELU_SUFFIX) else arch
        raise ConfigError(
            f"'{arch}' is a QuickGELU architecture, which --no-quick-gelu (force_quick_gelu=False) contradicts; "
            f"use '{base}' for GELU"
        )
    p = _existing_file(weights) if weights is not None else None
    recorded = recorded_activation(p) if p is not None else None
    explicit = True if named else force_quick_gelu
    if explicit is not None:
        if p is not None and recorded is not None and recorded != explicit:
            said = "QuickGELU" if recorded else "GELU"
            used = "QuickGELU" if explicit else "GELU"
            warnings.warn(
                f"'{p}' records that its weights need {said}, but {arch} is built with {used} as asked "
                f"({'the -quickgelu name' if named else '--quick-gelu / --no-quick-gelu'}); drop that to "
                "use the recorded activation",
                VlpromptWarning,
                stacklevel=3,
            )
        return explicit
    if recorded is not None:
        logger.info("'%s' records %s: building %s with it.", p, "QuickGELU" if recorded else "GELU", arch)
        return recorded
    if p is not None and arch in openai_quick_gelu_archs():
        warnings.warn(_ambiguous_message(arch, p), VlpromptWarning, stacklevel=3)
    return False


def build_model(
    arch: str,
    weights: StrPath | None = None,
    trust_checkpoint: bool = False,
    force_quick_gelu: bool | None = None,
    safe_pickle: bool = False,
) -> open_clip.CLIP | open_clip.CustomTextCLIP:
    """Create an open_clip model in fp32 on the CPU, in eval mode, optionally with weights.

    Nothing is downloaded: the architecture is built with ``pretrained=None`` and the weights,
    if given, come from a local file read by :func:`read_checkpoint` and loaded strictly.

    OpenAI's CLIP models were trained with QuickGELU; GELU gives different features (about 3e-2
    max abs with random weights). The activation is chosen by :func:`resolve_activation`:
    ``force_quick_gelu`` (``True`` / ``False``) or a ``-quickgelu`` architecture name when given,
    else what the file records (TorchScript archives, i.e. OpenAI's ``.pt`` format, and
    ``.safetensors`` files written by :func:`convert_checkpoint` from them: QuickGELU; any
    ``.safetensors`` with vlprompt's ``activation`` metadata: that), else the architecture's own
    setting, with a warning naming the fix when a plain state dict meets an architecture whose
    OpenAI release uses QuickGELU.

    Args:
        arch: An open_clip architecture name, e.g. ``"ViT-B-16"``, ``"ViT-B-16-quickgelu"`` or
            ``"tiny-clip"`` (``-quickgelu`` works on every architecture).
        weights: Optional checkpoint file (safetensors, TorchScript archive or state dict).
        trust_checkpoint: Allow pickle-based checkpoint formats (see :func:`read_checkpoint`).
        force_quick_gelu: ``True``: QuickGELU; ``False``: the architecture's GELU; ``None``:
            decide as described above.
        safe_pickle: Read a ``torch.save`` file with torch's restricted unpickler (see
            :func:`read_checkpoint`).

    Returns:
        The model (``open_clip.CLIP`` or ``open_clip.CustomTextCLIP``) in eval mode.

    Raises:
        ConfigError: ``arch`` is unknown (the message lists close matches), or the activation
            asked for contradicts the architecture name.
        CheckpointError: The weights cannot be read, are untrusted, or do not match ``arch``.

    Example:
        >>> model = build_model("ViT-B-16", "ViT-B-16.safetensors", force_quick_gelu=True)
    """
    _check_arch(arch)
    state: dict[str, torch.Tensor] | None = None
    p: Path | None = None
    if weights is not None:
        p = _existing_file(weights)
    quick_gelu = resolve_activation(arch, p, force_quick_gelu)
    if p is not None:
        state = read_checkpoint(p, trust_checkpoint=trust_checkpoint, safe_pickle=safe_pickle)

    with _quiet_random_init_warning():
        model = open_clip.create_model(
            arch,
            pretrained=None,
            precision="fp32",
            device="cpu",
            force_quick_gelu=quick_gelu,
            pretrained_image=False,
            pretrained_text=False,
        )

    if state is None or p is None:
        logger.info("No weights given for '%s': the model is randomly initialised.", arch)
    else:
        to_load = _match_state_dict(arch, model, state, p)
        model.load_state_dict(to_load, strict=True)
        logger.info("Loaded '%s' weights from %s (%s).", arch, p, "QuickGELU" if quick_gelu else "GELU")
    return model.eval()


# --------------------------------------------------------------------------- conversion


def _owned_contiguous(t: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor that owns exactly its storage (safetensors refuses shared memory)."""
    t = t.detach().contiguous()
    if t.untyped_storage().nbytes() != t.numel() * t.element_size():
        t = t.clone()
    return t


def _is_clip_state(state: Mapping[str, torch.Tensor]) -> bool:
    return "text_projection" in state and any(k.startswith("visual.") for k in state)


def convert_checkpoint(
    src: StrPath, dst: StrPath, trust_checkpoint: bool = False, quick_gelu: bool | None = None
) -> Path:
    """Convert a checkpoint to a ``.safetensors`` file that loads without trusting pickle.

    ``src`` is read with :func:`read_checkpoint` (same trust rule and clean-up: unwrapped,
    prefix-stripped, float32). The output is written to a temporary file next to ``dst`` and
    renamed into place, so an interrupted conversion never leaves a partial ``dst``. Its
    metadata records ``{"format": "vlprompt-converted", "source_format": <format of src>}`` and,
    when it is known, the activation the weights need (``"activation": "quick_gelu"`` or ``"gelu"``,
    honoured by :func:`build_model`): ``quick_gelu`` when given, else what ``src`` records
    (:func:`recorded_activation`; a TorchScript archive is OpenAI's, QuickGELU). A CLIP state dict
    whose activation is unknown is written without it, with a :class:`VlpromptWarning` saying how to
    record it.

    Args:
        src: The checkpoint to convert.
        dst: The output path; must end with ``.safetensors``.
        trust_checkpoint: Allow reading a pickle-based ``src``.
        quick_gelu: Record QuickGELU (``True``) or GELU (``False``); ``None``: what ``src`` records.

    Returns:
        The path of the written file.

    Raises:
        CheckpointError: ``dst`` has the wrong suffix, or ``src`` cannot be read or is untrusted.
    """
    out = Path(dst).expanduser()
    if out.suffix != ".safetensors":
        raise CheckpointError(f"Conversion output must end with .safetensors, got '{out}'.")
    src_path = _existing_file(src)
    fmt = checkpoint_format(src_path)
    state = read_checkpoint(src_path, trust_checkpoint=trust_checkpoint)
    activation = quick_gelu if quick_gelu is not None else recorded_activation(src_path)
    metadata = {"format": "vlprompt-converted", "source_format": fmt}
    if activation is not None:
        metadata.update(activation_metadata(activation))
    elif _is_clip_state(state):
        warnings.warn(
            f"'{src_path}' does not say which activation its weights need, so '{out}' does not record it either; "
            "convert with --quick-gelu (OpenAI weights) or --no-quick-gelu (GELU, e.g. LAION) to record it "
            "(API: quick_gelu=True / False)",
            VlpromptWarning,
            stacklevel=2,
        )
    tensors = {k: _owned_contiguous(v) for k, v in state.items()}

    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, out)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise CheckpointError(f"Cannot write '{out}': {e}") from e
        raise
    logger.info("Converted %s checkpoint '%s' to '%s' (%d tensors).", fmt, src_path, out, len(tensors))
    return out


# --------------------------------------------------------------------------- hashing

_SHA_CACHE: dict[tuple[str, int, int], str] = {}
_SHA_LOCK = threading.Lock()
_CHUNK = 4 * 1024 * 1024


def file_sha256(path: StrPath) -> str:
    """SHA-256 hex digest of a file, streamed, and cached in-process by (path, size, mtime).

    Used as the weights id of feature caches: the same bytes give the same id wherever the
    file lives, and rewriting the file changes its size or mtime and so invalidates the cache.

    Raises:
        CheckpointError: The file is missing or unreadable.
    """
    p = _existing_file(path)
    try:
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        with _SHA_LOCK:
            cached = _SHA_CACHE.get(key)
        if cached is not None:
            return cached
        h = hashlib.sha256()
        with p.open("rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as e:
        raise CheckpointError(f"Cannot read '{p}': {e}") from e
    digest = h.hexdigest()
    with _SHA_LOCK:
        _SHA_CACHE[key] = digest
    return digest
