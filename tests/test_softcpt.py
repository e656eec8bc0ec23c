"""SoftCPT: summed multi-task loss, meta-network contexts vs an independent computation, class
sampling, the split_dk format and task groups, per-task evaluation, the DePT plug-in, an end-to-end
multitask run on a tiny-suite group."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import vlprompt as vp
from data_fixtures import make_dtd, make_eurosat
from vlprompt.cli import main
from vlprompt.data import is_group_spec, load_task_group, read_split_dk
from vlprompt.engine.evaluate import task_group_accuracy
from vlprompt.errors import ConfigError, DatasetError
from vlprompt.methods.softcpt import multitask_cross_entropy, own_task_mask, sample_classes

NAMES = ["red circle", "green square", "blue triangle", "one object", "two objects"]
TASKS = [("shape recognition", 3), ("object counting", 2)]


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------ loss
def _paper_loss(logits, labels, sizes, keep=None):
    """Σ_t CE_sum(logits[samples of t][:, classes of t (kept)], y - offset_t) / B, task by task."""
    total, off = logits.new_zeros(()), 0
    for n in sizes:
        rows = (labels >= off) & (labels < off + n)
        if rows.any():
            cols = torch.arange(off, off + n)
            if keep is not None:
                cols = cols[keep[off:off + n]]
            target = torch.tensor([int((cols == y).nonzero()) for y in labels[rows]])
            total = total + F.cross_entropy(logits[rows][:, cols], target, reduction="sum")
        off += n
    return total / len(labels)


def test_multitask_loss_equals_paper_formula():
    torch.manual_seed(0)
    sizes = [2, 3, 2]
    class_task = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    logits = torch.randn(6, 7) * 3
    labels = torch.tensor([0, 4, 3, 6, 1, 2])  # task 2 has one sample, task 0 two, task 1 three
    assert torch.allclose(multitask_cross_entropy(logits, labels, class_task), _paper_loss(logits, labels, sizes))
    # other tasks' columns do not matter at all
    changed = logits.clone()
    changed[0, 2:] += 100.0
    assert torch.allclose(multitask_cross_entropy(changed, labels, class_task),
                          multitask_cross_entropy(logits, labels, class_task))
    # class sampling: the softmax runs over the kept classes of each task
    keep = torch.tensor([True, True, True, True, True, False, True])  # class 5 is no label in the batch
    assert torch.allclose(multitask_cross_entropy(logits, labels, class_task, keep),
                          _paper_loss(logits, labels, sizes, keep))
    mask = own_task_mask(labels, class_task)
    assert mask.sum(1).tolist() == [2, 3, 3, 2, 2, 3]


def test_model_ce_is_the_summed_multitask_loss(tiny_bb):
    torch.manual_seed(0)
    model = vp.build_method("softcpt-nata", tiny_bb, NAMES, tasks=TASKS, n_ctx=4)
    feats = torch.randn(5, tiny_bb.embed_dim)
    y = torch.tensor([0, 3, 4, 2, 1])
    out = model.train_outputs({"features": feats, "labels": y})
    with torch.no_grad():
        text = F.normalize(model.raw_text_features(), dim=-1)
        logits = tiny_bb.logit_scale * F.normalize(feats, dim=-1) @ text.t()
        assert torch.allclose(out["ce"], _paper_loss(logits, y, [3, 2]), atol=1e-5)
    assert torch.isinf(out["logits"][0, 3:]).all() and torch.isfinite(out["logits"][0, :3]).all()
    assert out["class_mask"][1].tolist() == [False, False, False, True, True]
    assert torch.equal(out["loss"], out["ce"])
    loss = model.loss({"features": feats, "labels": y})
    assert 0.0 <= float(loss["acc"]) <= 1.0


# ------------------------------------------------------------------------- meta network
def _open_clip_eot(bb, rows: list[torch.Tensor], eots: list[int]) -> torch.Tensor:
    """open_clip's text transformer over all 77 positions, EOT feature @ projection (no vlprompt seam)."""
    m = bb.model
    x = m.transformer(torch.stack(rows) + m.positional_embedding, attn_mask=m.attn_mask)
    x = m.ln_final(x)
    return x[torch.arange(len(rows)), torch.tensor(eots)] @ m.text_projection


