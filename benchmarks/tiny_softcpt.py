"""SoftCPT on a tiny-suite task group: writes ``docs/results/tiny_softcpt.md``.

Methods, all on the embedded ``tiny-clip``, K = 1 / 4 / 16 shots per class, seeds 1-3 (``--shots``,
``--seeds``, ``--methods`` select a reduced grid; the document says so):

* the six SoftCPT variants (``softcpt-nata``, ``-nats``, ``-cata``, ``-csta``, ``-cats``, ``-csts``),
  trained jointly on the group (``multitask`` protocol: one model per shots × seed, accuracy per task on the
  task's own classes; every sample with its own task's augmentation policy);
* ``coop-mt``: the paper's hard-sharing baseline (one 16-token context for every class of every task,
  trained jointly with the same loss);
* ``coop`` per task ("CoOp-CA" in the paper): one CoOp (16 random context tokens, class-agnostic)
  trained separately on each task of the group;
* per-task baselines: ``linear-probe`` (per shots × seed) and ``zeroshot`` (the task's template);
* multi-task base-to-new (``--b2n-shots``, default 16; ``--b2n-methods``, default NATA, NATS, CoOp-MT):
  joint training on every task's base classes, then each task's new classes; CoOp per task and
  zero-shot per task on the same splits.

Every trained run uses SoftCPT's preset (``paper``: SGD lr 0.002, batch 32, cosine, 1 warm-up epoch) with
``--epochs`` epochs (default 50 = the preset's). Resumable: a run whose ``results.json`` exists is skipped,
so a second invocation only rewrites the document.

    PYTHONPATH=src python benchmarks/tiny_softcpt.py [--group tiny-group/real] [--epochs 50] [--workers 2]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
SOFTCPT = ("softcpt-nata", "softcpt-nats", "softcpt-cata", "softcpt-csta", "softcpt-cats", "softcpt-csts")
JOINT = (*SOFTCPT, "coop-mt")
PER_TASK = "coop"
LP = "linear-probe"
SHOTS = (1, 4, 16)
SEEDS = (1, 2, 3)
B2N_METHODS = ("softcpt-nata", "softcpt-nats", "coop-mt")
TRAIN = {"batch_size": 32, "lr": 0.002}  # SoftCPT's preset (configs/trainers/MTCoOp/rn50_ep50.yaml)


def group_members(group: str) -> list[str]:
    from vlprompt.data.multitask import TINY_GROUP_PREFIX, _tiny_group

    if not group.startswith(TINY_GROUP_PREFIX):
        raise SystemExit(f"--group must be tiny-group/<name>, got {group!r}")
    return [m["dataset"] for m in _tiny_group(group[len(TINY_GROUP_PREFIX):], None)]


def _run(kind: str, method: str, dataset: str, shots: int, seed: int, out: Path, **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "method": method, "key": extra.pop("key", method), "dataset": dataset, "shots": shots,
            "seed": seed, "out": str(out), "preset": extra.pop("preset", None),
            "method_options": extra.pop("method_options", {}), "train_options": extra.pop("train_options", {})}


def plan(group: str, members: list[str], cfg: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    """Every run, the slow ones (joint, most shots) first.

    Kinds: ``joint`` (one model on the group), ``task`` (a single-task method on one member),
    ``b2n-joint`` (joint training on every task's base classes, then each task's new classes),
    ``b2n-task`` (CoOp per task, base-to-new), ``b2n-zs`` (zero-shot per task on base and new classes).
    """
    slug = group.replace("/", "_")
    train = {**TRAIN, "epochs": cfg.epochs}
    coop = {"n_ctx": 16, "ctx_init": ""}
    runs = []
    for k in sorted(cfg.shots, reverse=True):
        for seed in cfg.seeds:
            for m in cfg.methods:
                runs.append(_run("joint", m, group, k, seed, out / m / slug / f"shots{k}" / f"seed{seed}",
                                 preset="paper", train_options=train))
            for d in members:
                name = d.replace("/", "_")
                runs.append(_run("task", PER_TASK, d, k, seed, out / PER_TASK / name / f"shots{k}" / f"seed{seed}",
                                 method_options=coop, train_options=train))
                runs.append(_run("task", LP, d, k, seed, out / LP / name / f"shots{k}" / f"seed{seed}"))
    for k in cfg.b2n_shots:
        for seed in cfg.seeds:
            for m in cfg.b2n_methods:
                runs.append(_run("b2n-joint", m, group, k, seed, out / "b2n" / m / slug / f"shots{k}" / f"seed{seed}",
                                 preset="paper", train_options=train))
            for d in members:
                runs.append(_run("b2n-task", PER_TASK, d, k, seed,
                                 out / "b2n" / PER_TASK / d.replace("/", "_") / f"shots{k}" / f"seed{seed}",
                                 method_options=coop, train_options=train))
    if cfg.b2n_shots:
        runs.append(_run("b2n-zs", "zeroshot", group, cfg.b2n_shots[0], 1, out / "b2n" / "zeroshot" / slug))
    for d in members:
        runs.append(_run("task", "zeroshot", d, 1, 1, out / "zeroshot" / d.replace("/", "_")))
    return runs


def execute(run: dict[str, Any]) -> dict[str, Any]:
    """Train (or skip) one run in a worker process; returns the run with its results and seconds."""
    torch.set_num_threads(1)
    from vlprompt.engine.run import RunDir
    from vlprompt.engine.train import hm
    from vlprompt.protocols.multitask import base2new_group_run, baseline_group_run
    from vlprompt.protocols.runs import RunSpec, evaluate_run, train_run

    done = RunDir(run["out"]).read_results()
    skipped = done is not None and "acc" in done and (not run["kind"].startswith("b2n") or "new_acc" in done)
    t = time.perf_counter()
    kind = run["kind"]
    spec = RunSpec(run["method"], run["dataset"], "", out=run["out"], shots=run["shots"], seed=run["seed"],
                   subsample="base" if kind.startswith("b2n") else "all", preset=run["preset"],
                   method_options=run["method_options"],
                   train_options={**run["train_options"], "progress": False}, device="cpu")
    if kind == "b2n-joint":
        res = base2new_group_run(spec)
    elif kind == "b2n-zs":
        res = done if skipped else baseline_group_run(spec, run["dataset"], "zeroshot", run["shots"], 1, run["out"],
                                                      base2new=True)
        RunDir(run["out"]).write_results(res)
    else:
        res = train_run(spec)
        if kind == "b2n-task" and "new_acc" not in res:
            new = evaluate_run(run["out"], run["dataset"], "", "new", device="cpu")
            res = {**res, "new_acc": new["acc"], "hm": hm(res["base_acc"], new["acc"])}
            RunDir(run["out"]).write_results(res)
    out = {**run, "acc": res["acc"], "per_task": res.get("per_task"), "seconds": time.perf_counter() - t,
           "skipped": skipped}
    if kind.startswith("b2n"):
        out.update({"base_acc": res["base_acc"], "new_acc": res["new_acc"], "per_task_new": res.get("per_task_new")})
    return out


# ---------------------------------------------------------------------------- tables
def _ms(vals: list[float]) -> str:
    if not vals:
        return "–"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.2f} ± {sd:.2f}"


def per_task_acc(results: list[dict[str, Any]], members: list[str]) -> dict[tuple[str, int, int], dict[str, float]]:
    """``{(method, shots, seed): {task: acc}}`` of the all-class runs; per-task methods assemble their runs."""
    table: dict[tuple[str, int, int], dict[str, float]] = {}
    for r in results:
        if r["kind"] == "joint":
            table[(r["method"], r["shots"], r["seed"])] = dict(r["per_task"])
        elif r["kind"] == "task" and r["method"] != "zeroshot":
            table.setdefault((r["method"], r["shots"], r["seed"]), {})[r["dataset"]] = r["acc"]
    return {k: v for k, v in table.items() if all(m in v for m in members)}


def b2n_per_task(results: list[dict[str, Any]], members: list[str]) -> dict[tuple[str, int, int], dict[str, tuple]]:
    """``{(method, shots, seed): {task: (base, new)}}`` of the base-to-new runs."""
    table: dict[tuple[str, int, int], dict[str, tuple[float, float]]] = {}
    for r in results:
        if r["kind"] in ("b2n-joint", "b2n-zs"):
            table[(r["method"], r["shots"], r["seed"])] = {t: (r["per_task"][t], r["per_task_new"][t])
                                                           for t in r["per_task"]}
        elif r["kind"] == "b2n-task":
            table.setdefault((r["method"], r["shots"], r["seed"]), {})[r["dataset"]] = (r["base_acc"], r["new_acc"])
    return {k: v for k, v in table.items() if all(m in v for m in members)}


def _hm(b: float, n: float) -> float:
    return 0.0 if b + n == 0 else 2 * b * n / (b + n)


def render(results: list[dict[str, Any]], group: str, members: list[str], cfg: argparse.Namespace,
           info: dict[str, Any]) -> str:
    acc = per_task_acc(results, members)
    shots, seeds = sorted(cfg.shots), list(cfg.seeds)
    methods = [*cfg.methods, PER_TASK, LP]
    label = {PER_TASK: "coop (per task)", "coop-mt": "coop-mt (hard sharing)", LP: "linear-probe (per task)"}
    short = [m.split("/")[-1] for m in members]

    def group_mean(m: str, k: int, s: int) -> float | None:
        v = acc.get((m, k, s))
        return None if v is None else statistics.mean(v[t] for t in members)

    def seeds_of(m: str, k: int) -> list[float]:
        return [g for s in seeds if (g := group_mean(m, k, s)) is not None]

    avg: dict[str, float] = {}
    lines = ["## Mean accuracy over the group's tasks (mean ± std over seeds)", "",
             "| method | " + " | ".join(f"{k}-shot" for k in shots) + " | avg over shots |",
             "|---|" + "---|" * (len(shots) + 1)]
    for m in methods:
        cells = [seeds_of(m, k) for k in shots]
        if all(len(c) == len(seeds) for c in cells):
            avg[m] = statistics.mean(statistics.mean(c) for c in cells)
        tail = f" | {avg[m]:.2f} |" if m in avg else " | – |"
        lines.append(f"| {label.get(m, m)} | " + " | ".join(_ms(c) for c in cells) + tail)
    zs = {r["dataset"]: r["acc"] for r in results if r["kind"] == "task" and r["method"] == "zeroshot"}
    if len(zs) == len(members):
        lines.append(f"| zeroshot (per task, no training) | {statistics.mean(zs.values()):.2f} |"
                     + " |" * (len(shots) - 1) + f" {statistics.mean(zs.values()):.2f} |")

    verdict = ["## Does the paper's claim hold here?", ""]
    joint_sc = [m for m in cfg.methods if m in SOFTCPT and m in avg]
    if all(b in avg for b in (PER_TASK, "coop-mt")) and joint_sc:
        base_pt, base_mt = avg[PER_TASK], avg["coop-mt"]
        verdict += [
            "Claim (SoftCPT paper): SoftCPT beats CoOp trained per task (CoOp-CA) and CoOp-MT on average over shots. "
            f"Here: CoOp per task {base_pt:.2f}, CoOp-MT {base_mt:.2f}"
            + (f", linear probe per task {avg[LP]:.2f}" if LP in avg else "")
            + (f", zero-shot {statistics.mean(zs.values()):.2f}" if len(zs) == len(members) else "") + ".", "",
            "| SoftCPT variant | avg | vs CoOp per task | vs CoOp-MT | beats both? |", "|---|---|---|---|---|"]
        wins = 0
        for m in joint_sc:
            both = avg[m] > base_pt and avg[m] > base_mt
            wins += both
            verdict.append(f"| {m} | {avg[m]:.2f} | {avg[m] - base_pt:+.2f} | {avg[m] - base_mt:+.2f} | "
                           f"{'yes' if both else 'no'} |")
        verdict += ["", f"{wins} of {len(joint_sc)} SoftCPT variants run here beat both baselines on the average over "
                    "shots, so the claim " + ("holds" if wins == len(joint_sc) else "holds only partly" if wins
                                              else "does not hold")
                    + " on this group. The seed spread (± columns below) is large on these small tasks: differences "
                    "smaller than it are not evidence either way. Nothing was tuned: every trained method uses the "
                    "same preset and epochs.", ""]
        if len(zs) == len(members):
            zs_mean = statistics.mean(zs.values())
            above = [m for m in avg if avg[m] >= zs_mean]
            verdict += [f"Zero-shot per task ({zs_mean:.2f}) is "
                        + (f"above every trained method here (best: {max(avg, key=avg.get)} {max(avg.values()):.2f})"
                           if not above else f"matched or beaten by {', '.join(above)}")
                        + "; the paper's ZS-CLIP is far below the prompt-tuned methods on its groups, so that part "
                        + ("is not reproduced at these shots on tiny-clip." if not above else "holds here."), ""]
    else:
        verdict += ["Not every run finished: no verdict.", ""]

    per_task = []
    for k in shots:
        per_task += [f"## {k}-shot, accuracy per task (mean ± std over seeds)", "",
                     "| method | " + " | ".join(short) + " | mean |", "|---|" + "---|" * (len(members) + 1)]
        for m in methods:
            cols = [_ms([acc[(m, k, s)][t] for s in seeds if (m, k, s) in acc]) for t in members]
            per_task.append(f"| {label.get(m, m)} | " + " | ".join(cols) + f" | {_ms(seeds_of(m, k))} |")
        if len(zs) == len(members):
            per_task.append("| zeroshot (per task) | " + " | ".join(f"{zs[t]:.2f}" for t in members)
                            + f" | {statistics.mean(zs.values()):.2f} |")
        per_task.append("")

    b2n = b2n_per_task(results, members)
    b2n_lines: list[str] = []
    for k in cfg.b2n_shots:
        b2n_lines += [f"## Multi-task base-to-new, {k} shots (mean over seeds)", "",
                      "Joint methods train one model on the base classes (first ceil(n/2)) of every task and are "
                      "re-targeted to each task's new classes; CoOp per task trains one model per task's base classes; "
                      "zero-shot uses each task's template. B / N: accuracy on the base / new classes of the task, "
                      "H = HM(B, N); group: mean B and N over tasks and their H.", "",
                      "| method | " + " | ".join(f"{t} B / N / H" for t in short) + " | group B / N / H |",
                      "|---|" + "---|" * (len(members) + 1)]
        group_h: dict[str, float] = {}
        for m in [*cfg.b2n_methods, PER_TASK, "zeroshot"]:
            runs = [b2n[key] for key in b2n if key[0] == m and key[1] == (k if m != "zeroshot" else cfg.b2n_shots[0])]
            if not runs:
                continue
            cells, bs, ns = [], [], []
            for t in members:
                b = statistics.mean(r[t][0] for r in runs)
                n = statistics.mean(r[t][1] for r in runs)
                bs.append(b)
                ns.append(n)
                cells.append(f"{b:.1f} / {n:.1f} / {_hm(b, n):.1f}")
            gb, gn = statistics.mean(bs), statistics.mean(ns)
            group_h[m] = _hm(gb, gn)
            name = "zeroshot (per task)" if m == "zeroshot" else label.get(m, m)
            b2n_lines.append(f"| {name} ({len(runs)} seed{'s' if len(runs) > 1 else ''}) | " + " | ".join(cells)
                             + f" | {gb:.2f} / {gn:.2f} / **{group_h[m]:.2f}** |")
        best = max(group_h, key=group_h.get) if group_h else None
        if best:
            b2n_lines += ["", f"Highest group H at {k} shots: {best} ({group_h[best]:.2f})."]
        b2n_lines.append("")

    cut = []
    if list(cfg.methods) != list(JOINT):
        cut.append(f"joint methods {', '.join(f'`{m}`' for m in cfg.methods)} only")
    if tuple(shots) != SHOTS:
        cut.append(f"shots {' / '.join(map(str, shots))} only (not {' / '.join(map(str, SHOTS))})")
    if tuple(seeds) != SEEDS:
        cut.append(f"seeds {', '.join(map(str, seeds))} only")
    if list(cfg.b2n_shots) != [16]:
        cut.append(f"base-to-new at {' / '.join(map(str, cfg.b2n_shots)) or 'no'} shots (not 16)")
    head = [
        "# SoftCPT on the tiny suite (multi-task few-shot)",
        "",
        f"Generated by `benchmarks/tiny_softcpt.py` on {info['date']} (torch {torch.__version__}, "
        f"{platform.machine()} CPU, {info['workers']} worker process(es), 1 thread each). "
        "Do not edit by hand: rerun the script.",
        "",
        f"* Group: `{group}` = {', '.join(f'`{m}`' for m in members)} (the suite's `real` group as installed here).",
        f"* Backbone `tiny-clip`; shots {' / '.join(map(str, shots))} per class; seeds "
        f"{', '.join(map(str, seeds))}; accuracy of each task on its own classes; the group score is the unweighted "
        "mean over tasks (the paper's).",
        f"* Training: SoftCPT's preset (SGD lr 0.002, batch 32, cosine, 1 warm-up epoch) with **{cfg.epochs} epochs** "
        + ("(the paper's preset: 50)" if cfg.epochs == 50 else "(**differs** from the paper's 50)")
        + " for every trained method, CoOp per task included (16 random context tokens, as CoOp-MT). The linear "
        "probe and zero-shot run separately on every task. The paper uses RN50 on real datasets; this is a "
        "CPU-scale check on tiny tasks.",
        "* Augmentation: every sample trains with its own task's policy, jointly trained groups included "
        "(`tiny/digits`: `none`; the other real tasks: `crop`; see `docs/softcpt.md`). The previous version of "
        "this document (commit 4c92d0d) was generated while a group trained every member with `clip`, which "
        "handicapped the joint methods on digits; its numbers are superseded.",
        *([f"* **Reduced run:** {'; '.join(cut)}. The full grid (7 joint methods x 1/4/16 shots x 3 seeds, "
           "~100 min of CPU at the measured 0.22 s per 16-shot step on this shared 2-core machine) did not fit the "
           "25-minute budget; a 16-shot SoftCPT-NATA run alone took 202 s here."] if cut else []),
        f"* Runs: {info['runs']}; summed run time {info['train_s'] / 60:.1f} min; invocations of the script "
        "(wall time, runs trained): "
        + "; ".join(f"{v['date']} {v['wall_s'] / 60:.1f} min, {v['trained']} trained" for v in info["invocations"])
        + ".",
        "",
    ]
    return "\n".join([*head, *verdict, *lines, "", *b2n_lines, *per_task])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--group", default="tiny-group/real")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--shots", type=int, nargs="+", default=list(SHOTS))
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--methods", nargs="+", default=list(JOINT), help="jointly trained methods")
    p.add_argument("--b2n-methods", nargs="*", default=list(B2N_METHODS), help="joint methods of base-to-new")
    p.add_argument("--b2n-shots", type=int, nargs="*", default=[16], help="shots of base-to-new (none: skip it)")
    p.add_argument("--out", default=str(ROOT / "runs" / "tiny_softcpt"))
    p.add_argument("--doc", default=str(ROOT / "docs" / "results" / "tiny_softcpt.md"))
    args = p.parse_args()
    t0 = time.perf_counter()
    start = _dt.datetime.now(_dt.timezone.utc)
    members = group_members(args.group)
    out = Path(args.out) / f"ep{args.epochs}"
    runs = plan(args.group, members, args, out)
    results = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(execute, r) for r in runs]
        for i, f in enumerate(as_completed(futures), 1):
            r = f.result()
            results.append(r)
            print(f"[{i}/{len(runs)}] {r['kind']} {r['method']} {r['dataset']} {r['shots']}-shot seed {r['seed']}: "
                  f"{r['acc']:.2f} ({r['seconds']:.1f} s{', reused' if r['skipped'] else ''})", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "invocations.jsonl"
    with log.open("a") as fh:
        fh.write(json.dumps({"date": f"{start:%Y-%m-%d %H:%M} UTC", "wall_s": time.perf_counter() - t0,
                             "trained": sum(not r["skipped"] for r in results), "workers": args.workers}) + "\n")
    train_s = 0.0
    for r in results:
        res = json.loads((Path(r["out"]) / "results.json").read_text())
        train_s += res.get("train_seconds", 0.0) + res.get("feature_seconds", 0.0) + res.get("eval_seconds", 0.0)
    info = {"date": f"{start:%Y-%m-%d}", "workers": args.workers, "runs": len(results), "train_s": train_s,
            "invocations": [json.loads(x) for x in log.read_text().splitlines() if x.strip()],
            "wall_s": time.perf_counter() - t0}
    doc = Path(args.doc)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(render(results, args.group, members, args, info))
    print(f"wrote {doc} ({info['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
