"""One training run and one re-targeted evaluation, as used by every protocol and the CLI."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import progress
from ..backbones import load_backbone
from ..backbones.base import Backbone
from ..data import load_dataset, task_structure
from ..engine.config import TrainConfig
from ..engine.run import RunDir
from ..engine.train import fit, seed_everything
from ..methods import build_method, get_method_class
from ..methods.base import PromptMethod, config_to_dict, task_options
from ..presets import resolve_preset
from ..prompt_io import load_prompt


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines one training run.

    Attributes:
        method: method name, plug-ins included (``"coop+dept"``).
        dataset, root: dataset registry name and data root.
        shots, seed, subsample: few-shot sample and class subset (``all``/``base``/``new``).
        out: run directory.
        backbone, weights, trust_checkpoint: the backbone to load.
        pretrained: a pretrained tag instead of ``weights`` (``"openai"``; see :func:`vlprompt.load_backbone`).
        quick_gelu: force QuickGELU (``True``) / GELU (``False``) in the CLIP towers; ``None``: decided by
            the name, the tag or the weights file (``force_quick_gelu`` of :func:`vlprompt.load_backbone`).
        preset: a named paper configuration (:mod:`vlprompt.presets`); explicit options win.
        method_options, train_options: explicit options.
        split_file: a stored few-shot sample to use instead of sampling.
        split: VTAB-1k / FGVC protocol stage, ``"tune"`` or ``"final"`` (see ``load_dataset``).
        protocol: recorded as ``protocol`` in ``results.json`` (default: derived from the task).
        selection, data_ratio: keep only ``data_ratio`` of the training images, chosen by
            ``selection`` (``uniform``, ``herding``, ``kcenter``; data-efficient protocol).
        model_kwargs: extra ``timm.create_model`` arguments of a timm backbone (MAE: ``{"global_pool": "avg"}``).
    """

    method: str
    dataset: str
    root: str
    out: str
    shots: int | None = 16
    seed: int = 1
    subsample: str = "all"
    backbone: str = "tiny-clip"
    weights: str | None = None
    trust_checkpoint: bool = False
    preset: str | None = None
    method_options: dict[str, Any] = field(default_factory=dict)
    train_options: dict[str, Any] = field(default_factory=dict)
    split_file: str | None = None
    device: str = "auto"
    split: str | None = None
    protocol: str | None = None
    selection: str | None = None
    data_ratio: float = 1.0
    pretrained: str | None = None
    quick_gelu: bool | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)


_BACKBONES: dict[tuple, Backbone] = {}


def get_backbone(
    name: str, weights: str | None, trust: bool, device: str, pretrained: str | None = None,
    quick_gelu: bool | None = None, model_kwargs: dict[str, Any] | None = None,
) -> Backbone:
    """Load a backbone once per process (protocols train many runs on the same one)."""
    import json

    from ..engine.precision import resolve_device

    key = (name, weights, trust, device, pretrained, quick_gelu,
           json.dumps(model_kwargs or {}, sort_keys=True, default=str))
    if key not in _BACKBONES:
        _BACKBONES.clear()
        _BACKBONES[key] = load_backbone(name, weights=weights, trust_checkpoint=trust, device=resolve_device(device),
                                        pretrained=pretrained, force_quick_gelu=quick_gelu,
                                        model_kwargs=model_kwargs or None)
    return _BACKBONES[key]


def spec_backbone(spec: RunSpec) -> Backbone:
    """The backbone a run spec names (cached per process by :func:`get_backbone`)."""
    return get_backbone(spec.backbone, spec.weights, spec.trust_checkpoint, spec.device, pretrained=spec.pretrained,
                        quick_gelu=spec.quick_gelu, model_kwargs=spec.model_kwargs)


def run_backbone(
    cfg: dict[str, Any], weights: str | None = None, trust_checkpoint: bool = False, device: str = "auto",
    quick_gelu: bool | None = None,
) -> Backbone:
    """The backbone a trained run recorded in its ``config.yaml``, loaded the same way.

    The recorded activation (``backbone.quick_gelu``) is forced, so a run trained with QuickGELU is
    evaluated with it whatever the weights file says; a recorded ``pretrained`` tag is resolved through
    the hub cache again. ``weights`` (another file) and ``quick_gelu`` override what was recorded.
    """
    bcfg = cfg["backbone"]
    model_kwargs = bcfg.get("model_kwargs")  # timm create_model arguments the run was trained with
    if weights is None and bcfg.get("pretrained"):
        return get_backbone(bcfg["name"], None, trust_checkpoint, device, pretrained=bcfg["pretrained"],
                            quick_gelu=quick_gelu if quick_gelu is not None else bcfg.get("quick_gelu"),
                            model_kwargs=model_kwargs)
    if quick_gelu is None:
        quick_gelu = bcfg.get("quick_gelu")  # None: runs from before it was recorded, or not a CLIP
    return get_backbone(bcfg["name"], weights or bcfg.get("weights"), trust_checkpoint, device, quick_gelu=quick_gelu,
                        model_kwargs=model_kwargs)


