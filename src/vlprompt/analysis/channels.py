"""DePT's channel-importance analysis: how much each feature channel serves the base and the new classes.

DePT (Zhang et al., CVPR 2024) explains the base-new trade-off by a *channel bias*: after prompt tuning
on the base classes most feature channels carry base-specific knowledge. Its repository measures it
(``tests/stat_channel_importance.py`` with the ``*Stats`` trainers) as follows, and so does this module:

* **Features.** The trained prompt is re-targeted to *all* classes of the dataset; every test image
  gives its L2-normalised image feature and every class its L2-normalised text feature, the two the
  image-text-matching head multiplies (for ``+dept`` the wrapped method's ITM features, not the CAT
  head's FiLM features: the reference's stats trainer mixes them with weight 0).
  :meth:`~vlprompt.methods.base.PromptMethod.matching_features` supplies them.
* **Splits.** Base = the first ``ceil(n/2)`` labels, new = the rest; each split keeps its test images
  and its own classes' text features (labels renumbered within the split).
* **Importance of a channel window.** For the window ``W`` of ``w`` consecutive channels starting at
  channel ``d`` (wrapping around at ``D``), the similarity of image ``i`` to class ``c`` is
  ``s_ic = max(0, Σ_{k∈W} x_ik t_ck)``; image ``i`` scores ``s_{i,y_i} / (mean_c s_ic + 1e-12)``;
  the importance ``CI_d`` is the mean score over the split's images. One value per start channel:
  ``D`` values per split (``w = 1`` is the single channel).
* **Plot.** Per run, ``CI_base`` and ``CI_new`` of every channel against the channel's rank by
  ``CI_base`` (reference: window 16), and the density of ``CI_base / CI_new`` over channels per run
  (reference: window 32, 128 for EuroSAT).

:func:`channel_importance` is the statistic on tensors; :func:`collect_run` loads a run directory and
computes its features; :func:`analyze_runs` does both and writes ``channels.csv``, ``channels.md`` and
``channels.png``.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..errors import CheckpointError, ConfigError

#: the reference's guard against an all-zero similarity row
EPS = 1e-12
#: channel window of the per-channel (point) plot in DePT's figure
POINT_WINDOW = 16
#: channel window of the ratio density in DePT's figure (all datasets but EuroSAT, which uses 128)
RATIO_WINDOW = 32


def _window_sums(image: torch.Tensor, text: torch.Tensor, window: int) -> torch.Tensor:
    """``(n, C, D)``: for every start channel ``d``, ``Σ_{k<window} x_{i,d+k} t_{c,d+k}`` (indices mod D)."""
    prod = image[:, None, :] * text if text.dim() == 3 else image[:, None, :] * text[None]
    dim = prod.shape[-1]
    # circular window sums as differences of one cumulative sum over [prod, its first window-1 channels]
    csum = F.pad(torch.cat([prod, prod[..., : window - 1]], dim=-1).cumsum(dim=-1), (1, 0))
    return csum[..., window : window + dim] - csum[..., :dim]


def channel_importance(
    image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, window: int = 1, chunk_elems: int = 1 << 24,
) -> torch.Tensor:
    """DePT's channel importance ``(D,)`` of one split (see the module docstring).

    Args:
        image: image features ``(N, D)`` (the reference passes L2-normalised ones).
        text: class text features ``(C, D)``, or per image ``(N, C, D)`` (image-conditioned prompts).
        labels: class of each image ``(N,)`` in ``0..C-1``.
        window: number of consecutive channels (wrapping at ``D``) whose partial dot product is scored.
        chunk_elems: images are processed in chunks of about this many ``N·C·D`` elements.

    Example:
        >>> ci = channel_importance(F.normalize(img, dim=-1), F.normalize(txt, dim=-1), y, window=16)
    """
    if image.dim() != 2 or text.dim() not in (2, 3) or labels.dim() != 1 or len(labels) != len(image):
        raise ValueError("channel_importance needs image (N, D), text (C, D) or (N, C, D) and labels (N,)")
    n, dim = image.shape
    if not 1 <= window <= dim:
        raise ConfigError(f"channel window must be between 1 and the feature size {dim}, got {window}")
    if n == 0:
        raise ConfigError("channel importance needs at least one image in the split")
    image, text, labels = image.double(), text.double(), labels.long()
    n_cls = text.shape[-2]
    step = max(1, chunk_elems // max(n_cls * dim, 1))
    total = torch.zeros(dim, dtype=torch.float64)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        txt = text[lo:hi] if text.dim() == 3 else text
        sims = _window_sums(image[lo:hi], txt, window).clamp_min(0.0)  # (n, C, D)
        y = labels[lo:hi]
        gt = sims[torch.arange(hi - lo), y]  # (n, D)
        total += (gt / (sims.mean(dim=1) + EPS)).sum(dim=0)
    return (total / n).float()


@dataclass
class RunFeatures:
    """Matched features of one run on all classes of its dataset's test split."""

    run: Path
    method: str
    dataset: str
    trained_on: str
    seed: int | None
    image: torch.Tensor  # (N, D), L2-normalised
    text: torch.Tensor  # (C, D) or (N, C, D), L2-normalised
    labels: torch.Tensor  # (N,)
    n_base: int
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``method (trained on base)``: the name in tables and legends."""
        return f"{self.method} ({self.trained_on})"

    def split(self, which: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image features, text features and renumbered labels of the ``base`` or ``new`` classes."""
        keep = self.labels < self.n_base if which == "base" else self.labels >= self.n_base
        lo, hi = (0, self.n_base) if which == "base" else (self.n_base, self.text.shape[-2])
        text = self.text[keep][:, lo:hi] if self.text.dim() == 3 else self.text[lo:hi]
        return self.image[keep], text, self.labels[keep] - lo

    def itm_accuracy(self, which: str) -> float:
        """Top-1 accuracy (percent) of the image-text matching on one split, from the same features."""
        img, txt, y = self.split(which)
        sims = torch.einsum("nd,ncd->nc", img, txt) if txt.dim() == 3 else img @ txt.t()
        return 100.0 * float((sims.argmax(-1) == y).float().mean()) if len(y) else float("nan")


