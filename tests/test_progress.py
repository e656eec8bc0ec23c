"""Progress lines on stderr when it is not a terminal (nohup, Slurm, CI); ``--quiet`` silences them."""

from __future__ import annotations

import re

import pytest

from vlprompt import progress
from vlprompt.cli import main

EPOCH = re.compile(r"^\[vlprompt\] epoch (\d+)/(\d+) loss \d+\.\d{4} acc \d+\.\d lr \d\.\de[-+]\d\d "
                   r"\d+\.\d s/epoch ETA \d+s$")


def _train(root, out, cache_dir, *extra):
    return ["train", "--method", "coop", "--dataset", "imagefolder", "--root", str(root), "--shots", "4",
            "--out", str(out), "--epochs", "3", "--batch-size", "4", "--lr", "0.002", "--cache-dir", cache_dir,
            "-o", "n_ctx=2", "--precision", "fp32", *extra]


def _lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("[vlprompt]")]


def test_train_prints_one_line_per_epoch_without_a_terminal(shapes_root, cache_dir, tmp_path, capsys,
                                                            progress_lines):
    assert main(_train(shapes_root, tmp_path / "run", str(tmp_path / "fresh_cache"))) == 0
    captured = capsys.readouterr()
    lines = _lines(captured.err)
    epochs = [line for line in lines if EPOCH.match(line)]
    assert [EPOCH.match(line).group(1, 2) for line in epochs] == [("1", "3"), ("2", "3"), ("3", "3")], lines
    assert epochs[-1].endswith("ETA 0s")
    # the feature cache announces its first-use extraction; the run its start and end
    assert any("extracting image features" in line for line in lines), lines
    assert any(line.startswith(f"[vlprompt] run start {tmp_path / 'run'}") for line in lines), lines
    assert any(re.match(r"\[vlprompt\] run done .* acc \d+\.\d\d in \d+s$", line) for line in lines), lines
    assert "[vlprompt]" not in captured.out  # stdout keeps only the final JSON


def test_quiet_silences_progress(shapes_root, cache_dir, tmp_path, capsys, progress_lines):
    assert main(_train(shapes_root, tmp_path / "run", str(tmp_path / "c"), "--quiet")) == 0
    assert _lines(capsys.readouterr().err) == []
    assert not progress.quiet()  # --quiet ends with the command


def test_a_terminal_gets_bars_not_lines(shapes_root, cache_dir, tmp_path, capsys, progress_lines, monkeypatch):
    monkeypatch.setattr(progress, "_isatty", lambda: True)
    assert progress.bars_enabled() and not progress.lines_enabled()
    assert main(_train(shapes_root, tmp_path / "run", cache_dir)) == 0
    assert _lines(capsys.readouterr().err) == []


def test_protocol_runs_have_position_and_eta(shapes_root, cache_dir, tmp_path, capsys, progress_lines):
    argv = ["few-shot", "--method", "coop", "--datasets", "imagefolder", "--root", str(shapes_root),
            "--shots-list", "1", "2", "--seeds", "1", "--out", str(tmp_path / "fs"), "--epochs", "1",
            "--batch-size", "4", "--cache-dir", cache_dir, "-o", "n_ctx=2", "--precision", "fp32"]
    assert main(argv) == 0
    lines = _lines(capsys.readouterr().err)
    starts = [line for line in lines if " start " in line]
    dones = [line for line in lines if " done " in line]
    assert [s.split()[2] for s in starts] == ["1/2", "2/2"], lines
    assert re.search(r"run 1/2 done .* in \d+s ETA \d+s$", dones[0]), dones
    assert dones[1].endswith("ETA 0s"), dones
    # a second call reuses the finished runs and says so
    assert main(argv) == 0
    again = _lines(capsys.readouterr().err)
    assert [line.split()[2] for line in again if "skipped" in line] == ["1/2", "2/2"], again


def test_the_tiny_suite_announces_its_generation(tmp_path, capsys, progress_lines):
    from vlprompt.data.tiny import generate_suite

    generate_suite(tmp_path / "suite", tasks=["digits"])
    lines = _lines(capsys.readouterr().err)
    assert lines[0].startswith("[vlprompt] generating the tiny suite into"), lines
    assert re.match(r"\[vlprompt\] tiny suite ready in \d+\.\ds: ", lines[-1]), lines


def test_quiet_env_and_only_rank_zero(capsys, progress_lines, monkeypatch):
    progress.say("hello")
    assert capsys.readouterr().err == "[vlprompt] hello\n"
    monkeypatch.setenv("RANK", "1")
    progress.say("hello")
    assert capsys.readouterr().err == ""
    monkeypatch.delenv("RANK")
    with progress.quiet_if(True):
        progress.say("hello")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("seconds, text", [(0.4, "0s"), (59, "59s"), (61, "1m01s"), (3725, "1h02m")])
def test_duration(seconds, text):
    assert progress.duration(seconds) == text


def test_sweep_quiet_keeps_failures():
    import io

    from vlprompt.sweep.progress import Progress

    s = io.StringIO()
    p = Progress(total=2, stream=s, quiet=True)
    p.start("a")
    p.finish("a", True)
    p.note("connecting")
    p.start("b")
    p.finish("b", False, "ValueError: boom")
    p.close()
    assert s.getvalue().count("\n") == 1 and "FAILED b: ValueError: boom" in s.getvalue()


def test_a_protocol_plan_ends_with_the_protocol(capsys, progress_lines):
    """A plan lasts only while its protocol runs (CI once saw a single ``train`` print ``run 4/4 start``
    because a protocol earlier in the same process had left its plan behind)."""

    @progress.protocol
    def two_runs(fail: bool) -> None:
        progress.plan(2)
        progress.run_started("a")
        progress.run_finished("a")
        if fail:
            raise RuntimeError("boom")

    two_runs(False)
    with pytest.raises(RuntimeError):
        two_runs(True)
    capsys.readouterr()
    progress.run_started("single")
    progress.run_finished("single")
    assert _lines(capsys.readouterr().err)[0] == "[vlprompt] run start single"


def test_every_protocol_is_scoped():
    import importlib

    for name in ("base2new", "data_efficient", "few_shot", "multitask", "transfer", "vtab"):
        fn = getattr(importlib.import_module(f"vlprompt.protocols.{name}"), name)
        assert getattr(fn, "__wrapped__", None) is not None, name
