"""Worker-process hygiene shared by the pools of ``vlprompt sweep`` and ``vlprompt demo``."""

from __future__ import annotations

import os
import threading
import time


def exit_with_parent(poll_seconds: float = 0.5) -> None:
    """Call in a pool worker: exit it as soon as its parent process is gone.

    A parent killed without shutting its pool down (SIGKILL, SIGTERM without a handler) would otherwise
    leave orphaned workers finishing their run and writing into run directories that a restarted sweep
    also writes. A daemon thread polls the parent pid and ends the worker with ``os._exit``.
    """
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="vlprompt-exit-with-parent", daemon=True).start()


def _proc_stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (Linux); None when unreadable or elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def proc_start(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (Linux ``/proc``), to tell a reused pid; None elsewhere."""
    fields = _proc_stat_fields(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def _proc_start_epoch(pid: int) -> float | None:
    """Start time of ``pid`` in seconds since the epoch (Linux), or None."""
    ticks = proc_start(pid)
    if ticks is None:
        return None
    try:
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return btime + int(ticks) / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def pid_alive(pid: int, *, pid_start: str | None = None, written_at: float | None = None) -> bool:
    """Whether process ``pid`` on this host is alive and still the one that wrote something.

    Dead when ``kill(pid, 0)`` finds no process or the process is a zombie (exited, not reaped). The pid is
    reused -- so the writer is dead -- when ``pid_start`` (its :func:`proc_start` recorded by the writer)
    differs from the live process's, or when the live process started more than a second after
    ``written_at`` (the epoch time the writer's file was last modified). Another user's live process
    counts as alive. Without ``/proc`` only the ``kill`` test applies.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # PermissionError: alive, another user's process
    fields = _proc_stat_fields(pid)
    if fields is not None and fields[0] == "Z":
        return False
    if pid_start is not None:
        start = proc_start(pid)
        if start is not None and start != pid_start:
            return False
    if written_at is not None:
        started = _proc_start_epoch(pid)
        if started is not None and started > written_at + 1.0:
            return False
    return True
