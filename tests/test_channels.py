"""DePT's channel-importance analysis: the statistic re-derived on features with a known answer, the
matched features of each method, and ``vlprompt analyze channels`` end to end with its bad inputs."""

from __future__ import annotations

import csv
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

import vlprompt as vp
from numerics import assert_fp32_close
from vlprompt.analysis.channels import RunFeatures, channel_importance, collect_run, gaussian_kde, importance_of
from vlprompt.cli import main
from vlprompt.errors import ConfigError


def _direct(image, text, labels, window):
    """The reference's loop, written out: one window of channels at a time, a matrix product per window."""
    dim = image.shape[1]
    out = []
    for start in range(dim):
        idx = [(start + k) % dim for k in range(window)]
        if text.dim() == 2:
            sims = image[:, idx] @ text[:, idx].t()
        else:
            sims = torch.einsum("nd,ncd->nc", image[:, idx], text[:, :, idx])
        sims = sims.clamp_min(0)
        gt = sims.gather(1, labels[:, None]).squeeze(1)
        out.append(float((gt / (sims.mean(1) + 1e-12)).mean()))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("window", [1, 3, 8, 12])
def test_importance_equals_the_per_window_loop(window):
    g = torch.Generator().manual_seed(window)
    img = F.normalize(torch.randn(40, 12, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(5, 12, generator=g, dtype=torch.float64), dim=-1)
    y = torch.randint(0, 5, (40,), generator=g)
    expected = _direct(img, txt, y, window)
    got = channel_importance(img, txt, y, window, chunk_elems=7 * 5 * 12)  # several chunks
    assert_fp32_close(got, expected)
    per_image = txt[None].expand(40, -1, -1)  # image-conditioned text (CoCoOp) with equal rows: same answer
    assert_fp32_close(channel_importance(img, per_image, y, window), expected)
    varied = F.normalize(torch.randn(40, 5, 12, generator=g, dtype=torch.float64), dim=-1)
    assert_fp32_close(channel_importance(img, varied, y, window), _direct(img, varied, y, window))


def test_importance_known_answers():
    """Window 1, per-image text (one channel cannot separate more than two classes with shared text):
    a channel positive only for the image's own class scores C, a constant one 1, a dead or
    anti-discriminative one 0."""
    n_cls, per = 3, 4
    y = torch.arange(n_cls).repeat_interleave(per)
    own = F.one_hot(y, n_cls).float()[..., None]  # (N, C, 1): 1 at the image's class
    cases = {
        "discriminative": (torch.ones(len(y), 1), own),
        "uninformative": (torch.ones(len(y), 1), torch.ones_like(own)),
        "dead": (torch.zeros(len(y), 1), torch.ones_like(own)),
        "anti": (torch.ones(len(y), 1), 1.0 - own),
    }
    answers = {k: float(channel_importance(img, txt, y, 1)[0]) for k, (img, txt) in cases.items()}
    assert answers == pytest.approx({"discriminative": n_cls, "uninformative": 1.0, "dead": 0.0, "anti": 0.0})
    # two classes, shared text: the sign of channel 0 separates them (importance C = 2), channel 1 is
    # constant (1); a window of both scores (1 + 1) / mean(2, 0) = 2 from either start
    y2 = torch.tensor([0, 0, 1, 1])
    img = torch.tensor([[1.0, 1.0], [1.0, 1.0], [-1.0, 1.0], [-1.0, 1.0]])
    txt = torch.tensor([[1.0, 1.0], [-1.0, 1.0]])
    assert channel_importance(img, txt, y2, 1).tolist() == pytest.approx([2.0, 1.0])
    assert channel_importance(img, txt, y2, 2).tolist() == pytest.approx([2.0, 2.0])


def _split_features(n_base_channels=4, dim=8):
    """Base classes separated by the first channels only, new classes by the last ones: the channel bias."""
    g = torch.Generator().manual_seed(0)
    n_cls = 4
    text = torch.zeros(n_cls, dim)
    text[0, :n_base_channels], text[1, :n_base_channels] = 1.0, -1.0
    text[2, n_base_channels:], text[3, n_base_channels:] = 1.0, -1.0
    labels = torch.arange(n_cls).repeat_interleave(5)
    image = text[labels] + 0.05 * torch.randn(len(labels), dim, generator=g)
    return RunFeatures(run=None, method="synthetic", dataset="toy", trained_on="base", seed=1,  # type: ignore[arg-type]
                       image=F.normalize(image, dim=-1), text=F.normalize(text, dim=-1), labels=labels, n_base=2)


def test_base_and_new_splits_show_the_channel_bias():
    feats = _split_features()
    r = importance_of(feats, point_window=1, ratio_window=2)
    assert r.base[:4].min() > 1.9 and r.base[4:].max() < 0.2  # two classes: a separating channel scores 2
    assert r.new[4:].min() > 1.9 and r.new[:4].max() < 0.2
    s = r.summary()
    assert s["itm_base_acc"] == 100.0 and s["itm_new_acc"] == 100.0
    # windows starting at 0-2 lie in the base channels, at 4-6 in the new ones; 3 and 7 straddle (ratio 1)
    assert (r.ratio > 1.5).tolist() == [True] * 3 + [False] * 5
    assert (r.ratio < 0.5).tolist() == [False] * 4 + [True] * 3 + [False]
    assert r.ratio[[3, 7]].tolist() == pytest.approx([1.0, 1.0], rel=1e-3)
    img, txt, y = feats.split("new")
    assert txt.shape == (2, 8) and y.tolist() == [0] * 5 + [1] * 5 and torch.equal(img, feats.image[10:])


def test_gaussian_kde_integrates_to_one_with_nrd0_bandwidth():
    v = torch.tensor([0.8, 0.9, 1.0, 1.0, 1.1, 1.4])
    grid = torch.linspace(-1, 3, 4001)
    dens = gaussian_kde(v, grid)
    assert float(torch.trapezoid(dens, grid)) == pytest.approx(1.0, abs=1e-3)
    q75, q25 = torch.quantile(v.double(), 0.75), torch.quantile(v.double(), 0.25)
    bw = 0.9 * min(float(v.double().std()), float(q75 - q25) / 1.34) * len(v) ** -0.2
    at1 = sum(math.exp(-0.5 * ((1.0 - float(x)) / bw) ** 2) for x in v) / (len(v) * bw * math.sqrt(2 * math.pi))
    assert float(gaussian_kde(v, torch.tensor([1.0]))[0]) == pytest.approx(at1, rel=1e-5)


@pytest.mark.parametrize("name, options", [
    ("coop", {}), ("coop+dept", {}), ("cocoop", {}), ("clip-adapter", {}), ("maple", {"prompt_depth": 2}),
    ("ivlp+dept", {"prompt_depth_text": 2, "prompt_depth_vision": 2}), ("vpt-shallow", {"classifier": "text"}),
])
def test_matching_features_give_the_itm_logits(tiny_bb, name, options):
    names = ["cat", "dog", "car", "tree"]
    torch.manual_seed(0)
    model = vp.build_method(name, tiny_bb, names, **options).eval()
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.1 * torch.randn_like(p))
        raw = torch.randn(3, tiny_bb.embed_dim)
        img, txt = model.matching_features(raw, model.eval_text_features())
        sims = torch.einsum("nd,ncd->nc", img, txt) if txt.dim() == 3 else img @ txt.t()
        itm = model.inner if name.endswith("+dept") else model
        expected = itm.logits_from_features(raw, model.eval_text_features())
    assert_fp32_close(tiny_bb.logit_scale * sims, expected.float())
    assert_fp32_close(img.norm(dim=-1), torch.ones(3))


