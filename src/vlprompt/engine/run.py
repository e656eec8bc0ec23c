"""Run directories: atomic writes of config, metrics, results, prompt and checkpoints.

Layout::

    RUN/
      config.yaml        fully resolved configuration
      metrics.jsonl      one JSON line per epoch
      results.json       final numbers + environment
      prompt.safetensors trainable weights      prompt.json  how to reload them
      split.json         the few-shot sample (paths relative to the dataset's image dir)
      log.txt            human-readable log
      checkpoint/last.pt state for exact resume (with the metrics rows up to its epoch)
      checkpoint/prev.pt the checkpoint before it (the fallback when last.pt is unreadable)

Every file is written to a temp file ``.<name>.tmp<pid>`` in the same folder, flushed to disk and
renamed over the old one; a failed write removes its temp file. A folder that is not writable or a
full disk raise :class:`~vlprompt.errors.OutputError` naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from ..errors import CheckpointError, OutputError
from ..workers import pid_alive

logger = logging.getLogger(__name__)

#: errno values of a write that fails because of the place, not the program: reported as OutputError
OUTPUT_ERRNOS = {
    errno.EACCES: "not writable (permission denied)",
    errno.EPERM: "not writable (operation not permitted)",
    errno.EROFS: "not writable (read-only file system)",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
}

_TEMP = re.compile(r"^\..+\.tmp(\d*)$")
RESTART_HINT = "run `vlprompt train` again with --restart (or delete {where}) to start over"


@contextlib.contextmanager
def output_errors(path: Path) -> Iterator[None]:
    """Turn a write's ``OSError`` caused by the place (read-only, full disk) into one :class:`OutputError`.

    Any other ``OSError`` keeps its traceback.
    """
    try:
        yield
    except OSError as exc:
        cause = OUTPUT_ERRNOS.get(exc.errno)
        if cause is None:
            raise
        hint = "free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "make the folder writable"
        raise OutputError(f"cannot write {path}: {cause}; {hint} or write elsewhere") from exc


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` via a temp file + rename (never a half-written file).

    The temp file is flushed to disk before the rename and removed if the write fails.
    """
    path = Path(path)
    with output_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_path(path)
        try:
            with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise


