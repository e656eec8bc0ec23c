"""The public API: load, build, fit, evaluate, save/load prompts, predict."""

from __future__ import annotations

from pathlib import Path

import torch

from .backbones import load_backbone
from .data import load_dataset, load_task_group, task_structure
from .data.images import open_image
from .data.task import Sample, Task
from .data.transforms import image_norm, test_transform
from .engine.config import TrainConfig
from .engine.evaluate import evaluate_samples, evaluate_task_group
from .engine.features import FeatureCache
from .engine.precision import autocast, resolve_device, resolve_precision
from .engine.train import fit, seed_everything
from .methods import build_method
from .methods.base import PromptMethod
from .prompt_io import load_prompt, save_prompt

__all__ = [
    "build_method", "evaluate", "fit", "load_backbone", "load_dataset", "load_prompt", "predict",
    "save_prompt", "seed_everything", "TrainConfig", "load_task_group", "task_structure", "evaluate_per_task",
]


def evaluate(
    model: PromptMethod, samples: list[Sample] | Task, precision: str = "auto", device: str = "auto",
    batch_size: int = 100, cache_dir: str | None = None,
) -> float:
    """Top-1 accuracy (percent) of ``model`` on ``samples`` (or a task's test split).

    For a task group (:func:`load_task_group`) it is the mean over tasks of the per-task accuracy.

    Example:
        >>> acc = vp.evaluate(model, task.test)
    """
    tasks = samples.extra.get("tasks") if isinstance(samples, Task) else None
    if isinstance(samples, Task):
        samples = samples.test
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    model.to(dev)
    cache = FeatureCache(model.backbone, prec, dev, cache_dir, batch_size)
    if tasks:  # a task group: the mean over tasks of each task's accuracy on its own classes
        return evaluate_task_group(model, samples, tasks, cache, prec, dev, batch_size)["acc"]
    return evaluate_samples(model, samples, cache, prec, dev, batch_size)["acc"]


def evaluate_per_task(
    model: PromptMethod, group: Task, precision: str = "auto", device: str = "auto", batch_size: int = 100,
    cache_dir: str | None = None,
) -> dict[str, float]:
    """Accuracy (percent) of every task of a task group on its own classes (each task's metric).

    Raises:
        ConfigError: ``group`` is not a task group.

    Example:
        >>> vp.evaluate_per_task(model, group)
        {'tiny/digits': 88.0, 'tiny/real_textures': 91.2}
    """
    from .errors import ConfigError

    tasks = group.extra.get("tasks")
    if not tasks:
        raise ConfigError(f"evaluate_per_task needs a task group; {group.name!r} is a single dataset")
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    model.to(dev)
    cache = FeatureCache(model.backbone, prec, dev, cache_dir, batch_size)
    return evaluate_task_group(model, group.test, tasks, cache, prec, dev, batch_size)["per_task"]


@torch.no_grad()
def predict(
    model: PromptMethod, images: list[str | Path], topk: int = 5, device: str = "auto"
) -> list[list[tuple[str, float]]]:
    """Top-k class names and probabilities for image files.

    Example:
        >>> vp.predict(model, ["cat.jpg"])[0][0]
        ('cat', 0.93)
    """
    dev = resolve_device(device)
    prec = resolve_precision("auto", dev)
    model.to(dev).eval()
    tf = test_transform(model.backbone.image_size, *image_norm(model.backbone))
    batch = torch.stack([tf(open_image(Sample(str(p), -1), "predict")) for p in images]).to(dev)
    with autocast(prec, dev):
        logits = model(batch).float()
    probs = logits.softmax(-1).cpu()
    k = min(topk, probs.shape[1])
    out = []
    for row in probs:
        val, idx = row.topk(k)
        out.append([(model.classnames[i], float(v)) for v, i in zip(val.tolist(), idx.tolist(), strict=True)])
    return out
