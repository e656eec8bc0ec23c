"""Sweep robustness (issue 14): Ray connect timeout and SIGTERM, grid validation before anything runs,
typed numeric keys, SIGTERM handler restored, safe Unicode labels, run locks shared by two sweeps."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from vlprompt.errors import ConfigError
from vlprompt.sweep import is_complete, load_sweep, parse_sweep, sweep_main
from vlprompt.sweep.lock import LOCK_FILE, RunLock, lock_info
from vlprompt.sweep.spec import _safe, run_id

SRC = str(Path(__file__).resolve().parents[1] / "src")
CODE = "import sys; from vlprompt.sweep import sweep_main; sys.exit(sweep_main(sys.argv[1:]))"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
            "RAY_USAGE_STATS_ENABLED": "0"}


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def _locks(out: Path) -> list[Path]:
    return sorted(out.rglob(f"{LOCK_FILE}*"))


# ----------------------------------------------------------------------------- 1. Ray
def test_ray_unreachable_address_times_out_and_sigterm_stops_a_connecting_driver(tmp_path):
    """Before: `--address 127.0.0.1:1` retried for ever (killed after 100 s); SIGTERM took effect only when
    Ray's C++ retry returned (38 s), exit 15 without a message."""
    pytest.importorskip("ray")
    f = _write(tmp_path / "s.yaml", {"methods": ["zeroshot"], "datasets": ["tiny/shapes"], "shots": [1],
                                     "out": str(tmp_path / "out")})  # tiny/ needs no data_root
    base = [sys.executable, "-c", CODE, str(f), "--executor", "ray", "--address", "127.0.0.1:1"]
    err_a, err_b = tmp_path / "a.err", tmp_path / "b.err"
    with open(err_a, "w") as ea, open(err_b, "w") as eb:
        t0 = time.monotonic()
        a = subprocess.Popen(base + ["--ray-timeout", "3"], env=_env(), stdout=subprocess.DEVNULL, stderr=ea,
                             start_new_session=True)
        b = subprocess.Popen(base + ["--ray-timeout", "600"], env=_env(), stdout=subprocess.DEVNULL, stderr=eb,
                             start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while "connecting to the Ray cluster" not in err_b.read_text():
                assert b.poll() is None and time.monotonic() < deadline, err_b.read_text()[-2000:]
                time.sleep(0.1)
            time.sleep(2.0)  # inside ray.init, retrying the GCS connection
            t_term = time.monotonic()
            b.send_signal(signal.SIGTERM)
            rc_b = b.wait(timeout=30)
            stopped_after = time.monotonic() - t_term
            rc_a = a.wait(timeout=120)
            a_seconds = time.monotonic() - t0
        finally:
            for p in (a, b):
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
    text_a, text_b = err_a.read_text(), err_b.read_text()
    assert rc_a == 2, text_a[-2000:]
    errors = [line for line in text_a.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "could not connect to the Ray cluster at 127.0.0.1:1 within 3 s" in errors[0]
    assert "--ray-timeout" in errors[0] and "Traceback" not in text_a
    assert a_seconds < 110
    assert rc_b == 130 and stopped_after < 15, (rc_b, stopped_after, text_b[-2000:])
    assert "sweep interrupted" in text_b
    print(f"timeout run: {a_seconds:.1f} s in all; SIGTERM -> exit after {stopped_after:.2f} s")


class _FakeRay:
    """Enough of ``ray`` for run_ray: tasks never finish; ``wait`` must be bounded."""

    def __init__(self, lock_paths):
        self.events, self.lock_paths, self.locked_during_wait = [], lock_paths, []

    def init(self, **kwargs):
        self.events.append(("init", threading.current_thread() is threading.main_thread()))

    def cluster_resources(self):
        return {}

    def remote(self, **options):
        def decorate(fn):
            class Remote:
                @staticmethod
                def remote(run):
                    return ("ref", run.id)
            return Remote
        return decorate

    def wait(self, refs, num_returns=1, timeout=None):
        assert timeout is not None and timeout <= 5, "ray.wait without a timeout blocks SIGTERM"
        self.locked_during_wait.append([p.exists() for p in self.lock_paths])
        time.sleep(timeout)
        return [], refs

    def get(self, ref):  # pragma: no cover - nothing finishes
        raise AssertionError

    def shutdown(self):
        self.events.append("shutdown")


def test_sigterm_stops_a_driver_waiting_on_ray_tasks_and_frees_its_locks(tmp_path, monkeypatch):
    f = _write(tmp_path / "s.yaml", {"methods": ["zeroshot"], "datasets": ["tiny/shapes"], "seeds": [1, 2],
                                     "out": str(tmp_path / "out")})
    runs = load_sweep(f).expand()
    fake = _FakeRay([Path(r.out) / LOCK_FILE for r in runs])
    monkeypatch.setitem(sys.modules, "ray", fake)
    from vlprompt.sweep import run as run_mod

    monkeypatch.setattr(run_mod, "_probe_ray", lambda address, timeout: None)  # no real cluster to probe

    def mine(signum, frame):  # pragma: no cover - never called
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM))
        t0 = time.monotonic()
        timer.start()
        rc = sweep_main([str(f), "--executor", "ray"])
        elapsed = time.monotonic() - t0
        timer.cancel()
        assert signal.getsignal(signal.SIGTERM) is mine  # restored
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert rc == 130 and elapsed < 6
    assert fake.events[0] == ("init", False) and fake.events[-1] == "shutdown"  # init off the main thread
    assert fake.locked_during_wait and all(all(x) for x in fake.locked_during_wait)  # both runs were claimed
    assert _locks(tmp_path / "out") == []  # interrupted runs are free for the next sweep
    status = json.loads((tmp_path / "out" / "sweep_status.json").read_text())
    assert status["running"] == [] and not status["finished"]