def train_run(
    spec: RunSpec, skip_done: bool = True, setup: Callable[[PromptMethod], None] | None = None,
    restart: bool = False,
) -> dict[str, Any]:
    """Train (or resume) one run; a run whose ``results.json`` exists is returned as is.

    ``setup`` is called on the freshly built method before training (e.g. to fix E2VPT's pruning masks).
    ``restart`` trains from epoch 0 even if the run directory holds a checkpoint (it is moved to
    ``checkpoint/discarded/``; implies not skipping a finished run).

    Example:
        >>> train_run(RunSpec("coop", "eurosat", "~/data", out="runs/x", subsample="base"))["acc"]
    """
    run = RunDir(spec.out)
    done = run.read_results()
    if skip_done and not restart and done is not None and "acc" in done:
        progress.run_skipped(str(spec.out))
        return done
    progress.run_started(str(spec.out))
    base = spec.method.split("+")[0]
    get_method_class(base)  # unknown names fail before anything is loaded or written
    preset = resolve_preset(spec.method, spec.preset, spec.shots, spec.dataset)
    method_opts = {**preset["method"], **spec.method_options}
    train_opts = {**preset["train"], **spec.train_options, "seed": spec.seed}
    TrainConfig.from_kwargs(**train_opts)  # bad training options fail before anything is loaded
    bb = spec_backbone(spec)
    get_method_class(base).check_backbone(bb, method_opts)  # e.g. MaPLe's prompt_depth, before the data work
    task = load_dataset(spec.dataset, spec.root, shots=spec.shots, seed=spec.seed, subsample=spec.subsample,
                        split_file=spec.split_file, split=spec.split,
                        check_train=get_method_class(base).needs_training)
    method_opts = task_options(spec.method, task, method_opts)  # template, ensemble rule, tasks: as build_method(task)
    if spec.selection:  # data-efficient protocol: a selected fraction of the training set
        from .data_efficient import select_subset

        task = select_subset(task, spec.data_ratio, spec.selection, spec.seed, bb,
                             cache_dir=train_opts.get("cache_dir"), device=spec.device)
    seed_everything(spec.seed)
    model = build_method(spec.method, bb, task.classnames, **method_opts)
    if setup is not None:
        setup(model)
    train_opts.setdefault("device", spec.device)
    res = fit(model, task, run_dir=spec.out, protocol=spec.protocol, restart=restart, **train_opts)
    if spec.selection:
        res = {**res, "selection": spec.selection, "data_ratio": spec.data_ratio, "n_train": len(task.train)}
        RunDir(spec.out).write_results(res)
    progress.run_finished(str(spec.out), res.get("acc"))
    return res


def evaluate_run(
    run_dir: str | Path, dataset: str, root: str, subsample: str = "all", cache_dir: str | None = None,
    weights: str | None = None, trust_checkpoint: bool = False, device: str = "auto", quick_gelu: bool | None = None,
) -> dict[str, Any]:
    """Evaluate a trained run on (another subset of / another) dataset with re-targeted prompts.

    The backbone is the one the run recorded (:func:`run_backbone`), its activation included.
    """
    from ..api import evaluate, evaluate_per_task

    run = RunDir(run_dir)
    cfg = run.read_config()
    if not cfg:
        from ..errors import ConfigError

        raise ConfigError(f"{run.path} is not a run directory (no config.yaml); train one with `vlprompt train`")
    bb = run_backbone(cfg, weights, trust_checkpoint, device, quick_gelu=quick_gelu)
    task = load_dataset(dataset, root, subsample=subsample, check_train=False)  # evaluation only
    model = load_prompt(run.path, bb)
    if task.extra.get("tasks") and "tasks" in config_to_dict(model.config):  # multi-task method on a group
        model.set_classnames(task.classnames, tasks=task_structure(task))
    else:
        model.set_classnames(task.classnames)
    if task.extra.get("tasks"):  # a task group: each task on its own classes, acc = their mean
        per_task = evaluate_per_task(model, task, device=device, cache_dir=cache_dir)
        return {"dataset": task.name, "subsample": subsample, "acc": sum(per_task.values()) / len(per_task),
                "per_task": per_task, "n_test": len(task.test)}
    acc = evaluate(model, task, device=device, cache_dir=cache_dir)
    return {"dataset": task.name, "subsample": subsample, "acc": acc, "n_test": len(task.test)}
