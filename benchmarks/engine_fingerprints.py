"""Fingerprints of short tiny runs of every registered method, for refactors that must not change results.

Each run (tiny-clip, fp32, CPU, 2 epochs, 2 shots, its own fresh feature cache) is reduced to its
``results.json`` and ``metrics.jsonl`` without wall-clock keys, and the sha256 of ``prompt.safetensors``,
``prompt.json`` and ``split.json``; base-to-new runs add their new-class evaluation. The runs are: every
method; ``+dept`` on every method that takes it; DAPT-S / DAPT-G with both loss and Grad-CAM rules;
SoftCPT, coop-mt and zero-shot group runs; CoOp on images, with bf16, with clipping + AdamW; runs
interrupted after epoch 0 and resumed; E2VPT's pruning and rewinding; IVLP (with and without visual
prompts), PromptSRC, CLIP-Adapter, Tip-Adapter(-F), the ViT baselines and the plug-in combinations
(``+dept`` / ``+dapt`` / ``+dapt-g`` on them, ``promptsrc+dapt+dept``). Two fingerprint files taken
before and after a change must be equal.

Usage (repository root)::

    git stash; PYTHONPATH=src .venv/bin/python benchmarks/engine_fingerprints.py --out /tmp/before.json; git stash pop
    PYTHONPATH=src .venv/bin/python benchmarks/engine_fingerprints.py --out /tmp/after.json
    .venv/bin/python benchmarks/engine_fingerprints.py --compare /tmp/before.json /tmp/after.json

Run the "before" pass from a copy of the old source tree (``git archive``), not from a tree being edited.
About 3 minutes on one idle CPU core.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "engine_fingerprints.json"
#: keys that hold wall-clock times or the machine: left out of a fingerprint
TIMING = {"train_seconds", "feature_seconds", "eval_seconds", "seconds", "env"}
#: (name, method, dataset, subsample, evaluate new classes, method options, training options)
Run = tuple[str, str, str, str, bool, dict[str, Any], dict[str, Any]]


def runs() -> list[Run]:
    depth = {"prompt_depth": 2}  # tiny-clip has 3 text / 4 vision blocks
    text = {"classifier": "text"}
    ivlp = {"prompt_depth_text": 2, "prompt_depth_vision": 2}
    out: list[Run] = [
        ("zeroshot", "zeroshot", "tiny/shapes", "base", True, {}, {}),
        ("linear-probe", "linear-probe", "tiny/shapes", "all", False, {}, {}),
        ("coop", "coop", "tiny/shapes", "base", True, {}, {}),
        ("coop-views0", "coop", "tiny/shapes", "base", True, {}, {"feature_views": 0}),
        ("coop-bf16", "coop", "tiny/shapes", "base", True, {}, {"precision": "bf16"}),
        ("coop-clip1", "coop", "tiny/shapes", "base", True, {}, {"grad_clip": 1.0, "optimizer": "adamw"}),
        ("cocoop", "cocoop", "tiny/shapes", "base", True, {}, {}),
        ("kgcoop", "kgcoop", "tiny/shapes", "base", True, {}, {}),
        ("maple", "maple", "tiny/shapes", "base", True, depth, {}),
        ("dapt", "dapt", "tiny/shapes", "base", True, depth, {}),
        ("dapt-ref", "dapt", "tiny/shapes", "base", True, {**depth, "loss_schedule": "reference", "switch_epoch": 0},
         {}),
        ("dapt-g", "dapt-g", "tiny/shapes", "base", True, depth, {}),
        ("dapt-g-ref", "dapt-g", "tiny/shapes", "base", True, {**depth, "gradcam_rule": "reference"}, {}),
        ("vpt-deep", "vpt-deep", "tiny/shapes", "base", False, {}, {}),
        ("vpt-shallow", "vpt-shallow", "tiny/shapes", "base", False, {}, {}),
        ("e2vpt", "e2vpt", "tiny/shapes", "base", False, {}, {}),
        ("vpt-deep-text", "vpt-deep", "tiny/shapes", "base", True, text, {}),
        ("coop+dept", "coop+dept", "tiny/shapes", "base", True, {}, {}),
        ("cocoop+dept", "cocoop+dept", "tiny/shapes", "base", True, {}, {}),
        ("kgcoop+dept", "kgcoop+dept", "tiny/shapes", "base", True, {}, {}),
        ("maple+dept", "maple+dept", "tiny/shapes", "base", True, depth, {}),
        ("dapt+dept", "dapt+dept", "tiny/shapes", "base", True, depth, {}),
        ("dapt-g+dept", "dapt-g+dept", "tiny/shapes", "base", True, depth, {}),
        ("vpt-deep+dept", "vpt-deep+dept", "tiny/shapes", "base", True, text, {}),
        # issue 19's methods and plug-in combinations
        ("ivlp", "ivlp", "tiny/shapes", "base", True, ivlp, {}),
        ("ivlp-language", "ivlp", "tiny/shapes", "base", True, {"prompt_depth_text": 2, "prompt_depth_vision": 0},
         {}),
        ("promptsrc", "promptsrc", "tiny/shapes", "base", True, {**ivlp, "gpa_mean": 1.0, "gpa_std": 1.0}, {}),
        ("clip-adapter", "clip-adapter", "tiny/shapes", "base", True, {}, {}),
        ("tip-adapter", "tip-adapter", "tiny/shapes", "base", True, {"augment_views": 2}, {}),
        ("tip-adapter-f", "tip-adapter-f", "tiny/shapes", "base", True, {"augment_views": 2}, {}),
        ("linear", "linear", "tiny/shapes", "base", False, {}, {}),
        ("finetune", "finetune", "tiny/shapes", "base", False, {}, {}),
        ("ivlp+dept", "ivlp+dept", "tiny/shapes", "base", True, ivlp, {}),
        ("promptsrc+dept", "promptsrc+dept", "tiny/shapes", "base", True, ivlp, {}),
        ("clip-adapter+dept", "clip-adapter+dept", "tiny/shapes", "base", True, {}, {}),
        ("coop+dapt", "coop+dapt", "tiny/shapes", "base", True, {}, {}),
        ("cocoop+dapt-g", "cocoop+dapt-g", "tiny/shapes", "base", True, {}, {}),
        ("maple+dapt", "maple+dapt", "tiny/shapes", "base", True, depth, {}),
        ("ivlp+dapt-g", "ivlp+dapt-g", "tiny/shapes", "base", True, ivlp, {}),
        ("promptsrc+dapt+dept", "promptsrc+dapt+dept", "tiny/shapes", "base", True, ivlp, {}),
    ]
    for m in ("coop-mt", "softcpt", "softcpt-nata", "softcpt-nats", "softcpt-cata", "softcpt-csta", "softcpt-cats",
              "softcpt-csts", "softcpt+dept", "coop-mt+dept", "zeroshot"):
        out.append((f"group-{m}", m, "tiny-group/real", "all", False, {}, {}))
    return out


def strip(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: strip(v) for k, v in d.items() if k not in TIMING}
    if isinstance(d, list):
        return [strip(v) for v in d]
    return d


def digest(run_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if (run_dir / "results.json").exists():
        out["results"] = strip(json.loads((run_dir / "results.json").read_text()))
    if (run_dir / "metrics.jsonl").exists():
        out["metrics"] = [strip(json.loads(line)) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                          if line]
    for f in ("prompt.safetensors", "prompt.json", "split.json"):
        if (run_dir / f).exists():
            out[f] = hashlib.sha256((run_dir / f).read_bytes()).hexdigest()
    return out


def fingerprints(only: str = "") -> dict[str, Any]:
    os.environ["VLPROMPT_QUIET"] = "1"
    warnings.simplefilter("ignore")
    import torch

    import vlprompt as vp
    from vlprompt.engine.train import fit, seed_everything
    from vlprompt.protocols.runs import RunSpec, evaluate_run, get_backbone, train_run

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="vlprompt_fp_"))
    cache = str(work / "cache")
    train = {"epochs": 2, "lr": 0.002, "batch_size": 4, "precision": "fp32", "cache_dir": cache, "device": "cpu",
             "feature_views": 2, "progress": False}
    res: dict[str, Any] = {}
    try:
        for name, method, ds, sub, new, mopts, topts in runs():
            if only and only not in name:
                continue
            out = work / "runs" / name
            train_run(RunSpec(method, ds, None, str(out), shots=2, seed=1, subsample=sub, method_options=mopts,
                              train_options={**train, **topts}, device="cpu"))
            res[name] = digest(out)
            if new:
                res[name]["new"] = strip(evaluate_run(out, ds, None, subsample="new", cache_dir=cache, device="cpu"))
            print(name, res[name].get("results", {}).get("acc"), flush=True)

        class Stop(Exception):
            pass

        def stop(epoch: int, row: dict[str, Any]) -> None:
            raise Stop

        bb = get_backbone("tiny-clip", None, False, "cpu")
        for name, method, mopts in (("resume-coop", "coop", {}), ("resume-dapt-g", "dapt-g", {"prompt_depth": 2}),
                                    ("resume-coop+dept", "coop+dept", {})):
            if only and only not in name:
                continue
            out = work / "runs" / name
            task = vp.load_dataset("tiny/shapes", None, shots=2, seed=1, subsample="base")
            for callback in (stop, None):  # interrupted after epoch 0, then resumed
                seed_everything(1)
                model = vp.build_method(method, bb, task.classnames, **mopts)
                try:
                    fit(model, task, run_dir=str(out), on_epoch_end=callback, **{**train, "epochs": 3})
                except Stop:
                    pass
            res[name] = digest(out)
            print(name, res[name]["results"]["acc"], flush=True)

        if not only or only in "e2vpt-prune":
            from vlprompt.protocols.e2vpt_prune import prune_and_rewind

            task = vp.load_dataset("tiny/shapes", None, shots=2, seed=1)
            seed_everything(1)
            r = prune_and_rewind(vp.build_method("e2vpt", bb, task.classnames), task, token_levels=(50,),
                                 piece_levels=(25, 50), **train)
            state = r["model"].prompt_state_dict()
            h = hashlib.sha256()
            for k in sorted(state):
                h.update(k.encode())
                h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
            entry = {k: v for k, v in r.items() if k not in ("model", "token_scores", "piece_scores")}
            entry["scores"] = [hashlib.sha256(json.dumps(r[k]).encode()).hexdigest()
                               for k in ("token_scores", "piece_scores")]
            entry["state"] = h.hexdigest()
            res["e2vpt-prune"] = json.loads(json.dumps(strip(entry), default=str))
            print("e2vpt-prune", entry["val_acc"], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return res


def compare(a_path: Path, b_path: Path) -> int:
    a, b = json.loads(a_path.read_text()), json.loads(b_path.read_text())
    missing = sorted(set(a) ^ set(b))
    differ = sorted(k for k in set(a) & set(b) if a[k] != b[k])
    print(f"{len(set(a) & set(b))} runs in both; {len(differ)} differ; only in one file: {missing}")
    for k in differ:
        keys = sorted(x for x in set(a[k]) | set(b[k]) if a[k].get(x) != b[k].get(x))
        print(f"  {k}: {keys}")
    return 1 if differ or missing else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--only", default="", help="only runs whose name contains this")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"),
                    help="compare two fingerprint files (exit 1 if they differ)")
    args = ap.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    res = fingerprints(args.only)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1, sort_keys=True, default=str) + "\n")
    print(f"{len(res)} fingerprints -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