def _prompt(bb, ctx: torch.Tensor, name: str) -> tuple[torch.Tensor, int]:
    """[SOS] ctx <name tokens> '.' [EOT] padding, assembled by hand from the token ids of "<name>."."""
    tok = bb.tokenize([name + "."])[0]
    eot = int(tok.argmax())
    with torch.no_grad():
        emb = bb.model.token_embedding(tok)
    full = torch.cat([emb[:1], ctx, emb[1:]])[: bb.context_length]
    return full, eot + ctx.shape[0]


@pytest.mark.parametrize("variant", ["softcpt-nata", "softcpt-nats", "softcpt-csts"])
def test_generated_contexts_and_text_features_match_independent_computation(tiny_bb, variant):
    torch.manual_seed(1)
    model = vp.build_method(variant, tiny_bb, NAMES, tasks=TASKS, n_ctx=3)
    L, W, D = 3, tiny_bb.text_width, tiny_bb.embed_dim
    owner = [0, 0, 0, 1, 1]
    with torch.no_grad():
        tctx = model.task_ctx if model.task_ctx.dim() == 3 else model.task_ctx.expand(2, -1, -1)
        z = _open_clip_eot(tiny_bb, *zip(*[_prompt(tiny_bb, tctx[t], n) for t, (n, _) in enumerate(TASKS)],
                                         strict=True))
        if model.config.class_aware:
            cctx = model.class_ctx if model.class_ctx.dim() == 3 else model.class_ctx.expand(5, -1, -1)
            h = _open_clip_eot(tiny_bb, *zip(*[_prompt(tiny_bb, cctx[c], n) for c, n in enumerate(NAMES)],
                                             strict=True))
            u = torch.cat([h, z[owner]], dim=1)
            assert model.proj.shape == (2 * D, L * W)
        else:
            u = z
            assert model.proj.shape == (D, L * W)
        ctx = (u @ model.proj).reshape(-1, L, W)
        assert torch.allclose(model.generated_context(), ctx, atol=1e-4)
        per_class = ctx if model.config.class_aware else ctx[owner]
        text = _open_clip_eot(tiny_bb, *zip(*[_prompt(tiny_bb, per_class[c], n) for c, n in enumerate(NAMES)],
                                            strict=True))
        assert torch.allclose(model.raw_text_features(), text, atol=1e-4)
    expected = {"softcpt-nata": (4, W), "softcpt-nats": (2, 4, W), "softcpt-csts": (2, 4, W)}[variant]
    assert tuple(model.task_ctx.shape) == expected
    if variant == "softcpt-csts":
        assert tuple(model.class_ctx.shape) == (5, 4, W)


def test_variant_defaults_and_parameter_count(tiny_bb):
    table = {"nata": (False, False, False), "nats": (False, False, True), "cata": (True, False, False),
             "csta": (True, True, False), "cats": (True, False, True), "csts": (True, True, True)}
    for code, (aware, class_csc, task_csc) in table.items():
        cfg = vp.build_method(f"softcpt-{code}", tiny_bb, NAMES, tasks=TASKS).config
        assert (cfg.class_aware, cfg.class_csc, cfg.task_csc) == (aware, class_csc, task_csc), code
        assert (cfg.n_ctx, cfg.task_n_ctx, cfg.pg_type, cfg.cls_sample_rate) == (16, 4, "lin", 0.0)
    model = vp.build_method("softcpt-nata", tiny_bb, NAMES, tasks=TASKS)
    d, w = tiny_bb.embed_dim, tiny_bb.text_width
    assert sum(p.numel() for p in model.trainable_parameters()) == d * 16 * w + 4 * w  # W + shared task context
    with pytest.raises(ConfigError, match="class_aware"):
        vp.build_method("softcpt-nata", tiny_bb, NAMES, pg_type="linmean")
    with pytest.raises(ConfigError, match="hold 5 classes"):
        vp.build_method("softcpt", tiny_bb, NAMES[:4], tasks=TASKS)
    for pg in ("linmean", "lincls"):  # input = (h + z)/2 or h alone: a D × L·W matrix
        m = vp.build_method("softcpt-cata", tiny_bb, NAMES, tasks=TASKS, pg_type=pg, n_ctx=2)
        assert m.proj.shape == (d, 2 * w) and m.generated_context().shape == (5, 2, w)


