"""E2VPT's pruning + rewinding search (reference: ``tune_vtab_PruningRewind_CVK.py``).

1. train the E2VPT model once (the caller's learning rate / weight decay, e.g. from the lr × wd grid);
2. importance scores of the token and segment masks: mean ∂L/∂mask over the training set
   (plain test view, no optimizer step; see :func:`vlprompt.methods.e2vpt.importance_scores`);
3. for every (token level, segment level) pair: rewind — a freshly initialised model with the
   masks of that level fixed — retrain with the same options and score it on the validation split;
4. keep the best pair by validation accuracy (ties: the larger token pruning, as the reference).

The reference runs the full 9 × 9 grid of levels 10 … 90 %; pass fewer levels to bound the cost.

Example:
    >>> model = vp.build_method("e2vpt", bb, task.classnames)
    >>> out = prune_and_rewind(model, task, token_levels=(10, 50), piece_levels=(25,),
    ...                        epochs=100, lr=0.5, batch_size=64)
    >>> out["model"], out["token_pct"], out["piece_pct"], out["val_acc"]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..data.images import ImageDataset
from ..data.task import Task
from ..data.transforms import image_norm, test_transform
from ..engine.evaluate import evaluate_samples
from ..engine.features import FeatureCache
from ..engine.precision import resolve_device, resolve_precision
from ..engine.train import fit
from ..errors import ConfigError
from ..methods.base import build_method, config_to_dict
from ..methods.e2vpt import E2VPT, PRUNE_LEVELS, importance_scores, masks_for_level, pruned_fraction


def _score_batches(model: E2VPT, task: Task, batch_size: int, device: torch.device):
    tf = test_transform(model.backbone.image_size, *image_norm(model.backbone))
    loader = DataLoader(ImageDataset(task.train, tf), batch_size=batch_size)
    for images, labels, _ in loader:
        yield {"images": images.to(device), "labels": labels.to(device)}


def prune_and_rewind(
    model: E2VPT,
    task: Task,
    token_levels: Sequence[float] = PRUNE_LEVELS,
    piece_levels: Sequence[float] = PRUNE_LEVELS,
    min_tokens: int = 1,
    min_pieces: int = 4,
    rewind_seed: int = 0,
    **train: Any,
) -> dict[str, Any]:
    """Train, score, rewind over the level grid, and return the best rewound model.

    Args:
        model: a built ``e2vpt`` model (trained here first).
        task: a dataset with ``train`` and ``val`` splits (selection is on ``val``).
        token_levels, piece_levels: pruning levels in percent (reference: 10 … 90 each).
        min_tokens, min_pieces: entries that always survive (reference: 1 token, 4 pieces).
        rewind_seed: seed of the fresh initialisation of every rewound model.
        **train: options of :func:`vlprompt.fit` (``epochs``, ``lr``, ``batch_size`` ...).

    Returns:
        ``{"model", "token_pct", "piece_pct", "val_acc", "pruned_fraction", "grid": [...],
        "token_scores", "piece_scores"}``; ``grid`` rows hold each pair's validation accuracy.
    """
    if not isinstance(model, E2VPT):
        raise ConfigError(f"prune_and_rewind needs an e2vpt model, got {type(model).__name__}")
    if not task.val:
        raise ConfigError(f"dataset {task.name!r} has no validation split to choose the pruning level on")
    fit(model, task, evaluate_test=False, **train)
    device = model.prompt.device
    token_scores, piece_scores = importance_scores(model, _score_batches(model, task, train.get("batch_size", 32),
                                                                        device))
    dev = resolve_device(train.get("device", "auto"))
    precision = resolve_precision(train.get("precision", "auto"), dev)
    cache = FeatureCache(model.backbone, precision, dev, train.get("cache_dir"), persist=False)
    grid: list[dict[str, float]] = []
    best: dict[str, Any] | None = None
    for t in token_levels:
        for s in piece_levels:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(rewind_seed)
                fresh = build_method(model.name, model.backbone, model.classnames, **config_to_dict(model.config))
            fresh.set_masks(*masks_for_level(token_scores, piece_scores, t, s, min_tokens, min_pieces))
            fit(fresh, task, evaluate_test=False, **train)
            acc = evaluate_samples(fresh, task.val, cache, precision, dev, train.get("eval_batch_size", 100))["acc"]
            row = {"token_pct": t, "piece_pct": s, "val_acc": acc, "pruned_fraction": pruned_fraction(fresh)}
            grid.append(row)
            if best is None or acc > best["val_acc"] or (acc == best["val_acc"] and t > best["token_pct"]):
                best = {**row, "model": fresh}
    if best is None:
        raise ConfigError("prune_and_rewind needs at least one token level and one piece level")
    return {**best, "grid": grid, "token_scores": token_scores.tolist(), "piece_scores": piece_scores.tolist()}
