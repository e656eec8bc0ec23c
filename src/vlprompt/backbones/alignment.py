"""Closed-form (ridge) alignment of a text space to an image classifier's weight space.

A locked-tower backbone pairs an image classifier with a separate sentence encoder. To put
text into the image feature space, fit a linear map ``t ↦ t W + b`` from the sentence
embeddings ``X`` ``(n, d_text)`` of class prompts to the classifier's weight rows ``Y``
``(n, d_image)`` of the same classes, by ridge regression with an unpenalised intercept:

    W = (Xcᵀ Xc + λ I)⁻¹ Xcᵀ Yc,   b = ȳ − x̄ W,   with Xc = X − x̄, Yc = Y − ȳ.

``λ`` is chosen deterministically from a fixed grid by k-fold cross-validation over
*classes*: for every held-out fold, the map fitted on the other classes turns the held-out
class prompts into text features, and each held-out weight row (a stand-in for an image of
its class) is classified among them by cosine similarity. The grid value with the best mean
top-1 wins (ties: the smaller ``λ``). Everything runs in float64 on the CPU.

Example:
    >>> fit = fit_ridge_map(x, y)          # chooses λ by class-held-out CV
    >>> text_in_image_space = x_new @ fit.weight + fit.bias
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import ConfigError

#: Default ``λ`` grid of the cross-validation.
LAMBDA_GRID: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


@dataclass
class RidgeFit:
    """A fitted map ``x @ weight + bias``.

    Attributes:
        weight: ``(d_in, d_out)`` float64.
        bias: ``(d_out,)`` float64.
        lam: the ridge strength used.
        cv: ``{λ: mean held-out top-1}`` of the selection (empty when ``λ`` was given).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    lam: float
    cv: dict[float, float] = field(default_factory=dict)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.weight.dtype) @ self.weight + self.bias


def _check(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ConfigError(
            f"ridge alignment needs X (n, d_in) and Y (n, d_out) with the same n; got {tuple(x.shape)} "
            f"and {tuple(y.shape)}"
        )
    if x.shape[0] < 2:
        raise ConfigError("ridge alignment needs at least 2 (prompt, weight row) pairs")


def solve_ridge(x: torch.Tensor, y: torch.Tensor, lam: float) -> RidgeFit:
    """Ridge regression with an unpenalised intercept (see the module docstring).

    Example:
        >>> fit = solve_ridge(x, y, lam=3.0)
    """
    _check(x, y)
    if lam <= 0:
        raise ConfigError(f"ridge strength must be > 0, got {lam}")
    x, y = x.double().cpu(), y.double().cpu()
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram = xc.t() @ xc + lam * torch.eye(x.shape[1], dtype=x.dtype)
    weight = torch.linalg.solve(gram, xc.t() @ yc)
    return RidgeFit(weight, my - mx @ weight, float(lam))


def class_heldout_top1(
    x: torch.Tensor, y: torch.Tensor, lams: Sequence[float], folds: int = 5, seed: int = 0
) -> dict[float, float]:
    """``{λ: mean top-1}`` of classifying held-out weight rows among held-out mapped prompts.

    One SVD per fold serves every ``λ``: ``W_λ = V diag(s / (s² + λ)) Uᵀ Yc`` equals
    :func:`solve_ridge` (the test suite checks it).
    """
    _check(x, y)
    x, y = x.double().cpu(), y.double().cpu()
    n = x.shape[0]
    if folds < 2 or folds > n:
        raise ConfigError(f"folds must be in [2, {n}], got {folds}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts = torch.tensor_split(perm, folds)
    scores: dict[float, list[float]] = {float(lam): [] for lam in lams}
    for k, test in enumerate(parts):
        train = torch.cat([p for j, p in enumerate(parts) if j != k])
        mx, my = x[train].mean(0), y[train].mean(0)
        u, sv, vh = torch.linalg.svd(x[train] - mx, full_matrices=False)
        uty = u.t() @ (y[train] - my)
        xt = (x[test] - mx) @ vh.t()
        rows = F.normalize(y[test], dim=-1)
        target = torch.arange(len(test))
        for lam in scores:
            text = F.normalize((xt * (sv / (sv * sv + lam))) @ uty + my, dim=-1)
            pred = (rows @ text.t()).argmax(-1)
            scores[lam].append((pred == target).double().mean().item())
    return {lam: float(sum(v) / len(v)) for lam, v in scores.items()}


def fit_ridge_map(
    x: torch.Tensor, y: torch.Tensor, lam: float | None = None, grid: Sequence[float] = LAMBDA_GRID,
    folds: int = 5, seed: int = 0,
) -> RidgeFit:
    """Fit the text → image-space map; ``lam=None`` selects it on ``grid`` by class-held-out CV.

    Example:
        >>> fit = fit_ridge_map(minilm_prompts, effnet.fc.weight)
        >>> fit.lam, fit.cv
    """
    _check(x, y)
    if lam is not None:
        return solve_ridge(x, y, lam)
    if not grid:
        raise ConfigError("the ridge grid is empty")
    cv = class_heldout_top1(x, y, [float(g) for g in grid], folds, seed)
    best = max(cv.values())
    chosen = min(g for g, s in cv.items() if s == best)
    fit = solve_ridge(x, y, chosen)
    fit.cv = cv
    return fit
