"""Base-to-new on the real-data suite: runs ``sweeps/real_base2new.yaml`` plus a base-only linear probe and
writes ``docs/results/real_base2new.md``.

Zero-shot, CoOp, CoCoOp, KgCoOp and each ``+dept`` (DePT's 10-epoch re-run configuration, ``--preset
dept``), 16 shots, seeds 1-3, on ``effnet-minilm`` (EfficientNet-Lite0 + MiniLM; ``--backbone tiny-clip``
runs the same grid on the embedded model). The linear probe is trained and tested on the base classes only:
it has no text side, so it cannot predict the new classes. Datasets whose optional source is not installed
are skipped (and named in the document). Runs are resumable: finished runs are skipped, so a second
invocation only rewrites the document.

    PYTHONPATH=src python benchmarks/real_base2new.py [--workers 2] [--backbone effnet-minilm]
    PYTHONPATH=src python benchmarks/real_base2new.py --smoke --backbone tiny-clip --out runs/smoke_real \\
        --doc runs/smoke_real/real_base2new.md      # 1 seed, real/skimage_patches, 1 epoch: a pipeline check
"""

from __future__ import annotations

import argparse
import datetime as _dt
import platform
import re
from pathlib import Path
from typing import Any

import torch
import yaml

from vlprompt import load_backbone
from vlprompt.data.real import SPEC_BY_NAME
from vlprompt.protocols.runs import RunSpec, train_run
from vlprompt.report import base2new_tables, collect
from vlprompt.report.tables import mean_std, plugin_effect_lines, render_base2new
from vlprompt.sweep.run import run_sweep
from vlprompt.sweep.spec import parse_sweep

ROOT = Path(__file__).resolve().parent.parent
BASES = ("coop", "cocoop", "kgcoop")
SMOKE = {"seeds": [1], "datasets": ["real/skimage_patches"], "methods": ["zeroshot", "coop", "coop+dept"], "epochs": 1}


def available(datasets: list[str]) -> tuple[list[str], dict[str, str]]:
    """The datasets whose source is installed, and ``name -> install command`` for the others."""
    keep, skipped = [], {}
    for ds in datasets:
        spec = SPEC_BY_NAME[ds.split("/", 1)[1]]
        if spec.available():
            keep.append(ds)
        else:
            skipped[ds] = spec.install
            print(f"skipping {ds}: its source ({spec.source}) is not installed; install it with: {spec.install}")
    return keep, skipped


def linear_probe(datasets: list[tuple[str, str]], seeds: list[int], backbone: str, out: Path, shots: int,
                 train_options: dict[str, Any]) -> dict[str, list[float]]:
    """Base-class accuracy of a linear probe per dataset label (one value per seed); ``datasets`` holds
    ``(name, label)`` pairs, the label being the sweep's (the other tables' row names)."""
    accs: dict[str, list[float]] = {}
    for ds, label in datasets:
        for seed in seeds:
            run_out = out / "linear-probe" / re.sub(r"[^A-Za-z0-9_.-]", "_", label) / f"shots{shots}" / f"seed{seed}"
            res = train_run(RunSpec("linear-probe", ds, ".", out=str(run_out), shots=shots, seed=seed,
                                    subsample="base", backbone=backbone, train_options=dict(train_options)))
            accs.setdefault(label, []).append(float(res.get("base_acc", res["acc"])))
    return accs


def linear_probe_lines(accs: dict[str, list[float]]) -> list[str]:
    lines = ["| dataset | base | seeds |", "|---|---|---|"]
    for ds, v in accs.items():
        m, s = mean_std(v)
        lines.append(f"| {ds} | {m:.2f} ± {s:.2f} | {len(v)} |")
    if accs:
        avg = sum(mean_std(v)[0] for v in accs.values()) / len(accs)
        lines.append(f"| **average** | {avg:.2f} | |")
    return lines


def dept_effect(tables: dict, lp: dict[str, list[float]]) -> list[str]:
    """The DePT-effect rows (:func:`vlprompt.report.tables.plugin_effect_lines`) plus the linear probe's
    average base accuracy."""
    lines = plugin_effect_lines(tables, BASES)
    if lp:
        base = sum(mean_std(v)[0] for v in lp.values()) / len(lp)
        lines.append(f"| linear probe (base only) | {base:.2f} | — | — | | | | |")
    return lines


def reading_notes(tables: dict) -> list[str]:
    """Bullet points computed from the tables: trained methods vs zero-shot on base and on new classes, and
    the datasets where zero-shot is not above chance on the base classes."""
    avg = {m: t["average"] for (m, _), t in tables.items()}
    z = avg.get("zeroshot")
    if z is None:
        return []
    trained = [m for m in avg if m != "zeroshot"]
    above_new = [m for m in trained if avg[m]["new"] > z["new"]]
    lines = [
        f"* Base classes: every trained method's average B is above zero-shot's ({z['base']:.2f}): "
        + ", ".join(f"{m} {avg[m]['base']:.2f}" for m in trained) + ".",
        f"* New classes: average N above zero-shot's ({z['new']:.2f}) for "
        + (", ".join(f"{m} ({avg[m]['new']:.2f})" for m in above_new) if above_new else "no trained method")
        + "; the others lose new-class accuracy while fitting the base classes (the base-new trade-off).",
    ]
    zrows = {r["dataset"]: r for r in tables[next(k for k in tables if k[0] == "zeroshot")]["rows"]}
    for ds, r in zrows.items():
        spec = SPEC_BY_NAME.get(ds.replace("real_", "", 1).split("/")[-1])
        if spec is None:
            continue
        n_base = (len(spec.classnames) + 1) // 2
        if r["base"] <= 100.0 / n_base + 1e-9:
            lines.append(
                f"* {ds}: zero-shot base accuracy {r['base']:.2f} is not above chance ({100.0 / n_base:.1f} % for "
                f"{n_base} classes): the backbone's text→image map was fitted on ImageNet class names, and "
                "ImageNet's classifier has no concept for these images; prompt learning has to supply it.")
    return lines


