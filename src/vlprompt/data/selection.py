"""Training-set selection for data-efficient learning (DAPT's protocol, after DeepCore).

A fraction ``ratio`` of the training set is kept, chosen by

* ``uniform``: uniform sampling without replacement, seeded (the reference default);
* ``herding``: greedy herding on L2-normalised image features — each step adds the sample that
  keeps the mean of the selected features closest to the mean of all features;
* ``kcenter``: k-center greedy — start from a seeded random sample, then repeatedly add the
  sample farthest (Euclidean, normalised features) from everything selected so far.

With ``balanced=True`` (default) the selection runs per class and keeps
``max(1, round(ratio · n_c))`` samples of each class (every class stays represented); with
``balanced=False`` it runs over the whole set and keeps ``max(1, round(ratio · n))``.

Example:
    >>> idx = select_indices("herding", labels, 0.1, seed=1, features=feats)
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from vlprompt.errors import ConfigError

SELECTIONS = ("uniform", "herding", "kcenter")
NEEDS_FEATURES = ("herding", "kcenter")


def keep_count(n: int, ratio: float) -> int:
    """How many of ``n`` samples a ratio keeps: ``max(1, round(ratio · n))`` (at most ``n``)."""
    return min(n, max(1, round(ratio * n)))


def uniform_select(n: int, k: int, seed: int) -> list[int]:
    """``k`` of ``range(n)`` uniformly without replacement (seeded)."""
    return sorted(random.Random(seed).sample(range(n), k))


def herding_select(features: torch.Tensor, k: int) -> list[int]:
    """Greedy herding: step ``t`` picks ``argmin_i ‖(t+1)·μ − (Σ_selected x + x_i)‖`` (in pick order)."""
    x = F.normalize(features.double(), dim=-1)
    mu = x.mean(0)
    total = torch.zeros_like(mu)
    free = torch.ones(len(x), dtype=torch.bool)
    picked: list[int] = []
    for t in range(k):
        dist = ((t + 1) * mu - (total + x)).norm(dim=-1)
        dist[~free] = float("inf")
        i = int(dist.argmin())
        picked.append(i)
        total += x[i]
        free[i] = False
    return picked


def kcenter_greedy(features: torch.Tensor, k: int, seed: int) -> list[int]:
    """k-center greedy: a seeded random first center, then the farthest point from the centers (in pick order)."""
    x = F.normalize(features.double(), dim=-1)
    first = random.Random(seed).randrange(len(x))
    picked = [first]
    min_dist = (x - x[first]).norm(dim=-1)
    for _ in range(k - 1):
        min_dist[picked] = -1.0
        i = int(min_dist.argmax())
        picked.append(i)
        min_dist = torch.minimum(min_dist, (x - x[i]).norm(dim=-1))
    return picked


def select_indices(
    method: str, labels: Sequence[int], ratio: float, seed: int = 1, features: torch.Tensor | None = None,
    balanced: bool = True,
) -> list[int]:
    """Sorted indices of the kept training samples (see the module doc).

    Raises:
        ConfigError: unknown method, ratio outside (0, 1], or a coreset method without features.
    """
    if method not in SELECTIONS:
        raise ConfigError(f"selection {method!r} is unknown; expected one of {', '.join(SELECTIONS)}")
    if not 0.0 < ratio <= 1.0:
        raise ConfigError(f"data ratio must be in (0, 1], got {ratio}")
    if method in NEEDS_FEATURES and features is None:
        raise ConfigError(f"selection {method!r} needs image features")
    labels = list(labels)
    groups = {}
    if balanced:
        for i, y in enumerate(labels):
            groups.setdefault(y, []).append(i)
    else:
        groups = {None: list(range(len(labels)))}
    kept: list[int] = []
    for key, members in sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0])):
        k = keep_count(len(members), ratio)
        sub_seed = seed * 1_000_003 + (0 if key is None else int(key))
        if method == "uniform":
            local = uniform_select(len(members), k, sub_seed)
        elif method == "herding":
            local = herding_select(features[members], k)
        else:
            local = kcenter_greedy(features[members], k, sub_seed)
        kept.extend(members[j] for j in local)
    return sorted(kept)
