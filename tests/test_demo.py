"""The main demo: base-to-new over tiny-suite tasks, table with the average row, report and plot."""

from __future__ import annotations

import pytest

import vlprompt.demo as demo
from vlprompt.cli import main
from vlprompt.data.tiny.suite import generate_suite
from vlprompt.demo import (
    DEMO_METHODS,
    REAL_METHODS,
    VIT_METHODS,
    DemoPart,
    demo_tasks,
    reading_lines,
    render_table,
    run_demo,
    summarise,
)
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
    assert [p["rows"] for p in res["parts"]] == [res["rows"]]  # tiny/ tasks, no backbone: one tiny-clip part
    avg = res["average"]
    for m in ("zeroshot", "coop"):
        b = [res["rows"][t][m]["base"] for t in ("tiny/shapes", "tiny/colours")]
        n = [res["rows"][t][m]["new"] for t in ("tiny/shapes", "tiny/colours")]
        assert avg[m]["base"] == pytest.approx(sum(b) / 2) and avg[m]["new"] == pytest.approx(sum(n) / 2)
        assert avg[m]["hm"] == pytest.approx(hm(avg[m]["base"], avg[m]["new"]))  # H of the averages
    assert avg["linear-probe"]["new"] is None and 0 <= avg["linear-probe"]["base"] <= 100
    md = (out / "demo.md").read_text()
    assert "| **average** |" in md and "zeroshot B" in md and "### Reading" in md and "| coop |" in md
    assert res["reading"] and all(line in md for line in res["reading"])
    assert res["cpu_seconds"] > 0 and res["idle_estimate_seconds"] > 0 and "CPU seconds" in md
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
    assert "| zeroshot | 37.3 | 37.3 | 37.3 | 37.3 / 37.3 / 37.3 |" in text and "tiny/shapes B / N / H" in text
    assert "| tiny/shapes |" in (out / "demo.md").read_text()


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


# ------------------------------------------------------------------ reading lines: numbers -> statements
def _seeds(**per_method):
    """``per_method[m] = [(B, N), ...]`` (one pair per seed) -> per_seed and average dicts."""
    from vlprompt.engine.train import hm

    per_seed = {m: [{"base": b, "new": n, "hm": None if n is None else hm(b, n)} for b, n in v]
                for m, v in per_method.items()}
    average = {}
    for m, v in per_seed.items():
        b = sum(r["base"] for r in v) / len(v)
        n = None if v[0]["new"] is None else sum(r["new"] for r in v) / len(v)
        average[m] = {"base": b, "new": n, "hm": None if n is None else hm(b, n)}
    return per_seed, average


def test_reading_lines_tell_the_papers_story():
    per_seed, avg = _seeds(zeroshot=[(35, 46)] * 3, **{"linear-probe": [(92, None), (91, None), (93, None)]},
                           coop=[(83, 44), (84, 43), (82, 45)], **{"coop+dept": [(91, 46), (92, 46), (90, 47)]})
    lines = reading_lines(per_seed, avg, n_tasks=2)
    assert lines[0].startswith("Base accuracy rises above zero-shot's 35.0 (average of 2 tasks) for linear-probe 92.0")
    assert "coop 83.0 (+48.0)" in lines[0] and "coop+dept 91.0 (+56.0)" in lines[0] and "all 3 seeds" in lines[0]
    trade = [x for x in lines if x.startswith("New-class accuracy falls below zero-shot's 46.0")]
    assert len(trade) == 1 and "coop 44.0 (-2.0)" in trade[0] and "base-new trade-off" in trade[0]
    assert "New-class accuracy stays within seed noise of zero-shot's 46.0 for coop+dept 46.3 (+0.3)." in lines
    dept = [x for x in lines if x.startswith("DePT lifts H for coop")]
    assert len(dept) == 1 and "→" in dept[0]
    assert not any("linear-probe" in x for x in lines[1:])  # no N, no H, no +dept pair


