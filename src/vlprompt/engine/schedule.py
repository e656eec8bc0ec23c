"""Learning-rate schedule of Dassl: constant warm-up, then cosine (stepped per epoch)."""

from __future__ import annotations

import math

import torch

from .config import TrainConfig


def lr_at_epoch(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate used during ``epoch`` (0-based).

    Warm-up epochs run at ``warmup_lr``; afterwards the cosine restarts its count
    (Dassl ``WARMUP_RECOUNT``): ``lr · ½(1 + cos(π (e - w) / epochs))``.
    """
    w = cfg.warmup_epochs
    if epoch < w:
        return cfg.warmup_lr
    if cfg.scheduler == "constant":
        return cfg.lr
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - w) / max(cfg.epochs, 1)))


def build_optimizer(param_groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer of ``cfg`` over the method's parameter groups (each keeps an ``lr_scale``)."""
    for g in param_groups:
        g.setdefault("lr_scale", g["lr"] / cfg.lr if cfg.lr else 1.0)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def set_epoch_lr(optimizer: torch.optim.Optimizer, cfg: TrainConfig, epoch: int) -> float:
    """Set every group's learning rate for ``epoch`` (scaled groups keep their ``lr_scale``
    after warm-up, e.g. DePT's head at ×6.5); returns the base value."""
    lr = lr_at_epoch(cfg, epoch)
    warmup = epoch < cfg.warmup_epochs  # Dassl's constant warm-up sets every group to warmup_lr
    for g in optimizer.param_groups:
        g["lr"] = lr if warmup else lr * g.get("lr_scale", 1.0)
    return lr
