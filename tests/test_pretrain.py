"""tiny-clip pretraining: corpus determinism and leakage, a short training run, checkpoint loading."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("skimage")

import vlprompt as vp  # noqa: E402
from vlprompt.data.tiny.suite import generate_suite  # noqa: E402
from vlprompt.pretrain import PretrainCorpus, build_model, pretrain, pretrain_main  # noqa: E402
from vlprompt.pretrain.corpus import MIXTURE  # noqa: E402
from vlprompt.pretrain.train import DEFAULT_RECIPE, _optimizer  # noqa: E402

TASKS = ["shapes", "digits", "real_textures", "fashion", "animals", "counting"]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """A partial suite (the tasks whose sources the corpus shares) with its manifest."""
    return generate_suite(tmp_path_factory.mktemp("suite") / "tiny-suite", tasks=TASKS)


def test_corpus_is_deterministic(suite):
    a, b = PretrainCorpus(suite, seed=3), PretrainCorpus(suite, seed=3)
    for i in (0, 7, 123, 10_000, 2**30):
        x, y = a.item(i), b.item(i)
        assert x.caption == y.caption and x.source == y.source
        assert np.asarray(x.image).tobytes() == np.asarray(y.image).tobytes()
        assert x.image.size == (64, 64) and x.image.mode == "RGB"
    # order independence and a different seed giving a different stream
    assert a.item(5).caption == PretrainCorpus(suite, seed=3).item(5).caption
    other = PretrainCorpus(suite, seed=4)
    assert [other.item(i).caption for i in range(20)] != [a.item(i).caption for i in range(20)]
    imgs, caps = a.batch(range(4))
    assert imgs.shape == (4, 3, 64, 64) and imgs.dtype == torch.float32 and len(caps) == 4


def test_corpus_excludes_suite_images(suite):
    manifest = json.loads((suite / "manifest.json").read_text())
    test_ids = set(manifest["test_identities"])
    suite_ids = test_ids | set(manifest["trainable_identities"])
    corpus = PretrainCorpus(suite, seed=0)
    seen = {corpus.item(i).source for i in range(600)}
    assert {"scenes", "digits", "real_textures"} <= seen
    for i in range(600):
        assert corpus.item(i).identity not in suite_ids
    # the pools of indexed sources never contain an index the manifest lists
    for name in ("digits", "fashion", "animals"):
        if name in corpus.skipped or name not in corpus.mixture:
            continue
        key = {"digits": "sklearn-digits", "fashion": "fashion-mnist-t10k", "animals": "animal-mnist"}[name]
        banned = {int(s.rsplit(":", 1)[1]) for s in suite_ids if s.startswith(f"src:{key}:")}
        assert banned, name
        _, _, pools = corpus._indexed(name)
        assert not banned & set(np.concatenate(list(pools.values())).tolist()), name
    # test-only exclusion still removes every test image
    only_test = PretrainCorpus(suite, seed=0, exclude_splits=("test",))
    assert test_ids <= only_test.excluded


def test_corpus_skips_sources_missing_from_manifest(suite):
    manifest = json.loads((suite / "manifest.json").read_text())
    manifest["tasks"].pop("digits")
    corpus = PretrainCorpus(manifest, seed=0)
    assert "digits" in corpus.skipped and "digits" not in corpus.mixture
    assert abs(sum(corpus.mixture.values()) - 1) < 1e-9
    assert set(corpus.mixture) <= set(MIXTURE)


def test_optional_sources_switch(suite):
    """The corpus uses the installed Fashion-/Animal-MNIST by default (the shipped checkpoint's corpus);
    ``optional_sources=False`` leaves them out whatever is installed."""
    off = PretrainCorpus(suite, seed=0, optional_sources=False)
    assert {"fashion", "animals"} <= set(off.skipped) and not {"fashion", "animals"} & set(off.mixture)
    assert all("left out" in off.skipped[n] for n in ("fashion", "animals"))
    on = PretrainCorpus(suite, seed=0)
    manifest = json.loads((suite / "manifest.json").read_text())
    for name in ("fashion", "animals"):
        assert (name in on.mixture) == (name in manifest["tasks"])
    assert abs(sum(off.mixture.values()) - 1) < 1e-9
    assert DEFAULT_RECIPE["optional_sources"] is True


#: sha256 over "source|caption|identity\n" of the first 300 items of ``PretrainCorpus(suite, seed=0)`` on
#: the partial suite ``TASKS`` with Fashion-MNIST and Animal-MNIST installed, computed with the code of the
#: commit that shipped tiny-clip (9a12013). A change here changes what ``pretrain-tiny`` trains on.
SHIPPED_CORPUS_DIGEST = "16f6b5b1e676a0f48ee6dd6e19b689a63593c0f14578d70eb1e1d66903aa3778"


def test_corpus_stream_is_the_shipped_recipes(suite):
    from vlprompt.data.tiny import sources

    if not (sources.has_fashion() and sources.has_animals()):
        pytest.skip("needs Fashion-MNIST and Animal-MNIST (make install / make system-data)")
    corpus = PretrainCorpus(suite, seed=0)
    h = hashlib.sha256()
    for i in range(300):
        it = corpus.item(i)
        h.update(f"{it.source}|{it.caption}|{it.identity}\n".encode())
    assert h.hexdigest() == SHIPPED_CORPUS_DIGEST


def test_pretrain_warns_when_the_shipped_recipes_sources_are_missing(tmp_path):
    """A suite without Fashion-/Animal-MNIST: the corpus skips them and pretrain says the run will not be
    the shipped checkpoint; leaving them out on purpose (optional_sources=False) is silent."""
    small = generate_suite(tmp_path / "suite", tasks=["digits"])
    logs: list[str] = []
    pretrain(tmp_path / "a", steps=1, batch_size=4, eval_tasks=[], eval_every=0, manifest=small, log=logs.append)
    warn = [m for m in logs if m.startswith("warning:")]
    assert len(warn) == 1 and "fashion" in warn[0] and "animals" in warn[0] and "not reproduce" in warn[0]
    logs.clear()
    pretrain(tmp_path / "b", steps=1, batch_size=4, eval_tasks=[], eval_every=0, manifest=small,
             optional_sources=False, log=logs.append)
    assert not [m for m in logs if m.startswith("warning:")]


def test_pretrain_smoke_writes_all_files_and_loads(suite, tmp_path):
    out = tmp_path / "run"
    # the CI smoke test of the issue: `vlprompt pretrain-tiny --steps 50 --out DIR` (default batch 128)
    rc = pretrain_main(["--out", str(out), "--steps", "50", "--suite", str(suite),
                        "--eval-tasks", "shapes", "--eval-every", "50"])
    assert rc == 0
    for name in ("curve.jsonl", "tiny-clip.safetensors", "recipe.json", "metrics.json"):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 51))
    assert np.mean([r["loss"] for r in rows[-5:]]) < rows[0]["loss"]  # it learns
    assert all({"loss", "lr", "seconds"} <= set(r) for r in rows)
    assert "tiny/shapes" in rows[-1]["zeroshot_val"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["checkpoint_bytes"] <= 25 * 1024 * 1024
    bb = vp.load_backbone("tiny-clip", weights=out / "tiny-clip.safetensors")
    assert bb.weights_id.startswith("sha256:")
    from safetensors.torch import load_file

    saved = load_file(str(out / "tiny-clip.safetensors"))
    assert torch.allclose(bb.model.logit_scale.detach().float(), saved["logit_scale"].float())


def test_grouped_batches(suite):
    corpus = PretrainCorpus(suite, seed=0)
    src = corpus.batch_sources(7, 16, grouped=2)
    assert src == corpus.batch_sources(7, 16, grouped=2)  # deterministic per step
    assert src[8:] == [None] * 8 and len(set(src[:8])) == 2 and src[:4] == [src[0]] * 4
    assert corpus.batch_sources(7, 16, grouped=0) == [None] * 16
    items = [corpus.item(i, s) for i, s in zip(range(112, 128), src, strict=True)]
    assert all(it.source == s for it, s in zip(items[:8], src[:8], strict=True))
    with pytest.raises(ValueError, match="not in the mixture"):
        corpus.item(0, "nonsense")


def test_pretrain_is_deterministic(suite, tmp_path):
    kw = dict(steps=2, batch_size=8, seed=1, eval_tasks=(), manifest=suite, log=None)
    a = pretrain(tmp_path / "a", **kw)
    b = pretrain(tmp_path / "b", **kw)
    assert a["checkpoint_sha256"] == b["checkpoint_sha256"]


def test_loss_decreases_on_a_fixed_batch(suite):
    from open_clip.loss import ClipLoss

    torch.set_num_threads(2)
    model = build_model(0)
    import open_clip

    images, captions = PretrainCorpus(suite, seed=0).batch(range(16))
    tokens = open_clip.get_tokenizer("tiny-clip")(captions)
    opt = _optimizer(model, 1e-3, 0.0)
    loss_fn = ClipLoss()
    losses = []
    for _ in range(20):
        loss = loss_fn(*model(images, tokens))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