def test_coop_mt_hard_sharing_baselines(tiny_bb):
    torch.manual_seed(0)
    w = tiny_bb.text_width
    unified = vp.build_method("coop-mt", tiny_bb, NAMES, tasks=TASKS, n_ctx=3)
    assert unified.ctx.shape == (3, w)  # CoOp-MT: one context for all classes of all tasks
    per_task = vp.build_method("coop-mt", tiny_bb, NAMES, tasks=TASKS, n_ctx=3, task_csc=True)
    assert per_task.ctx.shape == (2, 3, w) and not torch.equal(per_task.ctx[0], per_task.ctx[1])
    per_class = vp.build_method("coop-mt", tiny_bb, NAMES, tasks=TASKS, n_ctx=3, csc=True)
    assert per_class.ctx.shape == (5, 3, w)
    owner = [0, 0, 0, 1, 1]
    feats = torch.randn(4, tiny_bb.embed_dim)
    y = torch.tensor([4, 0, 2, 3])
    out = per_task.train_outputs({"features": feats, "labels": y})
    with torch.no_grad():
        text = _open_clip_eot(tiny_bb, *zip(*[_prompt(tiny_bb, per_task.ctx[owner[c]], n) for c, n in enumerate(NAMES)],
                                            strict=True))
        assert torch.allclose(per_task.raw_text_features(), text, atol=1e-4)
        logits = tiny_bb.logit_scale * F.normalize(feats, dim=-1) @ F.normalize(text, dim=-1).t()
        assert torch.allclose(out["ce"], _paper_loss(logits, y, [3, 2]), atol=1e-5)
    with pytest.raises(ConfigError, match="task_csc"):
        per_task.set_classnames(["a", "b"], tasks=[("letters", 2)])
    unified.set_classnames(["a", "b"], tasks=[("letters", 2)])
    assert unified.logits_from_features(feats).shape == (4, 2)


# ------------------------------------------------------------------------- class sampling
def test_class_sampling_keeps_positives_and_a_fraction_of_negatives(tiny_bb):
    class_task = torch.tensor([0] * 10 + [1] * 6 + [2] * 4)
    labels = torch.tensor([1, 3, 12])  # tasks 0 and 1 present, task 2 absent
    keep = sample_classes(labels, class_task, 0.25, torch.Generator().manual_seed(0))
    assert keep[labels].all()
    assert int(keep[:10].sum()) == 2 + math.ceil(0.25 * 8)
    assert int(keep[10:16].sum()) == 1 + math.ceil(0.25 * 5)
    assert not keep[16:].any()
    torch.manual_seed(0)
    model = vp.build_method("softcpt-cata", tiny_bb, NAMES, tasks=TASKS, n_ctx=2, cls_sample_rate=0.5)
    model.train()
    feats = torch.randn(2, tiny_bb.embed_dim)
    y = torch.tensor([0, 0])  # only task 0: classes 3, 4 are never encoded
    out = model.train_outputs({"features": feats, "labels": y})
    kept = out["class_mask"][0]
    assert kept[0] and int(kept.sum()) == 1 + math.ceil(0.5 * 2) and not kept[3:].any()
    assert (out["text"][~kept] == 0).all()
    with torch.no_grad():
        full = model.raw_text_features()
        assert torch.allclose(out["text"][kept], full[kept], atol=1e-5)
        logits = tiny_bb.logit_scale * F.normalize(feats, dim=-1) @ F.normalize(full, dim=-1).t()
        assert torch.allclose(out["ce"], _paper_loss(logits, y, [3, 2], kept), atol=1e-5)
    model.eval()  # evaluation always encodes every class
    assert model.train_outputs({"features": feats, "labels": y})["class_mask"][0].sum() == 3


