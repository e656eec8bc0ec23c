"""Training configuration: one frozen dataclass, serialised next to every run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ConfigError
from .loggers import normalize_log_to

Precision = Literal["fp32", "bf16", "fp16", "auto", "fp16-gpu"]

#: Default number of cached augmented views per training image: the smallest N within 0.5 points of
#: per-step augmentation on the tiny suite (CoOp, 3 seeds; docs/performance.md).
DEFAULT_FEATURE_VIEWS = 2


@dataclass(frozen=True)
class TrainConfig:
    """Options of the training loop (defaults: Dassl / CoOp).

    Attributes:
        epochs: number of epochs, the warm-up epoch included (Dassl ``MAX_EPOCH``).
        lr: base learning rate.
        batch_size: training batch size.
        optimizer: ``sgd`` (momentum, Dassl default), ``adamw``, ``adam``, or ``adamw-hf``: the
            HuggingFace-BERT AdamW that VPT's full fine-tuning uses (eps 1e-6, bias correction folded
            into the step size, decoupled weight decay applied after the update; see
            :class:`vlprompt.engine.schedule.AdamWHF`).
        momentum: SGD momentum.
        weight_decay: weight decay (applies to prompt vectors too, as in Dassl).
        warmup_epochs: constant warm-up epochs at ``warmup_lr`` (they count in ``epochs``).
        warmup_lr: warm-up learning rate.
        scheduler: ``cosine`` (over ``epochs``, restarting its count after warm-up) or ``constant``, both after
            Dassl's constant warm-up at ``warmup_lr``; or ``linear-warmup-cosine`` (VPT's ``WarmupCosineSchedule``):
            ``lr · e / warmup_epochs`` during the warm-up (epoch 0 at 0), then a cosine from ``lr`` to 0 over the
            remaining ``epochs − warmup_epochs`` epochs (``warmup_lr`` unused).
        precision: ``fp32``, ``bf16``/``fp16`` autocast, ``auto`` (bf16 where supported), or
            ``fp16-gpu`` (fp16 on CUDA, fp32 elsewhere: the reference code's pattern).
        feature_views: N cached augmented views per training image for methods with a frozen
            image tower; 0 = a fresh augmentation on every step (no cache, reference pattern).
        augment: training augmentation policy (``clip``, ``crop``, ``none``; see
            :mod:`vlprompt.data.transforms`); ``None`` = the task's own (``clip`` for real datasets).
        cache_dir: directory of the image-feature cache (``None``: ``~/.cache/vlprompt``).
        seed: seed of sampling, augmentation and initialisation.
        grad_clip: max gradient norm, or 0 for none.
        eval_batch_size: test batch size (Dassl: 100).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` ...
        num_workers: data-loader workers.
        progress: show tqdm bars (only on a terminal).
        log_to: mirror the run into experiment loggers: ``tensorboard`` (``<run_dir>/tensorboard/``),
            ``wandb`` (``<run_dir>/wandb/``, offline unless ``WANDB_MODE`` is set); a list or a
            comma-separated string. Needs a run directory; see :mod:`vlprompt.engine.loggers`.
        log_project: W&B project (default: ``$WANDB_PROJECT`` or ``vlprompt``).
        log_name: the run's name in the loggers (default: ``method/dataset[/subsample]/shots<K>/seed<S>``).
    """

    epochs: int = 10
    lr: float = 0.002
    batch_size: int = 32
    optimizer: Literal["sgd", "adamw", "adam", "adamw-hf"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    scheduler: Literal["cosine", "constant", "linear-warmup-cosine"] = "cosine"
    precision: Precision = "auto"
    feature_views: int = DEFAULT_FEATURE_VIEWS
    augment: str | None = None
    cache_dir: str | None = None
    seed: int = 1
    grad_clip: float = 0.0
    eval_batch_size: int = 100
    device: str = "auto"
    num_workers: int = 0
    progress: bool = True
    log_to: tuple[str, ...] = ()
    log_project: str | None = None
    log_name: str | None = None

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr < 0:
            raise ConfigError(
                f"invalid training config: epochs={self.epochs} (>= 0), batch_size={self.batch_size} (>= 1), "
                f"lr={self.lr} (>= 0)"
            )
        if self.precision not in ("fp32", "bf16", "fp16", "auto", "fp16-gpu"):
            raise ConfigError(f"precision must be fp32, bf16, fp16, auto or fp16-gpu, got {self.precision!r}")
        if self.optimizer not in ("sgd", "adamw", "adam", "adamw-hf"):
            raise ConfigError(f"optimizer must be sgd, adamw, adam or adamw-hf, got {self.optimizer!r}")
        if self.scheduler not in ("cosine", "constant", "linear-warmup-cosine"):
            raise ConfigError(f"scheduler must be cosine, constant or linear-warmup-cosine, got {self.scheduler!r}")
        if self.augment is not None and self.augment not in ("clip", "crop", "none"):
            raise ConfigError(f"augment must be clip, crop, none or unset, got {self.augment!r}")
        object.__setattr__(self, "log_to", normalize_log_to(self.log_to))
        if self.feature_views < 0:
            raise ConfigError(f"feature_views must be >= 0, got {self.feature_views}")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ConfigError(f"unknown training option(s) {unknown}; valid options: {sorted(names)}")
        return cls(**kwargs)
