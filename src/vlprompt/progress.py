"""Progress lines for runs without a terminal (nohup, Slurm, CI).

When stderr is not a TTY, training prints one line per epoch, protocols one line per run start and
finish (with an ETA), and slow first-use work (generating the tiny suite, extracting image features)
one line before it starts. Every line starts with ``[vlprompt]``, so ``grep '\\[vlprompt\\]' log`` finds
them. On a terminal the tqdm bars are shown instead. ``--quiet`` (or ``VLPROMPT_QUIET=1``, which worker
processes inherit) silences both.

Example:
    >>> from vlprompt import progress
    >>> progress.say("extracting features")   # -> "[vlprompt] extracting features" on stderr (no TTY)
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

_P = ParamSpec("_P")
_R = TypeVar("_R")

#: Environment variable that silences progress output (``1``); set by ``--quiet``.
QUIET_ENV = "VLPROMPT_QUIET"
PREFIX = "[vlprompt]"


def set_quiet(quiet: bool = True) -> None:
    """Silence (or re-enable) progress output in this process and the processes it starts."""
    if quiet:
        os.environ[QUIET_ENV] = "1"
    else:
        os.environ.pop(QUIET_ENV, None)


@contextlib.contextmanager
def quiet_if(flag: bool) -> Iterator[None]:
    """Silence progress output inside the block when ``flag`` (``--quiet``); the old setting is restored."""
    before = os.environ.get(QUIET_ENV)
    if flag:
        set_quiet(True)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(QUIET_ENV, None)
        else:
            os.environ[QUIET_ENV] = before


def quiet() -> bool:
    """Whether progress output is silenced (``--quiet`` / ``VLPROMPT_QUIET=1``)."""
    return os.environ.get(QUIET_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _isatty() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def lines_enabled() -> bool:
    """Progress lines are printed: not quiet and stderr is not a terminal."""
    return not quiet() and not _isatty()


def bars_enabled() -> bool:
    """tqdm bars are shown: not quiet and stderr is a terminal."""
    return not quiet() and _isatty()


def is_main_process() -> bool:
    """Rank 0 of a torchrun job (or a single process): the one that reports progress."""
    return int(os.environ.get("RANK", 0)) == 0


def say(message: str) -> None:
    """Print ``[vlprompt] message`` on stderr when progress lines are enabled (rank 0 only)."""
    if lines_enabled() and is_main_process():
        print(f"{PREFIX} {message}", file=sys.stderr, flush=True)


def duration(seconds: float) -> str:
    """Compact duration: ``42s``, ``3m05s``, ``1h02m``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def epoch_line(epoch: int, epochs: int, loss: float, acc: float, lr: float, seconds: float,
               eta: float) -> str:
    """The per-epoch line (``epoch`` 0-based), e.g.
    ``epoch 3/10 loss 1.2345 acc 56.2 lr 1.9e-03 1.3 s/epoch ETA 9s``."""
    return (f"epoch {epoch + 1}/{epochs} loss {loss:.4f} acc {acc:.1f} lr {lr:.1e} {seconds:.1f} s/epoch "
            f"ETA {duration(eta)}")


@dataclass
class _Plan:
    total: int
    started: int = 0
    trained: int = 0
    train_seconds: float = 0.0


_PLAN: _Plan | None = None
_STARTED: dict[str, float] = {}


def plan(total: int) -> None:
    """Announce that the next ``total`` runs (:func:`run_started` / :func:`run_finished`) form one
    protocol, so their lines read ``run k/total`` with an ETA. A new call replaces the old plan."""
    global _PLAN
    _PLAN = _Plan(total=max(int(total), 0))


def protocol(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorate a protocol function: the :func:`plan` it announces lasts only while it runs.

    On return or on an exception the plan that held before the call is restored (``None`` at top
    level), so a later single ``train`` run, or the next protocol in the same process, never counts
    on as ``run 4/4``.
    """

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        global _PLAN
        outer = _PLAN
        _PLAN = None
        try:
            return fn(*args, **kwargs)
        finally:
            _PLAN = outer

    return wrapper


def _position() -> str:
    if _PLAN is None or _PLAN.total <= 0:
        return "run"
    return f"run {_PLAN.started}/{max(_PLAN.total, _PLAN.started)}"


def run_started(label: str) -> None:
    """A run begins (``label``: e.g. its output folder)."""
    if _PLAN is not None:
        _PLAN.started += 1
    _STARTED[label] = time.perf_counter()
    say(f"{_position()} start {label}")


def run_skipped(label: str) -> None:
    """A run whose results already exist is reused."""
    if _PLAN is not None:
        _PLAN.started += 1
    say(f"{_position()} done before, skipped {label}")


def _eta() -> str:
    if _PLAN is None or _PLAN.total <= 0 or _PLAN.trained == 0:
        return ""
    left = max(_PLAN.total - _PLAN.started, 0)
    return f" ETA {duration(_PLAN.train_seconds / _PLAN.trained * left)}"


def run_finished(label: str, acc: float | None = None) -> None:
    """A run ends; the ETA is the mean time of the runs trained so far times the runs left."""
    start = _STARTED.pop(label, None)
    seconds = None if start is None else time.perf_counter() - start
    if _PLAN is not None and seconds is not None:
        _PLAN.trained += 1
        _PLAN.train_seconds += seconds
    took = f" in {duration(seconds)}" if seconds is not None else ""
    score = f" acc {acc:.2f}" if isinstance(acc, (int, float)) else ""
    say(f"{_position()} done {label}{score}{took}{_eta()}")


__all__ = [
    "PREFIX", "QUIET_ENV", "bars_enabled", "duration", "epoch_line", "is_main_process", "lines_enabled", "plan",
    "protocol", "quiet", "quiet_if", "run_finished", "run_skipped", "run_started", "say", "set_quiet",
]