def _check_method(model: Any) -> None:
    from ..methods.base import PromptMethod

    cls = type(model)
    if not getattr(model, "has_text_side", True):
        hint = getattr(model, "text_side_hint", "")
        raise ConfigError(f"{model.name} matches no class text features, so it has no channel importance"
                          + (f" ({hint})" if hint else ""))
    logits_owner = next(c for c in cls.__mro__ if "logits_from_features" in vars(c))
    match_owner = next(c for c in cls.__mro__ if "matching_features" in vars(c))
    if logits_owner is not PromptMethod and not issubclass(match_owner, logits_owner):
        raise ConfigError(f"{model.name} computes its own logits and does not expose the image and text features "
                          "it matches (matching_features), so its channel importance is undefined")


@torch.no_grad()
def collect_run(
    run_dir: str | Path, root: str | None = None, device: str = "auto", cache_dir: str | None = None,
    weights: str | None = None, trust_checkpoint: bool = False, batch_size: int = 100,
) -> RunFeatures:
    """Load a trained run, re-target it to all classes of its dataset and collect the matched features of
    the test split (see the module docstring).

    Raises:
        ConfigError: not a run directory, a task group, or a method without matched text features.
        CheckpointError: the run has no trained prompt.
    """
    from ..data import load_dataset
    from ..data.images import ImageDataset
    from ..data.transforms import image_norm, test_transform
    from ..engine.features import FeatureCache
    from ..engine.precision import autocast, resolve_device, resolve_precision
    from ..engine.run import RunDir
    from ..prompt_io import load_prompt
    from ..protocols.runs import run_backbone

    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise ConfigError(f"{run.path} does not exist or is not a folder; pass run directories of `vlprompt train`")
    cfg = run.read_config()
    if not cfg or "dataset" not in cfg or "backbone" not in cfg:
        raise ConfigError(f"{run.path} is not a run directory (no config.yaml); train one with `vlprompt train`")
    if not (run.path / "prompt.safetensors").exists() or not (run.path / "prompt.json").exists():
        raise CheckpointError(f"{run.path} holds no trained prompt (prompt.safetensors + prompt.json): "
                              "the training did not finish; resume it with `vlprompt train`")
    ds = cfg["dataset"]
    bb = run_backbone(cfg, weights, trust_checkpoint, device)
    model = load_prompt(run.path, bb)
    _check_method(model)
    task = load_dataset(ds["name"], root or ds.get("root") or ".", subsample="all", check_train=False)
    if task.extra.get("tasks"):
        raise ConfigError(f"{task.name} is a task group; channel importance is defined for one dataset's classes")
    if len(task.classnames) < 2:
        raise ConfigError(f"{task.name} has {len(task.classnames)} class; base and new need at least two")
    model.set_classnames(task.classnames)
    dev = resolve_device(device)
    prec = resolve_precision("auto", dev)
    model.to(dev).eval()
    with autocast(prec, dev):
        text = model.eval_text_features()
    images, texts = [], []

    def add(raw: torch.Tensor) -> None:
        with autocast(prec, dev):
            img, txt = model.matching_features(raw.to(dev), text)
        images.append(img.float().cpu())
        if txt.dim() == 3 or not texts:
            texts.append(txt.float().cpu())

    if model.plan.image_features:  # frozen, unprompted image tower: the cached plain-view features
        feats = FeatureCache(bb, prec, dev, cache_dir, batch_size).get(task.test, "test")
        for i in range(0, len(feats), batch_size):
            add(feats[i : i + batch_size])
    else:
        loader = DataLoader(ImageDataset(task.test, test_transform(bb.image_size, *image_norm(bb))),
                            batch_size=batch_size, shuffle=False)
        for batch, _, _ in loader:
            with autocast(prec, dev):
                raw = model.encode_images(batch.to(dev))
            add(raw)
    if not images:
        raise ConfigError(f"{task.name} has no test images")
    text_all = torch.cat(texts) if texts[0].dim() == 3 else texts[0]
    results = run.read_results() or {}
    return RunFeatures(
        run=run.path, method=str(cfg.get("method", model.name)), dataset=task.name,
        trained_on=str(ds.get("subsample", "all")), seed=cfg.get("train", {}).get("seed", results.get("seed")),
        image=torch.cat(images), text=text_all,
        labels=torch.tensor([s.label for s in task.test], dtype=torch.long),
        n_base=math.ceil(len(task.classnames) / 2), results=results,
    )