# ------------------------------------------------------------------------- re-targeting, save/load
def test_save_load_and_retarget(tiny_bb, tmp_path):
    torch.manual_seed(0)
    model = vp.build_method("softcpt-nats", tiny_bb, NAMES, tasks=TASKS, n_ctx=2)
    feats = torch.randn(3, tiny_bb.embed_dim)
    with torch.no_grad():
        model.proj.add_(0.05 * torch.randn_like(model.proj))
        before = model.logits_from_features(feats)
    vp.save_prompt(model, tmp_path / "p.safetensors")
    meta = json.loads((tmp_path / "p.json").read_text())
    assert meta["config"]["tasks"] == [["shape recognition", 3], ["object counting", 2]]
    loaded = vp.load_prompt(tmp_path / "p.safetensors", tiny_bb)
    assert loaded.config.tasks == tuple(TASKS)
    assert torch.allclose(loaded.logits_from_features(feats), before, atol=1e-5)
    # same number of tasks, other classes: fine; another number of tasks needs a shared task context
    loaded.set_classnames(["a", "b", "c"], tasks=[("letters", 2), ("more letters", 1)])
    assert loaded.logits_from_features(feats).shape == (3, 3)
    with pytest.raises(ConfigError, match="task_csc"):
        loaded.set_classnames(["a"], tasks=[("letters", 1)])
    with pytest.raises(ConfigError, match="needs tasks"):
        loaded.set_classnames(["a", "b"])
    shared = vp.build_method("softcpt-nata", tiny_bb, NAMES, tasks=TASKS, n_ctx=2)
    shared.set_classnames(["cat", "dog"], tasks=[("animal recognition", 2)])  # an unseen task name
    assert shared.config.tasks == (("animal recognition", 2),)
    assert shared.logits_from_features(feats).shape == (3, 2)


# ------------------------------------------------------------------------- DePT plug-in
def test_softcpt_nata_dept_forward_backward(tiny_bb):
    torch.manual_seed(0)
    model = vp.build_method("softcpt-nata+dept", tiny_bb, NAMES, tasks=TASKS, n_ctx=2, dept_weight=0.7)
    with torch.no_grad():
        model.film_img.gamma.normal_()
        model.head.weight.mul_(5)
    feats = torch.randn(4, tiny_bb.embed_dim)
    y = torch.tensor([0, 4, 2, 3])
    out = model.train_outputs({"features": feats, "labels": y})
    out["loss"].backward()
    params = model.trainable_parameters()
    assert {id(p) for p in params} >= {id(model.inner.proj), id(model.inner.task_ctx), id(model.head.weight)}
    assert all(p.grad is not None for p in params)
    assert all(p.grad is None for p in tiny_bb.parameters())
    with torch.no_grad():
        own = own_task_mask(y, model.inner.class_task)
        text = model.inner.raw_text_features()
        z_txt = model.head(text[y] * model.film_text.gamma + model.film_text.beta)
        z_img = model.head(feats * model.film_img.gamma + model.film_img.beta)
        z = torch.cat([z_txt, z_img]).masked_fill(~torch.cat([own, own]), float("-inf"))
        cat_ce = F.cross_entropy(z, torch.cat([y, y]))  # the CAT head is also restricted to each task
        assert torch.allclose(out["cat_ce"], cat_ce, atol=1e-5)
        assert torch.allclose(out["loss"], 0.3 * out["ce"] + 0.7 * cat_ce, atol=1e-5)
        fused = model.logits_from_features(feats)  # the group's own classes: CAT head active
        itm = tiny_bb.logit_scale * F.normalize(feats, dim=-1) @ F.normalize(text, dim=-1).t()
        assert torch.allclose(fused, 0.3 * itm + 0.7 * z_img, atol=1e-4)
    assert model.logits_from_features(feats).shape == (4, 5)
    assert [g["lr"] for g in model.param_groups(0.002)] == [0.002, pytest.approx(0.002 * 6.5)]


def test_dept_head_is_kept_with_repeated_class_names(tiny_bb):
    names = ["red", "blue", "red", "green"]  # the same class name in two tasks
    model = vp.build_method("softcpt-nata+dept", tiny_bb, names, tasks=[("colour", 2), ("paint", 2)], n_ctx=2)
    assert model.head_rows == [0, 1, 2, 3]


