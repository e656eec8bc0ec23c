"""benchmarks/device_check.py on CPU with tiny-clip (the GPU run is the same script without --tiny)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device_check.py"


@pytest.fixture(scope="module")
def device_check():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["device_check"] = mod
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("device_check", None)


@pytest.fixture
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_tiny_cpu_run_covers_every_method_and_check(device_check, tmp_path, keep_threads, capsys):
    out = tmp_path / "dc.json"
    md = tmp_path / "dc.md"
    assert device_check.main(["--device", "cpu", "--tiny", "--out", str(out), "--markdown", str(md)]) == 0
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"]
    names = device_check.check_names()
    assert "coop+dept" in names and "vpt-deep+dept" in names and "zeroshot+dept" not in names
    for precision in ("bf16", "fp16"):
        assert {r["check"] for r in rows if r["precision"] == precision} >= set(names)
    trained = [r for r in rows if r["check"] in ("coop", "maple", "vpt-deep", "dapt+dept")]
    assert all(r["s_iter"] > 0 and r["images_s"] > 0 and r["eval_s"] > 0 for r in trained)
    checks = {r["check"] for r in rows}
    assert {"feature-cache", "torchrun-1proc-gloo", "coop-1000-classes"} <= checks
    assert next(r for r in rows if r["check"] == "torchrun-1proc-gloo")["backend"] == "gloo"
    assert "| coop-1000-classes | bf16 | 4 |" in md.read_text()
    prefix = {f"text-prefix-{m}-{n}": None for m in device_check.TEXT_PREFIX_METHODS for n in (10, 40)}
    assert set(prefix) <= checks and {"coop", "cocoop", "kgcoop", "maple", "coop+dept"} <= set(
        device_check.TEXT_PREFIX_METHODS)  # issue 18's benchmark methods, plus SoftCPT
    for r in rows:
        if r["check"] in prefix:
            assert r["precision"] == "bf16" and r["s_iter"] > 0 and r["full_s"] > 0 and r["speedup"] > 0
            assert r["memory_ratio"] > 0
    assert "Shared-prefix text step" in md.read_text() and "| text-prefix-coop-40 | bf16 |" in md.read_text()
    assert data["header"]["tiny"] and data["header"]["backbone"] == "tiny-clip"


def test_a_failing_method_is_a_row_and_the_exit_status(device_check, tmp_path, keep_threads, monkeypatch):
    real = device_check.method_check

    def broken(name, *args, **kwargs):
        if name == "coop+dept":
            raise RuntimeError("simulated CUDA error\nsecond line")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(device_check, "method_check", broken)
    monkeypatch.setattr(device_check, "torchrun_check", lambda *a: {"backend": "gloo", "acc": 0.0})
    out = tmp_path / "dc.json"
    code = device_check.main(["--device", "cpu", "--tiny", "--methods", "coop+dept", "kgcoop",
                              "--precisions", "bf16", "--out", str(out)])
    assert code == 1
    rows = {r["check"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["coop+dept"]["status"] == "FAILED: RuntimeError: simulated CUDA error"
    assert rows["kgcoop"]["status"] == "ok" and rows["coop-1000-classes"]["status"] == "ok"  # the others go on


def test_cuda_without_a_gpu_is_one_clear_error(device_check, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert device_check.main(["--device", "cuda", "--out", str(tmp_path / "x.json")]) == 2
    assert capsys.readouterr().err.startswith("error: --device cuda but torch sees no GPU")
