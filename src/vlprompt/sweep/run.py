"""Run a sweep: skip complete runs, execute the rest on local worker processes or a Ray cluster.

Each run writes its own run directory ``<out>/<id>``; a failing run leaves ``<out>/<id>/error.txt``
and is listed under ``failures`` in ``<out>/sweep_status.json``; the other runs go on. Restarting a
killed sweep submits only the runs whose ``results.json`` is not complete (interrupted runs resume
from their checkpoint).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..engine.loggers import LOGGING_OPTIONS
from ..engine.run import RunDir, atomic_write
from ..errors import ConfigError, VlpromptError
from ..progress import quiet_if
from .lock import LOCK_FILE, RunLock, describe
from .progress import Progress
from .spec import Sweep, SweepRun, load_sweep

STATUS_FILE = "sweep_status.json"
#: seconds ``ray.init`` may take to reach the cluster (``--ray-timeout``)
RAY_CONNECT_TIMEOUT = 60.0
#: exit status when no run failed but some are being run by another sweep (not all are complete)
EXIT_LOCKED = 3


def is_complete(run: SweepRun) -> bool:
    """True when ``results.json`` holds the run's final numbers (``new_acc``/``hm`` too for base2new,
    ``per_task`` for multitask, the per-seed ``runs`` for vtab)."""
    try:
        res = RunDir(run.out).read_results()
    except (OSError, ValueError):
        return False
    if not res or "acc" not in res or res.get("sweep", {}).get("id") != run.id:
        return False
    if run.protocol == "multitask":
        return "per_task" in res
    if run.protocol == "multitask-base2new":
        return "per_task_new" in res and "hm" in res
    if run.protocol == "vtab":
        return "runs" in res and "group" in res and (run.prune is None or "pruned" in res)
    if run.targets:
        return set(res.get("targets") or {}) >= {label for _, _, label in run.targets}
    return run.protocol != "base2new" or ("new_acc" in res and "hm" in res)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # pragma: no cover
        return 0


# ----------------------------------------------------------------------------- one run (in a worker)
def _vtab_results(run: SweepRun, spec: Any) -> dict[str, Any]:
    """One VTAB sweep run: :func:`vlprompt.protocols.vtab.vtab` on the run's task (grid, then the final seeds,
    all inside the run directory), summarised as the run's ``results.json``."""
    from ..protocols.vtab import WDS, PruneOptions, task_slug, vtab

    prune = None
    if run.prune is not None:
        prune = PruneOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in run.prune.items()})
    summary = vtab(spec, [run.dataset], lrs=list(run.lrs) if run.lrs else None, wds=list(run.wds or WDS),
                   seeds=list(run.seeds), scale_lr=run.scale_lr, prune=prune)
    row = summary["rows"][0]
    best = summary["choices"][row["dataset"]]
    res: dict[str, Any] = {
        "method": run.method, "dataset": row["dataset"], "protocol": "vtab", "backbone": run.backbone,
        "weights": run.weights, "shots": None, "seed": None, "group": row["group"], "acc": row["acc"],
        "std": row["std"], "seeds": row["seeds"], "base_lr": best["base_lr"], "wd": best["wd"],
        "lr": summary["runs"][0]["lr"], "val_acc": best.get("val_acc"),
        "trainable_params": row.get("trainable_params"), "tuned_percent": row.get("tuned_percent"),
        "backbone_params": summary["backbone_params"], "runs": summary["runs"],
    }
    if prune is not None:
        p_row = summary["pruned"]["rows"][0]
        res["pruned"] = {"acc": p_row["acc"], "std": p_row["std"], "trainable_params": p_row.get("trainable_params"),
                         "tuned_percent": p_row.get("tuned_percent"), **summary["pruning"][row["dataset"]],
                         "runs": summary["runs_pruned"]}
    choice = Path(run.out) / task_slug(row["dataset"]) / "tune" / "choice.json"
    if choice.is_file():
        res["grid"] = json.loads(choice.read_text())["grid"]
    return res