# ------------------------------------------------------------------------- per-task evaluation
def test_task_group_accuracy_uses_each_tasks_own_classes():
    tasks = [{"name": "a", "offset": 0, "num_classes": 2, "metric": "overall_acc"},
             {"name": "b", "offset": 2, "num_classes": 3, "metric": "mean_acc"}]
    logits = torch.tensor([
        [1.0, 0.0, 9.0, 9.0, 9.0],   # a, y=0: right within task a (global argmax is in b)
        [1.0, 0.0, 0.0, 0.0, 0.0],   # a, y=1: wrong
        [0.0, 0.0, 1.0, 0.0, 0.0],   # b, y=2: right
        [0.0, 0.0, 1.0, 0.0, 0.0],   # b, y=2: right
        [0.0, 0.0, 1.0, 0.0, 0.0],   # b, y=3: wrong
        [9.0, 9.0, 0.0, 0.0, 1.0],   # b, y=4: right
    ])
    labels = torch.tensor([0, 1, 2, 2, 3, 4])
    acc = task_group_accuracy(logits, labels, tasks)
    assert acc["a"] == pytest.approx(50.0)
    assert acc["b"] == pytest.approx(100 * (1.0 + 0.0 + 1.0) / 3)  # mean per-class recall, not 3/4


# ------------------------------------------------------------------------- split_dk and groups
def _write_images(root, rels):
    for rel in rels:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (len(rel) * 7 % 255, 40, 90)).save(path)


@pytest.fixture
def dk_dataset(tmp_path):
    """A two-task SoftCPT split file (Fashion-20 style: one file, per-task class lists)."""
    folder = tmp_path / "fashion"
    entries = {"train": [], "val": [], "test": []}
    cnames = [["t_shirt", "dress"], ["plain", "striped", "dotted"]]
    for t, names in enumerate(cnames):
        for c in range(len(names)):
            for split, n in (("train", 3), ("val", 1), ("test", 2)):
                for i in range(n):
                    entries[split].append([f"{t}/{c}/{split}_{i}.jpg", [c], [t]])
    _write_images(folder / "images", [e[0] for s in entries.values() for e in s])
    meta = {"taskid2cname": cnames, "taskid2tname": ["clothing_type", "pattern recognition"],
            "taskid2desc": ["", ""], "taskid2type": ["sl", "sl"], "taskid2metric": ["mean_acc", "overall_acc"]}
    path = folder / "split_dk_Fashion.json"
    path.write_text(json.dumps({**entries, "meta": meta}))
    return path


def test_split_dk_file_is_read_exactly(dk_dataset):
    a, b = read_split_dk(dk_dataset)
    assert (a.name, b.name) == ("Fashion/clothing type", "Fashion/pattern recognition")
    assert a.classnames == ["t shirt", "dress"] and b.classnames == ["plain", "striped", "dotted"]
    assert a.extra["task_name"] == "clothing type" and a.extra["metric"] == "mean_acc"
    assert (len(a.train), len(a.val), len(a.test), len(b.train)) == (6, 2, 4, 9)
    first = b.train[3]
    assert first.path == str(dk_dataset.parent / "images" / "1" / "1" / "train_0.jpg")
    assert (first.label, first.classname) == (1, "striped")
    group = load_task_group(dk_dataset, shots=2, seed=1)
    assert group.name == "Fashion" and group.classnames == a.classnames + b.classnames
    assert [(t["offset"], t["num_classes"], t["metric"]) for t in group.extra["tasks"]] == [
        (0, 2, "mean_acc"), (2, 3, "overall_acc")]
    assert len(group.train) == 5 * 2 and len(group.test) == 10
    assert sorted({s.label for s in group.train}) == [0, 1, 2, 3, 4]
    assert all(group.classnames[s.label] == s.classname for s in group.test)
    # the same through load_dataset, and per-task base/new halves (ceil(n/2) of each task)
    base = vp.load_dataset(str(dk_dataset), None, shots=1, subsample="base")
    assert base.classnames == ["t shirt", "plain", "striped"]
    assert [t["num_classes"] for t in base.extra["tasks"]] == [1, 2]


