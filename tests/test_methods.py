"""Method tests: CoOp against an independent open_clip computation, the method matrix, linear probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vlprompt as vp
from vlprompt.errors import ConfigError
from vlprompt.methods import list_methods
from vlprompt.methods.linear_probe import C_GRID, fit_logistic_regression, search_c

NAMES = ["red circle", "green_square", "blue triangle"]

#: Options that fit a method to tiny-clip (3 text / 4 vision layers); defaults otherwise.
MATRIX_OPTIONS: dict[str, dict] = {"maple": {"prompt_depth": 2}, "dapt": {"prompt_depth": 2},
                                   "dapt-g": {"prompt_depth": 2},
                                   "ivlp": {"prompt_depth_text": 2, "prompt_depth_vision": 2},
                                   "promptsrc": {"prompt_depth_text": 2, "prompt_depth_vision": 2}}

#: Vision classifiers that get a text side from an option (VPT's ``classifier="text"`` on CLIP,
#: DePT's VPT row): their plug-in combinations run with it.
TEXT_OPTION = {"vpt-shallow": {"classifier": "text"}, "vpt-deep": {"classifier": "text"},
               "e2vpt": {"classifier": "text"}}

#: Methods whose learned weights are tied to the training classes: re-targeting is a ConfigError.
FIXED_CLASSES = {"linear-probe", "softcpt-csta", "softcpt-csts"}


def matrix_names() -> list[str]:
    """Every registered method, and every method with every plug-in that accepts it."""
    from vlprompt.methods import get_method_class
    from vlprompt.methods.base import _PLUGINS, plugin_applies

    bases = [n for n in list_methods() if not n.startswith("+")]
    text_free = {b for b in bases if not getattr(get_method_class(b), "has_text_side", True)}
    # a closed-form fit (linear probe, Tip-Adapter's cache) has no prompts for a plug-in: DePT refuses it
    closed_form = {b for b in bases if get_method_class(b).plan.fit_features is not None}
    combos = [f"{b}+{p}" for p in _PLUGINS for b in bases
              if (b not in ("zeroshot", *closed_form, *text_free) or b in TEXT_OPTION)
              and plugin_applies(p, get_method_class(b))]  # a plug-in for some methods (DAPT) declares them
    return bases + combos


def matrix_options(name: str) -> dict:
    base, *plugins = name.split("+")
    return {**MATRIX_OPTIONS.get(base, {}), **(TEXT_OPTION.get(base, {}) if plugins else {})}


def _open_clip_text(bb, embeds: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """open_clip's own text transformer over all 77 positions (no vlprompt seam)."""
    m = bb.model
    x = m.transformer(embeds + m.positional_embedding, attn_mask=m.attn_mask)
    x = m.ln_final(x)
    return x[torch.arange(x.shape[0]), eot] @ m.text_projection


