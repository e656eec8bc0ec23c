"""Learning-rate schedule of Dassl: constant warm-up, then cosine (stepped per epoch)."""

from __future__ import annotations

import math

import torch

from .config import TrainConfig


def lr_at_epoch(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate used during ``epoch`` (0-based).

    Warm-up epochs run at ``warmup_lr``; afterwards the cosine restarts its count
    (Dassl ``WARMUP_RECOUNT``): ``lr · ½(1 + cos(π (e - w) / epochs))``.

    ``scheduler="linear-warmup-cosine"`` (VPT's ``WarmupCosineSchedule``, stepped once per epoch): ``lr · e / w``
    for ``e < w``, then ``lr · max(0, ½(1 + cos(π (e - w) / max(1, epochs - w))))``.
    """
    w = cfg.warmup_epochs
    if cfg.scheduler == "linear-warmup-cosine":
        if epoch < w:
            return cfg.lr * epoch / max(1, w)
        progress = (epoch - w) / max(1, cfg.epochs - w)
        return cfg.lr * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
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
    if cfg.optimizer == "adamw-hf":
        return AdamWHF(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


class AdamWHF(torch.optim.Optimizer):
    """The AdamW of HuggingFace's BERT code, as VPT's ``src/solver/optimizer.py`` uses it for full fine-tuning.

    Per parameter ``p`` with gradient ``g`` at step ``t`` (group values ``lr``, ``betas`` ``(b1, b2)``,
    ``eps``, ``weight_decay`` ``wd``)::

        m = b1·m + (1 − b1)·g            v = b2·v + (1 − b2)·g²
        p ← p − lr·sqrt(1 − b2^t)/(1 − b1^t) · m / (sqrt(v) + eps)
        p ← p − lr·wd·p                   (after the update, on the updated value; skipped for wd = 0)

    It differs from ``torch.optim.AdamW`` in two places: ``eps`` is added to ``sqrt(v)`` before the bias
    correction (so it acts as ``eps / sqrt(1 − b2^t)``), and the decay is applied after the Adam update
    instead of before it. Defaults: betas (0.9, 0.999), eps 1e-6 (the reference's).

    Example:
        >>> opt = AdamWHF([{"params": [w], "weight_decay": 0.01}, {"params": [b], "weight_decay": 0.0}], lr=1e-3)
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0) -> None:
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"AdamWHF: invalid lr {lr}, eps {eps} or betas {betas}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - see the class docstring
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                t = state["step"]
                m.mul_(b1).add_(g, alpha=1.0 - b1)
                v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
                step_size = lr * math.sqrt(1.0 - b2**t) / (1.0 - b1**t)
                p.addcdiv_(m, v.sqrt().add_(eps), value=-step_size)
                if wd > 0.0:
                    p.add_(p, alpha=-lr * wd)
        return loss


def set_epoch_lr(optimizer: torch.optim.Optimizer, cfg: TrainConfig, epoch: int) -> float:
    """Set every group's learning rate for ``epoch`` (scaled groups keep their ``lr_scale``
    after warm-up, e.g. DePT's head at ×6.5); returns the base value."""
    lr = lr_at_epoch(cfg, epoch)
    # Dassl's constant warm-up sets every group to warmup_lr; a linear warm-up scales every group's own lr
    warmup = epoch < cfg.warmup_epochs and cfg.scheduler != "linear-warmup-cosine"
    for g in optimizer.param_groups:
        g["lr"] = lr if warmup else lr * g.get("lr_scale", 1.0)
    return lr