def test_split_dk_single_task_with_task_name_file_and_errors(tmp_path):
    folder = tmp_path / "ucf"
    _write_images(folder / "images", ["a/0.jpg", "b/0.jpg"])
    (folder / "task_name.txt").write_text("human action recognition\n")
    data = {"train": [["a/0.jpg", [0], [0]], ["b/0.jpg", 1, 0]], "val": [], "test": [["a/0.jpg", [0], [0]]],
            "meta": {"taskid2cname": [["Apply_Eye_Makeup", "Archery"]], "taskid2desc": [""]}}
    path = folder / "split_dk_UCF.json"  # no taskid2type / taskid2tname (the reference crashes on re-read)
    path.write_text(json.dumps(data))
    (task,) = read_split_dk(path)
    assert task.extra["task_name"] == "human action recognition" and task.extra["metric"] == "overall_acc"
    assert task.classnames == ["Apply Eye Makeup", "Archery"] and task.name == "UCF"
    bad = {**data, "train": [["a/0.jpg", [0, 1], [0]]]}
    path.write_text(json.dumps(bad))
    with pytest.raises(DatasetError, match="single-label"):
        read_split_dk(path)
    path.write_text(json.dumps({**data, "meta": {**data["meta"], "taskid2type": ["ml"]}}))
    with pytest.raises(DatasetError, match="'sl'"):
        read_split_dk(path)
    path.write_text(json.dumps({k: v for k, v in data.items() if k != "meta"}))
    with pytest.raises(DatasetError, match="'meta'"):
        read_split_dk(path)


def test_yaml_group_mixes_registered_datasets_and_split_dk(tmp_path, shapes_root, dk_dataset):
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(
        "name: mixed\n"
        "tasks:\n"
        f"  - {{dataset: imagefolder, root: {shapes_root}, task_name: shape recognition, metric: mean_acc}}\n"
        f"  - split_dk: {dk_dataset}\n"
    )
    assert is_group_spec(str(cfg)) and is_group_spec("tiny-group/real") and is_group_spec("a,b")
    assert not is_group_spec("eurosat")
    group = vp.load_dataset(str(cfg), None, shots=2, seed=3)
    tasks = group.extra["tasks"]
    assert group.name == "mixed" and [t["task_name"] for t in tasks] == [
        "shape recognition", "clothing type", "pattern recognition"]
    n = len(vp.load_dataset("imagefolder", shapes_root).classnames)
    assert [t["offset"] for t in tasks] == [0, n, n + 2] and tasks[0]["metric"] == "mean_acc"
    assert vp.task_structure(group) == (("shape recognition", n), ("clothing type", 2), ("pattern recognition", 3))
    lst = load_task_group([{"dataset": "imagefolder", "root": str(shapes_root)}], shots=1)
    assert lst.extra["tasks"][0]["task_name"] == "imagefolder classification"
    with pytest.raises(ConfigError, match="unknown key"):
        load_task_group([{"dataset": "imagefolder", "roots": "x"}])
    with pytest.raises(ConfigError, match="no task group"):
        load_task_group("tiny-group/nope", tmp_path / "empty")


def test_coop_datasets_in_a_group_default_split_and_split_dk(tmp_path):
    make_dtd(tmp_path)
    euro = make_eurosat(tmp_path)
    (tmp_path / "dtd" / "task_name.txt").write_text("describable texture recognition\n")
    group = vp.load_dataset("dtd,eurosat", tmp_path, shots=1)
    dtd, eurosat = group.extra["tasks"]
    assert (dtd["task_name"], eurosat["task_name"]) == ("describable texture recognition",
                                                        "satellite image classification")
    assert group.name == "dtd+eurosat" and (dtd["num_classes"], eurosat["num_classes"]) == (2, 4)
    # split: dk reads the dataset folder's split_dk file (paths relative to the loader's image folder)
    zhou = json.loads((euro / "split_zhou_EuroSAT.json").read_text())
    dk = {split: [[p, [y], [0]] for p, y, _ in zhou[split]] for split in ("train", "val", "test")}
    dk["test"] = dk["test"][:2]
    dk["meta"] = {"taskid2cname": [["a", "b", "c", "d"]], "taskid2tname": ["land use"],
                  "taskid2metric": ["mean_acc"]}
    (euro / "split_dk_EuroSAT.json").write_text(json.dumps(dk))
    cfg = tmp_path / "g.yaml"
    cfg.write_text(f"root: {tmp_path}\ntasks:\n  - dtd\n  - {{dataset: eurosat, split: dk}}\n")
    group = vp.load_dataset(str(cfg), None)
    info = group.extra["tasks"][1]
    assert (info["name"], info["task_name"], info["metric"]) == ("eurosat", "land use", "mean_acc")
    assert group.classnames[2:] == ["a", "b", "c", "d"] and len([s for s in group.test if s.label >= 2]) == 2
    assert all(Path(s.path).is_file() for s in group.train + group.test)


