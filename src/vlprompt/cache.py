"""The vlprompt cache folder and the folder swap used by everything generated into it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def cache_root() -> Path:
    """``$VLPROMPT_CACHE``, else ``$XDG_CACHE_HOME/vlprompt``, else ``~/.cache/vlprompt`` (absolute)."""
    cache = os.environ.get("VLPROMPT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "vlprompt")
    return Path(os.path.abspath(os.path.expanduser(cache)))


def replace_dir(tmp: Path, target: Path) -> Path:
    """Move the finished folder ``tmp`` to ``target``, replacing what is there.

    The old folder is moved aside and deleted after the swap, so a reader sees no folder only between two
    renames (never a half-deleted one). If another process put its folder in place first, its copy is kept
    and ``tmp`` is deleted.
    """
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old{os.getpid()}")
        os.replace(target, old)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, target)
    except OSError:  # another process won the race: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target