def _writer_alive(path: Path, pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours, from before: this process writes nothing while it cleans up
    try:
        written_at = path.stat().st_mtime
    except OSError:
        return False
    return pid_alive(pid, written_at=written_at)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove leftover temp files ``.<name>.tmp<pid>`` in ``folder`` whose writer is gone.

    A file of a live process is kept; one whose pid is dead, a zombie or reused by a process started after
    the file was written is removed, as is one without a pid (older versions).
    Returns the removed paths.
    """
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TEMP.match(p.name)
        if m is None or not p.is_file() or (m.group(1) and _writer_alive(p, int(m.group(1)))):
            continue
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    return removed


def _checkpoint_problem(state: Any) -> str | None:
    if not isinstance(state, dict):
        return f"holds a {type(state).__name__}, not a checkpoint"
    missing = [k for k in ("epoch", "fingerprint", "model", "optimizer", "train_seconds") if k not in state]
    return f"lacks {missing}" if missing else None


class RunDir:
    """Reads and writes the files of one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # ---------------------------------------------------------------- files
    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint" / "last.pt"

    @property
    def previous_checkpoint_path(self) -> Path:
        return self.path / "checkpoint" / "prev.pt"

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict[str, Any]:
        p = self.path / "config.yaml"
        return yaml.safe_load(p.read_text()) if p.exists() else {}

    def write_results(self, results: dict[str, Any]) -> None:
        atomic_write(self.path / "results.json", json.dumps(results, indent=2) + "\n")

    def read_results(self) -> dict[str, Any] | None:
        p = self.path / "results.json"
        return json.loads(p.read_text()) if p.exists() else None

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        atomic_write(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    def read_metrics(self) -> list[dict[str, Any]]:
        p = self.path / "metrics.jsonl"
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []

    def log(self, message: str) -> None:
        path = self.path / "log.txt"
        with output_errors(path):
            self.path.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            with open(path, "a") as f:
                f.write(f"[{stamp}] {message}\n")

    def start(self, restart: bool = False) -> None:
        """Create the folder for a (resumed) run: remove temp files left by failed or killed writes and,
        with ``restart``, move the old checkpoint aside (:meth:`discard_checkpoint`)."""
        with output_errors(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
        self.remove_stale_temps()
        if restart:
            self.discard_checkpoint()

    def remove_stale_temps(self) -> list[Path]:
        """Remove temp files left by failed or killed writes (see :func:`remove_stale_temps`)."""
        removed = remove_stale_temps(self.path) + remove_stale_temps(self.path / "checkpoint")
        if removed:
            self.log(f"removed leftover temp files: {', '.join(str(p.relative_to(self.path)) for p in removed)}")
        return removed

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write ``checkpoint/last.pt``; the one it replaces stays as ``checkpoint/prev.pt``."""
        buf = io.BytesIO()
        torch.save(state, buf)
        last, prev = self.checkpoint_path, self.previous_checkpoint_path
        with output_errors(last):
            last.parent.mkdir(parents=True, exist_ok=True)
            tmp = _temp_path(last)
            try:
                with open(tmp, "wb") as f:
                    f.write(buf.getbuffer())
                    f.flush()
                    os.fsync(f.fileno())
                if last.exists():
                    os.replace(last, prev)  # a kill here leaves prev.pt: load_checkpoint falls back to it
                os.replace(tmp, last)
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise

    def _read_checkpoint(self, path: Path) -> tuple[dict[str, Any] | None, str | None]:
        """``(state, None)`` or ``(None, why it is unusable)``."""
        try:
            # our own file, plain tensors and numbers: loadable without unpickling code
            state = torch.load(path, map_location="cpu", weights_only=True)
        except OSError:
            raise
        except Exception as exc:  # truncated or corrupt: torch.load's failures are many (RuntimeError, EOFError...)
            text = str(exc).split(". ")[0].splitlines()[0] if str(exc).strip() else "truncated"
            return None, f"{type(exc).__name__}: {text}"
        problem = _checkpoint_problem(state)
        return (None, problem) if problem else (state, None)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The latest usable checkpoint, or ``None`` when the run has none.

        An unreadable ``last.pt`` (truncated, corrupt) falls back to ``prev.pt`` with a log line;
        when no checkpoint is usable, a :class:`~vlprompt.errors.CheckpointError` names the file
        and how to start over.
        """
        last, prev = self.checkpoint_path, self.previous_checkpoint_path
        if not last.exists() and not prev.exists():
            return None
        problems = []
        for path in (last, prev):
            if not path.exists():
                continue
            state, why = self._read_checkpoint(path)
            if state is not None:
                if problems:
                    msg = f"{problems[0]}; resuming from {path} (epoch {state['epoch']})"
                    logger.warning(msg)
                    self.log(msg)
                return state
            problems.append(f"checkpoint {path} is unreadable ({why})")
        raise CheckpointError(
            f"{'; '.join(problems)}; {RESTART_HINT.format(where=last.parent)}"
        )

    def discard_checkpoint(self) -> Path | None:
        """Move the checkpoints aside to ``checkpoint/discarded/`` (replacing an older discard), so
        the next training starts at epoch 0. Returns that folder, or ``None`` if there was nothing."""
        files = [p for p in (self.checkpoint_path, self.previous_checkpoint_path) if p.exists()]
        if not files:
            return None
        aside = self.checkpoint_path.parent / "discarded"
        with output_errors(aside):
            if aside.exists():
                shutil.rmtree(aside)
            aside.mkdir(parents=True)
            for p in files:
                os.replace(p, aside / p.name)
        self.log(f"restart: moved the checkpoint to {aside.relative_to(self.path)}/")
        return aside