# SoftCPT's renames, as written in its dataset classes (datasets/eurosat.py, datasets/caltech101.py); the
# classes apply them after reading the split file, and the prompt learner then replaces "_" by " ".
REF_EUROSAT_NEW_CNAMES = {
    "AnnualCrop": "Annual Crop Land", "Forest": "Forest", "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road", "Industrial": "Industrial Buildings", "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land", "Residential": "Residential Buildings", "River": "River",
    "SeaLake": "Sea or Lake",
}
REF_CALTECH_NEW_CNAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}


def _reference_names(raw, renames):
    return [(renames[n] if n in renames else n).replace("_", " ") for n in raw]


def _dk_file(folder, name, raw, image_subdir, per_class=2):
    """A one-task split_dk_<name>.json with raw class names; images under ``folder/image_subdir``."""
    entries = {split: [[f"{c}/{split}_{i}.jpg", [k], [0]] for k, c in enumerate(raw) for i in range(n)]
               for split, n in (("train", per_class), ("val", 1), ("test", 1))}
    if image_subdir is not None:
        _write_images(folder / image_subdir, [e[0] for v in entries.values() for e in v])
    path = folder / f"split_dk_{name}.json"
    meta = {"taskid2cname": [raw], "taskid2tname": [f"{name} task"], "taskid2desc": [""]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**entries, "meta": meta}))
    return path


@pytest.mark.parametrize("name, subdir, renames", [("EuroSAT", "2750", REF_EUROSAT_NEW_CNAMES),
                                                   ("Caltech101", "101_ObjectCategories", REF_CALTECH_NEW_CNAMES)])
def test_split_dk_renames_and_image_folder_as_the_reference(tmp_path, name, subdir, renames):
    raw = [*list(renames)[:4], "some_other_class"]
    path = _dk_file(tmp_path / name.lower(), name, raw, subdir)
    (task,) = read_split_dk(path)  # a bare file, as `--groups .../split_dk_EuroSAT.json`
    assert task.classnames == _reference_names(raw, renames)
    # the reference's read_split joins the entry paths to the dataset class's image folder
    assert task.train[0].path == str(path.parent / subdir / raw[0] / "train_0.jpg")
    group = vp.load_dataset(str(path), None, shots=1)
    assert group.classnames == _reference_names(raw, renames)
    # a registered dataset's `split: dk` member is renamed by its dataset, whatever the file's name
    if name == "EuroSAT":
        other = _dk_file(tmp_path / "x", "mine", raw, subdir)
        (plain,) = read_split_dk(other, other.parent / subdir)
        assert plain.classnames == [n.replace("_", " ") for n in raw]  # no SoftCPT class reads split_dk_mine
        (renamed,) = read_split_dk(other, other.parent / subdir, dataset="eurosat")
        assert renamed.classnames == _reference_names(raw, renames)


def test_split_dk_images_beside_the_file_is_one_error(tmp_path):
    raw = ["AnnualCrop", "Forest"]
    path = _dk_file(tmp_path / "eurosat", "EuroSAT", raw, "")  # images in the JSON's folder, not 2750/
    with pytest.raises(DatasetError, match=r"8 of 8 listed images do not exist under .*2750'.*'2750/' beside"):
        read_split_dk(path)
    (task,) = read_split_dk(path, image_dir=path.parent)  # image_dir says where they are
    assert Path(task.train[0].path).is_file()