def _hand_prompt(bb, ctx: torch.Tensor, name: str, position: str) -> tuple[torch.Tensor, int]:
    """[SOS] + ctx + class tokens + '.' + EOT + padding, assembled by hand from token ids."""
    tok = bb.tokenize([name.replace("_", " ") + "."])[0]
    eot = int(tok.argmax())
    with torch.no_grad():
        emb = bb.model.token_embedding(tok)
    sos, words, rest = emb[:1], emb[1:eot - 1], emb[eot - 1:]  # rest = '.', EOT, padding
    m = ctx.shape[0]
    if position == "end":
        seq = [sos, ctx, words, rest]
    elif position == "front":
        seq = [sos, words, ctx, rest]
    else:
        seq = [sos, ctx[: m // 2], words, ctx[m // 2:], rest]
    full = torch.cat(seq)[: bb.context_length]
    return full, eot + m


@pytest.mark.parametrize("position", ["end", "front", "middle"])
def test_coop_logits_equal_independent_computation(tiny_bb, position):
    torch.manual_seed(0)
    model = vp.build_method("coop", tiny_bb, NAMES, n_ctx=4, class_token_position=position)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = model(images)
        rows, eots = zip(*[_hand_prompt(tiny_bb, model.ctx, n, position) for n in NAMES], strict=True)
        text = _open_clip_text(tiny_bb, torch.stack(rows), torch.tensor(eots))
        img = tiny_bb.model.encode_image(images)
        ref = 100.0 * F.normalize(img, dim=-1) @ F.normalize(text, dim=-1).t()
    assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-5)


def test_coop_init_phrase_and_csc(tiny_bb):
    model = vp.build_method("coop", tiny_bb, NAMES, ctx_init="a photo of a")
    tok = tiny_bb.tokenize(["a photo of a"])
    with torch.no_grad():
        expected = tiny_bb.model.token_embedding(tok)[0, 1:5]
    assert model.ctx.shape == (4, tiny_bb.text_width)
    assert torch.equal(model.ctx.detach(), expected)
    csc = vp.build_method("coop", tiny_bb, NAMES, n_ctx=2, csc=True)
    assert csc.ctx.shape == (3, 2, tiny_bb.text_width)
    assert csc.text_features().shape == (3, tiny_bb.embed_dim)
    with pytest.raises(ConfigError, match="class-specific"):
        csc.set_classnames(["a", "b"])


def test_zeroshot_ensemble_is_mean_of_normalised_features(tiny_bb):
    from vlprompt.data import IMAGENET_SELECT_TEMPLATES

    model = vp.build_method("zeroshot", tiny_bb, NAMES, template="a photo of a {}.", ensemble=True)
    names = [n.replace("_", " ") for n in NAMES]
    with torch.no_grad():
        per = [F.normalize(tiny_bb.model.encode_text(tiny_bb.tokenize([t.format(n) for n in names])), dim=-1)
               for t in [*IMAGENET_SELECT_TEMPLATES, "a photo of a {}."]]
    ref = F.normalize(torch.stack(per).mean(0), dim=-1)
    assert torch.allclose(model.text_features(), ref, atol=1e-5)
    imagenet = vp.build_method("zeroshot", tiny_bb, NAMES, templates=IMAGENET_SELECT_TEMPLATES)
    assert imagenet.templates() == list(IMAGENET_SELECT_TEMPLATES)


def test_unknown_method_and_option(tiny_bb):
    with pytest.raises(ConfigError, match="unknown method 'cop'"):
        vp.build_method("cop", tiny_bb, NAMES)
    with pytest.raises(ConfigError, match="n_ctxx"):
        vp.build_method("coop", tiny_bb, NAMES, n_ctxx=4)


@pytest.mark.parametrize("name", matrix_names())
def test_method_matrix(name, tiny_bb, tmp_path):
    """forward, backward, only trainable params get gradients, save → load → same logits, re-target."""
    torch.manual_seed(0)
    model = vp.build_method(name, tiny_bb, NAMES, **matrix_options(name))
    images = torch.randn(4, 3, 64, 64)
    labels = torch.tensor([0, 1, 2, 0])
    if name == "linear-probe":
        feats = tiny_bb.encode_image(images).detach()
        model.fit_features((feats, labels), (feats, labels))
    logits = model(images)
    assert logits.shape == (4, 3)
    params = model.trainable_parameters()
    if model.needs_training and not hasattr(model, "fit_features"):
        batch = {"images": images, "labels": labels}
        if getattr(model, "mask_source", None):  # DAPT: foreground masks travel in the batch
            batch["masks"] = (torch.rand(4, 1, 64, 64) > 0.5).float()
        out = model.loss(batch)
        out["loss"].backward()
        assert params and all(p.grad is not None for p in params)
        with torch.no_grad():  # move the prompt away from its init so the round trip means something
            for p in params:
                p.add_(0.01 * torch.randn_like(p))
    assert all(p.grad is None for p in tiny_bb.parameters())
    assert not any(n.startswith("backbone.") for n in model.prompt_state_dict())
    before = model(images)
    vp.save_prompt(model, tmp_path / "prompt.safetensors")
    loaded = vp.load_prompt(tmp_path / "prompt.safetensors", tiny_bb)
    assert torch.allclose(loaded(images), before, atol=1e-6)
    new_names = ["purple cross", "yellow star"]
    if name.split("+")[0] in FIXED_CLASSES or not getattr(model, "has_text_side", True):  # a per-class head
        with pytest.raises(ConfigError):
            loaded.set_classnames(new_names)
    else:
        retargeted = vp.load_prompt(tmp_path / "prompt.safetensors", tiny_bb, classnames=new_names)
        assert retargeted(images).shape == (4, 2)


def test_logistic_regression_matches_sklearn():
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8))
    y = rng.integers(0, 3, size=60)
    for c in (0.01, 1.0):
        w, b = fit_logistic_regression(torch.tensor(x), torch.tensor(y), 3, c, max_iter=1000)
        ref = sklearn.LogisticRegression(C=c, max_iter=5000, tol=1e-8).fit(x, y)
        assert np.allclose(w.numpy(), ref.coef_, atol=2e-3)
        assert np.allclose(b.numpy(), ref.intercept_, atol=2e-3)


