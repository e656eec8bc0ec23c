"""Named configurations of the papers (reference/clip_methods.md §2.2), selectable with ``--preset``.

A preset gives method options and training options; explicit options override it. ``paper`` is
each method's original base-to-new / few-shot configuration, ``dept`` the 10-epoch re-run that
DePT's paper uses for every baseline (and for ``<method>+dept``), ``paper-xd`` MaPLe's and PromptSRC's
cross-dataset / domain-generalisation configuration, ``paper-fs`` DAPT's and PromptSRC's few-shot one
(PromptSRC's GPA setting then depends on the dataset, as its config file says).

``reference`` (every trained method of the seeds) is the original code's whole training pattern on
top of its ``paper`` configuration: its precision (``fp16-gpu``: fp16 on a GPU, fp32 on CPU; VPT and
E2VPT train in fp32), a fresh augmentation and image-tower pass every step (``feature_views=0``),
and the reference's own rules where vlprompt's default differs (KgCoOp's fp16 targets, DAPT's loss
switch and binarised batch-maximum Grad-CAM masks). What still differs in it is listed in
docs/deviations.md ("The reference preset").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import ConfigError

Preset = dict[str, dict[str, Any]]
#: A dataset rule: ``(shots, dataset) -> {"method": {...}, "train": {...}}`` overlaid on a preset's values.
DatasetRule = Callable[[int | None, str], Preset]

_DEPT_TRAIN = {"epochs": 10, "batch_size": 4, "lr": 0.0035}

PRESETS: dict[str, dict[str, Preset]] = {
    "coop": {
        # CoOp few-shot paper (RN50 main): M=16 random, batch 32, lr 0.002; epochs by shots (see coop_epochs)
        "paper": {"method": {"n_ctx": 16, "ctx_init": ""}, "train": {"batch_size": 32, "lr": 0.002}},
        # CoOp as re-run in CoCoOp's base-to-new table: "a photo of a", 200 epochs (ImageNet 50)
        "cocoop-b2n": {"method": {"ctx_init": "a photo of a"},
                       "train": {"epochs": 200, "batch_size": 32, "lr": 0.002}},
        "dept": {"method": {"n_ctx": 16, "ctx_init": ""}, "train": dict(_DEPT_TRAIN)},
    },
    "cocoop": {
        "paper": {"method": {"n_ctx": 4, "ctx_init": "a photo of a"},
                  "train": {"epochs": 10, "batch_size": 1, "lr": 0.002}},
        "dept": {"method": {"n_ctx": 4, "ctx_init": "a photo of a"},
                 "train": {"epochs": 10, "batch_size": 1, "lr": 0.002}},
    },
    "kgcoop": {
        "paper": {"method": {"n_ctx": 4, "ctx_init": "a photo of a", "weight": 8.0},
                  "train": {"epochs": 100, "batch_size": 128, "lr": 0.002}},
        "dept": {"method": {"n_ctx": 4, "ctx_init": "a photo of a", "weight": 2.0}, "train": dict(_DEPT_TRAIN)},
    },
    "maple": {
        "paper": {"method": {"n_ctx": 2, "ctx_init": "a photo of a", "prompt_depth": 9},
                  "train": {"epochs": 5, "batch_size": 4, "lr": 0.0035}},
        "paper-xd": {"method": {"n_ctx": 2, "ctx_init": "a photo of a", "prompt_depth": 3},
                     "train": {"epochs": 2, "batch_size": 4, "lr": 0.0026}},
        "dept": {"method": {"n_ctx": 2, "ctx_init": "a photo of a", "prompt_depth": 9}, "train": dict(_DEPT_TRAIN)},
    },
    # CLIP-Adapter ships no config: its README runs clip_adapter.py with CoOp's command, i.e. CoOp's few-shot
    # rn50 config (SGD lr 0.002, batch 32, cosine, 1 constant warm-up epoch at 1e-5; epochs by shots as CoOp's)
    "clip-adapter": {"paper": {"method": {"ratio": 0.2, "reduction": 4}, "train": {"batch_size": 32, "lr": 0.002}}},
    # IVLP (MaPLe repository, configs/trainers/IVLP): base-to-new `vit_b16_c2_ep5_batch4_2+2ctx`, and the deep
    # language-only `vit_b16_c2_ep5_batch4_4ctx_language_only` (4 text tokens, no visual prompts, lr 0.0025)
    "ivlp": {
        "paper": {"method": {"n_ctx_text": 2, "n_ctx_vision": 2, "ctx_init": "a photo of a",
                             "prompt_depth_text": 12, "prompt_depth_vision": 12},
                  "train": {"epochs": 5, "batch_size": 4, "lr": 0.0035}},
        "paper-language": {"method": {"n_ctx_text": 4, "n_ctx_vision": 0, "ctx_init": "a photo of a",
                                      "prompt_depth_text": 12, "prompt_depth_vision": 0},
                           "train": {"epochs": 5, "batch_size": 4, "lr": 0.0025}},
    },
}

# PromptSRC (configs/trainers/PromptSRC): base-to-new `vit_b16_c2_ep20_batch4_4+4ctx`, few-shot
# `vit_b16_c2_ep50_batch4_4+4ctx_few_shot` (GPA 30/30; 45/5 on the datasets its comment lists, see resolve_preset),
# cross-dataset / domain generalisation `vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets` (depth 3, GPA 6/10).
# All: SGD lr 0.0025, batch 4, cosine, one constant warm-up epoch at 1e-5, 4+4 ctx from "a photo of a", λ 25 / 10.
_PROMPTSRC_METHOD = {"n_ctx_text": 4, "n_ctx_vision": 4, "ctx_init": "a photo of a", "prompt_depth_text": 9,
                     "prompt_depth_vision": 9, "text_loss_weight": 25.0, "image_loss_weight": 10.0}
PRESETS["promptsrc"] = {
    "paper": {"method": {**_PROMPTSRC_METHOD, "gpa_mean": 15.0, "gpa_std": 1.0},
              "train": {"epochs": 20, "batch_size": 4, "lr": 0.0025}},
    "paper-fs": {"method": {**_PROMPTSRC_METHOD, "gpa_mean": 30.0, "gpa_std": 30.0},
                 "train": {"epochs": 50, "batch_size": 4, "lr": 0.0025}},
    "paper-xd": {"method": {**_PROMPTSRC_METHOD, "prompt_depth_text": 3, "prompt_depth_vision": 3,
                            "gpa_mean": 6.0, "gpa_std": 10.0},
                 "train": {"epochs": 20, "batch_size": 4, "lr": 0.0025}},
}
#: the few-shot config's second GPA setting (its comment: StanfordCars, Flowers102, FGVCAircraft, DTD, EuroSAT)
PROMPTSRC_FS_SHARP_GPA = {"datasets": frozenset({"stanford_cars", "oxford_flowers", "fgvc_aircraft", "dtd", "eurosat"}),
                          "gpa_mean": 45.0, "gpa_std": 5.0}

# SoftCPT (configs/trainers/MTCoOp/rn50_ep50.yaml): SGD lr 0.002, 50 epochs, batch 32, cosine, 1 warm-up epoch
for _softcpt in ("softcpt", "softcpt-nata", "softcpt-nats", "softcpt-cata", "softcpt-csta", "softcpt-cats",
                 "softcpt-csts", "coop-mt"):
    PRESETS[_softcpt] = {"paper": {"method": {}, "train": {"epochs": 50, "batch_size": 32, "lr": 0.002}}}

# DAPT (on MaPLe): base-to-new `vit_b16_base` (5 epochs, batch 1), few-shot `vit_b16_t` (10 epochs, batch 4),
# both lr 0.0035. "paper*" = the paper's all-terms loss; "reference*" = the released code's epoch switch.
_DAPT_METHOD = {"n_ctx": 2, "ctx_init": "a photo of a", "prompt_depth": 9}
_DAPT = {
    "paper": {"method": dict(_DAPT_METHOD), "train": {"epochs": 5, "batch_size": 1, "lr": 0.0035}},
    "paper-fs": {"method": dict(_DAPT_METHOD), "train": {"epochs": 10, "batch_size": 4, "lr": 0.0035}},
    "reference": {"method": {**_DAPT_METHOD, "loss_schedule": "reference"},
                  "train": {"epochs": 5, "batch_size": 1, "lr": 0.0035}},
    "reference-fs": {"method": {**_DAPT_METHOD, "loss_schedule": "reference"},
                     "train": {"epochs": 10, "batch_size": 4, "lr": 0.0035}},
    "dept": {"method": dict(_DAPT_METHOD), "train": dict(_DEPT_TRAIN)},
}
PRESETS["dapt"] = _DAPT
PRESETS["dapt-g"] = _DAPT

# Tip-Adapter (gaopengcuhk/Tip-Adapter configs/*.yaml, RN50, 16 shots): the cache averages 10 augmented views
# (augment_epoch), the search grid has 200 beta x 20 alpha steps; init alpha / beta and the grid's upper ends
# (search_scale [beta, alpha]) per dataset in TIP_ADAPTER_DATASETS. Tip-Adapter-F trains the keys with AdamW
# (lr 0.001, eps 1e-4, PyTorch's weight decay 0.01), batch 256, cosine without warm-up, 20 epochs (EuroSAT 100).
_TIP_METHOD = {"init_alpha": 1.17, "init_beta": 1.0, "search_scale": (7.0, 3.0), "search_step": (200, 20),
               "augment_views": 10}
PRESETS["tip-adapter"] = {"paper": {"method": dict(_TIP_METHOD), "train": {}}}
PRESETS["tip-adapter-f"] = {"paper": {"method": {**_TIP_METHOD, "adam_eps": 1e-4},
                                      "train": {"optimizer": "adamw", "lr": 0.001, "weight_decay": 0.01,
                                                "batch_size": 256, "epochs": 20, "warmup_epochs": 0,
                                                "scheduler": "cosine"}}}
#: Per-dataset values of the reference's configs (canonical dataset names): method options, and Tip-Adapter-F's
#: epochs where they differ from 20. Other datasets get the ImageNet values (the Config defaults).
TIP_ADAPTER_DATASETS: dict[str, dict[str, Any]] = {
    "caltech101": {"init_alpha": 3.0, "search_scale": (12.0, 5.0)},
    "dtd": {"init_alpha": 2.0, "search_scale": (13.0, 13.0)},
    "eurosat": {"init_alpha": 2.0, "search_scale": (12.0, 10.0), "epochs": 100},
    "fgvc_aircraft": {"init_alpha": 5.0, "search_scale": (30.0, 30.0)},
    "food101": {"init_alpha": 1.17, "search_scale": (10.0, 10.0)},
    "imagenet": {"init_alpha": 1.17, "search_scale": (7.0, 3.0)},
    "oxford_flowers": {"init_alpha": 10.0, "search_scale": (50.0, 50.0)},
    "oxford_pets": {"init_alpha": 1.17, "search_scale": (7.0, 3.0)},
    "stanford_cars": {"init_alpha": 3.0, "search_scale": (20.0, 10.0)},
    "sun397": {"init_alpha": 1.17, "search_scale": (12.0, 10.0)},
    "ucf101": {"init_alpha": 3.0, "search_scale": (7.0, 3.0)},
}


def tip_adapter_dataset(dataset: str) -> dict[str, Any]:
    """The reference's per-dataset Tip-Adapter values for ``dataset`` (any registered spelling), ``{}`` if none.

    Example:
        >>> tip_adapter_dataset("FGVCAircraft")["search_scale"]
        (30.0, 30.0)
    """
    from .data.registry import canonical_name

    try:
        name = canonical_name(dataset) if dataset else ""
    except ConfigError:
        name = dataset
    return dict(TIP_ADAPTER_DATASETS.get(name, {}))


#: The training pattern the reference code runs every method with (fp16 CLIP on a GPU, no feature cache).
_REFERENCE_TRAIN = {"precision": "fp16-gpu", "feature_views": 0}
#: Method options of the reference's own rules, where vlprompt's defaults differ (docs/deviations.md).
_REFERENCE_METHOD: dict[str, dict[str, Any]] = {
    "kgcoop": {"target_precision": "fp16"},  # M22: the second CLIP is fp16
    "dapt": {"gradcam_rule": "reference", "gradcam_batch_size": 50},  # DA3 (Grad-CAM masks: dapt-g)
}
for _name, _table in PRESETS.items():
    _own = _REFERENCE_METHOD.get(_name, {})
    if _name == "dapt-g":
        continue  # the same table as dapt
    if _name == "dapt":  # the released code's loss switch already: add its mask rule and training pattern
        for _k in ("reference", "reference-fs"):
            _table[_k] = {"method": {**_table[_k]["method"], **_own},
                          "train": {**_table[_k]["train"], **_REFERENCE_TRAIN}}
    elif "paper" in _table:
        _table["reference"] = {"method": {**_table["paper"]["method"], **_own},
                               "train": {**_table["paper"]["train"], **_REFERENCE_TRAIN}}
# Linear probe (CoOp lpclip/feat_extractor.py): features of the un-augmented test view from CLIP loaded in fp16
# on CUDA; the probe's defaults are lpclip's search (8 bisection rounds, 1000 iterations); the 10 repeats are
# the protocol's (few_shot(repeats=10) / --repeats 10).
PRESETS["linear-probe"] = {"reference": {"method": {}, "train": {"precision": "fp16-gpu"}}}
# CLIP-Adapter's trainer casts CLIP to fp32 (``clip_model.float()``) before building the model: it trains in fp32
PRESETS["clip-adapter"]["reference"]["train"]["precision"] = "fp32"
# VPT / E2VPT (configs/base-prompt.yaml): SGD momentum 0.9, 100 epochs, batch 128, 10 warm-up epochs, cosine,
# weight decay 1e-4, fp32; the lr comes from the grid (vlprompt vtab) or the user.
_VPT_TRAIN = {"epochs": 100, "batch_size": 128, "optimizer": "sgd", "momentum": 0.9, "warmup_epochs": 10,
              "scheduler": "cosine", "weight_decay": 1e-4}
for _name in ("vpt-shallow", "vpt-deep", "e2vpt"):
    PRESETS[_name] = {"paper": {"method": {}, "train": dict(_VPT_TRAIN)},
                      "reference": {"method": {}, "train": {**_VPT_TRAIN, "precision": "fp32", "feature_views": 0}}}


# VPT's baselines. Linear (configs/base-linear.yaml): SGD momentum 0.9, batch 1024, 100 epochs, 10 warm-up epochs,
# cosine, weight decay 1e-4. Full fine-tuning (configs/base-finetune.yaml): the HuggingFace AdamW (adamw-hf),
# batch 384, 100 epochs, 5 warm-up epochs, cosine; its make_optimizer decays with 0.01 whatever WEIGHT_DECAY > 0
# says, so 0.01 here. Both use VPT's schedule (linear warm-up from 0, then cosine over the remaining epochs) and
# train in fp32 in the reference; the lr comes from the grid (TUNE_LRS) or the user.
_LINEAR_TRAIN = {"epochs": 100, "batch_size": 1024, "optimizer": "sgd", "momentum": 0.9, "warmup_epochs": 10,
                 "scheduler": "linear-warmup-cosine", "weight_decay": 1e-4}
_FINETUNE_TRAIN = {"epochs": 100, "batch_size": 384, "optimizer": "adamw-hf", "warmup_epochs": 5,
                   "scheduler": "linear-warmup-cosine", "weight_decay": 0.01}
PRESETS["linear"] = {"paper": {"method": {}, "train": dict(_LINEAR_TRAIN)},
                     "reference": {"method": {}, "train": {**_LINEAR_TRAIN, "precision": "fp32", "feature_views": 0}}}
# E2VPT's copy of base-finetune.yaml is the same except batch 224 ("original batch size is 384"); its per-task
# VTAB finetune configs hold placeholder lr / wd that its tune_vtab.py overwrites with the grid's.
PRESETS["finetune"] = {"paper": {"method": {}, "train": dict(_FINETUNE_TRAIN)},
                       "reference": {"method": {}, "train": {**_FINETUNE_TRAIN, "precision": "fp32",
                                                             "feature_views": 0}},
                       "e2vpt": {"method": {}, "train": {**_FINETUNE_TRAIN, "batch_size": 224}}}

#: Base learning rates of the lr × wd grid of VPT's tune scripts by method (``tune_vtab.py`` ``get_lrwd_range``,
#: ``tune_fgvc.py`` ``linear_main`` / ``finetune_main``), for VTAB-1k and FGVC; methods not listed use the
#: prompt grid of :mod:`vlprompt.protocols.vtab`. The weight decays are the same for all: 0.01, 0.001, 0.0001, 0.
TUNE_LRS: dict[str, dict[str, tuple[float, ...]]] = {
    "linear": {"vtab": (50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1, 0.05),
               "fgvc": (50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1, 0.05)},
    "finetune": {"vtab": (0.001, 0.0001, 0.0005, 0.005), "fgvc": (0.001, 0.0001, 0.0005, 0.005)},
}


#: Training defaults of the ``vtab`` protocol by method, where the method's reference config is not VPT's prompt
#: config (``base-prompt.yaml``, the protocol's own default): the baselines' base configs. A preset and explicit
#: options still override them.
VTAB_TRAIN: dict[str, dict[str, Any]] = {"linear": dict(_LINEAR_TRAIN), "finetune": dict(_FINETUNE_TRAIN)}


def tune_lrs(method: str, fgvc: bool) -> tuple[float, ...] | None:
    """The base-lr grid of ``method`` (plug-ins share the base's) from :data:`TUNE_LRS`, ``None`` if it has none.

    Example:
        >>> tune_lrs("finetune", fgvc=False)
        (0.001, 0.0001, 0.0005, 0.005)
    """
    table = TUNE_LRS.get(method.split("+")[0])
    return None if table is None else table["fgvc" if fgvc else "vtab"]


#: Options a preset adds for a plug-in on any method (``maple+dapt``): the released DAPT code's own rules
#: (docs/deviations.md DA15; ``dapt`` / ``dapt-g`` carry them in their own tables, unprefixed).
_DAPT_REFERENCE = {"dapt_loss_schedule": "reference", "dapt_gradcam_rule": "reference", "dapt_gradcam_batch_size": 50}
PLUGIN_PRESETS: dict[str, dict[str, dict[str, Any]]] = {"dapt": {"reference": _DAPT_REFERENCE},
                                                        "dapt-g": {"reference": _DAPT_REFERENCE}}


def coop_epochs(shots: int | None, dataset: str) -> int:
    """CoOp paper schedule: 1 shot → 50 epochs, 2/4 → 100, 8/16 → 200; ImageNet always 50."""
    if dataset == "imagenet":
        return 50
    if shots is None or shots >= 8:
        return 200
    return 50 if shots == 1 else 100


def _coop_schedule(shots: int | None, dataset: str) -> Preset:
    return {"method": {}, "train": {"epochs": coop_epochs(shots, dataset)}}


def _tip_adapter_values(shots: int | None, dataset: str) -> Preset:
    values = tip_adapter_dataset(dataset)
    values.pop("epochs", None)  # Tip-Adapter (training-free) has no epochs
    return {"method": values, "train": {}}


def _tip_adapter_f_values(shots: int | None, dataset: str) -> Preset:
    values = tip_adapter_dataset(dataset)
    epochs = values.pop("epochs", None)
    return {"method": values, "train": {} if epochs is None else {"epochs": epochs}}


def _promptsrc_fs_gpa(shots: int | None, dataset: str) -> Preset:
    if dataset not in PROMPTSRC_FS_SHARP_GPA["datasets"]:
        return {"method": {}, "train": {}}
    return {"method": {"gpa_mean": PROMPTSRC_FS_SHARP_GPA["gpa_mean"], "gpa_std": PROMPTSRC_FS_SHARP_GPA["gpa_std"]},
            "train": {}}


#: Per method and preset: the rule that sets the values a paper's configuration chooses by shots or dataset
#: (CoOp's epochs by shots, Tip-Adapter's per-dataset config files, PromptSRC's few-shot GPA comment).
#: :func:`resolve_preset` applies it after the preset's fixed values; a new method adds its rule here.
DATASET_RULES: dict[str, dict[str, DatasetRule]] = {
    "coop": {"paper": _coop_schedule, "reference": _coop_schedule},
    "clip-adapter": {"paper": _coop_schedule, "reference": _coop_schedule},
    "tip-adapter": {"paper": _tip_adapter_values, "reference": _tip_adapter_values},
    "tip-adapter-f": {"paper": _tip_adapter_f_values, "reference": _tip_adapter_f_values},
    "promptsrc": {"paper-fs": _promptsrc_fs_gpa},
}


#: Methods without a training loop: any preset name resolves to their defaults (so one sweep grid with
#: ``presets: [dept]`` can hold zero-shot next to the trained methods).
TRAINING_FREE = frozenset({"zeroshot"})


def resolve_preset(method: str, preset: str | None, shots: int | None = None, dataset: str = "") -> Preset:
    """Method and training options of ``preset`` for ``method`` (plug-ins share the base's).

    Example:
        >>> resolve_preset("kgcoop+dept", "dept")["method"]["weight"]
        2.0
    """
    if not preset:
        return {"method": {}, "train": {}}
    base = method.split("+")[0]
    if base in TRAINING_FREE:
        return {"method": {}, "train": {}}  # nothing to configure: every preset means the method's defaults
    table = PRESETS.get(base, {})
    if preset not in table:
        known = {m: sorted(p) for m, p in PRESETS.items()}
        raise ConfigError(f"no preset {preset!r} for method {base!r}; presets: {known}")
    chosen = {"method": dict(table[preset]["method"]), "train": dict(table[preset]["train"])}
    rule = DATASET_RULES.get(base, {}).get(preset)
    if rule is not None:  # the preset's values that depend on the shots or the dataset
        for part, values in rule(shots, dataset).items():
            chosen[part].update(values)
    for plugin in method.split("+")[1:]:
        chosen["method"].update(PLUGIN_PRESETS.get(plugin, {}).get(preset, {}))
    return chosen
