"""Pretrained weights by tag (``pretrained="openai"``), fetched by open_clip's and timm's own machinery.

vlprompt has no downloader. A tag is resolved to a local file by the library that defines it:

* open_clip architectures: ``open_clip.pretrained.get_pretrained_cfg(arch, tag)`` and
  ``open_clip.pretrained.download_pretrained`` (the Hugging Face hub via ``hf_hub_download``, which
  prefers ``open_clip_model.safetensors`` over ``open_clip_pytorch_model.bin``; a few tags only have a
  URL, which open_clip caches under ``~/.cache/clip``);
* timm models: the tag's ``pretrained_cfg`` (``timm.models.get_pretrained_cfg``), its source as timm
  resolves it, and timm's ``hf_hub_download`` (``model.safetensors``, else ``pytorch_model.bin``, or
  the config's own file name), or timm's ``download_cached_file`` for URL-only weights.

Files land in the Hugging Face cache (``$HF_HOME/hub``, default ``~/.cache/huggingface/hub``,
laid out as ``models--<org>--<name>/snapshots/<revision>/<file>`` with ``refs/main`` naming the
revision). Once there they load with ``HF_HUB_OFFLINE=1`` and no network. The file is then loaded
like any ``weights=`` file (strict key / shape check, sha256 weights id), so a run records it
and ``vlprompt eval`` reloads it from the cache.

open_clip 3.3's ``create_model(arch, pretrained=tag)`` does not switch to QuickGELU for tags that
need it (``openai`` and others); it only warns. vlprompt builds such tags with QuickGELU, from the
tag's own ``quick_gelu`` entry.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

__all__ = ["hub_cache_dir", "list_backbones", "resolve_open_clip_pretrained", "resolve_timm_pretrained"]


def hub_cache_dir() -> str:
    """The Hugging Face hub cache folder in use (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _repo_folder(repo_id: str) -> str:
    """Where huggingface_hub caches a model repository (``models--org--name``)."""
    return os.path.join(hub_cache_dir(), "models--" + repo_id.replace("/", "--"))


def _offline_note() -> str:
    from huggingface_hub import constants

    return " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""


def _unavailable(what: str, folder: str, error: BaseException) -> CheckpointError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if len(reason) > 200:
        reason = reason[:200] + " ..."
    return CheckpointError(
        f"pretrained weights {what} are not in the cache ({folder}) and cannot be downloaded{_offline_note()}: "
        f"{reason}. Fetch them once where there is internet (the same command fills that cache; copy the folder "
        "or set HF_HOME), or pass a local checkpoint file with --weights PATH (API: weights=PATH) instead of "
        "--pretrained."
    )


def resolve_open_clip_pretrained(arch: str, tag: str) -> tuple[Path, dict]:
    """The local file of open_clip's pretrained ``tag`` for ``arch`` (downloaded once, then cached).

    Returns:
        ``(path, pretrained_cfg)``; the config's ``quick_gelu`` says which activation the weights need
        and ``mean`` / ``std`` their input normalisation.

    Raises:
        ConfigError: ``tag`` is not a pretrained tag of ``arch`` (the message lists the known ones).
        CheckpointError: the file is neither cached nor downloadable (names the tag, the cache folder
            and ``--weights``).

    Example:
        >>> path, cfg = resolve_open_clip_pretrained("ViT-B-16", "openai")
    """
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg, has_hf_hub, list_pretrained_tags_by_model

    cfg = get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = list_pretrained_tags_by_model(arch)
        known = f"known tags: {', '.join(tags)}" if tags else "it has no pretrained tags in open_clip"
        raise ConfigError(f"{tag!r} is not a pretrained tag of {arch}; {known} (`vlprompt backbones` lists them)")
    hub = cfg.get("hf_hub", "")
    if hub and has_hf_hub():
        repo_id = os.path.split(hub)[0]
        folder = _repo_folder(repo_id)
    else:
        folder = os.path.expanduser("~/.cache/clip")
    try:
        path = download_pretrained(cfg)
    except Exception as e:  # huggingface_hub / urllib raise many types (offline, 404, DNS ...)
        raise _unavailable(f"'{arch}' --pretrained {tag}", folder, e) from e
    if not path:
        raise CheckpointError(f"open_clip has no download location for {arch} --pretrained {tag}; pass --weights PATH")
    logger.info("%s --pretrained %s: %s", arch, tag, path)
    return Path(path), dict(cfg)


def resolve_timm_pretrained(arch: str) -> Path:
    """The local file of a tagged timm model's pretrained weights, e.g. ``vit_base_patch16_224.augreg_in21k``.

    Resolved as timm resolves it (``pretrained_cfg`` → hub id / file name / URL) and fetched by timm's
    own ``hf_hub_download`` / ``download_cached_file``.

    Raises:
        ConfigError: timm knows no pretrained weights for ``arch``.
        CheckpointError: the file is neither cached nor downloadable.
    """
    import timm
    from timm.models import _hub, get_pretrained_cfg
    from timm.models._builder import _resolve_pretrained_source

    base, _, tag = arch.partition(".")
    cfg = get_pretrained_cfg(arch) if tag else None
    if cfg is None:
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{base}.*")]
        known = f"known tags: {', '.join(tags)}" if tags else "timm has no pretrained weights for it"
        raise ConfigError(f"no pretrained weights {arch!r} in timm; {known}")
    load_from, loc = _resolve_pretrained_source(cfg.to_dict())
    folder = hub_cache_dir()
    try:
        if load_from == "hf-hub":
            repo, filename = loc if isinstance(loc, (tuple, list)) else (loc, None)
            folder = _repo_folder(_hub.hf_split(repo)[0])
            return Path(_timm_hub_file(repo, filename))
        if load_from == "url":
            folder = _hub.get_cache_dir()
            return Path(_hub.download_cached_file(loc))
        if load_from == "file":
            return Path(loc)
    except CheckpointError:
        raise
    except Exception as e:  # huggingface_hub / torch.hub raise many types
        raise _unavailable(f"'timm:{arch}'", folder, e) from e
    raise CheckpointError(f"timm's pretrained config of {arch!r} names no weight file; pass --weights PATH")


def _timm_hub_file(repo: str, filename: str | None) -> str:
    """timm's choice of file in a hub repository: the named one, else safetensors before the pickle."""
    from huggingface_hub.errors import EntryNotFoundError
    from timm.models import _hub

    repo_id, revision = _hub.hf_split(repo)
    if filename:
        return _hub.hf_hub_download(repo_id, filename=filename, revision=revision)
    try:
        return _hub.hf_hub_download(repo_id, filename=_hub.HF_SAFE_WEIGHTS_NAME, revision=revision)
    except EntryNotFoundError:
        return _hub.hf_hub_download(repo_id, filename=_hub.HF_WEIGHTS_NAME, revision=revision)


def list_backbones(include_timm: bool = True) -> dict[str, list[str]]:
    """Architectures by name with their known pretrained tags (open_clip's table; timm's for ``timm:`` names).

    Every open_clip architecture is listed (including vlprompt's ``tiny-clip``), tags or not; timm
    ViT and Swin models are listed when timm has pretrained weights for them, as ``timm:<model>``.

    Example:
        >>> list_backbones()["ViT-B-16"][:2]
        ['openai', 'laion400m_e31']
    """
    import open_clip

    from .configs import register_configs

    register_configs()
    out: dict[str, list[str]] = {name: [] for name in sorted(open_clip.list_models())}
    for arch, tag in open_clip.list_pretrained():
        out.setdefault(arch, []).append(tag)
    if include_timm:
        import timm

        for full in timm.list_pretrained(["vit_*", "swin_*"]):
            base, _, tag = full.partition(".")
            out.setdefault(f"timm:{base}", []).append(tag)
    return out