def test_logistic_regression_weak_regularisation_vs_sklearn():
    """Separable few-shot data, C = 100: the objective is nearly flat, so both solvers stop (same rule,
    max |gradient| < 1e-4 on the 1/(C·n)-scaled objective) at different points and the weights are not
    close; what holds is the objective (ours no higher than sklearn's) and the predictions."""
    sklearn = pytest.importorskip("sklearn.linear_model")

    def objective(w, b, x, y, c):  # sklearn's primal: 0.5·||W||² + C·Σ CE, bias unpenalised
        z = x @ w.T + b
        z = z - z.max(1, keepdims=True)
        return 0.5 * (w * w).sum() + c * (np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]).sum()

    for seed in range(4):
        rng = np.random.default_rng(seed)
        mu = rng.normal(size=(4, 32))
        y, yt = np.arange(16) % 4, np.arange(1000) % 4
        x, xt = mu[y] + rng.normal(size=(16, 32)), mu[yt] + rng.normal(size=(1000, 32))
        w, b = (t.double().numpy() for t in fit_logistic_regression(torch.tensor(x), torch.tensor(y), 4, 100.0))
        ref = sklearn.LogisticRegression(C=100.0, max_iter=1000).fit(x, y)  # lpclip's call
        assert objective(w, b, x, y, 100.0) <= objective(ref.coef_, ref.intercept_, x, y, 100.0) * (1 + 1e-4)
        assert ((xt @ w.T + b).argmax(1) == ref.predict(xt)).mean() >= 0.99
        assert ((x @ w.T + b).argmax(1) == ref.predict(x)).all()


def test_small_probe_fits_run_on_one_thread_with_the_same_weights():
    """Before: each of the C search's 24 fits ran its thousands of tiny ops on every intra-op thread (16-69 s
    on a busy 2-core machine). Now a fit whose reductions are below ATen's grain runs on one thread: the
    weights equal a two-thread fit bit for bit (largest such size: 25 classes x 1280 features)."""
    from vlprompt.methods.linear_probe import ATEN_GRAIN, _fit_logistic_regression, one_thread

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        g = torch.Generator().manual_seed(0)
        n_cls, dim = 25, 1280
        assert n_cls * (dim + 1) < ATEN_GRAIN
        y = torch.arange(50) % n_cls
        x = torch.randn(n_cls, dim, generator=g)[y] + torch.randn(50, dim, generator=g)
        for c in (1e-2, 1e4):
            w2, b2 = _fit_logistic_regression(x, y, n_cls, c, 200)  # as before: two threads
            assert torch.get_num_threads() == 2
            w1, b1 = fit_logistic_regression(x, y, n_cls, c, 200)
            assert torch.equal(w1, w2) and torch.equal(b1, b2)
        with one_thread(x, n_cls):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2  # restored
        with one_thread(torch.zeros(10, 1280), 26):  # weights above the grain: threads kept
            assert torch.get_num_threads() == 2
        with one_thread(torch.zeros(2000, 16), 20):  # logits above the grain: threads kept
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_c_search_follows_grid_then_bisection():
    torch.manual_seed(0)
    x = torch.randn(40, 6)
    y = torch.arange(40) % 4
    best, trace = search_c((x, y), (x + 0.5 * torch.randn_like(x), y), 4, steps=2)
    tried = [c for c, _ in trace]
    assert tried[: len(C_GRID)] == list(C_GRID)
    assert len(tried) == len(C_GRID) + 2 * 2
    grid_best = C_GRID[max(range(len(C_GRID)), key=lambda i: trace[i][1])]
    assert tried[len(C_GRID)] == pytest.approx(grid_best / 10)
    assert tried[len(C_GRID) + 1] == pytest.approx(grid_best * 10)
    assert best in [c for c, _ in trace]


