"""Named configurations of the papers (reference/clip_methods.md §2.2), selectable with ``--preset``.

A preset gives method options and training options; explicit options override it. ``paper`` is
each method's original base-to-new / few-shot configuration, ``dept`` the 10-epoch re-run that
DePT's paper uses for every baseline (and for ``<method>+dept``), ``paper-xd`` MaPLe's
cross-dataset / domain-generalisation configuration.

``reference`` (every trained method of the seeds) is the original code's whole training pattern on
top of its ``paper`` configuration: its precision (``fp16-gpu``: fp16 on a GPU, fp32 on CPU; VPT and
E2VPT train in fp32), a fresh augmentation and image-tower pass every step (``feature_views=0``),
and the reference's own rules where vlprompt's default differs (KgCoOp's fp16 targets, DAPT's loss
switch and binarised batch-maximum Grad-CAM masks). What still differs in it is listed in
docs/deviations.md ("The reference preset").
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigError

Preset = dict[str, dict[str, Any]]

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
    if base in ("coop", "clip-adapter") and preset in ("paper", "reference"):
        chosen["train"]["epochs"] = coop_epochs(shots, dataset)
    for plugin in method.split("+")[1:]:
        chosen["method"].update(PLUGIN_PRESETS.get(plugin, {}).get(preset, {}))
    return chosen