def test_reading_lines_name_noise_and_losses():
    # kgcoop: base +1 on average but signs differ across seeds -> within noise; maple below in every seed
    per_seed, avg = _seeds(zeroshot=[(60, 50)] * 3, kgcoop=[(63, 50), (58, 50), (62, 50)],
                           maple=[(50, 55), (52, 56), (51, 54)], **{"maple+dept": [(45, 50), (46, 51), (44, 50)]})
    lines = reading_lines(per_seed, avg)
    assert any(x.startswith("Base accuracy falls below zero-shot's 60.0 for maple 51.0 (-9.0)") for x in lines)
    assert any(x.startswith("Base accuracy stays within seed noise of zero-shot's 60.0 for kgcoop 61.0 (+1.0)")
               for x in lines)
    assert any(x.startswith("New-class accuracy rises above zero-shot's 50.0 for maple 55.0 (+5.0)") for x in lines)
    assert any(x.startswith("DePT lowers H for maple") for x in lines)
    assert not any("trade-off" in x or "rises above zero-shot's 60.0" in x for x in lines)


def test_reading_lines_same_sign_but_spread_larger_than_mean_is_noise():
    per_seed, avg = _seeds(zeroshot=[(50, 50)] * 3, coop=[(50.5, 50), (60, 50), (50.5, 50)])
    assert demo._effect([0.5, 10.0, 0.5]) == 0  # mean 3.67 < sd 5.48
    assert demo._effect([2.0, 3.0, 2.5]) == 1 and demo._effect([-2.0, -3.0]) == -1 and demo._effect([0.0]) == 0
    assert "stays within seed noise" in reading_lines(per_seed, avg)[0]


def test_reading_lines_one_seed_and_no_reference():
    per_seed, avg = _seeds(zeroshot=[(40, 50)], coop=[(80, 45)], kgcoop=[(40, 52)])
    lines = reading_lines(per_seed, avg)
    assert lines[0] == "Base accuracy rises above zero-shot's 40.0 for coop 80.0 (+40.0) (one seed: no noise estimate)."
    assert "Base accuracy equals zero-shot's 40.0 for kgcoop 40.0 (+0.0)." in lines
    assert reading_lines({"coop": per_seed["coop"]}, {"coop": avg["coop"]}) == []
    # N below zero-shot where B fell too is no trade-off
    per_seed, avg = _seeds(zeroshot=[(40, 50)], maple=[(39, 49)])
    assert reading_lines(per_seed, avg)[1] == ("New-class accuracy falls below zero-shot's 50.0 for maple 49.0 (-1.0) "
                                               "(one seed: no noise estimate).")


def test_summarise_averages_over_tasks_then_seeds():
    part = DemoPart("p", "t", "tiny-clip", ("zeroshot", "linear-probe"), ("a", "b"), (1, 2))
    raw = {("zeroshot", "a", 1): {"base": 40.0, "new": 60.0}, ("zeroshot", "b", 1): {"base": 60.0, "new": 80.0},
           ("zeroshot", "a", 2): {"base": 40.0, "new": 60.0}, ("zeroshot", "b", 2): {"base": 60.0, "new": 80.0},
           **{("linear-probe", t, s): {"base": 70.0 + s, "new": None} for t in "ab" for s in (1, 2)}}
    res = summarise(part, raw)
    assert res["average"]["zeroshot"] == {"base": 50.0, "new": 70.0, "hm": pytest.approx(hm(50.0, 70.0))}
    assert res["std"]["zeroshot"]["base"] == 0.0 and res["std"]["linear-probe"]["base"] == pytest.approx(0.7071, 1e-3)
    assert res["average"]["linear-probe"] == {"base": 71.5, "new": None, "hm": None}
    assert res["rows"]["b"]["zeroshot"]["base"] == 60.0
    assert "| linear-probe | 71.5 ± 0.7 | - | - | 71.5 / - / - | 71.5 / - / - |" in res["summary"]
    assert res["per_seed"]["linear-probe"][1]["base"] == 72.0


# ------------------------------------------------------------------ plan and fallback
def test_default_plan_is_real_weights_then_vit(monkeypatch):
    monkeypatch.setattr(demo, "real_tasks", lambda: (["real/fashion_mnist", "real/skimage_patches"], []))
    logs = []
    parts = demo.plan_parts(problem=lambda: None, log=logs.append)
    assert [(p.slug, p.backbone) for p in parts] == [("real", "effnet-minilm"), ("vit", "tiny-clip")]
    assert parts[0].methods == REAL_METHODS and parts[0].tasks == ("real/fashion_mnist", "real/skimage_patches")
    assert parts[0].seeds == (1, 2, 3) and parts[1].methods == VIT_METHODS and logs == []
    for m in ("coop", "cocoop", "kgcoop"):
        assert m in REAL_METHODS and f"{m}+dept" in REAL_METHODS
    assert {"maple", "vpt-deep", "e2vpt"} <= set(VIT_METHODS)
    # explicit settings: one part; tiny/ tasks pick tiny-clip, others effnet-minilm
    (one,) = demo.plan_parts(methods=["zeroshot"], tasks=["tiny/shapes"], seeds=[4], log=None)
    assert (one.backbone, one.seeds, one.slug) == ("tiny-clip", (4,), "")
    assert demo.plan_parts(methods=["zeroshot"], tasks=["real/digits"], log=None)[0].backbone == "effnet-minilm"
    with pytest.raises(demo.ConfigError, match="at least one method"):
        demo.plan_parts(backbone="tiny-clip", methods=[], tasks=["tiny/shapes"], log=None)