@pytest.mark.parametrize("dataset", ["imagenet", "dtd"])
def test_zeroshot_ensemble_templates_agree_between_api_and_protocol(dataset, tiny_bb, tmp_path, monkeypatch):
    """CoOp's ZeroshotCLIP2: the 7 select templates, plus the dataset's own unless it is ImageNet."""
    from data_fixtures import BUILDERS
    from vlprompt.data import IMAGENET_SELECT_TEMPLATES, TEMPLATES, load_dataset
    from vlprompt.protocols import runs

    expected = list(IMAGENET_SELECT_TEMPLATES) + ([] if dataset == "imagenet" else [TEMPLATES[dataset]])
    BUILDERS[dataset](tmp_path / "data")
    task = load_dataset(dataset, tmp_path / "data")
    api = vp.build_method("zeroshot", tiny_bb, task, ensemble=True)  # the user names no dataset and no template
    by_hand = vp.build_method("zeroshot", tiny_bb, task.classnames, template=task.template, ensemble=True,
                              dataset=task.name)
    seen = []
    monkeypatch.setattr(runs, "_BACKBONES", {("tiny-clip", None, False, "cpu"): tiny_bb})
    runs.train_run(runs.RunSpec("zeroshot", dataset, str(tmp_path / "data"), out=str(tmp_path / "run"), shots=None,
                                device="cpu", method_options={"ensemble": True}),
                   setup=lambda m: seen.append((m.templates(), m.config)))
    assert api.templates() == by_hand.templates() == seen[0][0] == expected
    assert len(expected) == (7 if dataset == "imagenet" else 8)
    assert api.config == seen[0][1]  # the same config as the protocol's, not only the same list
    assert torch.equal(api.text_features(), by_hand.text_features())
    single = vp.build_method("zeroshot", tiny_bb, task)  # no ensemble: the dataset's own template
    assert single.templates() == [TEMPLATES[dataset]]
    assert vp.build_method("zeroshot", tiny_bb, task, template="x {}.").templates() == ["x {}."]  # user wins


def test_build_method_from_task_fills_what_the_protocol_fills(tiny_bb, tmp_path):
    """KgCoOp on DTD takes KgCoOp's own DTD template; SoftCPT takes the task structure; CoOp takes names only."""
    from data_fixtures import BUILDERS
    from vlprompt.data import load_dataset, task_structure
    from vlprompt.data.templates import KGCOOP_DTD_TEMPLATE

    BUILDERS["dtd"](tmp_path / "data")
    task = load_dataset("dtd", tmp_path / "data")
    kg = vp.build_method("kgcoop+dept", tiny_bb, task, n_ctx=2)
    assert kg.inner.config.template == KGCOOP_DTD_TEMPLATE == "a photo of a {}, a type of texture."
    assert kg.classnames == task.classnames
    mt = vp.build_method("softcpt-nata", tiny_bb, task, n_ctx=2)
    assert mt.config.tasks == task_structure(task)
    with pytest.raises(ConfigError, match="unknown method"):
        vp.build_method("cop", tiny_bb, task)