def _transfer_results(run: SweepRun, res: dict[str, Any]) -> dict[str, Any]:
    """Cross-dataset / domain-gen: evaluate the source-trained prompts on each target not evaluated yet
    (prompts re-targeted to the target's class names, its whole test set). Adds ``targets`` (label → acc),
    ``target_avg`` (mean over targets) and ``source_acc``; ``acc`` stays the source accuracy."""
    from ..protocols.runs import evaluate_run

    done = dict(res.get("targets") or {})
    for name, root, label in run.targets:
        if label not in done:
            ev = evaluate_run(run.out, name, root, "all", cache_dir=run.train_options.get("cache_dir", run.cache_dir),
                              weights=run.weights, trust_checkpoint=run.trust_checkpoint, device=run.device)
            done[label] = ev["acc"]
    targets = {label: done[label] for _, _, label in run.targets}
    return {**res, "source_acc": res["acc"], "targets": targets,
            "target_avg": sum(targets.values()) / len(targets)}


def execute(run: SweepRun) -> dict[str, Any]:
    """Train (or resume) one run and, for base2new, evaluate its new classes; never raises.

    ``multitask`` trains on the task group (:func:`vlprompt.protocols.multitask.group_spec`),
    ``multitask-base2new`` on the base classes of every task, then tests every task's new classes
    (:func:`~vlprompt.protocols.multitask.base2new_group_run`); under both, ``zeroshot`` and
    ``linear-probe`` run separately on each task of the group (per-task baselines,
    :func:`~vlprompt.protocols.multitask.baseline_group_run`). ``vtab`` runs
    the whole VTAB-1k protocol of one task in the run directory (its inner runs resume on their own).

    Returns ``{"id", "status": "done" | "failed", "seconds", "error"?}``; failures write ``error.txt``.
    """
    from ..engine.loggers import log_results
    from ..engine.train import hm
    from ..protocols.multitask import BASELINES, base2new_group_run, baseline_group_run, group_spec
    from ..protocols.runs import RunSpec, evaluate_run, train_run

    t0 = time.time()
    rd = RunDir(run.out)
    err = rd.path / "error.txt"
    try:
        b2n = run.protocol == "base2new"
        train_options = dict(run.train_options)
        if train_options.get("log_to") and run.protocol != "vtab":
            train_options.setdefault("log_name", run.id)  # the run's name in TensorBoard / W&B
        spec = RunSpec(
            method=run.method, dataset=run.dataset, root=run.root, out=run.out, shots=run.shots, seed=run.seed,
            subsample="base" if b2n else "all", backbone=run.backbone, weights=run.weights,
            trust_checkpoint=run.trust_checkpoint, preset=run.preset, method_options=dict(run.method_options),
            train_options=train_options, device=run.device, pretrained=run.pretrained, quick_gelu=run.quick_gelu,
        )
        if run.protocol == "vtab":
            res = _vtab_results(run, spec)
        elif run.protocol in ("multitask", "multitask-base2new"):
            mt_b2n = run.protocol == "multitask-base2new"
            if run.method in BASELINES:
                res = baseline_group_run(spec, run.dataset, run.method, run.shots, run.seed, run.out, mt_b2n)
            elif mt_b2n:
                res = base2new_group_run(group_spec(spec, run.dataset, run.shots, run.seed, run.out, "base"))
            else:
                res = train_run(group_spec(spec, run.dataset, run.shots, run.seed, run.out))
        else:
            res = train_run(spec)
        if run.targets:
            res = _transfer_results(run, res)
        if b2n and "new_acc" not in res:
            new = evaluate_run(run.out, run.dataset, run.root, "new",
                               cache_dir=run.train_options.get("cache_dir", run.cache_dir), weights=run.weights,
                               trust_checkpoint=run.trust_checkpoint, device=run.device)
            res = {**res, "new_acc": new["acc"], "hm": hm(res["base_acc"], new["acc"])}
            log_results(run.out, {"epochs": res.get("epochs"), "new_acc": res["new_acc"], "hm": res["hm"]})
        res = {**res, "sweep": {"id": run.id, "protocol": run.protocol, "dataset": run.dataset_label,
                                "preset": run.preset, "method_options": run.method_options,
                                **({"lrs": run.lrs, "wds": run.wds, "scale_lr": run.scale_lr, "prune": run.prune}
                                   if run.protocol == "vtab" else {}),
                                **({"targets": [label for _, _, label in run.targets]} if run.targets else {}),
                                "train_options": {k: v for k, v in run.train_options.items()
                                                  if k != "cache_dir" and k not in LOGGING_OPTIONS}}}
        rd.write_results(res)
        err.unlink(missing_ok=True)
        return {"id": run.id, "status": "done", "seconds": time.time() - t0}
    except Exception as e:  # recorded, never propagated: one bad run must not stop the sweep
        msg = f"{type(e).__name__}: {e}"
        try:
            atomic_write(err, f"run {run.id}\n{msg}\n\n{traceback.format_exc()}")
        except OSError:
            pass
        return {"id": run.id, "status": "failed", "seconds": time.time() - t0, "error": msg}


