"""Pretraining of the embedded ``tiny-clip`` backbone (``vlprompt pretrain-tiny``).

* :mod:`.corpus` -- the deterministic (image, caption) corpus, disjoint from the tiny suite's images;
* :mod:`.train` -- :func:`pretrain` (contrastive training, curve, checkpoint, recipe, metrics) and
  :func:`pretrain_main` (the command line).
"""

from __future__ import annotations

from .corpus import MIXTURE, CorpusItem, PretrainCorpus, images_to_tensor, load_exclusions
from .train import DEFAULT_RECIPE, build_model, pretrain, pretrain_main, zero_shot_accuracy

__all__ = [
    "DEFAULT_RECIPE", "MIXTURE", "CorpusItem", "PretrainCorpus", "images_to_tensor", "load_exclusions",
    "build_model", "pretrain", "pretrain_main", "zero_shot_accuracy",
]
