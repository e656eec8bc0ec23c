"""Fabricated run folders for report tests: ``results.json`` (and ``config.yaml`` where the report reads it)
with the keys the protocols and sweeps write, for every protocol the report tallies.

Accuracies follow simple formulas so tests can compute the expected table cells by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

DATASETS = ("dtd", "eurosat")
TARGETS = ("caltech101", "oxford_pets", "food101")
SHIFTS = ("imagenetv2", "imagenet_sketch")
SHOTS = (1, 2, 4, 8, 16)
RATIOS = (0.1, 0.4, 1.0)
SEEDS = (1, 2, 3)


def write_run(path: Path, res: dict, config: dict | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(res))
    if config is not None:
        (path / "config.yaml").write_text(yaml.safe_dump(config))
    return path


def zeroshot_config(seed: int, shots: int | None, subsample: str = "all") -> dict:
    """``config.yaml`` of a zero-shot run as the engine writes it (the keys the report reads)."""
    return {"method": "zeroshot", "method_config": {"template": "a photo of a {}.", "ensemble": False},
            "train": {"seed": seed, "epochs": 10, "precision": "auto", "cache_dir": f"/tmp/cache{seed}"},
            "dataset": {"name": "x", "shots": shots, "seed": seed, "subsample": subsample}}


def base(method: str, ds: str, shots: int, seed: int) -> float:
    """Fabricated base accuracy."""
    return 60.0 + 10 * DATASETS.index(ds) + (0 if method == "zeroshot" else shots) + seed + ("dept" in method)


def new(method: str, ds: str, shots: int, seed: int) -> float:
    """Fabricated new-class accuracy."""
    trained = 0 if method == "zeroshot" else shots / 4
    return 50.0 + 5 * DATASETS.index(ds) - trained + 2 * seed + 3 * ("dept" in method)


def few(method: str, ds: str, shots: int, seed: int) -> float:
    """Fabricated few-shot accuracy."""
    gain = {"coop": 2.0, "coop+dept": 2.5, "linear-probe": 3.0}[method]
    return 40.0 + 10 * DATASETS.index(ds) + gain * shots ** 0.5 + seed


def fabricate(root: Path) -> Path:
    """Runs of every protocol under ``root``:

    - base2new sweep (16 shots, seeds 1-3): coop, coop+dept; zeroshot written once per shot count (1, 16;
      an older sweep's layout) for seeds 1-3; a base-only linear probe (no ``new_acc``) with one seed;
    - few-shot protocol runs: coop, coop+dept, linear-probe at every K of :data:`SHOTS`, seeds 1-3; zeroshot
      at every K (seed 1);
    - data-efficient protocol runs: dapt (uniform) at :data:`RATIOS`, seeds 1-3; dapt (herding), seed 1;
    - cross-dataset: a sweep (coop, zeroshot; 16 shots; seeds 1-2) and a protocol run (kgcoop, one seed) from
      ``imagenet`` to :data:`TARGETS`; domain-gen sweep (coop, one seed) to :data:`SHIFTS`.
    """
    for m in ("coop", "coop+dept", "zeroshot"):
        for ds in DATASETS:
            for seed in SEEDS:
                for k in (1, 16) if m == "zeroshot" else (16,):
                    b, n = base(m, ds, k, seed), new(m, ds, k, seed)
                    rid = f"base2new/{m}/{ds}/shots{k}/seed{seed}"
                    res = {"method": m, "dataset": ds, "protocol": "base2new", "shots": k, "seed": seed,
                           "subsample": "base", "acc": b, "base_acc": b, "new_acc": n, "hm": 2 * b * n / (b + n),
                           "epochs": 0 if m == "zeroshot" else 10, "trainable_params": 0 if m == "zeroshot" else 8192,
                           "sweep": {"id": rid, "protocol": "base2new", "dataset": ds, "preset": None}}
                    write_run(root / "sweep" / rid, res, zeroshot_config(seed, k, "base") if m == "zeroshot" else None)
    for ds in DATASETS:  # the demo's base-only linear probe
        b = base("linear-probe", ds, 16, 1)
        write_run(root / "demo" / "linear-probe" / ds / "seed1",
                  {"method": "linear-probe", "dataset": ds, "protocol": "base2new", "shots": 16, "seed": 1,
                   "subsample": "base", "acc": b, "base_acc": b, "epochs": 0, "trainable_params": 1290})
    for m in ("coop", "coop+dept", "linear-probe", "zeroshot"):
        for ds in DATASETS:
            for k in SHOTS:
                for seed in (1,) if m == "zeroshot" else SEEDS:
                    acc = 45.0 + 10 * DATASETS.index(ds) if m == "zeroshot" else few(m, ds, k, seed)
                    write_run(root / "fs" / m / ds / f"shots{k}" / f"seed{seed}",
                              {"method": m, "dataset": ds, "protocol": "few-shot", "shots": k, "seed": seed,
                               "acc": acc}, zeroshot_config(seed, k) if m == "zeroshot" else None)
    for sel, seeds in (("uniform", SEEDS), ("herding", (1,))):
        for ds in DATASETS:
            for ratio in RATIOS:
                for seed in seeds:
                    acc = 50.0 + 30 * ratio + 10 * DATASETS.index(ds) + seed + (3.0 if sel == "herding" else 0.0)
                    write_run(root / "de" / ds / f"{sel}_{ratio:g}" / f"seed{seed}",
                              {"method": "dapt", "dataset": ds, "protocol": "data-efficient", "shots": None,
                               "seed": seed, "acc": acc, "selection": sel, "data_ratio": ratio, "n_train": 100})
    for m, seeds in (("coop", (1, 2)), ("zeroshot", (1, 2))):
        for seed in seeds:
            rid = f"cross-dataset/{m}/imagenet/shots16/seed{seed}"
            targets = {t: 40.0 + 5 * i + seed + (3 if m == "coop" else 0) for i, t in enumerate(TARGETS)}
            write_run(root / "sweep" / rid,
                      {"method": m, "dataset": "imagenet", "protocol": "few-shot", "shots": 16, "seed": seed,
                       "acc": 70.0 + seed, "source_acc": 70.0 + seed, "targets": targets,
                       "target_avg": sum(targets.values()) / len(targets),
                       "sweep": {"id": rid, "protocol": "cross-dataset", "dataset": "imagenet",
                                 "targets": list(TARGETS)}},
                      zeroshot_config(seed, 16) if m == "zeroshot" else None)
    targets = {t: 41.0 + 5 * i for i, t in enumerate(TARGETS)}
    write_run(root / "xd" / "imagenet" / "seed1",  # `vlprompt cross-dataset` (protocol run)
              {"method": "kgcoop", "dataset": "imagenet", "protocol": "cross-dataset", "shots": 16, "seed": 1,
               "acc": 72.0, "source_acc": 72.0, "targets": targets, "target_avg": sum(targets.values()) / 3})
    shifts = {t: 60.0 - 10 * i for i, t in enumerate(SHIFTS)}
    rid = "domain-gen/coop/imagenet/shots16/seed1"
    write_run(root / "sweep" / rid,
              {"method": "coop", "dataset": "imagenet", "protocol": "few-shot", "shots": 16, "seed": 1, "acc": 71.0,
               "targets": shifts, "sweep": {"id": rid, "protocol": "domain-gen", "dataset": "imagenet"}})
    return root