def test_real_weights_problem_names_the_missing_part(monkeypatch):
    import vlprompt.backbones as backbones

    def missing(name, **kw):
        raise demo.ConfigError("backbone 'effnet-minilm' needs the package 'transformers'\nmore")

    monkeypatch.setattr(backbones, "load_backbone", missing)
    assert demo.real_weights_problem() == ("backbone 'effnet-minilm' unavailable (backbone 'effnet-minilm' needs "
                                           "the package 'transformers')")
    monkeypatch.setattr(backbones, "load_backbone", lambda name, **kw: object())
    monkeypatch.setattr(demo, "real_tasks", lambda: (["real/skimage_patches"], ["real/digits (pip install x)"]))
    assert demo.real_weights_problem() == "real-suite datasets missing: real/digits (pip install x)"
    monkeypatch.setattr(demo, "real_tasks", lambda: (["real/digits", "real/skimage_patches"], []))
    assert demo.real_weights_problem() is None


def test_real_tasks_prefer_fashion_and_fall_back(monkeypatch):
    from vlprompt.data.real import SPEC_BY_NAME

    installed = {"fashion_mnist": False, "animal_mnist": False}
    for name, spec in SPEC_BY_NAME.items():
        monkeypatch.setitem(SPEC_BY_NAME, name, demo_spec(spec, installed.get(name, True)))
    chosen, missing = demo.real_tasks()
    assert chosen == ["real/digits", "real/skimage_patches"]
    assert [m.split(" ")[0] for m in missing] == ["real/fashion_mnist", "real/animal_mnist"]


def demo_spec(spec, available):
    import dataclasses

    return dataclasses.replace(spec, available=lambda: available)


def test_fallback_to_tiny_clip_says_why_in_one_line(suite, tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "real_weights_problem", lambda: "backbone 'effnet-minilm' unavailable (no package)")
    monkeypatch.setattr(demo, "demo_tasks", lambda: ["tiny/shapes"])
    monkeypatch.setattr(demo, "REAL_METHODS", ("zeroshot", "coop", "coop+dept"))
    monkeypatch.setattr(demo, "VIT_METHODS", ("zeroshot", "vpt-deep"))
    monkeypatch.setattr(demo, "VIT_TASKS", ("tiny/colours",))
    logs = []
    res = run_demo(tmp_path / "fb", epochs=1, root=str(suite), workers=1, log=logs.append)
    assert logs[0] == ("demo: backbone 'effnet-minilm' unavailable (no package); running the tiny-clip demo instead "
                       "(see docs/effnet-minilm.md, docs/real-suite.md)")
    assert [list(p["average"]) for p in res["parts"]] == [["zeroshot", "coop", "coop+dept"], ["zeroshot", "vpt-deep"]]
    vpt = res["parts"][1]["average"]["vpt-deep"]
    assert vpt["new"] is not None and 0 <= vpt["hm"] <= 100  # text classifier: VPT predicts the new classes
    md = (tmp_path / "fb" / "demo.md").read_text()
    assert md.count("### Reading") == 2 and "tiny-clip on the tiny suite" in md and "ViT prompts" in md
    assert (tmp_path / "fb" / "tiny" / "coop+dept" / "tiny" / "shapes" / "seed1" / "results.json").is_file()
    if res["parts"][0]["plot"]:
        assert (tmp_path / "fb" / "demo_bars.png").is_file() and (tmp_path / "fb" / "demo_vit_bars.png").is_file()


def test_demo_cli_rejects_bad_seeds(capsys):
    assert main(["demo", "--seeds", "1,x", "--tasks", "tiny/shapes"]) == 2
    assert capsys.readouterr().err == "error: --seeds takes comma-separated integers, got '1,x'\n"
