"""The main demo: base-to-new over tiny-suite tasks, table with the average row, report and plot."""

from __future__ import annotations

import pytest

from vlprompt.cli import main
from vlprompt.data.tiny.suite import generate_suite
from vlprompt.demo import DEMO_METHODS, demo_tasks, render_table, run_demo
from vlprompt.engine.train import hm


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return generate_suite(tmp_path_factory.mktemp("suite") / "tiny-suite", tasks=["shapes", "colours"])


def test_demo_tasks_are_the_base_tasks():
    tasks = demo_tasks()
    assert "tiny/shapes" in tasks and "tiny/digits" in tasks and len(tasks) >= 8
    assert not any(t.endswith(("_sketch", "_noisy")) or "vtab" in t for t in tasks)
    assert DEMO_METHODS[:3] == ("zeroshot", "linear-probe", "coop")


def test_run_demo_writes_table_report_and_plot(suite, tmp_path):
    out = tmp_path / "demo"
    res = run_demo(out, methods=["zeroshot", "linear-probe", "coop"], tasks=["tiny/shapes", "tiny/colours"],
                   epochs=1, root=str(suite), workers=1, log=None)
    avg = res["average"]
    for m in ("zeroshot", "coop"):
        b = [res["rows"][t][m]["base"] for t in ("tiny/shapes", "tiny/colours")]
        n = [res["rows"][t][m]["new"] for t in ("tiny/shapes", "tiny/colours")]
        assert avg[m]["base"] == pytest.approx(sum(b) / 2) and avg[m]["new"] == pytest.approx(sum(n) / 2)
        assert avg[m]["hm"] == pytest.approx(hm(avg[m]["base"], avg[m]["new"]))  # H of the averages
    assert avg["linear-probe"]["new"] is None and 0 <= avg["linear-probe"]["base"] <= 100
    md = (out / "demo.md").read_text()
    assert "| **average** |" in md and "zeroshot B" in md
    png = out / "demo_bars.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second call (two worker processes) reuses the finished runs
    again = run_demo(out, methods=["zeroshot", "linear-probe", "coop"], tasks=["tiny/shapes", "tiny/colours"],
                     epochs=1, root=str(suite), workers=2, log=None)
    assert again["average"] == avg


def test_demo_cli(suite, tmp_path, capsys):
    out = tmp_path / "cli"
    main(["demo", "--out", str(out), "--methods", "zeroshot", "--tasks", "tiny/shapes", "--suite", str(suite)])
    text = capsys.readouterr().out
    assert "| tiny/shapes |" in text and "| **average** |" in text and (out / "demo.md").is_file()


def test_render_table_dashes_for_base_only():
    rows = {"t": {"lp": {"base": 50.0, "new": None, "hm": None}}}
    table = render_table(rows, {"lp": {"base": 50.0, "new": None, "hm": None}}, ["lp"])
    assert "| t | 50.0 | - | - |" in table


def test_default_methods_drop_maple_on_a_cnn_tower(monkeypatch):
    import types

    import vlprompt.backbones as backbones
    from vlprompt.demo import default_methods

    assert default_methods() == DEMO_METHODS  # tiny-clip: not even loaded
    seen = []

    def fake(name, weights=None):
        seen.append((name, weights))
        return types.SimpleNamespace(supports_visual_prompts=name == "vit-like")

    monkeypatch.setattr(backbones, "load_backbone", fake)
    assert default_methods("cnn", "w.pt") == tuple(m for m in DEMO_METHODS if m != "maple")
    assert default_methods("vit-like") == DEMO_METHODS and seen == [("cnn", "w.pt"), ("vit-like", None)]
