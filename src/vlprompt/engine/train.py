"""The one training loop (Dassl semantics): SGD + warm-up/cosine per epoch, AMP, resume.

Determinism: the sample order, the choice of cached view and the image augmentation of
epoch ``e`` come from generators seeded by ``(seed, e)``, so a run resumed from the
checkpoint of epoch ``k`` continues exactly as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import platform
import random
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from .. import __version__, progress
from ..data.fewshot import shots_shortfall, train_counts
from ..data.images import ImageDataset, check_readable, policy_transforms
from ..data.masks import DiskMasks, MaskedImageDataset, PairedTrainTransform
from ..data.splitfile import relative_entry
from ..data.task import Task
from ..data.transforms import image_norm, sample_policies, train_transform
from ..errors import ConfigError, TrainingError, VlpromptWarning
from ..methods.base import PromptMethod, TrainingPlan, config_to_dict
from ..prompt_io import method_identity, save_prompt
from .config import TrainConfig
from .distributed import init_from_env, shard, sum_gradients, sum_tensor
from .evaluate import evaluate_task
from .features import FeatureCache
from .loggers import (
    LOGGING_OPTIONS,
    RunLogger,
    epoch_scalars,
    open_loggers,
    require,
    result_scalars,
    run_name,
    wandb_run_id,
)
from .precision import autocast, resolve_device, resolve_precision
from .run import RunDir, atomic_write
from .schedule import build_optimizer, set_epoch_lr

EpochCallback = Callable[[int, dict[str, Any]], None]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (as Dassl's ``set_random_seed``)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**63)


def _batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Random batches of one epoch; the last partial batch is dropped when ``n >= batch_size``."""
    order = torch.randperm(n, generator=gen)
    if n < batch_size:
        return [order]
    return list(order[: (n // batch_size) * batch_size].split(batch_size))


def environment(device: torch.device, precision: str) -> dict[str, Any]:
    import open_clip

    return {
        "vlprompt": __version__, "torch": torch.__version__, "open_clip": open_clip.__version__,
        "python": platform.python_version(), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "precision": precision,
    }


def _fingerprint(info: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()[:16]


def hm(base: float, new: float) -> float:
    """Harmonic mean of base and new accuracy (the papers' H)."""
    return 0.0 if base + new == 0 else 2 * base * new / (base + new)


def default_protocol(task: Task) -> str:
    if task.extra.get("tasks"):
        return "multitask"
    if task.subsample in ("base", "new"):
        return "base2new"
    return "few-shot" if task.shots else "full"


def fit(
    model: PromptMethod,
    task: Task,
    config: TrainConfig | None = None,
    run_dir: str | None = None,
    protocol: str | None = None,
    on_epoch_end: EpochCallback | None = None,
    evaluate_test: bool = True,
    restart: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Train ``model`` on ``task.train`` and evaluate on ``task.test``.

    Args:
        model: a method from :func:`vlprompt.build_method`.
        task: a loaded dataset (:func:`vlprompt.load_dataset`).
        config: training options; keyword ``overrides`` build one if not given.
        run_dir: write a run directory there (and resume from its checkpoint if present).
        protocol: recorded in the results (default: derived from the task).
        on_epoch_end: called as ``fn(epoch, metrics)`` after each epoch's checkpoint.
        evaluate_test: evaluate on ``task.test`` at the end.
        restart: ignore the run directory's checkpoint and train from epoch 0 (the old checkpoint
            is moved to ``checkpoint/discarded/``).
        **overrides: :class:`~vlprompt.engine.config.TrainConfig` fields, e.g. ``log_to=["tensorboard"]``
            to mirror the per-epoch metrics and the final results into ``<run_dir>/tensorboard/``
            (``"wandb"``: an offline W&B run in ``<run_dir>/wandb/``); only rank 0 logs.

    Returns:
        A dict with the ``results.json`` keys (``acc`` in percent, ``train_seconds`` ...).

    Example:
        >>> res = vp.fit(model, task, epochs=10, lr=0.0035, batch_size=4)
        >>> res["acc"]
    """
    cfg = config if config is not None else TrainConfig.from_kwargs(**overrides)
    if config is not None and overrides:
        cfg = TrainConfig.from_kwargs(**{**config_to_dict(config), **overrides})
    if cfg.log_to:
        if not run_dir:
            raise ConfigError(f"log_to={list(cfg.log_to)} needs a run directory: pass run_dir=... (--out)")
        for name in cfg.log_to:
            require(name)  # a missing package fails before any work
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    model.to(device)
    plan = model.plan
    rank, world_size = init_from_env(device)
    run = RunDir(run_dir) if run_dir else None
    writer = run if rank == 0 else None  # only rank 0 writes the run directory
    cache = FeatureCache(model.backbone, precision, device, cfg.cache_dir, cfg.eval_batch_size, cfg.num_workers)
    bb = model.backbone
    info = {
        "method": method_identity(model), "method_config": config_to_dict(model.config),
        "train": config_to_dict(cfg), "dataset": task.name, "shots": task.shots, "seed": task.seed,
        "subsample": task.subsample, "classnames": model.classnames,
        "backbone": bb.name, "weights": bb.weights_id,
    }
    if getattr(bb, "model_kwargs", None):  # timm create_model arguments (fingerprints without them unchanged)
        info["model_kwargs"] = dict(bb.model_kwargs)
    # where a run is mirrored never changes its results: not part of the fingerprint
    fingerprint = _fingerprint({**info, "train": {k: v for k, v in info["train"].items() if k not in LOGGING_OPTIONS}})
    if not task.train and plan.trains:
        raise ConfigError(f"dataset {task.name!r} has no training images for {method_identity(model)}")
    shortfall = shots_shortfall(task) if plan.trains else None  # --shots K > a class's images
    if shortfall:
        warnings.warn(shortfall, VlpromptWarning, stacklevel=2)

    state = run.load_checkpoint() if run is not None and not restart else None
    if state is not None and state.get("fingerprint") != fingerprint:
        raise ConfigError(
            f"{run.path} holds a checkpoint of a different configuration; use a new run directory, delete the old "
            "one or train with --restart"
        )
    ctx = RunContext(model=model, plan=plan, task=task, cfg=cfg, device=device, precision=precision,
                     world_size=world_size, cache=cache, run=run, writer=writer, info=info, fingerprint=fingerprint,
                     protocol=protocol, on_epoch_end=on_epoch_end, evaluate_test=evaluate_test, state=state)

    # Read every input before the first write, so bad data fails with nothing written.
    t0 = time.perf_counter()
    _prepare_inputs(ctx)
    ctx.feature_seconds = time.perf_counter() - t0 - ctx.test_feature_seconds
    ctx.t0 = t0 + ctx.test_feature_seconds  # test-set extraction is evaluation time, not training time

    if writer is not None:
        run.start(restart=restart)
        resolved = {
            **info, "dataset": {"name": task.name, "root": str(task.root), "shots": task.shots,
                                "seed": task.seed, "subsample": task.subsample},
            "backbone": {"name": bb.name, "weights_id": bb.weights_id,
                         "weights": getattr(bb, "weights_path", None),
                         "pretrained": getattr(bb, "pretrained", None), "quick_gelu": getattr(bb, "quick_gelu", None),
                         **({"model_kwargs": dict(bb.model_kwargs)} if getattr(bb, "model_kwargs", None) else {})},
            "protocol": protocol or default_protocol(task), "fingerprint": fingerprint, **train_counts(task),
        }
        run.write_config(resolved)
        if task.shots:
            _write_sample(run, task)
        run.log(f"fit {info['method']} on {task.name} ({len(task.train)} train images), {device}, {precision}")
        if shortfall:
            run.log(f"warning: {shortfall}")
        if cfg.log_to:
            first_epoch = int(state["epoch"]) + 1 if state is not None else 0
            ctx.logger = open_loggers(cfg.log_to, run.path, wandb_run_id(run.path, fingerprint),
                                      cfg.log_name or run_name(resolved), project=cfg.log_project, config=resolved,
                                      start_step=first_epoch)
            ctx.logger.log_config(resolved)
    try:
        return _fit_and_evaluate(ctx)
    finally:
        ctx.logger.close()


@dataclass
class RunContext:
    """The state of one :func:`fit` call, shared by its stages (inputs, fit, epochs, evaluation).

    The engine dispatches on ``plan`` (the method's :class:`~vlprompt.methods.base.TrainingPlan`)
    and never on the method itself.
    """

    model: PromptMethod
    plan: TrainingPlan
    task: Task
    cfg: TrainConfig
    device: torch.device
    precision: str
    world_size: int
    cache: FeatureCache
    #: the run directory (every rank reads its checkpoint) and its writer (rank 0 only, else ``None``)
    run: RunDir | None
    writer: RunDir | None
    info: dict[str, Any]
    fingerprint: str
    protocol: str | None
    on_epoch_end: EpochCallback | None
    evaluate_test: bool
    #: the checkpoint to resume from (``None``: train from epoch 0)
    state: dict[str, Any] | None
    logger: RunLogger = field(default_factory=RunLogger)
    #: start of the training clock (after the test features), seconds of feature extraction
    t0: float = 0.0
    feature_seconds: float = 0.0
    test_feature_seconds: float = 0.0
    #: ``(N, n_train, D)`` cached training views (``None``: the steps read images)
    views: torch.Tensor | None = None
    #: training state: optimizer, fp16 scaler, the first epoch to train, seconds of earlier sessions
    optimizer: torch.optim.Optimizer | None = None
    scaler: Any = None
    start_epoch: int = 0
    prior_seconds: float = 0.0
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        """Epochs of gradient steps (0 when the plan has none)."""
        return self.cfg.epochs if self.plan.steps != "none" else 0

    @property
    def trains_steps(self) -> bool:
        return self.epochs > 0


def _fit_and_evaluate(ctx: RunContext) -> dict[str, Any]:
    model, task, cfg, plan, run, writer = ctx.model, ctx.task, ctx.cfg, ctx.plan, ctx.run, ctx.writer
    bb = model.backbone
    fit_info: dict[str, Any] = {}
    if plan.fit_features is not None:  # a closed-form fit on cached features (e.g. the linear probe)
        train = (_fit_view(ctx), _labels(task.train))
        val = (ctx.cache.get(task.val, "test"), _labels(task.val)) if task.val else None
        fit_info = model.fit_features(train, val)
    if ctx.trains_steps:
        ctx.optimizer = build_optimizer(model.param_groups(cfg.lr), cfg)
        if ctx.precision == "fp16" and ctx.device.type == "cuda":
            ctx.scaler = torch.amp.GradScaler("cuda")
        state = ctx.state
        if state is not None:
            model.load_prompt_state_dict(state["model"])
            if "method_state" in state:  # what the method's hooks keep across epochs
                model.load_training_state(state["method_state"])
            ctx.optimizer.load_state_dict(state["optimizer"])
            if ctx.scaler is not None and state.get("scaler"):
                ctx.scaler.load_state_dict(state["scaler"])
            ctx.start_epoch, ctx.prior_seconds = int(state["epoch"]) + 1, float(state["train_seconds"])
            # the checkpoint carries the metrics rows up to its epoch (older ones: metrics.jsonl)
            ctx.metrics = list(state["metrics"]) if "metrics" in state else run.read_metrics()[:ctx.start_epoch]
            if writer is not None:
                run.write_metrics(ctx.metrics)  # a kill after the checkpoint may have missed its row
                run.log(f"resumed from the checkpoint of epoch {ctx.start_epoch - 1}")
        _train_epochs(ctx)
    if plan.after_training:
        fit_info = {**fit_info, **model.finish_training(task.train, ctx.device)}
    train_seconds = ctx.prior_seconds + time.perf_counter() - ctx.t0
    metrics = ctx.metrics

    results: dict[str, Any] = {
        "method": ctx.info["method"], "dataset": task.name, "protocol": ctx.protocol or default_protocol(task),
        "backbone": bb.name, "weights": bb.weights_id, "shots": task.shots, "seed": task.seed,
        "subsample": task.subsample, "num_classes": len(task.classnames),
        "epochs": ctx.epochs, "feature_views": cfg.feature_views if plan.image_features else None,
        "augment": augment_of(task, cfg), **train_counts(task),
        "train_seconds": round(train_seconds, 3), "feature_seconds": round(ctx.feature_seconds, 3),
        "trainable_params": sum(p.numel() for p in model.trainable_parameters()),
        "total_params": model.total_parameters(),
        **fit_info,
    }
    if metrics:
        results["final_loss"] = metrics[-1]["loss"]
    if ctx.evaluate_test:
        ev = evaluate_task(model, task, ctx.cache, ctx.precision, ctx.device, cfg.eval_batch_size, cfg.num_workers)
        if "per_task" in ev:  # a task group: per-task accuracy, acc = mean over tasks
            results["per_task"] = ev["per_task"]
        eval_seconds = ev["seconds"] + ctx.test_feature_seconds
        results.update({"acc": ev["acc"], "n_test": ev["n"], "eval_seconds": round(eval_seconds, 3)})
        if task.subsample == "base":
            results["base_acc"] = ev["acc"]
    results["env"] = {**environment(ctx.device, ctx.precision), "world_size": ctx.world_size}
    if writer is not None:
        save_prompt(model, run.path / "prompt.safetensors")
        run.write_metrics(metrics)
        run.write_results(results)
        run.log(f"done: acc={results.get('acc')} train_seconds={results['train_seconds']}")
        ctx.logger.log_metrics(ctx.epochs, result_scalars(results))
    return results


def _fit_view(ctx: RunContext) -> torch.Tensor:
    """The cached training features of a closed-form fit: the plain view (``"test"``), or the run's
    first augmented view (``"train"``: view 0 of the training views, seed and augmentation policies);
    with ``plan.fit_views`` = V > 1 the views ``0 .. V-1`` stacked ``(V, n, D)``."""
    task = ctx.task
    if ctx.plan.fit_features == "test":
        return ctx.cache.get(task.train, "test")
    policies = train_policies(task, ctx.cfg)
    views = [ctx.cache.get(task.train, "train", view=v, seed=ctx.cfg.seed, augment=policies)
             for v in range(ctx.plan.fit_views)]
    return views[0] if ctx.plan.fit_views == 1 else torch.stack(views)


def _prepare_inputs(ctx: RunContext) -> None:
    """Extract (or read from the cache) every image feature the run needs; check images (and mask
    files) otherwise. Sets ``ctx.views`` (cached training views, or ``None`` when the steps read
    images) and ``ctx.test_feature_seconds``."""
    plan, task, cfg, cache = ctx.plan, ctx.task, ctx.cfg, ctx.cache
    if plan.fit_features is not None:
        _fit_view(ctx)
        cache.get(task.val, "test")
    if plan.image_features:
        if ctx.trains_steps and plan.steps == "image-features" and cfg.feature_views > 0:
            policies = train_policies(task, cfg)
            ctx.views = torch.stack([cache.get(task.train, "train", view=v, seed=cfg.seed, augment=policies)
                                     for v in range(cfg.feature_views)])
        elif ctx.trains_steps:
            check_readable(task.train, "train")
        if ctx.evaluate_test:
            start = time.perf_counter()
            cache.get(task.test, "test")
            ctx.test_feature_seconds = time.perf_counter() - start
    else:
        check_readable(task.train, "train")
    if ctx.trains_steps and plan.mask_source == "data":
        DiskMasks.for_task(task)  # every training image needs its mask file


def _write_sample(run: RunDir, task: Task) -> None:
    """The few-shot sample of this run, paths relative to the dataset's image folder."""
    image_dir = task.image_dir or task.root
    data = {
        "train": [relative_entry(s, image_dir) for s in task.train],
        "val": [relative_entry(s, image_dir) for s in task.val],
        "meta": {"dataset": task.name, "shots": task.shots, "seed": task.seed, "subsample": task.subsample,
                 "classnames": task.classnames},
    }
    atomic_write(run.path / "split.json", json.dumps(data, indent=1) + "\n")


def _labels(samples) -> torch.Tensor:
    return torch.tensor([s.label for s in samples], dtype=torch.long)


def augment_of(task: Task, cfg: TrainConfig) -> str:
    """The training augmentation policy of a run: the config's if set, else the task's
    (``"per-sample"`` for a task group whose members' policies differ)."""
    return cfg.augment or task.augment


def train_policies(task: Task, cfg: TrainConfig) -> list[str]:
    """The augmentation policy of every training sample: the config's (a global override) if set,
    else the sample's own (a task group's members keep theirs), else the task's."""
    return sample_policies(task.train, task.augment, cfg.augment)


def diverged_message(loss: float, epoch: int, epochs: int, step: int, steps: int, lr: float, precision: str,
                     run: RunDir | None) -> str:
    """The :class:`TrainingError` text for a non-finite loss (``epoch`` and ``step`` 0-based)."""
    hint = "lower the learning rate (--lr)" + ("" if precision == "fp32" else
                                               f" or train in fp32 (--precision fp32; this run used {precision})")
    kept = f"; '{run.path}' keeps what was written before this step" if run is not None else ""
    where = f"epoch {epoch + 1}/{epochs}, step {step + 1}/{steps} (lr {lr:g})"
    return f"the training loss is {loss} at {where}: {hint}{kept}"


#: Training steps between two finiteness checks of the loss (each one host sync); the epoch's end
#: is always one. The per-step losses stay on the device, so the first non-finite step is still named.
SYNC_EVERY = 50


def _check_finite(step_loss: torch.Tensor, start: int, stop: int, epoch: int, epochs: int, lr: float,
                  precision: str, run: RunDir | None) -> None:
    """Raise the :class:`TrainingError` of the first non-finite loss among steps ``start .. stop - 1``."""
    if stop <= start:
        return
    bad = ~torch.isfinite(step_loss[start:stop])
    if not bool(bad.any()):  # the host sync of this window
        return
    step = start + int(bad.nonzero()[0, 0])
    msg = diverged_message(float(step_loss[step]), epoch, epochs, step, step_loss.numel(), lr, precision, run)
    if run is not None:
        run.log(f"error: {msg}")
    raise TrainingError(msg)


def _epoch_sums(step_loss: torch.Tensor, step_acc: torch.Tensor, scales: list[float]) -> tuple[float, float]:
    """The epoch's summed loss and accuracy, added step by step in the order (and float64 arithmetic) of
    a per-step host accumulation; under torchrun each step is first summed over ranks (one all-reduce)."""
    scaled_acc = step_acc * torch.tensor(scales, dtype=torch.float64, device=step_acc.device)
    both = torch.stack([step_loss, scaled_acc])
    sum_tensor(both)
    losses, accs = both.tolist()
    tot_loss, tot_acc = 0.0, 0.0
    for loss, acc in zip(losses, accs, strict=True):
        tot_loss += loss
        tot_acc += acc
    return tot_loss, tot_acc


class _StepInputs:
    """The training batches of every epoch, as the method's plan asks (``plan.steps``).

    ``batches(epoch, gen, index)`` yields one batch dict per global batch of sample indices
    (this rank's shard); ``gen`` is the epoch's generator, after it drew the batches.
    """

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def batches(self, epoch: int, gen: torch.Generator, index: list[torch.Tensor]) -> Iterator[dict[str, Any]]:
        raise NotImplementedError


class _CachedFeatures(_StepInputs):
    """``features`` from the cached augmented views (a random view per sample and epoch), ``labels``."""

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.views = ctx.views.to(ctx.device)
        self.labels = _labels(ctx.task.train)

    def batches(self, epoch: int, gen: torch.Generator, index: list[torch.Tensor]) -> Iterator[dict[str, Any]]:
        views, labels, device = self.views, self.labels, self.ctx.device
        view_of = torch.randint(self.ctx.cfg.feature_views, (len(labels),), generator=gen)
        return ({"features": views[view_of[b], b], "labels": labels[b].to(device)} for b in (shard(b) for b in index))


class _Images(_StepInputs):
    """``images`` (each sample's training transform) and ``labels``, read by a data loader."""

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        size, norm = ctx.model.backbone.image_size, image_norm(ctx.model.backbone)
        self.dataset = ImageDataset(ctx.task.train, per_sample=policy_transforms(
            train_policies(ctx.task, ctx.cfg), lambda p: train_transform(size, *norm, augment=p)))

    def epoch_dataset(self) -> Any:
        return self.dataset

    def batches(self, epoch: int, gen: torch.Generator, index: list[torch.Tensor]) -> Iterator[dict[str, Any]]:
        ctx = self.ctx
        torch.manual_seed(_epoch_seed(ctx.cfg.seed, epoch) + 1)
        loader = DataLoader(self.epoch_dataset(), batch_sampler=[shard(b).tolist() for b in index],
                            num_workers=ctx.cfg.num_workers)
        return (_image_batch(items, ctx.device) for items in loader)


class _ImagesAndMasks(_Images):
    """``images``, ``masks`` (cropped and flipped with their image) and ``labels``; the masks are the
    dataset's files (``plan.masks == "data"``) or the method's masks of the epoch (``"model"``)."""

    def __init__(self, ctx: RunContext) -> None:  # no _Images.__init__: the dataset changes with the masks
        _StepInputs.__init__(self, ctx)
        self.disk_masks = DiskMasks.for_task(ctx.task) if ctx.plan.masks == "data" else None
        size, norm = ctx.model.backbone.image_size, image_norm(ctx.model.backbone)
        self.paired = policy_transforms(train_policies(ctx.task, ctx.cfg),
                                        lambda p: PairedTrainTransform(size, *norm, augment=p))

    def epoch_dataset(self) -> Any:
        masks = self.disk_masks if self.disk_masks is not None else self.ctx.model.epoch_masks()
        return MaskedImageDataset(self.ctx.task.train, masks, self.paired)


def _image_batch(items: list[torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A training batch from a loader of ``(image, label, index)`` or ``(image, mask, label, index)``."""
    if len(items) == 4:
        x, m, y, _ = items
        return {"images": x.to(device), "masks": m.to(device), "labels": y.to(device)}
    x, y, _ = items
    return {"images": x.to(device), "labels": y.to(device)}


def _step_inputs(ctx: RunContext) -> _StepInputs:
    if ctx.views is not None:  # plan.steps == "image-features" with cached views
        return _CachedFeatures(ctx)
    if ctx.plan.steps == "images+masks":
        return _ImagesAndMasks(ctx)
    return _Images(ctx)  # "images", or "image-features" encoded from images (feature_views=0)


def _train_epochs(ctx: RunContext) -> None:
    """Epochs ``ctx.start_epoch .. ctx.epochs - 1`` of gradient steps: per epoch the plan's hook, the
    steps, a metrics row, and (rank 0) a checkpoint."""
    model, task, cfg, plan, device, precision = ctx.model, ctx.task, ctx.cfg, ctx.plan, ctx.device, ctx.precision
    optimizer, scaler, metrics, run, epochs = ctx.optimizer, ctx.scaler, ctx.metrics, ctx.writer, ctx.epochs
    n = len(task.train)
    inputs = _step_inputs(ctx)
    show = cfg.progress and progress.bars_enabled()
    lines = cfg.progress and progress.lines_enabled()  # no terminal: one line per epoch
    session_t0, session_epochs = time.perf_counter(), 0
    for epoch in range(ctx.start_epoch, epochs):
        if plan.before_epoch:  # e.g. DAPT-G recomputes its Grad-CAM masks
            model.prepare_epoch(epoch, task.train, device)
        model.train()
        lr = set_epoch_lr(optimizer, cfg, epoch)
        gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))
        batches = _batches(n, cfg.batch_size, gen)
        e0 = time.perf_counter()
        # every rank draws the same global batches and takes its shard; scale = its share
        scales = [len(shard(b)) / len(b) for b in batches]
        steps = inputs.batches(epoch, gen, batches)
        if show:
            from tqdm import tqdm

            steps = tqdm(steps, total=len(batches), desc=f"epoch {epoch + 1}/{epochs}", leave=False)
        # per-step loss and accuracy stay on the device: no host sync per step (SYNC_EVERY)
        step_loss = torch.zeros(len(batches), dtype=torch.float64, device=device)
        step_acc = torch.zeros(len(batches), dtype=torch.float64, device=device)
        count, checked = 0, 0
        params = model.trainable_parameters()
        for batch, scale in zip(steps, scales, strict=True):
            optimizer.zero_grad(set_to_none=True)
            if len(batch["labels"]):
                with autocast(precision, device):
                    out = model.loss(batch)
                loss = out["loss"] * scale
                (scaler.scale(loss) if scaler is not None else loss).backward()
                step_loss[count] = loss.detach()  # exact: fp32/bf16 -> fp64
                acc = out.get("acc", 0.0)
                step_acc[count] = acc.detach() if isinstance(acc, torch.Tensor) else float(acc)
            # else: more ranks than images in this batch; the step counts 0
            sum_gradients(params)
            if scaler is not None:
                scaler.unscale_(optimizer)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            count += 1
            if count - checked >= SYNC_EVERY:
                _check_finite(step_loss, checked, count, epoch, epochs, lr, precision, run)
                checked = count
        _check_finite(step_loss, checked, count, epoch, epochs, lr, precision, run)
        if plan.after_epoch:  # e.g. an average of the prompts over epochs
            model.end_epoch(epoch)
        tot_loss, tot_acc = _epoch_sums(step_loss, step_acc, scales)
        row = {
            "epoch": epoch, "lr": lr, "loss": tot_loss / max(count, 1), "train_acc": 100 * tot_acc / max(count, 1),
            "steps": count, "seconds": round(time.perf_counter() - e0, 3),
        }
        metrics.append(row)
        session_epochs += 1
        if lines:
            per_epoch = (time.perf_counter() - session_t0) / session_epochs
            progress.say(progress.epoch_line(epoch, epochs, row["loss"], row["train_acc"], lr, row["seconds"],
                                             per_epoch * (epochs - epoch - 1)))
        if run is not None:
            checkpoint = {
                "epoch": epoch, "fingerprint": ctx.fingerprint, "model": model.prompt_state_dict(),
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "train_seconds": ctx.prior_seconds + time.perf_counter() - ctx.t0,
                "metrics": [dict(r) for r in metrics],
            }
            method_state = model.training_state()
            if method_state:
                checkpoint["method_state"] = method_state
            run.save_checkpoint(checkpoint)
            run.write_metrics(metrics)
            run.log(json.dumps(row))
            ctx.logger.log_metrics(epoch, epoch_scalars(row))
        if ctx.on_epoch_end is not None:
            ctx.on_epoch_end(epoch, row)
