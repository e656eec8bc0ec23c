"""Run locks: a sweep claims a run with ``<run>/sweep.lock`` before executing it.

Two sweeps started on the same output folder therefore never run the same run at once: the lock is
created atomically with its content (written to a private file, then hard-linked to ``sweep.lock``,
which fails if the lock exists; ``O_CREAT | O_EXCL`` where the file system has no hard links) and holds
the owner's pid, host name and start time, so a crash never leaves an empty lock behind. A lock
whose owner is gone (its pid is dead on this host, reused by another process, or the host rebooted) is
stale and is taken over; a lock written on another host cannot be checked and is respected (delete the
file by hand when that sweep is known to be dead). The lock is removed when the run ends.

Example:
    >>> lock = RunLock("runs/x/few-shot/coop/dtd/shots16/seed1")
    >>> claim = lock.acquire()
    >>> if claim.ok:
    ...     ...  # run it
    ...     lock.release()
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlprompt.workers import pid_alive, proc_start

LOCK_FILE = "sweep.lock"
#: a lock file without readable content older than this is the remains of a crashed writer
_EMPTY_STALE_SECONDS = 30.0


#: private files a lock is written to before it is linked into place (``.sweep.lock.draft-<pid>-<hex>``)
_DRAFT_PREFIX = f".{LOCK_FILE}.draft-"


def _remove_dead_drafts(folder: Path) -> None:
    """Delete lock drafts left by writers killed between writing and removing them. A draft lives for
    microseconds, so one older than ``_EMPTY_STALE_SECONDS`` is such a remain (on any host)."""
    now = time.time()
    for draft in folder.glob(f"{_DRAFT_PREFIX}*"):
        try:
            if now - draft.stat().st_mtime > _EMPTY_STALE_SECONDS:
                draft.unlink(missing_ok=True)
        except OSError:
            continue


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _read(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def hostname() -> str:
    return socket.gethostname()


def lock_info() -> dict[str, Any]:
    """What this process writes into a lock."""
    pid = os.getpid()
    return {"pid": pid, "host": hostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "pid_start": proc_start(pid), "boot_id": _boot_id(), "token": uuid.uuid4().hex}


def owner_alive(info: dict[str, Any]) -> bool | None:
    """True / False for a lock written on this host; None for another host's (cannot be checked)."""
    if info.get("host") != hostname():
        return None
    boot = _boot_id()
    if info.get("boot_id") and boot and info["boot_id"] != boot:
        return False  # written before a reboot
    pid = info.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    pid_start = info.get("pid_start")
    return pid_alive(pid, pid_start=pid_start if isinstance(pid_start, str) else None)


def describe(info: dict[str, Any]) -> str:
    """``pid 123 on host h since 2026-...`` for messages."""
    since = f" since {info['started']}" if info.get("started") else ""
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}{since}"


@dataclass
class Claim:
    """The outcome of :meth:`RunLock.acquire`: ``ok``; else ``holder`` = the live (or foreign) owner's lock.
    ``stale`` = the dead owner's lock that was taken over, if any."""

    ok: bool
    holder: dict[str, Any] | None = None
    stale: dict[str, Any] | None = None


class RunLock:
    """The lock file of one run directory."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.info: dict[str, Any] | None = None

    def read(self) -> dict[str, Any] | None:
        """The lock's content; ``{}`` when it exists but cannot be read as a lock; None when absent."""
        return _read(self.path)

    def is_stale(self, info: dict[str, Any]) -> bool:
        if not info:  # being written right now, or the writer crashed between create and write
            try:
                return time.time() - self.path.stat().st_mtime > _EMPTY_STALE_SECONDS
            except OSError:
                return False
        return owner_alive(info) is False

    def holder(self) -> dict[str, Any] | None:
        """The owner of a live (or foreign) lock; None when unlocked or stale."""
        info = self.read()
        if info is None or self.is_stale(info):
            return None
        return info or {"pid": "?", "host": "?"}

    def _create(self) -> bool:
        """Create the lock with its content in one step: a lock file is never seen empty, even when
        the writer is killed (an empty lock would be respected as live for ``_EMPTY_STALE_SECONDS``)."""
        info = lock_info()
        _remove_dead_drafts(self.path.parent)
        draft = self.path.with_name(f"{_DRAFT_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            draft.write_text(json.dumps(info) + "\n")
            try:
                os.link(draft, self.path)
            except FileExistsError:
                return False
            except OSError:  # no hard links on this file system: exclusive create, then write
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps(info) + "\n")
        finally:
            draft.unlink(missing_ok=True)
        self.info = info
        return True

    def acquire(self) -> Claim:
        """Claim the run: create the lock, or take over a stale one. Never blocks."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stale: dict[str, Any] | None = None
        for _ in range(5):
            if self._create():
                return Claim(True, stale=stale)
            info = self.read()
            if info is None:
                continue  # released meanwhile: try again
            if not self.is_stale(info):
                return Claim(False, holder=info or {"pid": "?", "host": "?"})
            # stale: move it aside (atomic; only one contender succeeds), check it was the stale one
            aside = self.path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                continue  # another sweep took it over first
            moved = _read(aside) or {}
            if moved != info and moved:  # a fresh lock was created between our read and rename: give it back
                try:
                    os.link(aside, self.path)
                except OSError:
                    pass
                aside.unlink(missing_ok=True)
                continue
            aside.unlink(missing_ok=True)
            stale = info
        info = self.read()
        return Claim(False, holder=info or {"pid": "?", "host": "?"})

    def release(self) -> None:
        """Remove the lock if it is still this claim's (a takeover by another sweep is left alone)."""
        if self.info is None:
            return
        current = self.read()
        if current is not None and current.get("token") == self.info["token"]:
            self.path.unlink(missing_ok=True)
        self.info = None