# ----------------------------------------------------------------------------- 2. grid validation
def test_invalid_grid_entries_fail_before_anything_runs(tmp_path, capsys):
    """Before: --dry-run listed them as todo (exit 0); the real run failed each run (exit 1)."""
    out = tmp_path / "out"
    f = _write(tmp_path / "bad.yaml", {
        "methods": ["coopp", "coop+deptt", {"name": "coop", "options": {"nctx": 4, "n_ctx": "four"}},
                    {"name": "coop+dept", "options": {"dept_weight": "high"}}],
        "datasets": ["eurosatt", "tiny/shapes", "dtd"], "presets": [None, "nosuch"],
        "overrides": {"train": {"epochs": "ten", "log_to": ["tensorbord"]}}, "out": str(out)})
    for argv in ([str(f), "--dry-run"], [str(f)]):
        assert sweep_main(argv) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.startswith("error: sweep 'sweep': 10 invalid entries")
        err = captured.err
        for needle in ("'coopp': unknown method 'coopp' (did you mean 'coop'?)",
                       "'coop+deptt': unknown plug-in(s) ['deptt']",
                       "unknown option 'nctx' (did you mean 'n_ctx'?)",
                       "option n_ctx = 'four' (a string); expected int",
                       "option dept_weight = 'high' (a string); expected float",
                       "'eurosatt': unknown dataset (did you mean 'eurosat'",
                       "datasets: 'dtd' has no root",
                       "no preset 'nosuch' for method 'coop'",
                       "overrides.train: option epochs = 'ten' (a string); expected int",
                       "unknown logger 'tensorbord'"):
            assert needle in err, needle
        assert err.count("error:") == 1 and "tiny/shapes" not in err and "Traceback" not in err
    assert not out.exists()  # nothing written
    # the same grid with valid entries: tiny/ tasks need no data_root, plug-in options typed
    good = _write(tmp_path / "good.yaml", {
        "methods": ["zeroshot", {"name": "coop+dept", "options": {"n_ctx": 4, "dept_weight": 1}}],
        "datasets": ["tiny/shapes"], "presets": ["dept"], "out": str(out)})
    assert sweep_main([str(good), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.startswith("todo  few-shot/") for line in lines)
    assert {r.root for r in load_sweep(good).expand()} == {""}
    with pytest.raises(ConfigError, match="tiny suite has no task group 'nope'"):
        parse_sweep({"methods": ["softcpt-nata"], "datasets": ["tiny-group/nope", "tiny/shapes,tiny/dots"],
                     "protocol": "multitask"}).validate()
    with pytest.raises(ConfigError, match="2 invalid entries"):
        parse_sweep({"methods": ["softcpt-nata"], "datasets": ["tiny-group/nope", "tiny/shapes,tiny/dots"],
                     "protocol": "multitask"}).validate()


# ----------------------------------------------------------------------------- 3. typed numeric keys
@pytest.mark.parametrize("extra,needle", [
    ({"seeds": "one"}, "'seeds' must be an integer or a list of them; got 'one' (a string)"),
    ({"seeds": [1.5]}, "'seeds' must be an integer or a list of them; got 1.5 (a number) in [1.5]"),
    ({"seeds": [True]}, "'seeds' must be an integer or a list of them; got True (a boolean)"),
    ({"shots": [True]}, "'shots' must be a positive integer, 'all' or a list of them; got True (a boolean)"),
    ({"shots": [0]}, "'shots' must be a positive integer, 'all' or a list of them; got 0 (an integer)"),
    ({"shots": "16"}, "'shots' must be a positive integer, 'all' or a list of them; got '16' (a string)"),
    ({"protocol": "vtab", "lrs": [True]}, "'lrs' must be a number >= 0 or a list of them; got True (a boolean)"),
    ({"protocol": "vtab", "wds": ["x"]}, "'wds' must be a number >= 0 or a list of them; got 'x' (a string)"),
    ({"protocol": "vtab", "prune": {"token_levels": [True]}}, "'prune.token_levels' must be a number"),
    ({"protocol": "vtab", "prune": {"min_tokens": 1.5}}, "'prune.min_tokens' must be an integer; got 1.5"),
    ({"trust_checkpoint": "yes"}, "'trust_checkpoint' must be true or false; got 'yes' (a string)"),
    ({"protocol": "vtab", "scale_lr": 1}, "'scale_lr' must be true or false; got 1 (an integer)"),
    ({"methods": [{"name": "coop", "options": 4}]}, "'options' must be a mapping"),
])
def test_numeric_keys_must_have_their_type(extra, needle):
    """Before: `seeds: one` was a ValueError traceback; `seeds: [1.5]` became seed 1, `shots: [true]` 1 shot."""
    data = {"methods": ["coop"], "datasets": ["tiny/shapes"], **extra}
    if extra.get("protocol") == "vtab":
        data["datasets"] = ["tiny/vtab_eurosat"]
    with pytest.raises(ConfigError) as e:
        parse_sweep(data)
    assert needle in str(e.value)


def test_typed_keys_keep_the_values_that_worked(tmp_path, capsys):
    sw = parse_sweep({"methods": ["vpt-deep"], "datasets": ["tiny/vtab_eurosat"], "protocol": "vtab",
                      "lrs": ["1e-3", 1, 0.5], "wds": 0, "seeds": 7, "prune": {"min_tokens": 2}})
    assert sw.lrs == [0.001, 1.0, 0.5] and sw.wds == [0.0] and sw.seeds == [7]  # PyYAML reads 1e-3 as a string
    assert parse_sweep({"methods": ["coop"], "datasets": ["tiny/shapes"], "shots": ["all", 4]}).shots == [None, 4]
    f = _write(tmp_path / "s.yaml", {"methods": ["coop"], "datasets": ["tiny/shapes"], "seeds": [1.5]})
    assert sweep_main([str(f), "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("error: sweep: 'seeds' must be an integer")


# ----------------------------------------------------------------------------- 4. small
def test_sweep_main_restores_the_previous_sigterm_handler(tmp_path):
    """Before: sweep_main left its own handler installed for the rest of the process."""
    f = _write(tmp_path / "s.yaml", {"methods": ["zeroshot"], "datasets": ["tiny/shapes"],
                                     "out": str(tmp_path / "o")})

    def mine(signum, frame):  # pragma: no cover - never called
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        assert sweep_main([str(f), "--dry-run"]) == 0
        assert signal.getsignal(signal.SIGTERM) is mine
        assert sweep_main([str(tmp_path / "missing.yaml")]) == 2
        assert signal.getsignal(signal.SIGTERM) is mine
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        assert sweep_main([str(f), "--dry-run"]) == 0
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_labels_are_safe_path_components_and_keep_unicode(tmp_path):
    """Before: label '..' gave the run dir <out>/few-shot/coop/../shots1 (outside its dataset folder);
    'формы ü 空 x' and 'x' both became 'x'."""
    assert _safe("..") == _safe(".") == _safe("...") == "_"
    assert _safe("формы ü 空 x") == "формы_ü_空_x" and _safe("u\u0308ber") == _safe("über") == "über"  # NFC
    assert _safe("हिन्दी") == "हिन्दी"  # combining vowel signs stay with their letters
    # ASCII names are cleaned exactly as before (existing run ids do not change)
    old = re.compile(r"[^A-Za-z0-9_.+=-]+")
    for s in ("tiny/shapes", "a b,c", "__x__", "imagefolder-my photos", "e=1.5+x", "a_ b", "\t", ".x", "a..b"):
        assert _safe(s) == (old.sub("_", s).strip("_") or "_"), s
    long = _safe("ü" * 300)
    assert len(long.encode()) <= 255 and long != _safe("ü" * 299)
    for s in ("..", "формы ü 空 x", "ü" * 300, "a_ b", "__x__"):
        assert _safe(_safe(s)) == _safe(s)  # labels are cleaned, then run ids clean them again
    out = tmp_path / "out"
    sw = parse_sweep({"methods": ["coop"], "out": str(out), "shots": [1],
                      "datasets": [{"name": "tiny/shapes", "label": ".."}, {"name": "tiny/shapes", "label": "x"},
                                   {"name": "tiny/colours", "label": "формы ü 空 x"}]})
    runs = sw.expand()
    assert [r.dataset_label for r in runs] == ["_", "x", "формы_ü_空_x"]
    assert runs[0].id == run_id("few-shot", "coop", "..", 1, 1) == "few-shot/coop/_/shots1/seed1"
    for r in runs:
        path = Path(r.out)
        path.mkdir(parents=True)
        assert path.resolve().relative_to(out.resolve()).parts[:3] == ("few-shot", "coop", r.dataset_label)


# ----------------------------------------------------------------------------- 5. run locks
@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    from vlprompt.data.tiny.suite import generate_suite

    return generate_suite(tmp_path_factory.mktemp("suite") / "tiny-suite", tasks=["shapes"])


def _zeroshot_file(tmp_path: Path, suite: Path, cache_dir: str, seeds: list[int]) -> Path:
    return _write(tmp_path / "zs.yaml", {"methods": ["zeroshot"], "datasets": ["tiny/shapes"], "shots": [1],
                                          "seeds": seeds, "data_root": str(suite), "cache_dir": cache_dir,
                                          "out": str(tmp_path / "out")})


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_runs_locked_by_a_live_sweep_are_skipped_and_stale_locks_taken_over(suite, cache_dir, tmp_path, capsys,
                                                                            in_process):
    f = _zeroshot_file(tmp_path, suite, cache_dir, [1, 2, 3])
    r1, r2, r3 = load_sweep(f).expand()
    live = {**lock_info(), "pid": os.getppid(), "pid_start": None, "token": "other"}  # another live sweep
    foreign = {**lock_info(), "host": "elsewhere.example", "pid": 1, "token": "far"}
    for run, info in ((r2, live), (r3, foreign)):
        Path(run.out).mkdir(parents=True)
        (Path(run.out) / LOCK_FILE).write_text(json.dumps(info))
    assert sweep_main([str(f), "--dry-run"]) == 0
    dry = capsys.readouterr().out.splitlines()
    assert dry[0] == f"todo  {r1.id}" and dry[1].startswith(f"busy  {r2.id}  (being run by pid {os.getppid()} on")
    assert dry[2].startswith(f"busy  {r3.id}  (being run by pid 1 on host elsewhere.example")
    assert sweep_main([str(f)]) == 3  # nothing failed, but not all complete
    err = capsys.readouterr().err
    assert is_complete(r1) and not is_complete(r2) and not is_complete(r3)
    assert f"2 runs are being run by another sweep (pid 1 on host elsewhere.example; pid {os.getppid()} on host" in err
    assert f"skip {r2.id}: being run by another sweep (pid {os.getppid()}" in err
    assert json.loads((Path(r2.out) / LOCK_FILE).read_text()) == live  # respected, untouched
    status = json.loads((tmp_path / "out" / "sweep_status.json").read_text())
    assert [x["id"] for x in status["locked"]] == sorted([r2.id, r3.id]) and status["remaining"] == 2
    assert not (Path(r1.out) / LOCK_FILE).exists()  # released at the end of the run
    # the other sweep died (SIGKILL leaves its lock): a dead pid on this host is stale and taken over
    dead = {**live, "pid": _dead_pid()}
    (Path(r2.out) / LOCK_FILE).write_text(json.dumps(dead))
    (Path(r3.out) / LOCK_FILE).unlink()  # the manual fix for another host's dead sweep
    assert sweep_main([str(f)]) == 0
    err = capsys.readouterr().err
    assert f"{r2.id}: took over the stale lock of a sweep that is gone (pid {dead['pid']} on host" in err
    assert all(is_complete(r) for r in (r1, r2, r3)) and _locks(tmp_path / "out") == []
    # killed after a run's results, before its release: the finished run's stale lock is removed on the
    # next start; a live sweep's lock on a finished run stays
    (Path(r1.out) / LOCK_FILE).write_text(json.dumps({**live, "pid": _dead_pid()}))
    (Path(r2.out) / LOCK_FILE).write_text(json.dumps(live))
    assert sweep_main([str(f)]) == 0
    capsys.readouterr()
    assert _locks(tmp_path / "out") == [Path(r2.out) / LOCK_FILE]
    (Path(r2.out) / LOCK_FILE).unlink()
    # a failing run releases its lock too
    bad = _write(tmp_path / "bad.yaml", {"methods": ["zeroshot"], "shots": [1], "out": str(tmp_path / "out"),
                                         "datasets": [{"name": "imagefolder", "root": str(tmp_path / "no"),
                                                       "label": "broken"}]})
    assert sweep_main([str(bad)]) == 1
    assert _locks(tmp_path / "out") == []


def test_a_lock_is_never_seen_without_its_content(tmp_path, monkeypatch):
    """A sweep SIGKILLed between creating its lock and writing it used to leave an empty lock, which a
    restart within 30 s respected as live (the run was reported locked, exit 3). The lock now appears
    with its content in one step; a killed writer leaves only a draft, removed once it is old."""
    import vlprompt.sweep.lock as lockmod

    lock = RunLock(tmp_path / "run")
    seen = []
    real_link = os.link

    def spy_link(src, dst, *a, **k):
        seen.append(Path(src).read_text())  # the draft is complete before it becomes the lock
        return real_link(src, dst, *a, **k)

    monkeypatch.setattr(lockmod.os, "link", spy_link)
    assert lock.acquire().ok
    assert json.loads(seen[0]) == lock.read() and lock.read()["pid"] == os.getpid()
    lock.release()
    # the remains of a writer killed after writing its draft: an old draft goes, a fresh one stays
    old = tmp_path / "run" / ".sweep.lock.draft-999999-deadbeef"
    fresh = tmp_path / "run" / ".sweep.lock.draft-999998-cafecafe"
    for f in (old, fresh):
        f.write_text("{}")
    os.utime(old, (time.time() - 120, time.time() - 120))
    assert lock.acquire().ok
    assert not old.exists() and fresh.exists() and lock.read()["pid"] == os.getpid()
    lock.release()
    # a file system without hard links: exclusive create, then write
    def no_link(src, dst, *a, **k):
        raise PermissionError("hard links not supported")

    monkeypatch.setattr(lockmod.os, "link", no_link)
    assert lock.acquire().ok and lock.read()["pid"] == os.getpid()
    assert not RunLock(tmp_path / "run").acquire().ok  # held
    lock.release()
    assert [f.name for f in (tmp_path / "run").iterdir()] == [fresh.name]


def test_lock_takeover_is_atomic_and_release_keeps_foreign_locks(tmp_path):
    lock = RunLock(tmp_path / "run")
    assert lock.acquire().ok and not RunLock(tmp_path / "run").acquire().ok  # O_EXCL: one owner
    other = RunLock(tmp_path / "run")
    lock.path.write_text(json.dumps({**lock_info(), "pid": _dead_pid()}))  # owner died, pid gone
    got = other.acquire()
    assert got.ok and got.stale is not None and other.read()["token"] == other.info["token"]
    lock.release()  # not its lock any more: left alone
    assert other.read()["token"] == other.info["token"]
    other.release()
    assert not lock.path.exists() and _locks(tmp_path) == []
    lock.path.write_text("")  # a writer that crashed between create and write: stale once old
    assert not RunLock(tmp_path / "run").acquire().ok
    old = time.time() - 120
    os.utime(lock.path, (old, old))
    assert RunLock(tmp_path / "run").acquire().ok


def test_two_concurrent_sweeps_on_one_folder_run_disjoint_runs(suite, cache_dir, tmp_path):
    """Before: both sweeps ran every run."""
    seeds = list(range(1, 7))
    f = _zeroshot_file(tmp_path, suite, cache_dir, seeds)
    runs = load_sweep(f).expand()
    errs = [tmp_path / f"{i}.err" for i in range(2)]
    procs = []
    for e in errs:
        with open(e, "w") as fh:
            procs.append(subprocess.Popen([sys.executable, "-c", CODE, str(f), "--workers", "1"], env=_env(),
                                          stdout=subprocess.DEVNULL, stderr=fh, start_new_session=True))
    try:
        rcs = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    started = [set(re.findall(r"\| start (\S+)", e.read_text())) for e in errs]
    assert all(rc in (0, 3) for rc in rcs), [e.read_text()[-2000:] for e in errs]
    assert not started[0] & started[1], started
    assert started[0] | started[1] == {r.id for r in runs}
    assert all(is_complete(r) for r in runs) and _locks(tmp_path / "out") == []
    print(f"runs per sweep: {[len(s) for s in started]}, exit codes {rcs}")