def check_backbone(name: str) -> None:
    """Fail before any run if the backbone cannot be loaded or would be randomly initialised."""
    bb = load_backbone(name)
    weights = str(getattr(bb, "weights_id", ""))
    if weights.startswith("random"):
        raise SystemExit(f"backbone {name!r} loads without pretrained weights ({weights}); expected effnet-minilm "
                         "(the realweights extra) or tiny-clip")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweep", default=str(ROOT / "sweeps" / "real_base2new.yaml"))
    p.add_argument("--out", default=str(ROOT / "runs" / "real_base2new"))
    p.add_argument("--doc", default=str(ROOT / "docs" / "results" / "real_base2new.md"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--backbone", default=None, help="default: the sweep's (effnet-minilm)")
    p.add_argument("--datasets", nargs="+", default=None, help="real/<name> ...; default: the sweep's")
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("--methods", nargs="+", default=None, help="sweep methods (the linear probe always runs)")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs (checks only)")
    p.add_argument("--smoke", action="store_true",
                   help="1 seed, real/skimage_patches, zeroshot/coop/coop+dept, 1 epoch")
    args = p.parse_args()

    data = yaml.safe_load(Path(args.sweep).read_text(encoding="utf-8"))
    chosen = {"seeds": args.seeds, "datasets": args.datasets, "methods": args.methods, "epochs": args.epochs}
    if args.smoke:
        chosen = {k: v if v is not None else SMOKE[k] for k, v in chosen.items()}
    for key in ("seeds", "datasets", "methods"):
        if chosen[key] is not None:
            data[key] = chosen[key]
    if args.backbone:
        data["backbone"] = args.backbone
    train_options: dict[str, Any] = {}
    if chosen["epochs"] is not None:
        train_options["epochs"] = chosen["epochs"]
        data["overrides"] = {"train": dict(train_options)}
    data["datasets"], skipped = available(list(data["datasets"]))
    if not data["datasets"]:
        raise SystemExit("no dataset of the real suite is installed (see docs/real-suite.md)")
    data["out"] = args.out
    sweep = parse_sweep(data)
    out = Path(sweep.out)
    shots = sweep.shots[0]
    check_backbone(sweep.backbone)
    start = _dt.datetime.now(_dt.timezone.utc)
    status = run_sweep(sweep, executor="local", workers=args.workers)
    if status.get("failures"):
        raise SystemExit(f"failed runs: {status['failures']}")
    lp = linear_probe([(d.name, d.label) for d in sweep.datasets], sweep.seeds, sweep.backbone,
                      out, shots, train_options)
    rows = [r for r in collect(out) if "linear-probe" not in r["method"]]
    tables = base2new_tables(rows)
    md = render_base2new(tables)["base2new.md"]
    seeds = ", ".join(map(str, sweep.seeds))
    epochs = f"{chosen['epochs']} epoch(s) (override)" if chosen["epochs"] is not None else \
        "`--preset dept` = 10 epochs"
    head = [
        "# Base-to-new on the real-data suite (DePT's protocol)",
        "",
        f"Generated by `benchmarks/real_base2new.py` on {start:%Y-%m-%d} (sweep `sweeps/real_base2new.yaml`: "
        f"{len(rows)} runs, plus {sum(len(v) for v in lp.values())} linear-probe runs; backbone `{sweep.backbone}`, "
        f"{shots} shots, seeds {seeds}, {epochs}; torch {torch.__version__}, {platform.machine()}, "
        f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'}). "
        "Do not edit by hand: rerun the script. Datasets: see `docs/real-suite.md`.",
        "",
        f"Datasets: {', '.join(d.name for d in sweep.datasets)}."
        + (f" Skipped (source not installed): {', '.join(f'{k} (`{v}`)' for k, v in skipped.items())}."
           if skipped else ""),
        "",
        "## Does DePT raise H? (average over the datasets)",
        "",
        *dept_effect(tables, lp),
        "",
        "## Reading the table",
        "",
        *reading_notes(tables),
        "",
        "## Linear probe (base classes only)",
        "",
        "Logistic regression on the frozen image features of the 16-shot base-class training images, tested on "
        "the base classes; it has no text side, so it cannot predict new classes (no N, no H).",
        "",
        *linear_probe_lines(lp),
        "",
    ]
    doc = Path(args.doc)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(head) + "\n" + md.replace("# Base-to-new generalisation\n", "", 1), encoding="utf-8")
    print("\n".join(dept_effect(tables, lp)))
    print(f"wrote {doc}")


if __name__ == "__main__":
    main()
