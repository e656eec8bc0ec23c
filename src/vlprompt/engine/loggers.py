"""Optional experiment loggers: TensorBoard and Weights & Biases, next to the run directory's own files.

``metrics.jsonl`` and ``results.json`` stay the record of a run; a logger mirrors them into a tool
for browsing curves. Select loggers with the training option ``log_to``::

    vp.fit(model, task, run_dir="runs/x", log_to=["tensorboard"])   # -> runs/x/tensorboard/
    vp.fit(model, task, run_dir="runs/x", log_to=["wandb"])         # -> runs/x/wandb/ (offline)

What is logged (the step is the epoch, so a resumed run continues its curves without duplicates):

- per epoch ``e`` at step ``e``: ``train/loss``, ``train/acc``, ``train/lr``, ``train/epoch_seconds``;
- at the end, at step ``epochs``: ``results/acc``, ``results/base_acc``, ``results/new_acc``,
  ``results/hm`` (when present), ``results/train_seconds``, ``results/eval_seconds``,
  ``results/feature_seconds`` and ``results/acc/<task>`` for task groups;
- the resolved configuration (``config.yaml``): W&B run config, TensorBoard text ``config``.

Only rank 0 of a distributed run logs, and only into a run directory: ``log_to`` without ``run_dir``
is an error. W&B runs offline (no account, no network) unless ``WANDB_MODE`` says otherwise; upload
later with ``wandb sync <run>/wandb/offline-run-*``.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

#: Logger names accepted by ``TrainConfig.log_to``.
LOGGERS = ("tensorboard", "wandb")
#: Training options that only choose where a run is mirrored; they never change its results
#: (not part of a checkpoint's fingerprint, nor of a sweep run id).
LOGGING_OPTIONS = ("log_to", "log_project", "log_name")
#: metrics.jsonl key -> logged name, per epoch.
EPOCH_SCALARS = {"loss": "train/loss", "train_acc": "train/acc", "lr": "train/lr", "seconds": "train/epoch_seconds"}
#: results.json keys logged at the end of a run (as ``results/<key>``) when present.
RESULT_KEYS = ("acc", "base_acc", "new_acc", "hm", "train_seconds", "eval_seconds", "feature_seconds")
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def normalize_log_to(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"tensorboard,wandb"`` / ``["wandb"]`` / ``None`` → a validated tuple of logger names.

    Example:
        >>> normalize_log_to("tensorboard, wandb")
        ('tensorboard', 'wandb')
    """
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"log_to entries must be logger names, got {item!r}; valid: {', '.join(LOGGERS)}")
        name = item.strip().lower()
        if not name:
            continue
        if name not in LOGGERS:
            raise ConfigError(f"unknown logger {item.strip()!r} in log_to; valid loggers: {', '.join(LOGGERS)}")
        if name not in names:
            names.append(name)
    return tuple(names)


def require(name: str) -> Any:
    """Import the package behind logger ``name``, or raise a ConfigError naming the pip extra."""
    package = _PACKAGES[name]
    try:
        module = importlib.import_module(package)
        if name == "tensorboard":
            module = importlib.import_module("torch.utils.tensorboard")
    except ImportError as e:
        raise ConfigError(
            f"log_to={name!r} needs the {package} package: pip install 'vlprompt[{name}]' ({e})"
        ) from e
    return module