@dataclass
class RunImportance:
    """Channel importances of one run: ``point`` and ``ratio`` windows, base and new."""

    features: RunFeatures
    point_window: int
    ratio_window: int
    base: torch.Tensor
    new: torch.Tensor
    base_ratio_window: torch.Tensor
    new_ratio_window: torch.Tensor

    @property
    def ratio(self) -> torch.Tensor:
        """``CI_base / CI_new`` per start channel at the ratio window (the reference's density)."""
        return self.base_ratio_window / self.new_ratio_window

    def summary(self) -> dict[str, Any]:
        """One table row: accuracies, mean importances, and the ratio's median and share above 1."""
        f, r = self.features, self.ratio
        res = f.results
        return {
            "run": str(f.run), "dataset": f.dataset, "method": f.method, "trained_on": f.trained_on, "seed": f.seed,
            "base_acc": res.get("base_acc"), "new_acc": res.get("new_acc"), "hm": res.get("hm"),
            "itm_base_acc": f.itm_accuracy("base"), "itm_new_acc": f.itm_accuracy("new"),
            "ci_base": float(self.base.mean()), "ci_new": float(self.new.mean()),
            "ratio_median": float(r.median()), "ratio_mean": float(r.mean()),
            "base_dominated": float((r > 1).float().mean()),
        }


