"""Linear-probe CLIP: L-BFGS logistic regression on frozen image features (CLIP App. A3).

The regulariser strength ``C`` is chosen as in CoOp's ``lpclip``: a coarse grid
``1e6 … 1e-6`` scored on the few-shot validation set, then ``search_steps`` rounds of a
log-space bisection around the best grid value. The objective is sklearn's
``0.5·||W||² + C·Σ_i CE_i`` (bias not penalised), minimised with full-batch L-BFGS in
float64 (scaled by 1/(C·n) and stopped at max |gradient| < 1e-4, as sklearn does).
Features are the raw (un-normalised) image features of the plain test view, as in the
reference.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.base import Backbone
from ..errors import ConfigError
from .base import PromptMethod, TrainingPlan, register_method

C_GRID = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)
#: ATen's parallel grain (``at::internal::GRAIN_SIZE``): CPU ops on fewer elements run on one thread
ATEN_GRAIN = 32768


@contextmanager
def one_thread(x: torch.Tensor, n_cls: int) -> Iterator[None]:
    """Run a small CPU fit on one torch thread.

    An L-BFGS fit is thousands of tiny tensor ops in sequence (the few-shot probe: 10–200 × 128–1280
    features). With several intra-op threads each op pays a thread hand-off, which on a busy machine costs
    milliseconds per op instead of microseconds: the lpclip C search (24 fits) took 16–69 s where the same
    sklearn fits take 5–9 s. Only fits whose reductions (over the weights ``n_cls·(D+1)`` and over the
    logits ``n·n_cls``) are below ATen's parallel grain (:data:`ATEN_GRAIN`) switch: those reductions run
    on one thread whatever the setting, so the arithmetic, and the fitted weights, are unchanged (tested
    bit for bit against a two-thread fit). Larger problems and GPU tensors keep the thread setting.
    """
    threads = torch.get_num_threads()
    small = n_cls * (x.shape[1] + 1) < ATEN_GRAIN and x.shape[0] * n_cls < ATEN_GRAIN
    if x.device.type != "cpu" or threads == 1 or not small:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class LinearProbeConfig:
    """Linear-probe options.

    Attributes:
        c: fixed inverse regularisation strength; 0 = search it on the validation set.
        search_steps: bisection rounds after the coarse grid (reference: 8).
        max_iter: L-BFGS iterations per fit (reference: 1000).
    """

    c: float = 0.0
    search_steps: int = 8
    max_iter: int = 1000


def fit_logistic_regression(
    x: torch.Tensor, y: torch.Tensor, n_cls: int, c: float, max_iter: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression: minimise ``0.5||W||² + C·Σ CE`` with L-BFGS.

    Returns ``(weight (n_cls, D), bias (n_cls,))`` in float32.
    """
    with one_thread(x, n_cls):
        return _fit_logistic_regression(x, y, n_cls, c, max_iter)


def _fit_logistic_regression(
    x: torch.Tensor, y: torch.Tensor, n_cls: int, c: float, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.double()
    w = torch.zeros(n_cls, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_cls, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1, max_iter=max_iter, tolerance_grad=1e-4, tolerance_change=1e-9,
        history_size=20, line_search_fn="strong_wolfe",
    )
    n = max(len(y), 1)

    def closure() -> torch.Tensor:
        # sklearn's scaling of the same objective: mean CE + ||W||^2 / (2 C n); its default
        # tol=1e-4 bounds the largest gradient entry, as tolerance_grad does here
        opt.zero_grad()
        loss = 0.5 * (w * w).sum() / (c * n) + F.cross_entropy(x @ w.t() + b, y)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().float(), b.detach().float()


def _accuracy(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(((x.float() @ w.t() + b).argmax(-1) == y).float().mean())


def search_c(
    train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], n_cls: int,
    steps: int = 8, max_iter: int = 1000,
) -> tuple[float, list[tuple[float, float]]]:
    """CoOp/CLIP search of C: coarse grid, then log-space bisection. Returns (C, trace)."""
    trace: list[tuple[float, float]] = []

    def score(c: float) -> float:
        acc = _accuracy(*fit_logistic_regression(*train, n_cls, c, max_iter), *val)
        trace.append((c, acc))
        return acc

    grid = [score(c) for c in C_GRID]
    best = C_GRID[max(range(len(grid)), key=grid.__getitem__)]
    lo, hi = math.log10(best) - 1, math.log10(best) + 1
    c_best = best
    for _ in range(steps):
        acc_lo, acc_hi = score(10**lo), score(10**hi)
        if acc_lo < acc_hi:
            c_best, lo = 10**hi, 0.5 * (lo + hi)
        else:
            c_best, hi = 10**lo, 0.5 * (lo + hi)
    return c_best, trace


@register_method
class LinearProbe(PromptMethod):
    """A linear classifier on frozen image features, fitted in closed loop with L-BFGS.

    Cannot predict classes it was not fitted on (``set_classnames`` to other names is refused).

    Example:
        >>> model = vp.build_method("linear-probe", bb, task.classnames)
        >>> vp.fit(model, task)  # extracts features, searches C, fits
    """

    name = "linear-probe"
    Config = LinearProbeConfig
    plan = TrainingPlan(steps="none", fit_features="test")  # one closed-form fit on plain-view features

    def __init__(self, backbone: Backbone, classnames: list[str], config: LinearProbeConfig) -> None:
        super().__init__(backbone, classnames, config)
        self.weight = nn.Parameter(torch.zeros(len(classnames), backbone.embed_dim))
        self.bias = nn.Parameter(torch.zeros(len(classnames)))
        self.chosen_c = config.c

    def set_classnames(self, classnames: list[str]) -> None:
        if list(classnames) != self.classnames:
            raise ConfigError("linear-probe has one weight row per trained class and cannot predict other classes")

    def eval_text_features(self) -> None:
        return None

    def logits_from_features(self, image_features, text_features=None) -> torch.Tensor:
        return image_features.float() @ self.weight.t() + self.bias

    def fit_features(
        self, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor] | None
    ) -> dict[str, float]:
        """Fit on cached features; ``val`` (few-shot val set) drives the C search."""
        n_cls = len(self.classnames)
        c = self.config.c
        with one_thread(train[0], n_cls):
            if c <= 0:
                c, _ = search_c(train, val if val is not None and len(val[1]) else train, n_cls,
                                self.config.search_steps, self.config.max_iter)
            w, b = fit_logistic_regression(*train, n_cls, c, self.config.max_iter)
        with torch.no_grad():
            self.weight.copy_(w)
            self.bias.copy_(b)
        self.chosen_c = c
        return {"c": c, "train_acc": 100 * _accuracy(w, b, *train)}