# ----------------------------------------------------------------------------- local executor
_WORKER: dict[str, Any] = {}


def _init_worker(threads: int, counter: Any, n_gpus: int) -> None:
    """Pool initializer: pin one GPU per worker (round robin) and size torch's thread pool."""
    from ..workers import exit_with_parent

    exit_with_parent()
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    if n_gpus > 0:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(index % n_gpus)
    import torch

    torch.set_num_threads(threads)
    _WORKER["index"] = index


def run_local(runs: Iterable[SweepRun], workers: int, on_start: Callable[[str], None],
              on_done: Callable[[dict[str, Any]], None], threads: int | None = None) -> None:
    """Execute ``runs`` on ``workers`` spawned processes (one GPU each when GPUs exist).

    ``runs`` is sized and iterated lazily: the next run is taken only when a worker is free (the sweep
    claims a run's lock when it is taken, so two sweeps on one folder share the runs).
    """
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    if not runs:
        return
    workers = max(1, min(workers, len(runs)))
    ctx = mp.get_context("spawn")
    n_threads = threads or max(1, cpu_count() // workers)
    counter = ctx.Value("i", 0)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(n_threads, counter, gpu_count()))
    queue: Iterator[SweepRun] = iter(runs)
    nxt: SweepRun | None = next(queue, None)
    pending: dict[Future, SweepRun] = {}
    try:
        while nxt is not None or pending:
            while nxt is not None and len(pending) < workers:  # submit as slots free up: 'running' is exact
                pending[pool.submit(execute, nxt)] = nxt
                on_start(nxt.id)
                nxt = next(queue, None)
            if not pending:
                break
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in done:
                run = pending.pop(fut)
                try:
                    on_done(fut.result())
                except Exception as e:  # a worker process died (OOM killer, segfault ...)
                    msg = f"worker failed: {type(e).__name__}: {e}"
                    atomic_write(Path(run.out) / "error.txt", f"run {run.id}\n{msg}\n")
                    on_done({"id": run.id, "status": "failed", "seconds": 0.0, "error": msg})
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): stop the workers, their runs resume next time
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.terminate()
        raise
    finally:
        pool.shutdown(wait=not (nxt or pending), cancel_futures=True)


# ----------------------------------------------------------------------------- ray executor
def _package_path() -> str:
    return str(Path(__file__).resolve().parents[2])


