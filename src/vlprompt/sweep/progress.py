"""One progress display for a sweep: done / running / failed / remaining and an ETA.

On a terminal it is a tqdm bar; otherwise (logs, CI, a cluster job) one line per event on stderr.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class Progress:
    """Counts of a sweep's runs; ``start(id)`` / ``finish(id, ok)`` update the display.

    The ETA divides the elapsed time by the runs finished in this session and multiplies by the runs
    remaining (so it accounts for parallel workers).

    Example:
        >>> p = Progress(total=4, already_done=1); p.start("a"); p.finish("a", True); p.close()
    """

    def __init__(self, total: int, already_done: int = 0, stream: TextIO | None = None,
                 use_tqdm: bool | None = None, quiet: bool = False) -> None:
        self.total, self.already = total, already_done
        self.done, self.failed = already_done, 0
        self.skipped = 0  # runs another sweep is running (their lock is live)
        self.running: set[str] = set()
        self.stream = stream if stream is not None else sys.stderr
        self.t0 = time.time()
        isatty = getattr(self.stream, "isatty", lambda: False)()
        self.quiet = quiet  # --quiet: only failures are reported
        self._bar: Any = None
        if (use_tqdm if use_tqdm is not None else isatty) and not self.quiet:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=already_done, desc="sweep", file=self.stream, unit="run")
        elif already_done:
            self._line(f"{already_done} complete runs skipped")

    @property
    def remaining(self) -> int:
        return self.total - self.done - self.failed - self.skipped

    def eta(self) -> float | None:
        finished = self.done - self.already + self.failed
        if finished <= 0:
            return None
        waiting = self.remaining
        return (time.time() - self.t0) / finished * waiting

    def summary(self) -> str:
        eta = self.eta()
        elsewhere = f", {self.skipped} run by another sweep" if self.skipped else ""
        return (f"{self.done}/{self.total} done, {len(self.running)} running, {self.failed} failed{elsewhere}, "
                f"{self.remaining} remaining, ETA {'?' if eta is None else _fmt_seconds(eta)}")

    def _line(self, event: str) -> None:
        if self.quiet and not event.startswith("FAILED"):
            return
        self.stream.write(f"[sweep {_fmt_seconds(time.time() - self.t0)}] {self.summary()} | {event}\n")
        self.stream.flush()

    def _update_bar(self, advance: int) -> None:
        self._bar.set_postfix_str(f"running={len(self.running)} failed={self.failed}", refresh=False)
        self._bar.update(advance)

    def start(self, rid: str) -> None:
        self.running.add(rid)
        if self._bar is not None:
            self._update_bar(0)
        else:
            self._line(f"start {rid}")

    def finish(self, rid: str, ok: bool, error: str | None = None) -> None:
        error = (error or "").strip().splitlines()[0] if error else error  # details are in error.txt
        self.running.discard(rid)
        if ok:
            self.done += 1
        else:
            self.failed += 1
        if self._bar is not None:
            self._update_bar(1)
            if not ok:
                self._bar.write(f"failed {rid}: {error}", file=self.stream)
        else:
            self._line(f"{'done' if ok else 'FAILED'} {rid}" + ("" if ok else f": {error}"))

    def note(self, message: str) -> None:
        """One line about the sweep (not a run event), e.g. the Ray connection or a stale lock."""
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        elif not self.quiet:
            self.stream.write(f"[sweep {_fmt_seconds(time.time() - self.t0)}] {message}\n")
            self.stream.flush()

    def skip(self, rid: str, reason: str, complete: bool = False) -> None:
        """A run not executed by this sweep: ``complete`` (another sweep finished it meanwhile) or held by
        another sweep (``reason`` says which)."""
        if complete:
            self.done += 1
            self.already += 1  # not finished by this session: the ETA ignores it
        else:
            self.skipped += 1
        if self._bar is not None:
            self._update_bar(1)
            self._bar.write(f"skipped {rid}: {reason}", file=self.stream)
        else:
            self._line(f"skip {rid}: {reason}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
