"""A training run killed right after its first epoch's checkpoint, for the kill-and-resume tests."""

from __future__ import annotations

from typing import Any

import pytest

import vlprompt as vp


class Kill(Exception):
    """Raised from ``on_epoch_end``: the run stops as a killed process would, after epoch 0's checkpoint."""


def fit_killed_after_first_epoch(model: Any, task: Any, run_dir: str, **options: Any) -> None:
    """``vp.fit(model, task, run_dir=run_dir, **options)`` interrupted after its first epoch."""
    def kill(epoch: int, row: dict[str, Any]) -> None:
        raise Kill

    with pytest.raises(Kill):
        vp.fit(model, task, run_dir=run_dir, on_epoch_end=kill, **options)
