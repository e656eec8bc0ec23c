"""Robustness of the run directory's files (issue 14): kills between writes, truncated or corrupt
checkpoints, prompt files and feature-cache files, read-only folders and full disks, leftover temp
files, tampered prompt descriptions and non-finite prompts. CPU only, tiny-clip, a few seconds each."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import vlprompt as vp
from vlprompt.cli import main
from vlprompt.engine import run as run_mod
from vlprompt.engine.features import FeatureCache
from vlprompt.engine.run import RunDir, atomic_write
from vlprompt.errors import CheckpointError, OutputError, VlpromptError

TRAIN = {"epochs": 4, "lr": 0.002, "batch_size": 4, "precision": "fp32", "feature_views": 2}


class Killed(Exception):
    """Stands for SIGKILL: raised where the process would die."""


def _task(root):
    return vp.load_dataset("imagefolder", root, shots=4, seed=1)


def _train(tiny_bb, root, cache_dir, run_dir, on_epoch_end=None, **kw):
    vp.seed_everything(1)
    model = vp.build_method("coop", tiny_bb, _task(root).classnames, n_ctx=4)
    return vp.fit(model, _task(root), run_dir=str(run_dir), on_epoch_end=on_epoch_end, cache_dir=cache_dir,
                  **TRAIN, **kw)


def _train_killed_after(killed_epoch, tiny_bb, root, cache_dir, run_dir):
    """Train until the end of epoch ``killed_epoch`` (its checkpoint written), then die."""

    def kill(epoch, _):
        if epoch == killed_epoch:
            raise Killed

    with pytest.raises(Killed):
        _train(tiny_bb, root, cache_dir, run_dir, on_epoch_end=kill)


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _same_prompt(a, b):
    ta, tb = load_file(str(a / "prompt.safetensors")), load_file(str(b / "prompt.safetensors"))
    return set(ta) == set(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)


def _temps(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*.tmp*"))


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture(scope="module")
def full_run(tiny_bb, shapes_root, cache_dir, tmp_path_factory):
    """An uninterrupted run: the reference every interrupted one must equal."""
    out = tmp_path_factory.mktemp("full") / "run"
    res = _train(tiny_bb, shapes_root, cache_dir, out)
    return out, res


def _assert_equals_full(run_dir, res, full_run):
    full_dir, full = full_run
    for key in ("acc", "final_loss", "trainable_params", "n_test"):
        assert res[key] == full[key], key
    assert json.loads((run_dir / "results.json").read_text())["final_loss"] == full["final_loss"]
    assert [(r["epoch"], r["loss"]) for r in _rows(run_dir)] == [(r["epoch"], r["loss"]) for r in _rows(full_dir)]
    assert _same_prompt(run_dir, full_dir)


# ------------------------------------------------------------------ 1. checkpoint + metrics: one unit
@pytest.mark.parametrize("killed_epoch", [1, TRAIN["epochs"] - 1])
def test_kill_between_checkpoint_and_metrics_write(killed_epoch, tiny_bb, shapes_root, cache_dir, tmp_path,
                                                   full_run, monkeypatch):
    out = tmp_path / "run"
    real = RunDir.write_metrics

    def die_after_checkpoint(self, rows):
        if len(rows) == killed_epoch + 1:  # the checkpoint of killed_epoch is on disk, its row is not
            raise Killed
        real(self, rows)

    monkeypatch.setattr(RunDir, "write_metrics", die_after_checkpoint)
    with pytest.raises(Killed):
        _train(tiny_bb, shapes_root, cache_dir, out)
    monkeypatch.setattr(RunDir, "write_metrics", real)
    assert int(torch.load(out / "checkpoint" / "last.pt", weights_only=True)["epoch"]) == killed_epoch
    assert len(_rows(out)) == killed_epoch  # the window: metrics.jsonl lacks the checkpoint's row
    res = _train(tiny_bb, shapes_root, cache_dir, out)
    _assert_equals_full(out, res, full_run)
    assert len(_rows(out)) == TRAIN["epochs"]


def test_checkpoint_without_metrics_rows_still_resumes(tiny_bb, shapes_root, cache_dir, tmp_path, full_run):
    """Checkpoints written before they carried the metrics: the rows come from metrics.jsonl."""
    out = tmp_path / "run"
    _train_killed_after(1, tiny_bb, shapes_root, cache_dir, out)
    path = out / "checkpoint" / "last.pt"
    state = torch.load(path, weights_only=True)
    assert [r["epoch"] for r in state.pop("metrics")] == [0, 1]
    torch.save(state, path)
    _assert_equals_full(out, _train(tiny_bb, shapes_root, cache_dir, out), full_run)


# ------------------------------------------------------------------ 2. truncated / corrupt files
def test_truncated_last_checkpoint_falls_back_to_previous(tiny_bb, shapes_root, cache_dir, tmp_path, full_run,
                                                          caplog):
    out = tmp_path / "run"
    _train_killed_after(2, tiny_bb, shapes_root, cache_dir, out)
    assert int(torch.load(out / "checkpoint" / "prev.pt", weights_only=True)["epoch"]) == 1
    _truncate(out / "checkpoint" / "last.pt")
    with caplog.at_level(logging.WARNING, logger="vlprompt.engine.run"):
        res = _train(tiny_bb, shapes_root, cache_dir, out)
    _assert_equals_full(out, res, full_run)  # epoch 2 trained again from prev.pt: same numbers
    log = (out / "log.txt").read_text()
    assert "last.pt is unreadable" in log and "resuming from" in log and "(epoch 1)" in log
    assert any("last.pt is unreadable" in r.getMessage() for r in caplog.records)


def _cli_train(root, out, cache_dir, *extra):
    return main(["train", "--method", "coop", "--dataset", "imagefolder", "--root", str(root), "--shots", "4",
                 "--out", str(out), "--epochs", "2", "--batch-size", "4", "--lr", "0.002", "--cache-dir", cache_dir,
                 "-o", "n_ctx=4", *extra])


@pytest.fixture
def cli_run(shapes_root, cache_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli_train(shapes_root, out, cache_dir) == 0
    capsys.readouterr()
    return out


def test_no_usable_checkpoint_stops_with_the_restart_flag(cli_run, shapes_root, cache_dir, capsys):
    out = cli_run
    _truncate(out / "checkpoint" / "last.pt")
    (out / "checkpoint" / "prev.pt").write_bytes(b"")
    assert _cli_train(shapes_root, out, cache_dir) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert str(out / "checkpoint" / "last.pt") in err and str(out / "checkpoint" / "prev.pt") in err
    assert "--restart" in err
    with pytest.raises(CheckpointError, match="--restart"):
        RunDir(out).load_checkpoint()
    assert _cli_train(shapes_root, out, cache_dir, "--restart") == 0
    assert (out / "checkpoint" / "discarded" / "last.pt").exists()  # set aside, not deleted
    assert int(torch.load(out / "checkpoint" / "last.pt", weights_only=True)["epoch"]) == 1
    assert len(_rows(out)) == 2 and "restart: moved the checkpoint" in (out / "log.txt").read_text()


@pytest.mark.parametrize("name", ["prompt.safetensors", "prompt.json"])
def test_truncated_prompt_file_is_one_error(name, cli_run, shapes_root, cache_dir, capsys):
    out = cli_run
    original = (out / name).read_bytes()
    _truncate(out / name)
    image = next((shapes_root / "test").rglob("*.jpg"))
    for argv in (["eval", "--run", str(out), "--cache-dir", cache_dir], ["predict", "--run", str(out), str(image)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(out / name) in err and "unreadable" in err, err
    with pytest.raises(CheckpointError, match=name):
        vp.load_prompt(out)
    # the message's advice: re-running the train command rewrites the prompt from the final checkpoint
    assert _cli_train(shapes_root, out, cache_dir) == 0
    assert (out / name).read_bytes() == original
    assert main(["eval", "--run", str(out), "--cache-dir", cache_dir]) == 0


def test_corrupt_feature_cache_file_is_recomputed(tiny_bb, shapes_root, tmp_path, caplog):
    task = _task(shapes_root)
    a = FeatureCache(tiny_bb, "fp32", torch.device("cpu"), tmp_path).get(task.test, "test")
    (path,) = tmp_path.rglob("*.safetensors")
    for damage in (lambda p: _truncate(p), lambda p: save_file({"features": torch.zeros(2, 3)}, str(p))):
        damage(path)
        cache = FeatureCache(tiny_bb, "fp32", torch.device("cpu"), tmp_path)
        with caplog.at_level(logging.WARNING, logger="vlprompt.engine.features"):
            b = cache.get(task.test, "test")
        assert cache.computed == 1 and torch.equal(a, b)
        assert any("unreadable" in r.getMessage() and "recomputing" in r.getMessage() for r in caplog.records)
        caplog.clear()
        again = FeatureCache(tiny_bb, "fp32", torch.device("cpu"), tmp_path)
        assert torch.equal(again.get(task.test, "test"), a) and again.computed == 0  # rewritten good


# ------------------------------------------------------------------ 3. read-only folder, full disk
def _fail_fsync(monkeypatch, code):
    def fsync(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(run_mod.os, "fsync", fsync)


def test_full_disk_is_one_error_and_leaves_no_temp_file(tiny_bb, shapes_root, cache_dir, tmp_path, monkeypatch,
                                                        capsys):
    out = tmp_path / "run"
    _fail_fsync(monkeypatch, errno.ENOSPC)
    with pytest.raises(OutputError, match="no space left on device") as exc:
        _train(tiny_bb, shapes_root, cache_dir, out)
    assert str(out / "config.yaml") in str(exc.value)
    assert _temps(out) == []
    assert _cli_train(shapes_root, tmp_path / "cli", cache_dir) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write ") and "no space left on device" in err and err.count("\n") == 1


def test_full_disk_at_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")
    run.save_checkpoint({"epoch": 0, "fingerprint": "f", "model": {}, "optimizer": {}, "train_seconds": 0.0})
    _fail_fsync(monkeypatch, errno.ENOSPC)
    with pytest.raises(OutputError, match="no space left on device"):
        run.save_checkpoint({"epoch": 1, "fingerprint": "f", "model": {}, "optimizer": {}, "train_seconds": 1.0})
    with pytest.raises(OutputError, match="metrics.jsonl: no space left on device"):
        atomic_write(run.path / "metrics.jsonl", "{}\n")
    monkeypatch.undo()
    assert run.load_checkpoint()["epoch"] == 0 and _temps(run.path) == []


def test_read_only_folder_is_one_error(tiny_bb, shapes_root, cache_dir, tmp_path, monkeypatch, capsys):
    """Simulated (EROFS from ``open``), so it runs as root too."""
    out = tmp_path / "run"
    real_open = open

    def read_only_open(file, mode="r", *args, **kw):
        if any(c in mode for c in "wax+") and str(file).startswith(str(out)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real_open(file, mode, *args, **kw)

    monkeypatch.setattr(run_mod, "open", read_only_open, raising=False)
    with pytest.raises(OutputError, match="not writable") as exc:
        _train(tiny_bb, shapes_root, cache_dir, out)
    assert str(out) in str(exc.value)
    with pytest.raises(OutputError, match="read-only file system"):
        RunDir(out).log("hello")
    with pytest.raises(OutputError, match="not writable"):
        RunDir(out).save_checkpoint({"epoch": 0})
    assert _cli_train(shapes_root, out, cache_dir) == 2
    assert "not writable (read-only file system)" in capsys.readouterr().err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="chmod does not stop root")
def test_chmod_read_only_folder_is_one_error(shapes_root, cache_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert _cli_train(shapes_root, out, cache_dir) == 2
        assert "not writable (permission denied)" in capsys.readouterr().err
    finally:
        out.chmod(0o755)


def test_other_os_errors_keep_their_traceback(tmp_path, monkeypatch):
    _fail_fsync(monkeypatch, errno.EIO)
    with pytest.raises(OSError) as exc:
        atomic_write(tmp_path / "x.json", "{}")
    assert not isinstance(exc.value, VlpromptError) and exc.value.errno == errno.EIO
    assert _temps(tmp_path) == []


def test_unwritable_feature_cache_only_warns(tiny_bb, shapes_root, tmp_path, monkeypatch, caplog):
    from vlprompt.engine import features

    real_open = open

    def full_open(file, mode="r", *args, **kw):
        if "w" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return real_open(file, mode, *args, **kw)

    monkeypatch.setattr(features, "open", full_open, raising=False)
    task = _task(shapes_root)
    with caplog.at_level(logging.WARNING, logger="vlprompt.engine.features"):
        feats = FeatureCache(tiny_bb, "fp32", torch.device("cpu"), tmp_path).get(task.test, "test")
    assert feats.shape == (len(task.test), tiny_bb.embed_dim)
    assert any("no space left on device" in r.getMessage() for r in caplog.records)
    assert list(tmp_path.rglob("*.safetensors")) == [] and _temps(tmp_path) == []


# ------------------------------------------------------------------ 4. temp files
def test_failed_prompt_write_removes_its_temp_file(tiny_bb, tmp_path, monkeypatch):
    model = vp.build_method("coop", tiny_bb, ["a", "b"], n_ctx=4)
    _fail_fsync(monkeypatch, errno.ENOSPC)
    with pytest.raises(OutputError, match="prompt.safetensors"):
        vp.save_prompt(model, tmp_path / "prompt.safetensors")
    assert _temps(tmp_path) == [] and not (tmp_path / "prompt.safetensors").exists()


def test_leftover_temp_files_of_dead_writers_are_removed(tiny_bb, shapes_root, cache_dir, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint").mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # exits, never reaped until the end
    reused = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # alive, started late
    alive = os.getppid()
    stale = [out / f".metrics.jsonl.tmp{dead.pid}", out / "checkpoint" / f".last.pt.tmp{dead.pid}",
             out / ".prompt.safetensors.tmp", out / f".config.yaml.tmp{os.getpid()}",
             out / f".prompt.json.tmp{zombie.pid}", out / f".log.txt.tmp{reused.pid}"]
    kept = out / f".results.json.tmp{alive}"
    for p in [*stale, kept]:
        p.write_bytes(b"half")
    old = time.time() - 3600  # written an hour before the process now holding that pid started
    os.utime(out / f".log.txt.tmp{reused.pid}", (old, old))
    deadline = time.time() + 10
    while not Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
        assert time.time() < deadline
        time.sleep(0.05)
    try:
        _train(tiny_bb, shapes_root, cache_dir, out)
    finally:
        reused.kill()
        reused.wait()
        zombie.wait()
    assert _temps(out) == [kept.name]
    assert "removed leftover temp files" in (out / "log.txt").read_text()


# ------------------------------------------------------------------ 5. tampered prompt.json
def _tamper(run_dir, **config):
    meta = json.loads((run_dir / "prompt.json").read_text())
    meta["config"].update(config)
    text = json.dumps(meta).replace('"__raw__"', "1e9")
    (run_dir / "prompt.json").write_text(text)


@pytest.fixture
def no_big_allocation(monkeypatch):
    """Fail any factory call of more than 10M elements (a tampered size would allocate ~GBs)."""
    for name in ("randn", "empty", "zeros"):
        real = getattr(torch, name)

        def guarded(*size, _real=real, **kw):
            dims = size[0] if len(size) == 1 and isinstance(size[0], (tuple, list)) else size
            n = 1
            for d in dims:
                n *= int(d) if isinstance(d, (int, float)) else 1
            assert n <= 10_000_000, f"allocation of {n} elements"
            return _real(*size, **kw)

        monkeypatch.setattr(torch, name, guarded)


def test_tampered_n_ctx_float_fails_before_build(cli_run, cache_dir, monkeypatch, capsys):
    _tamper(cli_run, n_ctx="__raw__")  # n_ctx = 1e9 in the JSON: a float
    assert '"n_ctx": 1e9' in (cli_run / "prompt.json").read_text()

    def no_build(*a, **k):
        raise AssertionError("built a method from a tampered file")

    monkeypatch.setattr("vlprompt.prompt_io.build_method", no_build)
    with pytest.raises(CheckpointError, match=r"prompt.json: option n_ctx of coop expects int, got 1000000000.0"):
        vp.load_prompt(cli_run)
    assert main(["eval", "--run", str(cli_run), "--cache-dir", cache_dir]) == 2
    assert "n_ctx" in capsys.readouterr().err


def test_tampered_n_ctx_int_fails_without_allocating(cli_run, cache_dir, no_big_allocation, capsys):
    _tamper(cli_run, n_ctx=1_000_000_000)
    with pytest.raises(CheckpointError, match="does not fit the text context") as exc:
        vp.load_prompt(cli_run)
    assert "prompt.json" in str(exc.value) and "n_ctx=1000000000" in str(exc.value)
    assert main(["eval", "--run", str(cli_run), "--cache-dir", cache_dir]) == 2
    assert "does not fit the text context" in capsys.readouterr().err


def test_tampered_config_that_builds_other_shapes_names_the_tensor(cli_run):
    _tamper(cli_run, n_ctx=8)
    width = load_file(str(cli_run / "prompt.safetensors"))["ctx"].shape[1]
    with pytest.raises(CheckpointError, match=rf"tensor 'ctx' has shape \(4, {width}\).*builds \(8, {width}\)"):
        vp.load_prompt(cli_run)


@pytest.mark.parametrize("change", [{"csc": "yes"}, {"class_token_position": "left"}, {"ctx_init": 5}])
def test_tampered_config_types_are_refused(change, cli_run):
    _tamper(cli_run, **change)
    (key,) = change
    with pytest.raises(CheckpointError, match=f"prompt.json: option {key} of coop expects"):
        vp.load_prompt(cli_run)


def test_tampered_description_fields_are_refused(cli_run):
    meta = json.loads((cli_run / "prompt.json").read_text())
    for key, value, fragment in (("classnames", "abc", "'classnames' must be a list"),
                                 ("classnames", [], "non-empty"), ("method", "nope", "unknown method")):
        (cli_run / "prompt.json").write_text(json.dumps({**meta, key: value}))
        with pytest.raises(CheckpointError, match=fragment):
            vp.load_prompt(cli_run)


# ------------------------------------------------------------------ 6. non-finite prompts
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_prompt_is_refused(value, cli_run, cache_dir, capsys):
    path = cli_run / "prompt.safetensors"
    tensors = load_file(str(path))
    tensors["ctx"] = torch.full_like(tensors["ctx"], value)
    save_file(tensors, str(path), metadata={"method": "coop"})
    with pytest.raises(CheckpointError, match="tensor 'ctx' holds non-finite values"):
        vp.load_prompt(cli_run)
    assert main(["eval", "--run", str(cli_run), "--cache-dir", cache_dir]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "'ctx'" in err and "non-finite" in err