def importance_of(features: RunFeatures, point_window: int = POINT_WINDOW,
                  ratio_window: int = RATIO_WINDOW) -> RunImportance:
    """Base and new channel importance of a run at both windows."""
    out = {}
    for which in ("base", "new"):
        img, txt, y = features.split(which)
        if not len(y):
            raise ConfigError(f"{features.run}: the test split of {features.dataset} has no {which}-class image")
        out[which] = channel_importance(img, txt, y, point_window)
        out[f"{which}_ratio_window"] = (out[which] if ratio_window == point_window
                                        else channel_importance(img, txt, y, ratio_window))
    return RunImportance(features, point_window, ratio_window, **out)


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def summary_markdown(results: list[RunImportance]) -> str:
    """The per-run table of ``channels.md``."""
    if not results:
        return ""
    pw, rw = results[0].point_window, results[0].ratio_window
    lines = [
        f"Channel importance (DePT): window {pw} for CI, {rw} for the ratio CI-base : CI-new. "
        "B / N / H: the run's results.json; ITM B / N: image-text matching alone on the same features.",
        "",
        "| dataset | run | seed | B | N | H | ITM B | ITM N | mean CI base | mean CI new | median ratio "
        "| channels ratio > 1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r.summary()
        lines.append(
            f"| {s['dataset']} | {r.features.label} | {_fmt(s['seed'])} | {_fmt(s['base_acc'])} | {_fmt(s['new_acc'])} "
            f"| {_fmt(s['hm'])} | {_fmt(s['itm_base_acc'])} | {_fmt(s['itm_new_acc'])} | {_fmt(s['ci_base'], 3)} "
            f"| {_fmt(s['ci_new'], 3)} | {_fmt(s['ratio_median'], 3)} | {100 * s['base_dominated']:.1f} % |"
        )
    return "\n".join(lines) + "\n"


def channels_csv(results: list[RunImportance]) -> str:
    """One row per run and start channel: the importances at both windows and their ratio."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "dataset", "method", "trained_on", "seed", "channel", "point_window", "ci_base", "ci_new",
                "ratio_window", "ci_base_ratio_window", "ci_new_ratio_window", "ratio"])
    for r in results:
        f = r.features
        for d in range(len(r.base)):
            w.writerow([str(f.run), f.dataset, f.method, f.trained_on, f.seed, d, r.point_window,
                        f"{float(r.base[d]):.6g}", f"{float(r.new[d]):.6g}", r.ratio_window,
                        f"{float(r.base_ratio_window[d]):.6g}", f"{float(r.new_ratio_window[d]):.6g}",
                        f"{float(r.ratio[d]):.6g}"])
    return buf.getvalue()


def gaussian_kde(values: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Gaussian kernel density of ``values`` on ``grid`` with R's ``nrd0`` bandwidth (plotnine's default
    for ``geom_density``): ``0.9 · min(sd, IQR / 1.34) · n^(-1/5)``."""
    v = values.double()
    n = len(v)
    sd = float(v.std()) if n > 1 else 0.0
    iqr = float(torch.quantile(v, 0.75) - torch.quantile(v, 0.25)) if n > 1 else 0.0
    lo = min(sd, iqr / 1.34) if iqr > 0 else sd
    bw = 0.9 * (lo if lo > 0 else (abs(float(v[0])) or 1.0)) * n ** -0.2
    z = (grid.double()[:, None] - v[None, :]) / bw
    return (torch.exp(-0.5 * z**2).sum(1) / (n * bw * math.sqrt(2 * math.pi))).float()


def _first_seed_per_label(results: list[RunImportance]) -> dict[str, list[RunImportance]]:
    """Per dataset, the first run (lowest seed) of each label, in the order given."""
    by_ds: dict[str, dict[str, RunImportance]] = {}
    for r in sorted(results, key=lambda r: (r.features.seed is None, r.features.seed or 0)):
        by_ds.setdefault(r.features.dataset, {}).setdefault(r.features.label, r)
    order = {r.features.label: i for i, r in enumerate(results)}
    return {ds: sorted(runs.values(), key=lambda r: order[r.features.label]) for ds, runs in by_ds.items()}


def channels_figure(results: list[RunImportance]) -> Any:
    """Per dataset (one row): ``CI_base`` and ``CI_new`` against the rank of ``CI_base`` for each run, and
    the density of the ratio per run (the first seed of each run label)."""
    from ..report.plots import _pyplot

    plt = _pyplot()
    groups = _first_seed_per_label(results)
    n_cols = max(len(v) for v in groups.values()) + 1
    fig, axes = plt.subplots(len(groups), n_cols, figsize=(2.6 * n_cols + 1.5, 3.0 * len(groups)), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, (ds, runs) in enumerate(groups.items()):
        values = torch.cat([torch.cat([r.base, r.new]) for r in runs])
        pad = 0.05 * float(values.max() - values.min()) or 0.05
        ylim = (float(values.min()) - pad, float(values.max()) + pad)
        for col in range(n_cols - 1):
            ax = axes[row][col]
            if col >= len(runs):
                ax.axis("off")
                continue
            r = runs[col]
            order = torch.argsort(r.base)
            x = torch.arange(1, len(order) + 1)
            ax.scatter(x, r.new[order], s=3, color=colors[1], label="new classes")
            ax.scatter(x, r.base[order], s=3, color=colors[0], label="base classes")
            ax.set_ylim(*ylim)
            ax.set_title(f"{r.features.label}\nseed {r.features.seed}", fontsize=8)
            ax.set_xlabel(f"channel (rank by base CI), window {r.point_window}", fontsize=7)
            if col == 0:
                ax.set_ylabel(f"{ds}\nchannel importance (CI)", fontsize=8)
            ax.tick_params(labelsize=7)
        ax = axes[row][n_cols - 1]
        finite = [r.ratio[torch.isfinite(r.ratio)].double() for r in runs]  # CI-new = 0 gives an infinite ratio
        dropped = sum(len(r.ratio) - len(f) for r, f in zip(runs, finite, strict=True))
        pooled = torch.cat(finite)
        if len(pooled):
            lo, hi = float(torch.quantile(pooled, 0.05)), float(torch.quantile(pooled, 0.95))
            span = (hi - lo) or 1.0
            # the tail (CI-new near 0 on weak channels: ratios up to ~10 on effnet-minilm) would squash the peaks
            grid = torch.linspace(lo - 0.1 * span, hi + 0.1 * span, 256)
            for i, (r, f) in enumerate(zip(runs, finite, strict=True)):
                if len(f):
                    ax.fill_between(grid, gaussian_kde(f, grid), alpha=0.35, color=colors[(i + 2) % len(colors)],
                                    label=r.features.label)
            ax.set_xlim(float(grid[0]), float(grid[-1]))
        ax.axvline(1.0, color="grey", lw=0.8, ls="--")
        note = f"; {dropped} infinite left out" if dropped else ""
        ax.set_xlabel(f"CI-base : CI-new (window {runs[0].ratio_window})\nshown: 5th-95th percentile{note}",
                      fontsize=7)
        ax.set_ylabel("density over channels", fontsize=7)
        ax.set_title(f"{ds}: ratio", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize=7)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles[::-1], names[::-1], loc="upper center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8,
               markerscale=3)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    return fig


def analyze_runs(
    run_dirs: list[str | Path], out: str | Path, point_window: int = POINT_WINDOW, ratio_window: int = RATIO_WINDOW,
    root: str | None = None, device: str = "auto", cache_dir: str | None = None, weights: str | None = None,
    trust_checkpoint: bool = False, plot: bool = True,
) -> list[RunImportance]:
    """Channel importance of every run; writes ``channels.csv``, ``channels.md`` and (``plot``) ``channels.png``
    into ``out``.

    Example:
        >>> analyze_runs(["runs/coop/seed1", "runs/coop+dept/seed1"], "analysis/")
    """
    from ..engine.run import atomic_write

    if not run_dirs:
        raise ConfigError("analyze channels needs at least one run directory")
    for w, what in ((point_window, "--window"), (ratio_window, "--ratio-window")):
        if w < 1:
            raise ConfigError(f"{what} must be at least 1, got {w}")
    results = [importance_of(collect_run(r, root, device, cache_dir, weights, trust_checkpoint),
                             point_window, ratio_window) for r in run_dirs]
    out = Path(out)
    atomic_write(out / "channels.csv", channels_csv(results))
    atomic_write(out / "channels.md", summary_markdown(results))
    if plot:
        from ..report.plots import _save

        _save(channels_figure(results), out / "channels.png")
    return results
