"""Evaluation: top-1 accuracy, with class text features computed once per evaluation."""

from __future__ import annotations

import time

import torch
from torch.utils.data import DataLoader

from ..data.images import ImageDataset
from ..data.task import Sample, Task
from ..data.transforms import image_norm, test_transform
from ..methods.base import PromptMethod
from .features import FeatureCache
from .precision import autocast


@torch.no_grad()
def predict_logits(
    model: PromptMethod, samples: list[Sample], cache: FeatureCache, precision: str, device: torch.device,
    batch_size: int = 100, num_workers: int = 0,
) -> torch.Tensor:
    """Logits ``(N, n_cls)`` of ``samples`` (plain test view), on CPU, float32."""
    model.eval()
    out: list[torch.Tensor] = []
    if model.plan.image_features:  # a frozen, unprompted image tower: cached plain-view features
        feats = cache.get(samples, "test")
        with autocast(precision, device):
            text = model.eval_text_features()
            for i in range(0, len(feats), batch_size):
                f = feats[i : i + batch_size].to(device)
                out.append(model.logits_from_features(f, text).float().cpu())
    else:
        loader = DataLoader(
            ImageDataset(samples, test_transform(model.backbone.image_size, *image_norm(model.backbone))),
            batch_size=batch_size, shuffle=False, num_workers=num_workers,
        )
        with autocast(precision, device):
            text = model.eval_text_features()
        for images, _, _ in loader:
            with autocast(precision, device):
                out.append(model(images.to(device), text).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, len(model.classnames))


def evaluate_samples(
    model: PromptMethod, samples: list[Sample], cache: FeatureCache, precision: str, device: torch.device,
    batch_size: int = 100, num_workers: int = 0,
) -> dict[str, float]:
    """Top-1 accuracy in percent (micro average over ``samples``) and timing."""
    start = time.perf_counter()
    logits = predict_logits(model, samples, cache, precision, device, batch_size, num_workers)
    labels = torch.tensor([s.label for s in samples], dtype=torch.long)
    correct = int((logits.argmax(-1) == labels).sum()) if len(samples) else 0
    acc = 100.0 * correct / max(len(samples), 1)
    return {"acc": acc, "n": len(samples), "correct": correct, "seconds": time.perf_counter() - start}


def task_group_accuracy(logits: torch.Tensor, labels: torch.Tensor, tasks: list[dict]) -> dict[str, float]:
    """Accuracy (percent) of every task of a group: each sample's argmax runs over its own task's classes.

    ``tasks`` is ``task.extra["tasks"]`` of a group (global labels); a task's ``metric`` is
    ``overall_acc`` (micro) or ``mean_acc`` (mean of per-class recalls), as the SoftCPT evaluator.
    """
    out = {}
    for t in tasks:
        lo, hi = t["offset"], t["offset"] + t["num_classes"]
        rows = (labels >= lo) & (labels < hi)
        y = labels[rows]
        pred = logits[rows][:, lo:hi].argmax(-1) + lo
        correct = (pred == y).float()
        if not len(y):
            acc = 0.0
        elif t.get("metric") == "mean_acc":
            acc = float(torch.stack([correct[y == c].mean() for c in y.unique()]).mean())
        else:
            acc = float(correct.mean())
        out[t["name"]] = 100.0 * acc
    return out


def evaluate_task_group(
    model: PromptMethod, samples: list[Sample], tasks: list[dict], cache: FeatureCache, precision: str,
    device: torch.device, batch_size: int = 100, num_workers: int = 0,
) -> dict:
    """Per-task accuracy of a task group (see :func:`task_group_accuracy`); ``acc`` = their unweighted mean."""
    start = time.perf_counter()
    logits = predict_logits(model, samples, cache, precision, device, batch_size, num_workers)
    labels = torch.tensor([s.label for s in samples], dtype=torch.long)
    per_task = task_group_accuracy(logits, labels, tasks)
    acc = sum(per_task.values()) / max(len(per_task), 1)
    return {"acc": acc, "n": len(samples), "per_task": per_task, "seconds": time.perf_counter() - start}


def evaluate_task(
    model: PromptMethod, task: Task, cache: FeatureCache, precision: str, device: torch.device,
    batch_size: int = 100, num_workers: int = 0,
) -> dict:
    """Accuracy of ``model`` on ``task.test``: :func:`evaluate_task_group` for a task group
    (``task.extra["tasks"]``; the result then holds ``per_task``), else :func:`evaluate_samples`."""
    tasks = task.extra.get("tasks")
    if tasks:
        return evaluate_task_group(model, task.test, tasks, cache, precision, device, batch_size, num_workers)
    return evaluate_samples(model, task.test, cache, precision, device, batch_size, num_workers)