class _DropRayThreadWarning(logging.Filter):
    """Ray warns that it installs no SIGTERM handler when ``ray.init`` runs off the main thread: intended."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("SIGTERM handler is not set")


_PROBE = "import sys, ray\nray.init(address=sys.argv[1], log_to_driver=False)\nray.shutdown()\n"


def _unreachable(shown: str, timeout: float) -> ConfigError:
    return ConfigError(
        f"could not connect to the Ray cluster at {shown} within {timeout:g} s; check that a cluster runs there "
        f"(`ray status --address {shown}` on a node), that the address is the head's IP:port printed by "
        "`ray start --head` and reachable from this machine (no firewall), and that this machine has the same "
        "ray version; --ray-timeout sets the wait")


def _probe_ray(address: str, timeout: float) -> None:
    """Connect once from a child process (killed after ``timeout``): an unreachable cluster then leaves no
    thread stuck in Ray's C++ code in this process (such a thread can crash the interpreter at exit).
    The probe shows in the cluster as a short driver job."""
    proc = subprocess.Popen([sys.executable, "-c", _PROBE, address], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except BaseException as e:  # timeout, SIGTERM / Ctrl-C: stop the probe
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait()
        if isinstance(e, subprocess.TimeoutExpired):
            raise _unreachable(address, timeout) from None
        raise
    if proc.returncode != 0:
        lines = [line for line in err.decode(errors="replace").splitlines() if line.strip()]
        last = lines[-1].strip()[:400] if lines else f"exit status {proc.returncode}"
        raise ConfigError(f"could not connect to the Ray cluster at {address}: {last} (check the address, "
                          "`ray status`, and that `ray start --head` runs there)")


def _connect_ray(ray: Any, address: str | None, timeout: float, runtime_env: dict[str, Any],
                 note: Callable[[str], None]) -> None:
    """``ray.init`` that gives up after ``timeout`` seconds and that SIGTERM / Ctrl-C always interrupt.

    Ray's connection to an unreachable GCS retries for ever inside C++ code, where Python signal handlers
    do not run, and ``ray.init`` on the main thread replaces the SIGTERM handler with its own. So the
    cluster is first probed from a child process (:func:`_probe_ray`, killed on timeout or interruption);
    then ``ray.init`` runs on a daemon thread (abandoned if it still hangs) while the calling thread waits
    in short, interruptible steps; the caller's SIGTERM handler stays in place.
    """
    shown = address or "auto"
    if not timeout or timeout <= 0:
        raise ConfigError(f"the Ray connect timeout must be a positive number of seconds, got {timeout!r}")
    note(f"connecting to the Ray cluster at {shown} (timeout {timeout:g} s)")
    _probe_ray(shown, timeout)
    result: dict[str, BaseException] = {}
    finished = threading.Event()
    quiet = _DropRayThreadWarning()
    ray_logger = logging.getLogger("ray._private.worker")
    ray_logger.addFilter(quiet)

    def connect() -> None:
        try:
            ray.init(address=shown, ignore_reinit_error=True, log_to_driver=False, runtime_env=runtime_env)
        except BaseException as e:  # handed to the waiting thread
            result["error"] = e
        finally:
            finished.set()

    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if main else None
    threading.Thread(target=connect, name="vlprompt-ray-connect", daemon=True).start()
    deadline = time.monotonic() + timeout
    try:
        while not finished.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                raise _unreachable(shown, timeout)
    finally:
        ray_logger.removeFilter(quiet)
        if main and handler is not None and signal.getsignal(signal.SIGTERM) is not handler:
            signal.signal(signal.SIGTERM, handler)  # keep ours: Ray's would exit without cleaning up
    err = result.get("error")
    if isinstance(err, ConnectionError):
        raise ConfigError(f"could not connect to the Ray cluster at {shown}: {err} (check the address, "
                          "`ray status`, and that `ray start --head` runs)") from err
    if err is not None:
        raise err


def run_ray(runs: Iterable[SweepRun], address: str | None, on_start: Callable[[str], None],
            on_done: Callable[[dict[str, Any]], None], cpus_per_run: float = 1.0, gpus_per_run: float | None = None,
            connect_timeout: float = RAY_CONNECT_TIMEOUT, note: Callable[[str], None] | None = None) -> None:
    """Submit each run as one Ray task to the cluster at ``address`` (``ray start --head`` ...).

    Result files are written by the tasks themselves, so ``out`` must be on a file system all
    nodes share. ``gpus_per_run`` defaults to 1 when the cluster has GPUs, else 0. Connecting gives up
    after ``connect_timeout`` seconds (a :class:`~vlprompt.errors.ConfigError` naming the address);
    SIGTERM / Ctrl-C interrupt the connection and the wait for tasks (at most about a second late).
    """
    try:
        import ray
    except ImportError as e:
        raise ConfigError("the ray executor needs Ray: pip install 'vlprompt[ray]'") from e
    if not runs:
        return
    pythonpath = os.pathsep.join(p for p in (_package_path(), os.environ.get("PYTHONPATH")) if p)
    _connect_ray(ray, address, connect_timeout, {"env_vars": {"PYTHONPATH": pythonpath}},
                 note or (lambda m: print(m, file=sys.stderr, flush=True)))
    try:
        if gpus_per_run is None:
            gpus_per_run = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        threads = max(1, int(cpus_per_run))

        def task(run: SweepRun) -> dict[str, Any]:
            import torch

            torch.set_num_threads(threads)
            return execute(run)

        remote = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)(task)
        pending = {}
        for run in runs:
            pending[remote.remote(run)] = run
            on_start(run.id)
        while pending:
            # a bounded wait: Python runs signal handlers (SIGTERM) only between calls into Ray
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                run = pending.pop(ref)
                try:
                    on_done(ray.get(ref))
                except Exception as e:  # the task's worker died
                    msg = f"ray task failed: {type(e).__name__}: {e}"
                    atomic_write(Path(run.out) / "error.txt", f"run {run.id}\n{msg}\n")
                    on_done({"id": run.id, "status": "failed", "seconds": 0.0, "error": msg})
    finally:
        ray.shutdown()


# ----------------------------------------------------------------------------- the sweep
def _write_status(sweep: Sweep, runs: list[SweepRun], done: set[str], failures: dict[str, str],
                  running: Iterable[str], finished: bool, locked: dict[str, dict[str, Any]] | None = None) -> None:
    locked = {k: v for k, v in (locked or {}).items() if k not in done}
    status = {
        "sweep": sweep.name, "out": str(sweep.out), "total": len(runs), "done": len(done),
        "running": sorted(running), "failed": len(failures),
        "remaining": len(runs) - len(done) - len(failures), "finished": finished,
        "failures": [{"id": k, "error": v, "error_file": str(Path(sweep.out) / k / "error.txt")}
                     for k, v in sorted(failures.items())],
        "locked": [{"id": k, "pid": v.get("pid"), "host": v.get("host"), "since": v.get("started"),
                    "lock_file": str(Path(sweep.out) / k / LOCK_FILE)} for k, v in sorted(locked.items())],
        "pid": os.getpid(),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write(Path(sweep.out) / STATUS_FILE, json.dumps(status, indent=2) + "\n")


class _Claimed:
    """The runs to execute, each claimed (its lock file) only when an executor takes it from the iterator;
    runs another live sweep holds, or that it finished meanwhile, are reported and left out."""

    def __init__(self, runs: list[SweepRun], claim: Callable[[SweepRun], bool]) -> None:
        self.runs, self.claim = runs, claim

    def __len__(self) -> int:
        return len(self.runs)

    def __iter__(self) -> Iterator[SweepRun]:
        return (r for r in self.runs if self.claim(r))


def run_sweep(sweep: Sweep, executor: str = "local", workers: int | None = None, address: str | None = None,
              cpus_per_run: float = 1.0, gpus_per_run: float | None = None, progress: Progress | None = None,
              ray_timeout: float = RAY_CONNECT_TIMEOUT, quiet: bool = False) -> dict[str, Any]:
    """Validate and expand ``sweep``, skip its complete runs and execute the others; returns the final status.

    The grid is checked against the registries first (:func:`~vlprompt.sweep.spec.validate_sweep`):
    nothing runs or is written when an entry is invalid. Each run is claimed with a lock file
    (``<run>/sweep.lock``, :mod:`vlprompt.sweep.lock`) just before it is executed and released when it
    ends, so several sweeps on one output folder share its runs; the runs another live sweep holds are
    listed under ``locked`` in the status. ``ray_timeout``: seconds to reach the Ray cluster.

    Example:
        >>> status = run_sweep(load_sweep("sweep.yaml"), executor="local", workers=2)
        >>> status["failures"], status["locked"]
        ([], [])
    """
    if executor not in ("local", "ray"):
        raise ConfigError(f"executor {executor!r}; expected local or ray")
    sweep.validate()
    runs = sweep.expand()
    out = Path(sweep.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "sweep_runs.json", json.dumps([asdict(r) for r in runs], indent=2, default=str) + "\n")
    done = {r.id for r in runs if is_complete(r)}
    todo = [r for r in runs if r.id not in done]
    for r in runs:  # a sweep killed after a run's results, before its release, left the lock of a finished run
        if r.id in done and (Path(r.out) / LOCK_FILE).exists():
            leftover = RunLock(r.out)
            if leftover.acquire().ok:  # stale: taken over, then removed; a live sweep's lock stays
                leftover.release()
    failures: dict[str, str] = {}
    running: set[str] = set()
    held: dict[str, RunLock] = {}
    locked: dict[str, dict[str, Any]] = {}
    prog = progress or Progress(total=len(runs), already_done=len(done), quiet=quiet)

    def status(finished: bool = False, now_running: Iterable[str] | None = None) -> None:
        _write_status(sweep, runs, done, failures, running if now_running is None else now_running, finished,
                      locked)

    def claim(run: SweepRun) -> bool:
        lock = RunLock(run.out)
        got = lock.acquire()
        if got.stale is not None:
            prog.note(f"{run.id}: took over the stale lock of a sweep that is gone ({describe(got.stale)})")
        if not got.ok:
            locked[run.id] = got.holder or {}
            prog.skip(run.id, f"being run by another sweep ({describe(locked[run.id])})")
            status()
            return False
        if is_complete(run):  # another sweep finished it after this one started
            lock.release()
            done.add(run.id)
            prog.skip(run.id, "completed by another sweep", complete=True)
            status()
            return False
        held[run.id] = lock
        return True

    def release(rid: str) -> None:
        lock = held.pop(rid, None)
        if lock is not None:
            lock.release()

    def on_start(rid: str) -> None:
        running.add(rid)
        prog.start(rid)
        status()

    def on_done(result: dict[str, Any]) -> None:
        rid = result["id"]
        running.discard(rid)
        if result["status"] == "done":
            done.add(rid)
        else:
            failures[rid] = result.get("error", "unknown error")
        release(rid)
        prog.finish(rid, result["status"] == "done", result.get("error"))
        status()

    status()
    claimed = _Claimed(todo, claim)
    try:
        if executor == "local":
            if workers is None:
                workers = gpu_count() or 1
            run_local(claimed, workers, on_start, on_done)
        else:
            run_ray(claimed, address, on_start, on_done, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run,
                    connect_timeout=ray_timeout, note=prog.note)
    except BaseException:
        status(now_running=())  # interrupted: nothing runs any more
        raise
    finally:
        for rid in list(held):  # interrupted runs: free for the next sweep (it resumes them)
            release(rid)
        prog.close()
    by_id = {r.id: r for r in runs}
    for rid in list(locked):  # finished by the other sweep while this one ran
        if is_complete(by_id[rid]):
            done.add(rid)
            del locked[rid]
    status(finished=True, now_running=())
    return json.loads((out / STATUS_FILE).read_text())


# ----------------------------------------------------------------------------- CLI
def build_sweep_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlprompt sweep", description="Run a declared grid of runs (resumable).")
    p.add_argument("sweep", help="sweep YAML file (see docs/sweeps.md)")
    p.add_argument("--executor", choices=["local", "ray"], default="local")
    p.add_argument("--workers", type=int, help="local worker processes (default: one per GPU, else 1)")
    p.add_argument("--address", help="Ray cluster address (default: auto = the cluster started on this machine)")
    p.add_argument("--ray-timeout", type=float, default=RAY_CONNECT_TIMEOUT, metavar="SECONDS",
                   help=f"Ray: give up connecting to the cluster after this long (default {RAY_CONNECT_TIMEOUT:g})")
    p.add_argument("--cpus-per-run", type=float, default=1.0, help="Ray: CPUs requested per run")
    p.add_argument("--gpus-per-run", type=float, help="Ray: GPUs per run (default: 1 if the cluster has GPUs)")
    p.add_argument("--out", help="output root (replaces the file's 'out')")
    p.add_argument("--data-root", help="data root (replaces the file's 'data_root')")
    p.add_argument("--weights", help="backbone weights (replaces the file's 'weights' / 'pretrained')")
    p.add_argument("--pretrained", metavar="TAG",
                   help="pretrained tag, e.g. openai (replaces the file's 'weights' / 'pretrained'; HF cache)")
    p.add_argument("--quick-gelu", action=argparse.BooleanOptionalAction, default=None,
                   help="force QuickGELU / GELU in the CLIP towers (replaces the file's 'quick_gelu')")
    p.add_argument("--dry-run", action="store_true",
                   help="check the file, list the runs and whether they are complete (done / todo / busy)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress output (the sweep's and its runs'); failures are still reported")
    return p


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _dry_run(sweep: Sweep) -> None:
    sweep.validate()
    for r in sweep.expand():
        if is_complete(r):
            print(f"done  {r.id}")
            continue
        holder = RunLock(r.out).holder() if (Path(r.out) / LOCK_FILE).exists() else None
        print(f"busy  {r.id}  (being run by {describe(holder)})" if holder else f"todo  {r.id}")


def sweep_main(argv: list[str] | None = None) -> int:
    """``vlprompt sweep SWEEP.yaml [--executor local|ray] [--workers N]``; exit 0 = all runs complete,
    1 = some runs failed, 2 = a user error, 3 = none failed but another sweep is running some,
    130 = interrupted (Ctrl-C / SIGTERM). The previous SIGTERM handler is restored on return."""
    args = build_sweep_parser().parse_args(argv)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    if main:
        signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill PID` stops the workers too
    try:
        with quiet_if(args.quiet):
            return _sweep_main(args)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _sweep_main(args: argparse.Namespace) -> int:
    try:
        sweep = load_sweep(args.sweep, out=args.out, data_root=args.data_root, weights=args.weights,
                           pretrained=args.pretrained, quick_gelu=args.quick_gelu)
        if args.dry_run:
            _dry_run(sweep)
            return 0
        status = run_sweep(sweep, executor=args.executor, workers=args.workers, address=args.address,
                           cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run,
                           ray_timeout=args.ray_timeout, quiet=args.quiet)
    except VlpromptError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sweep interrupted; run the same command again to finish the missing runs", file=sys.stderr)
        return 130
    print(f"sweep {sweep.name}: {status['done']}/{status['total']} complete, {status['failed']} failed "
          f"-> {Path(sweep.out) / STATUS_FILE}", file=sys.stderr)
    if status["locked"]:
        owners = sorted({f"pid {x['pid']} on host {x['host']}" for x in status["locked"]})
        print(f"{len(status['locked'])} runs are being run by another sweep ({'; '.join(owners)}): run the same "
              f"command again when it has finished; if that sweep is dead (another host's locks cannot be "
              f"checked from here), delete the runs' {LOCK_FILE} files listed under 'locked' in "
              f"{Path(sweep.out) / STATUS_FILE}", file=sys.stderr)
    if status["failed"]:
        return 1
    return EXIT_LOCKED if status["locked"] else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(sweep_main())
