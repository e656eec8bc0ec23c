"""One device check of the GPU path: every method, both half precisions, the feature cache, torchrun.

On one GPU (about 8 minutes at most)::

    PYTHONPATH=src .venv/bin/python benchmarks/device_check.py                 # ViT-B/16, random weights
    PYTHONPATH=src .venv/bin/python benchmarks/device_check.py --device cpu --tiny   # tiny-clip, < 2 min

What runs (every check is timed between ``torch.cuda.synchronize()`` calls on a GPU):

1. every registered method, and ``<method>+dept`` where DePT applies, for ``--steps`` training steps
   (after one warm-up step) at the reference batch size of its paper (``--preset paper``, else
   ``dept``; VPT / E2VPT: the VTAB protocol's 128; ``--tiny``: at most 4) in bf16 autocast and in fp16
   autocast with a ``GradScaler``; methods with a frozen image tower train on cached image features,
   as the engine does; then one evaluation batch (100 images, Dassl's test batch; ``--tiny``: 4).
   Linear probe: its closed-form fit (the s/iter column); zero-shot: the evaluation only.
2. the image-feature cache on the device: extraction of a generated image folder, written to disk,
   read back by a fresh cache and compared.
3. a 1-process ``torch.distributed.run`` job (NCCL on CUDA, gloo on CPU): an all-reduce and one CoOp
   epoch through ``vp.fit`` with the process group initialised.
4. one CoOp step (n_ctx 16, batch 32) with 1000 classes, as on ImageNet.
5. ``benchmarks/text_prefix.py``: one text forward + backward step with ``share_prefix`` on and off,
   interleaved, for CoOp, CoCoOp, KgCoOp, MaPLe, CoOp+DePT and SoftCPT-NATA at 10 / 100 / 1000 classes
   (``--tiny``: 10 / 40) in the first precision: s/iter of the shared path, the full path's, their ratio
   and the peak GPU memory of each (rows ``text-prefix-<method>-<classes>``).

Printed: a table of s/iter, images/s and peak GPU memory (``torch.cuda.max_memory_allocated``, train
steps + evaluation) per check. A check that fails is a ``FAILED`` row with its error and the others go
on; checks not started within ``--budget-s`` are ``SKIPPED`` rows; the exit status is 1 when any check
failed or was skipped. JSON: ``--out`` (default
``benchmarks/results/device_check.json``, git-ignored). Results: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "device_check.json"
PRECISIONS = ("bf16", "fp16")
EVAL_BATCH = 100
#: methods that take options on tiny-clip (3 text / 4 vision layers) or to get a text side for DePT
TINY_OPTIONS: dict[str, dict[str, Any]] = {"maple": {"prompt_depth": 2}, "dapt": {"prompt_depth": 2},
                                           "dapt-g": {"prompt_depth": 2},
                                           "ivlp": {"prompt_depth_text": 2, "prompt_depth_vision": 2},
                                           "promptsrc": {"prompt_depth_text": 2, "prompt_depth_vision": 2}}
TEXT_CLASSIFIER = {"vpt-shallow", "vpt-deep", "e2vpt"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def check_names() -> list[str]:
    """Every registered method, then ``<method>+<plug-in>`` for every method a plug-in can wrap."""
    from vlprompt.methods import get_method_class, list_methods
    from vlprompt.methods.base import _PLUGINS, plugin_applies

    bases = [n for n in list_methods() if not n.startswith("+")]
    combos = []
    for plugin in _PLUGINS:
        for b in bases:
            text_side = getattr(get_method_class(b), "has_text_side", True) or b in TEXT_CLASSIFIER
            closed_form = get_method_class(b).plan.fit_features is not None  # linear probe, Tip-Adapter: no prompts
            if b != "zeroshot" and not closed_form and text_side and plugin_applies(plugin, get_method_class(b)):
                combos.append(f"{b}+{plugin}")  # a plug-in for some methods only (DAPT) declares them
    return bases + combos


def method_options(name: str, tiny: bool) -> dict[str, Any]:
    base, *plugins = name.split("+")
    opts = dict(TINY_OPTIONS.get(base, {})) if tiny else {}
    if plugins and base in TEXT_CLASSIFIER:
        opts["classifier"] = "text"
    return opts


def reference_batch(base: str) -> int:
    """The batch size of the method's paper configuration (``paper``, else ``dept``, else VTAB's)."""
    from vlprompt.errors import ConfigError
    from vlprompt.presets import resolve_preset
    from vlprompt.protocols.vtab import VTAB_TRAIN_DEFAULTS

    for preset in ("paper", "dept"):
        try:
            bs = resolve_preset(base, preset)["train"].get("batch_size")
        except ConfigError:
            continue
        if bs:
            return int(bs)
    return int(VTAB_TRAIN_DEFAULTS["batch_size"]) if base in TEXT_CLASSIFIER else 32


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _row(check: str, precision: str | None, batch: int | None, fn: Callable[[], dict[str, Any]],
         device: torch.device, deadline: float = float("inf")) -> dict[str, Any]:
    row: dict[str, Any] = {"check": check, "precision": precision, "batch": batch}
    t0 = time.perf_counter()
    if t0 > deadline:
        row.update({"status": "SKIPPED: the --budget-s time budget is spent", "wall_s": 0.0})
        print(_line(row), flush=True)
        return row
    try:
        row.update(fn())
        row["status"] = "ok"
    except Exception as exc:  # one failing check is a row, not the end of the run
        row["status"] = f"FAILED: {_error(exc)}"
        row["traceback"] = traceback.format_exc(limit=6)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    row["wall_s"] = round(time.perf_counter() - t0, 2)
    print(_line(row), flush=True)
    return row


def _line(row: dict[str, Any]) -> str:
    def f(key: str, fmt: str) -> str:
        v = row.get(key)
        return "-" if v is None else format(v, fmt)

    return (f"{row['check']:22s} {row.get('precision') or '-':5s} bs {f('batch', 'd'):>4s}  "
            f"{f('s_iter', '.4f'):>8s} s/iter  {f('images_s', '.1f'):>8s} img/s  eval {f('eval_s', '.4f'):>7s} s  "
            f"peak {f('peak_mib', '.0f'):>6s} MiB  {row['status']}")


def method_check(name: str, bb: Any, classnames: list[str], precision: str, device: torch.device, batch: int,
                 steps: int, eval_batch: int, tiny: bool) -> dict[str, Any]:
    import vlprompt as vp
    from vlprompt.engine.config import TrainConfig
    from vlprompt.engine.precision import autocast
    from vlprompt.engine.schedule import build_optimizer

    torch.manual_seed(0)
    model = vp.build_method(name, bb, classnames, **method_options(name, tiny)).to(device)
    size = bb.image_size
    n_cls = len(classnames)
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.arange(batch, device=device) % n_cls
    out: dict[str, Any] = {}
    reset_peak(device)
    plan = model.plan  # what the engine would feed it (vlprompt.methods.base.TrainingPlan)
    if plan.fit_features is not None:  # linear probe: closed-form fit on image features
        with torch.no_grad(), autocast(precision, device):
            feats = bb.encode_image(images).float()
        sync(device)
        t0 = time.perf_counter()
        model.fit_features((feats.cpu(), labels.cpu()), (feats.cpu(), labels.cpu()))
        model.to(device)
        sync(device)
        fit_s = time.perf_counter() - t0
        out.update({"s_iter": fit_s, "images_s": batch / fit_s, "fit_s": fit_s})
    elif plan.steps != "none":
        step_batch: dict[str, torch.Tensor] = {"labels": labels}
        if plan.steps == "image-features":  # the engine trains these on cached features
            with torch.no_grad(), autocast(precision, device):
                step_batch["features"] = bb.encode_image(images).float()
        else:
            step_batch["images"] = images
        if plan.steps == "images+masks":  # DAPT: foreground masks travel in the batch
            step_batch["masks"] = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()
        model.train()
        optimizer = build_optimizer(model.param_groups(0.002), TrainConfig(lr=0.002))
        scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

        def step() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            with autocast(precision, device):
                loss = model.loss(step_batch)["loss"]
            (scaler.scale(loss) if scaler is not None else loss).backward()
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            return loss.detach().float()

        step()  # warm-up: lazy initialisation, allocator, kernels
        sync(device)
        t0 = time.perf_counter()
        losses = torch.stack([step() for _ in range(steps)])
        sync(device)
        s_iter = (time.perf_counter() - t0) / steps
        if not bool(torch.isfinite(losses).all()):
            raise FloatingPointError(f"non-finite training loss {losses.tolist()}")
        out.update({"s_iter": s_iter, "images_s": batch / s_iter, "loss": float(losses[-1])})
    model.eval()
    eval_images = torch.randn(eval_batch, 3, size, size, device=device)
    with torch.no_grad(), autocast(precision, device):
        model(eval_images[:1])  # warm-up
        sync(device)
        t0 = time.perf_counter()
        logits = model(eval_images)
        sync(device)
    out["eval_s"] = time.perf_counter() - t0
    if tuple(logits.shape) != (eval_batch, n_cls) or not bool(torch.isfinite(logits.float()).all()):
        raise RuntimeError(f"evaluation gave logits {tuple(logits.shape)} (finite: "
                           f"{bool(torch.isfinite(logits.float()).all())}), expected ({eval_batch}, {n_cls})")
    out["peak_mib"] = peak_mib(device)
    return out


def feature_cache_check(bb: Any, precision: str, device: torch.device, data: Path, cache: Path) -> dict[str, Any]:
    import vlprompt as vp
    from vlprompt.engine.features import FeatureCache

    task = vp.load_dataset("imagefolder", data)
    reset_peak(device)
    first = FeatureCache(bb, precision, device, cache_dir=cache, batch_size=EVAL_BATCH)
    sync(device)
    t0 = time.perf_counter()
    feats = first.get(task.test, "test")
    sync(device)
    seconds = time.perf_counter() - t0
    again = FeatureCache(bb, precision, device, cache_dir=cache, batch_size=EVAL_BATCH).get(task.test, "test")
    if first.computed != 1 or not torch.equal(feats.cpu(), again.cpu()):
        raise RuntimeError("features read back from the cache differ from the extracted ones")
    if tuple(feats.shape) != (len(task.test), bb.embed_dim) or not bool(torch.isfinite(feats.float()).all()):
        raise RuntimeError(f"features of shape {tuple(feats.shape)} (or non-finite)")
    n = len(task.test)
    return {"batch": n, "s_iter": seconds, "images_s": n / seconds, "peak_mib": peak_mib(device)}


def torchrun_check(device: torch.device, data: Path, work: Path, backbone: str, timeout: float) -> dict[str, Any]:
    result = work / "ddp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           str(Path(__file__).resolve()), "--ddp-worker", "--device", str(device), "--data", str(data),
           "--backbone", backbone, "--out", str(result)]
    env = {**os.environ, "VLPROMPT_QUIET": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0 or not result.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"torchrun exited {proc.returncode}: {' | '.join(tail)}")
    info = json.loads(result.read_text())
    return {"backend": info["backend"], "acc": info["acc"], "job_s": time.perf_counter() - t0}


def ddp_worker(args: argparse.Namespace) -> None:
    """Rank 0 of the 1-process torchrun job: an all-reduce, then one CoOp epoch with the group initialised."""
    import torch.distributed as dist

    import vlprompt as vp

    device = torch.device(args.device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group(backend)
    try:
        t = torch.ones(4, device=device)
        dist.all_reduce(t)
        if not torch.equal(t.cpu(), torch.full((4,), float(dist.get_world_size()))):
            raise RuntimeError(f"all_reduce gave {t.tolist()}")
        bb = vp.load_backbone(args.backbone, device=device)
        task = vp.load_dataset("imagefolder", args.data, shots=2)
        model = vp.build_method("coop", bb, task.classnames, n_ctx=4)
        with tempfile.TemporaryDirectory() as tmp:
            res = vp.fit(model, task, epochs=1, batch_size=4, device=str(device), cache_dir=tmp, run_dir=f"{tmp}/run")
        Path(args.out).write_text(json.dumps({"backend": backend, "acc": res["acc"],
                                              "world_size": res["env"]["world_size"]}))
    finally:
        dist.destroy_process_group()


def many_classes_check(bb: Any, precision: str, device: torch.device, batch: int, steps: int,
                       n_classes: int = 1000) -> dict[str, Any]:
    names = [f"object number {i}" for i in range(n_classes)]
    out = method_check("coop", bb, names, precision, device, batch, steps, eval_batch=batch, tiny=False)
    return out


TEXT_PREFIX_METHODS = ("coop", "cocoop", "kgcoop", "maple", "coop+dept", "softcpt-nata")


def text_prefix_check(bb: Any, method: str, n_classes: int, precision: str, repeats: int,
                      tiny: bool) -> dict[str, Any]:
    """One ``benchmarks/text_prefix.py`` row: shared vs full text step (s/iter = the shared path's)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("text_prefix", HERE / "text_prefix.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    extra = method_options(method, tiny)
    row = mod.compare(bb, method, n_classes, repeats, precision, extra)
    return {"s_iter": row["shared_s"], "full_s": row["full_s"], "speedup": row["speedup"],
            "memory_ratio": row["memory_ratio"], "peak_mib": row.get("peak_mib_shared"),
            "peak_mib_full": row.get("peak_mib_full"), "peak_ratio": row.get("peak_ratio")}


def markdown(rows: list[dict[str, Any]], header: dict[str, Any]) -> str:
    lines = [f"Device: {header['device_name']} ({header['device']}), backbone {header['backbone']}, torch "
             f"{header['torch']}, {header['steps']} timed steps after 1 warm-up; {header['date']}.", "",
             "| check | precision | batch | s/iter | images/s | eval s (batch) | peak GPU MiB | status |",
             "|---|---|---|---|---|---|---|---|"]

    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    prefix_rows = []
    for r in rows:
        if r["check"].startswith("text-prefix-"):
            prefix_rows.append(r)
            continue
        lines.append(f"| {r['check']} | {r.get('precision') or '-'} | {f(r.get('batch'), 'd')} | "
                     f"{f(r.get('s_iter'), '.4f')} | {f(r.get('images_s'), '.1f')} | {f(r.get('eval_s'), '.4f')} | "
                     f"{f(r.get('peak_mib'), '.0f')} | {r['status']} |")
    if prefix_rows:
        lines += ["", "Shared-prefix text step (`benchmarks/text_prefix.py`, `share_prefix` on vs off):", "",
                  "| check | precision | shared s | full s | speedup | peak GPU MiB shared / full | saved activations "
                  "shared / full | status |", "|---|---|---|---|---|---|---|---|"]
        for r in prefix_rows:
            lines.append(f"| {r['check']} | {r.get('precision') or '-'} | {f(r.get('s_iter'), '.4f')} | "
                         f"{f(r.get('full_s'), '.4f')} | {f(r.get('speedup'), '.2f')} | "
                         f"{f(r.get('peak_mib'), '.0f')} / {f(r.get('peak_mib_full'), '.0f')} | "
                         f"{f(r.get('memory_ratio'), '.2f')} | {r['status']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:1, cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny-clip, batches of at most 4, 1 timed step")
    ap.add_argument("--backbone", help="default: ViT-B-16 (random weights), tiny-clip with --tiny")
    ap.add_argument("--steps", type=int, help="timed training steps per check (default 3, 1 with --tiny)")
    ap.add_argument("--methods", nargs="+", help="only these checks (default: every method and +dept)")
    ap.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    ap.add_argument("--text-prefix-classes", type=int, nargs="*",
                    help="class counts of the shared-prefix rows (default 10 100 1000; --tiny: 10 40; none: skip)")
    ap.add_argument("--torchrun-timeout", type=float, default=240.0)
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="checks not started after this many seconds are SKIPPED rows (default 420)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--markdown", type=Path, help="also write the table as Markdown there")
    ap.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.ddp_worker:
        ddp_worker(args)
        return 0

    os.environ.setdefault("VLPROMPT_QUIET", "1")
    import vlprompt as vp
    from vlprompt.data import make_image_folder
    from vlprompt.engine.train import environment

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU; use --device cpu --tiny for the CPU check",
              file=sys.stderr)
        return 2
    tiny = args.tiny
    backbone = args.backbone or ("tiny-clip" if tiny else "ViT-B-16")
    steps = args.steps or (1 if tiny else 3)
    eval_batch = 4 if tiny else EVAL_BATCH
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    bb = vp.load_backbone(backbone, device=device)
    env = environment(device, "/".join(args.precisions))
    header = {"device": str(device), "device_name": env["device_name"] or platform.machine(), "backbone": backbone,
              "torch": torch.__version__, "steps": steps, "tiny": tiny, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "python": platform.python_version()}
    classnames = [f"class {c}" for c in ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf",
                                         "hotel", "india", "juliett")][: 5 if tiny else 10]
    names = args.methods or check_names()
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    deadline = t_start + args.budget_s
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "data"
        make_image_folder(data, n_train=4, n_val=0, n_test=8 if tiny else 50, size=bb.image_size, seed=0)
        for precision in args.precisions:
            for name in names:
                base = name.split("+")[0]
                batch = reference_batch(base)
                batch = min(batch, 4) if tiny else batch
                rows.append(_row(name, precision, batch, lambda n=name, p=precision, b=batch: method_check(
                    n, bb, classnames, p, device, b, steps, eval_batch, tiny), device, deadline))
        precision = args.precisions[0]
        rows.append(_row("feature-cache", precision, None,
                         lambda: feature_cache_check(bb, precision, device, data, work / "cache"), device, deadline))
        rows.append(_row(f"torchrun-1proc-{'nccl' if device.type == 'cuda' else 'gloo'}", None, 4,
                         lambda: torchrun_check(device, data, work, "tiny-clip", args.torchrun_timeout), device,
                         deadline))
        big = 4 if tiny else 32
        for precision in args.precisions[:1] if tiny else args.precisions:  # CPU fp16 is slow: one in --tiny
            rows.append(_row("coop-1000-classes", precision, big,
                             lambda p=precision: many_classes_check(bb, p, device, big, steps), device, deadline))
        prefix_classes = args.text_prefix_classes
        if prefix_classes is None:
            prefix_classes = [10, 40] if tiny else [10, 100, 1000]
        precision = args.precisions[0]
        for n_cls in prefix_classes:
            for method in TEXT_PREFIX_METHODS:
                rows.append(_row(f"text-prefix-{method}-{n_cls}", precision, None,
                                 lambda m=method, n=n_cls: text_prefix_check(bb, m, n, precision, 1 if tiny else 3,
                                                                             tiny), device, deadline))
    header["total_s"] = round(time.perf_counter() - t_start, 1)
    failed = [r for r in rows if r["status"] != "ok"]
    table = markdown(rows, header)
    print("\n" + table)
    print(f"{len(rows)} checks, {len(failed)} failed, {header['total_s']} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"header": header, "rows": rows}, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
