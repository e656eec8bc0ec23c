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