def test_methods_without_matched_text_are_refused(tiny_bb):
    from vlprompt.analysis.channels import _check_method

    with pytest.raises(ConfigError, match="does not expose"):
        _check_method(vp.build_method("linear-probe", tiny_bb, ["a", "b"]))
    with pytest.raises(ConfigError, match="matches no class text features"):
        _check_method(vp.build_method("vpt-shallow", tiny_bb, ["a", "b"]))


def _train(root, out, cache_dir, method="coop"):
    args = ["train", "--method", method, "--dataset", "imagefolder", "--root", str(root), "--shots", "2",
            "--out", str(out), "--epochs", "1", "--batch-size", "4", "--lr", "0.002", "--cache-dir", cache_dir,
            "--subsample", "base"]
    if method == "coop":
        args += ["-o", "n_ctx=4"]
    assert main(args) == 0


@pytest.fixture(scope="module")
def coop_run(tmp_path_factory, shapes_root, cache_dir):
    out = tmp_path_factory.mktemp("chan") / "coop"
    _train(shapes_root, out, cache_dir)
    return out


def test_cli_writes_table_csv_and_plot(coop_run, cache_dir, tmp_path, capsys):
    out = tmp_path / "analysis"
    assert main(["analyze", "channels", str(coop_run), "--out", str(out), "--window", "4", "--ratio-window", "8",
                 "--cache-dir", cache_dir]) == 0
    printed = capsys.readouterr().out
    assert "coop (base)" in printed and f"wrote channels.csv, channels.md, channels.png to {out}" in printed
    md = (out / "channels.md").read_text()
    assert "| imagefolder | coop (base) | 1 |" in md or "coop (base)" in md
    rows = list(csv.DictReader((out / "channels.csv").open()))
    feats = collect_run(coop_run, cache_dir=cache_dir)
    dim = feats.image.shape[1]
    assert len(rows) == dim and [int(r["channel"]) for r in rows] == list(range(dim))
    img, txt, y = feats.split("base")
    expected = channel_importance(img, txt, y, 4)
    got = torch.tensor([float(r["ci_base"]) for r in rows])
    assert_fp32_close(got, expected, rtol=1e-5)  # the CSV holds 6 significant digits
    img, txt, y = feats.split("new")
    ratio = torch.tensor([float(r["ratio"]) for r in rows])
    base8 = torch.tensor([float(r["ci_base_ratio_window"]) for r in rows])
    assert_fp32_close(ratio, base8 / channel_importance(img, txt, y, 8), rtol=1e-4)
    png = (out / "channels.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def _fails(argv, capsys, fragment):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err


def test_bad_inputs_one_line_exit_2(coop_run, shapes_root, cache_dir, tmp_path, capsys):
    out = tmp_path / "analysis"
    _fails(["analyze", "channels", str(tmp_path / "nowhere"), "--out", str(out)], capsys, "does not exist")
    (tmp_path / "empty").mkdir()
    _fails(["analyze", "channels", str(tmp_path / "empty"), "--out", str(out)], capsys, "is not a run directory")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(coop_run, unfinished)
    (unfinished / "prompt.safetensors").unlink()
    _fails(["analyze", "channels", str(unfinished), "--out", str(out)], capsys, "holds no trained prompt")
    _fails(["analyze", "channels", str(coop_run), "--out", str(out), "--window", "100000", "--cache-dir", cache_dir],
           capsys, "channel window must be between 1 and the feature size")
    _fails(["analyze", "channels", str(coop_run), "--out", str(out), "--ratio-window", "0"], capsys,
           "--ratio-window must be at least 1")
    lp = tmp_path / "lp"
    _train(shapes_root, lp, cache_dir, method="linear-probe")
    _fails(["analyze", "channels", str(lp), "--out", str(out), "--cache-dir", cache_dir], capsys,
           "does not expose the image and text features")
    assert not out.exists()


def test_figure_panels_one_row_per_dataset_first_seed_per_label():
    from dataclasses import replace

    from vlprompt.analysis.channels import channels_figure, summary_markdown

    feats = _split_features()
    runs = [importance_of(replace(feats, seed=s, method=m, dataset=d), 1, 2)
            for d in ("toy", "toy2") for m in ("coop", "coop+dept") for s in (2, 1)]
    fig = channels_figure(runs)
    axes = fig.axes
    assert len(axes) == 2 * 3  # per dataset: two run labels (their first seed) + the ratio density
    titles = [a.get_title() for a in axes]
    assert titles[0] == "coop (base)\nseed 1" and titles[1] == "coop+dept (base)\nseed 1" and titles[2] == "toy: ratio"
    assert "5th-95th percentile" in axes[2].get_xlabel()
    legend = axes[2].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["coop (base)", "coop+dept (base)"]
    import matplotlib.pyplot as plt

    plt.close(fig)
    md = summary_markdown(runs)
    assert md.count("| toy | coop (base) |") == 2 and "n/a" in md  # results.json values absent: n/a