def test_multitask_checks_every_group_before_training(tiny_suite, cache_dir, tmp_path, capsys):
    bad = _dk_file(tmp_path / "eurosat", "EuroSAT", ["AnnualCrop", "Forest"], "")
    out = tmp_path / "mt"
    argv = ["multitask", "--method", "softcpt-nata", "--groups", "tiny-group/synthetic", str(bad),
            "--root", str(tiny_suite), "--shots-list", "1", "--seeds", "1", "--out", str(out), "--epochs", "1",
            "--cache-dir", cache_dir, "-o", "n_ctx=2"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "do not exist under" in err[0] and "2750" in err[0]
    assert not (out / "tiny-group_synthetic").exists()  # the good group did not train first


# ------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory):
    """A partial tiny suite with two tasks of the ``synthetic`` group (procedural, fast)."""
    from vlprompt.data.tiny.suite import generate_suite

    return generate_suite(tmp_path_factory.mktemp("suite") / "tiny-suite", tasks=["shapes", "colours"])


def test_multitask_cli_on_a_tiny_group(tiny_suite, cache_dir, tmp_path, capsys):
    def args(method, out):
        return ["multitask", "--method", method, "--groups", "tiny-group/synthetic", "--root", str(tiny_suite),
                "--shots-list", "2", "--seeds", "1", "--out", str(out), "--epochs", "2", "--batch-size", "8",
                "--lr", "0.002", "--cache-dir", cache_dir, "-o", "n_ctx=4"]

    out = tmp_path / "mt"
    assert main(args("softcpt-nata", out)) == 0
    run = out / "tiny-group_synthetic" / "shots2" / "seed1"
    res = json.loads((run / "results.json").read_text())
    assert res["protocol"] == "multitask" and res["dataset"] == "tiny-group/synthetic"
    assert set(res["per_task"]) == {"tiny/shapes", "tiny/colours"} and res["num_classes"] == 20
    assert res["acc"] == pytest.approx(sum(res["per_task"].values()) / 2)
    summary = json.loads((out / "multitask.json").read_text())
    assert summary["average"]["2-shot"] == pytest.approx(res["acc"])
    assert [r["task"] for r in summary["rows"]][:2] == ["tiny-group/synthetic / tiny/shapes",
                                                        "tiny-group/synthetic / tiny/colours"]
    split = json.loads((run / "split.json").read_text())
    assert len(split["train"]) == 40 and not split["train"][0][0].startswith("/")
    # the saved prompt reloads with its task structure and gives the same group accuracy
    group = vp.load_dataset("tiny-group/synthetic", str(tiny_suite), shots=2, seed=1)
    model = vp.load_prompt(run)
    assert model.config.tasks == (("shape recognition", 10), ("colour recognition", 10))
    assert vp.evaluate(model, group, cache_dir=cache_dir) == pytest.approx(res["acc"], abs=1e-4)
    # and DePT composes in the same protocol
    assert main(args("softcpt-nata+dept", tmp_path / "mt_dept")) == 0
    dept = json.loads((tmp_path / "mt_dept" / "tiny-group_synthetic" / "shots2" / "seed1" / "results.json").read_text())
    assert dept["method"] == "softcpt-nata+dept" and set(dept["per_task"]) == {"tiny/shapes", "tiny/colours"}


def test_base2new_on_a_tiny_group(tiny_suite, cache_dir, tmp_path):
    """Base classes of every task for training, then the prompt re-targeted to every task's new classes."""
    from vlprompt.protocols import RunSpec, base2new

    spec = RunSpec("softcpt-nata+dept", "", str(tiny_suite), out=str(tmp_path / "b2n"), shots=2,
                   method_options={"n_ctx": 4},
                   train_options={"epochs": 1, "batch_size": 8, "cache_dir": cache_dir, "precision": "fp32"})
    summary = base2new(spec, ["tiny-group/synthetic"], seeds=[1], cache_dir=cache_dir)
    res = json.loads((tmp_path / "b2n" / "tiny-group/synthetic" / "seed1" / "results.json").read_text())
    assert res["num_classes"] == 10 and set(res["per_task"]) == {"tiny/shapes", "tiny/colours"}
    assert res["base_acc"] == pytest.approx(sum(res["per_task"].values()) / 2)
    assert 0 <= res["new_acc"] <= 100 and summary["average"]["new_acc"] == pytest.approx(res["new_acc"])