class RunLogger:
    """The logger interface (this base class logs nothing).

    Example:
        >>> logger = open_loggers(["tensorboard"], "runs/x", run_id="x", name="coop/eurosat")
        >>> logger.log_metrics(0, {"train/loss": 1.2})
        >>> logger.close()
    """

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Record the run's resolved configuration."""

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record scalar ``metrics`` at ``step`` (the epoch)."""

    def close(self) -> None:
        """Flush and release the backend."""


class TensorBoardLogger(RunLogger):
    """Scalars into ``<run_dir>/tensorboard/`` (``tensorboard --logdir runs``).

    ``purge_step``: events of earlier sessions at this step or later are discarded by TensorBoard
    (a resumed run re-logs the epochs after its checkpoint).
    """

    def __init__(self, run_dir: str | Path, purge_step: int | None = None) -> None:
        tb = require("tensorboard")
        self.writer = tb.SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=purge_step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        text = yaml.safe_dump(_plain(config), sort_keys=False)
        self.writer.add_text("config", "".join(f"    {line}\n" for line in text.splitlines()), 0)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, float(value), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger(RunLogger):
    """A Weights & Biases run in ``<run_dir>/wandb/``, offline unless ``mode`` or ``WANDB_MODE`` says otherwise.

    ``run_id`` is stable for a run directory, so a resumed run continues the same W&B run.
    """

    def __init__(self, run_dir: str | Path, run_id: str, name: str, project: str | None = None,
                 config: Mapping[str, Any] | None = None, mode: str | None = None) -> None:
        wandb = require("wandb")
        self.run = wandb.init(
            project=project or os.environ.get("WANDB_PROJECT") or "vlprompt", name=name, id=run_id,
            dir=str(run_dir), config=_plain(config or {}), mode=mode or os.environ.get("WANDB_MODE") or "offline",
            resume="allow", reinit="create_new", settings=wandb.Settings(console="off"),
        )

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.run.config.update(_plain(config), allow_val_change=True)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log({k: float(v) for k, v in metrics.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


class MultiLogger(RunLogger):
    """Fans every call out to several loggers."""

    def __init__(self, loggers: list[RunLogger]) -> None:
        self.loggers = loggers

    def log_config(self, config: Mapping[str, Any]) -> None:
        for lg in self.loggers:
            lg.log_config(config)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        for lg in self.loggers:
            lg.log_metrics(step, metrics)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()


def wandb_run_id(run_dir: str | Path, fingerprint: str = "") -> str:
    """A W&B run id that is stable for a run directory and its configuration."""
    key = f"{Path(run_dir).expanduser().resolve()}|{fingerprint}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def open_loggers(
    names: Iterable[str], run_dir: str | Path, run_id: str, name: str, project: str | None = None,
    config: Mapping[str, Any] | None = None, start_step: int | None = None,
) -> RunLogger:
    """Open the loggers ``names`` for one run directory (an empty list gives a no-op logger)."""
    loggers: list[RunLogger] = []
    try:
        for n in normalize_log_to(tuple(names)):
            if n == "tensorboard":
                loggers.append(TensorBoardLogger(run_dir, purge_step=start_step))
            else:
                loggers.append(WandbLogger(run_dir, run_id, name, project=project, config=config))
    except BaseException:
        MultiLogger(loggers).close()
        raise
    return MultiLogger(loggers) if loggers else RunLogger()


def epoch_scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """One ``metrics.jsonl`` row → the logged per-epoch scalars."""
    return {tag: float(row[key]) for key, tag in EPOCH_SCALARS.items() if row.get(key) is not None}


def result_scalars(results: Mapping[str, Any]) -> dict[str, float]:
    """The final numbers of ``results.json`` → ``results/<key>`` scalars (per-task accuracy included)."""
    out = {f"results/{k}": float(results[k]) for k in RESULT_KEYS if isinstance(results.get(k), (int, float))}
    for task, acc in (results.get("per_task") or {}).items():
        if isinstance(acc, (int, float)):
            out[f"results/acc/{task}"] = float(acc)
    return out


def log_results(run_dir: str | Path, results: Mapping[str, Any]) -> None:
    """Log numbers added to a finished run (``new_acc``, ``hm`` of base-to-new) with its ``log_to`` loggers.

    Reads the loggers from the run's ``config.yaml``; does nothing when it has none.
    """
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        return
    cfg = yaml.safe_load(path.read_text()) or {}
    train = cfg.get("train") or {}
    names = normalize_log_to(train.get("log_to"))
    scalars = result_scalars(results)
    if not names or not scalars:
        return
    step = int(results.get("epochs") or 0)
    logger = open_loggers(names, run_dir, wandb_run_id(run_dir, cfg.get("fingerprint", "")),
                          train.get("log_name") or run_name(cfg), project=train.get("log_project"))
    try:
        logger.log_metrics(step, scalars)
    finally:
        logger.close()


def run_name(info: Mapping[str, Any]) -> str:
    """A readable default name of a run in TensorBoard / W&B: ``method/dataset[/subsample]/shots<K>/seed<S>``."""
    ds = info.get("dataset")
    if isinstance(ds, Mapping):
        dataset, shots, seed, subsample = ds.get("name"), ds.get("shots"), ds.get("seed"), ds.get("subsample")
    else:
        dataset, shots, seed, subsample = ds, info.get("shots"), info.get("seed"), info.get("subsample")
    parts = [str(info.get("method")), str(dataset)]
    if subsample not in (None, "all"):
        parts.append(str(subsample))
    parts += [f"shots{'all' if shots is None else shots}", f"seed{seed}"]
    return "/".join(parts)


def _plain(obj: Any) -> Any:
    """Tuples → lists, paths → strings: what YAML and W&B configs hold."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


__all__ = [
    "EPOCH_SCALARS", "LOGGERS", "LOGGING_OPTIONS", "MultiLogger", "RunLogger", "TensorBoardLogger", "WandbLogger",
    "epoch_scalars", "log_results", "normalize_log_to", "open_loggers", "require", "result_scalars", "run_name",
    "wandb_run_id",
]
