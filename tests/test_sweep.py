"""Sweeps: grid expansion and ids, a local 2-worker sweep with a failing run, kill + restart, Ray."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from vlprompt.data import make_image_folder
from vlprompt.errors import ConfigError
from vlprompt.sweep import Progress, is_complete, load_sweep, parse_sweep, run_id, sweep_main

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_expansion_is_deterministic_with_readable_ids(tmp_path):
    data = {
        "methods": ["zeroshot", {"name": "coop", "options": {"n_ctx": 2}}],
        "datasets": ["eurosat", "imagefolder@/data/shapes", {"name": "imagefolder", "root": "/x/y", "label": "yy"}],
        "protocol": "all", "shots": [1, 16], "seeds": [1, 2], "presets": [None, "dept"],
        "overrides": {"train": {"epochs": 1}}, "data_root": "/data", "out": str(tmp_path / "out"),
    }
    a, b = parse_sweep(data).expand(), parse_sweep(json.loads(json.dumps(data))).expand()
    assert [r.id for r in a] == [r.id for r in b]
    # protocols × datasets × seeds × presets × (coop: 2 shot counts + zeroshot: one run for both)
    assert len(a) == 2 * 3 * 2 * 2 * (2 + 1) and len({r.id for r in a}) == len(a)
    first = a[0]
    assert first.id == run_id("base2new", "zeroshot", "eurosat", 1, 1, None, {}, {"epochs": 1})
    assert first.id.startswith("base2new/zeroshot/eurosat/shots1/seed1-") and len(first.id.split("-")[-1]) == 8
    assert first.root == "/data" and first.out == str(tmp_path / "out" / first.id)
    ids = {r.id for r in a}
    assert any(i.startswith("few-shot/coop/imagefolder-shapes/shots16/seed2-dept-") for i in ids)
    by_label = {r.dataset_label: r.root for r in a}
    assert by_label == {"eurosat": "/data", "imagefolder-shapes": "/data/shapes", "yy": "/x/y"}
    assert run_id("few-shot", "coop", "dtd", 16, 3) == "few-shot/coop/dtd/shots16/seed3"
    assert run_id("few-shot", "coop", "dtd", 16, 3, "paper") == "few-shot/coop/dtd/shots16/seed3-paper"
    # the option hash follows the options, not their order
    h1 = run_id("few-shot", "coop", "dtd", 4, 1, None, {"n_ctx": 4, "csc": True}, {"lr": 0.1})
    h2 = run_id("few-shot", "coop", "dtd", 4, 1, None, {"csc": True, "n_ctx": 4}, {"lr": 0.1})
    h3 = run_id("few-shot", "coop", "dtd", 4, 1, None, {"n_ctx": 8, "csc": True}, {"lr": 0.1})
    assert h1 == h2 != h3
    # a list of overrides is a grid axis
    two = parse_sweep({**data, "overrides": [{"train": {"lr": 0.1}}, {"train": {"lr": 0.2}}]}).expand()
    assert len(two) == 2 * len(a)


def test_zeroshot_runs_once_per_configuration_not_once_per_shot_count(tmp_path):
    """Before: zero-shot ran (identically) once per entry of `shots`."""
    from vlprompt.sweep.spec import config_fingerprint

    sweep = parse_sweep({"methods": ["zeroshot", "linear-probe", "coop"], "datasets": ["tiny/shapes"],
                         "shots": [1, 4, 16], "seeds": [1, 2], "out": str(tmp_path / "o"), "cache_dir": "/c",
                         "overrides": {"train": {"epochs": 1, "log_to": ["tensorboard"]}}})
    runs = sweep.expand()
    by = {m: [(r.shots, r.seed) for r in runs if r.method == m] for m in ("zeroshot", "linear-probe", "coop")}
    assert by["zeroshot"] == [(1, 1), (1, 2)]  # the first shot count stands for all; seeds stay
    assert by["linear-probe"] == by["coop"] == [(k, s) for k in (1, 4, 16) for s in (1, 2)]
    zs = runs[0]
    assert zs.id == run_id("few-shot", "zeroshot", "tiny/shapes", 1, 1, None, {}, {"epochs": 1})  # ids as before
    assert config_fingerprint(zs) == config_fingerprint(dataclasses.replace(zs, shots=16, id="x", out="y",
                                                                            cache_dir="/other"))
    assert config_fingerprint(zs) != config_fingerprint(dataclasses.replace(zs, seed=2))
    assert config_fingerprint(zs) != config_fingerprint(dataclasses.replace(zs, method_options={"ensemble": True}))
    lp = next(r for r in runs if r.method == "linear-probe")
    assert config_fingerprint(lp) != config_fingerprint(dataclasses.replace(lp, shots=16))
    two = parse_sweep({"methods": ["zeroshot"], "datasets": ["tiny/shapes"], "shots": [1, 16],
                       "overrides": [{"method": {"ensemble": False}}, {"method": {"ensemble": True}}]}).expand()
    assert len(two) == 2  # different options: different configurations


def test_sweep_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown keys"):
        parse_sweep({"methods": ["coop"], "datasets": ["dtd"], "sed": [1]})
    with pytest.raises(ConfigError, match="protocol"):
        parse_sweep({"methods": ["coop"], "datasets": ["dtd"], "protocol": "b2n"})
    with pytest.raises(ConfigError, match="duplicate run ids"):
        parse_sweep({"methods": ["coop"], "datasets": ["imagefolder@/a/s", "imagefolder@/b/s"]}).expand()
    with pytest.raises(ConfigError, match="no root"):
        parse_sweep({"methods": ["coop"], "datasets": ["dtd"]}).expand()
    with pytest.raises(ConfigError, match="not found"):
        load_sweep(tmp_path / "nope.yaml")
    (tmp_path / "s.yaml").write_text("methods: [coop]\ndatasets: [dtd]\ndata_root: data\nout: o\n")
    sw = load_sweep(tmp_path / "s.yaml", out=str(tmp_path / "cli_out"))
    assert sw.data_root == str(tmp_path / "data") and sw.out == str(tmp_path / "cli_out")  # file-relative / CLI
    assert sweep_main([str(tmp_path / "nope.yaml")]) == 2


def test_progress_lines():
    import io

    s = io.StringIO()
    p = Progress(total=3, already_done=1, stream=s)
    p.start("a")
    p.finish("a", True)
    p.start("b")
    p.finish("b", False, "ValueError: boom\nmore")
    p.close()
    lines = s.getvalue().splitlines()
    assert lines[0].endswith("1 complete runs skipped")
    assert "2/3 done, 0 running, 1 failed, 0 remaining" in lines[-1]
    assert lines[-1].endswith("FAILED b: ValueError: boom")
    assert "1/3 done, 1 running, 0 failed, 2 remaining, ETA ?" in lines[1]


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory):
    """2 methods × 3 generated datasets (+ 1 missing) × 2 seeds, base-to-new, 1 epoch."""
    root = tmp_path_factory.mktemp("sweepdata")
    for i, name in enumerate(("alpha", "beta", "gamma")):
        make_image_folder(root / name, n_train=4, n_val=0, n_test=4, size=32, seed=i)
    data = {
        "methods": ["zeroshot", {"name": "coop", "options": {"n_ctx": 2}}],
        "datasets": [f"imagefolder@{root / n}" for n in ("alpha", "beta", "gamma")]
        + [{"name": "imagefolder", "root": str(root / "missing"), "label": "broken"}],
        "protocol": "base2new", "shots": [2], "seeds": [1, 2],
        "overrides": {"train": {"epochs": 1, "batch_size": 4}},
        "out": "out",
    }
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _results(out: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(out)): json.loads(p.read_text()) for p in out.rglob("results.json")}


@pytest.fixture(scope="module")
def local_sweep(sweep_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "out"
    rc = sweep_main([str(sweep_file), "--executor", "local", "--workers", "2", "--out", str(out)])
    return rc, out


def test_local_sweep_records_failures_and_finishes_the_rest(local_sweep, sweep_file):
    rc, out = local_sweep
    assert rc == 1  # some runs failed
    status = json.loads((out / "sweep_status.json").read_text())
    assert status["total"] == 16 and status["done"] == 12 and status["failed"] == 4 and status["finished"]
    assert {f["id"].split("/")[2] for f in status["failures"]} == {"broken"}
    for f in status["failures"]:
        err = (out / f["id"] / "error.txt").read_text()
        assert "DatasetError" in err and "missing" in err
    res = _results(out)
    assert len(res) == 12
    for rid, r in res.items():
        assert r["sweep"]["id"] == rid and r["seed"] == int(rid.split("seed")[1][0])
        assert {"acc", "base_acc", "new_acc", "hm"} <= set(r) and r["dataset"] == "imagefolder"
    # a second invocation re-runs nothing complete (only the failing runs are retried)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("results.json")}
    sweep = load_sweep(sweep_file, out=str(out))
    assert sum(is_complete(r) for r in sweep.expand()) == 12
    assert sweep_main([str(sweep_file), "--workers", "1", "--out", str(out)]) == 1
    assert {p: p.stat().st_mtime_ns for p in out.rglob("results.json")} == mtimes


def test_killed_sweep_restarts_without_rerunning_finished_runs(sweep_file, tmp_path):
    good = yaml.safe_load(sweep_file.read_text())
    good["datasets"] = good["datasets"][:3]
    good["overrides"] = {"train": {"epochs": 3, "batch_size": 4}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(good))
    out = tmp_path / "out"
    code = "import sys; from vlprompt.sweep import sweep_main; sys.exit(sweep_main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", code, str(path), "--executor", "local", "--workers", "2"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    runs = load_sweep(path).expand()
    deadline = time.time() + 90
    try:
        while time.time() < deadline and not any(is_complete(r) for r in runs):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its workers, as a crash or `kill -9` would
        proc.wait()
    finished = {Path(r.out) / "results.json": (Path(r.out) / "results.json").stat().st_mtime_ns
                for r in runs if is_complete(r)}
    assert 1 <= len(finished) < len(runs)
    stale = [r.id for r in runs if (Path(r.out) / "sweep.lock").exists()]  # SIGKILL leaves the claims behind
    assert stale
    assert sweep_main([str(path), "--executor", "local", "--workers", "2"]) == 0
    assert all(is_complete(r) for r in runs) and not list(out.rglob("sweep.lock*"))  # taken over, released
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    status = json.loads((out / "sweep_status.json").read_text())
    assert status["done"] == len(runs) == 12 and status["failures"] == []


def test_ray_executor_on_a_local_cluster_matches_local(local_sweep, sweep_file, tmp_path):
    pytest.importorskip("ray")
    ray_bin = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    if not Path(ray_bin).exists():
        pytest.skip("ray CLI not found")
    _, local_out = local_sweep
    port = 26000 + os.getpid() % 2000
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
           "RAY_USAGE_STATS_ENABLED": "0"}
    start = [ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
             "--include-dashboard=false", "--disable-usage-stats"]
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=120)
    try:
        out = tmp_path / "ray_out"
        rc = sweep_main([str(sweep_file), "--executor", "ray", "--address", f"127.0.0.1:{port}",
                         "--out", str(out)])
    finally:
        subprocess.run([ray_bin, "stop"], env=env, capture_output=True, timeout=120)
    assert rc == 1
    status = json.loads((out / "sweep_status.json").read_text())
    assert status["done"] == 12 and status["failed"] == 4
    local, remote = _results(local_out), _results(out)
    assert set(local) == set(remote)
    for rid in local:
        for key in ("acc", "base_acc", "new_acc", "hm"):
            assert remote[rid][key] == pytest.approx(local[rid][key], abs=1e-9), (rid, key)
