"""DAPT: loss terms vs their formulas, paired transform, Grad-CAM, mask layouts, plug-in, protocols."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import vlprompt as vp
from vlprompt.data.masks import DiskMasks, PairedTrainTransform, labels_to_foreground, mask_to_array, read_mask
from vlprompt.data.selection import herding_select, kcenter_greedy, select_indices
from vlprompt.data.task import Sample
from vlprompt.data.transforms import CLIP_MEAN, CLIP_STD
from vlprompt.errors import ConfigError, DatasetError
from vlprompt.methods.dapt import (
    BACKGROUND_CLASSES,
    DAPTConfig,
    bg_alignment_loss,
    fg_alignment_loss,
    gradcam_from_block,
    loss_weights,
    pull_push_loss,
)
from vlprompt.protocols import RunSpec, base2new, data_efficient, few_shot

NAMES = ["red circle", "green_square", "blue triangle"]
DEPTH = 2  # tiny-clip: 3 text / 4 vision blocks


def _unit(*shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


# ------------------------------------------------------------------ loss terms vs formulas
def test_pull_push_is_the_triplet_formula_with_stop_gradients():
    torch.manual_seed(0)
    zi, zf, zb = _unit(6, 8).requires_grad_(True), _unit(6, 8).requires_grad_(True), _unit(6, 8).requires_grad_(True)
    ours = pull_push_loss(zi, zf, zb, margin=1.5)
    d_p = torch.sqrt(((zi - zf) ** 2).sum(-1))
    d_n = torch.sqrt(((zi - zb) ** 2).sum(-1))
    ref = torch.clamp(d_p - d_n + 1.5, min=0).mean()
    assert torch.allclose(ours, ref, atol=1e-5)
    ours.backward()
    assert zi.grad is not None and zf.grad is None and zb.grad is None  # positive/negative are stop-grad
    # a hinge that is inactive for every row gives zero
    assert float(pull_push_loss(zi, zi.detach(), -zi.detach(), margin=1.5)) == pytest.approx(0.0, abs=1e-5)


def test_fg_and_bg_alignment_formulas():
    torch.manual_seed(1)
    zf = _unit(5, 8).requires_grad_(True)
    zt = _unit(3, 8).requires_grad_(True)
    y = torch.tensor([0, 2, 1, 1, 0])
    ours = fg_alignment_loss(zf, zt, y, 100.0)
    logits = 100.0 * zf.detach() @ zt.t()
    ref = -(logits.log_softmax(-1)[torch.arange(5), y]).mean()
    assert torch.allclose(ours, ref, atol=1e-10)
    ours.backward()
    assert zf.grad is None and zt.grad is not None  # trains the text side only

    zb = _unit(5, 8).requires_grad_(True)
    ztb = _unit(32, 8)
    lb = bg_alignment_loss(zb, ztb, 100.0)
    lg = 100.0 * zb @ ztb.t()
    yhat = lg.argmax(-1)
    assert torch.allclose(lb, -(lg.log_softmax(-1)[torch.arange(5), yhat]).mean(), atol=1e-10)
    lb.backward()
    assert zb.grad is not None


def test_loss_schedules():
    paper = DAPTConfig()
    ref = DAPTConfig(loss_schedule="reference")
    assert (paper.weight_visual, paper.weight_fg, paper.weight_bg, paper.margin) == (0.8, 0.1, 0.5, 1.5)
    assert all(loss_weights(paper, e) == (0.8, 0.1, 0.5) for e in range(12))
    assert [loss_weights(ref, e) for e in (0, 6, 7, 9)] == [(0.8, 0, 0), (0.8, 0, 0), (0, 0.1, 0.5), (0, 0.1, 0.5)]
    assert len(BACKGROUND_CLASSES) == 32 and paper.background_template == "a clean origami {}."
    with pytest.raises(ConfigError):
        DAPTConfig(loss_schedule="mixed")


@pytest.mark.parametrize("schedule_epoch", [("paper", 0), ("reference", 0), ("reference", 8)])
def test_total_loss_equals_independent_computation(tiny_bb, schedule_epoch):
    schedule, epoch = schedule_epoch
    torch.manual_seed(0)
    m = vp.build_method("dapt", tiny_bb, NAMES, prompt_depth=DEPTH, loss_schedule=schedule)
    m.epoch = epoch
    x = torch.randn(4, 3, 64, 64)
    y = torch.tensor([0, 1, 2, 0])
    mask = (torch.rand(4, 1, 64, 64) > 0.5).float()
    out = m.train_outputs({"images": x, "labels": y, "masks": mask})
    with torch.no_grad():
        p = m.visual_prompts()

        def enc(images):
            return F.normalize(tiny_bb.encode_image(images, p), dim=-1)

        zi, zf, zb = enc(x), enc(x * mask), enc(x * (1 - mask))
        cls = tiny_bb.encode_text(m.prompts.assemble(m.ctx), m.prompts.eot_idx, deep_prompts=m.deep_text_prompts())
        bg = tiny_bb.encode_text(m.bg_embeds, m.bg_eot, deep_prompts=m.deep_text_prompts())
        zt, ztb = F.normalize(cls, dim=-1), F.normalize(bg, dim=-1)
        s = tiny_bb.logit_scale
        ce = F.cross_entropy(s * zi @ zt.t(), y)
        lv = torch.clamp((zi - zf).norm(dim=-1) - (zi - zb).norm(dim=-1) + 1.5, min=0).mean()
        lf = F.cross_entropy(s * zf @ zt.t(), y)
        lbg = s * zb @ ztb.t()
        lb = F.cross_entropy(lbg, lbg.argmax(-1))
        wv, wf, wb = loss_weights(m.config, epoch)
        total = ce + wv * lv + wf * lf + wb * lb
    assert out["logits"].shape == (4, 3)  # class columns only: the 32 background prompts are not classes
    assert m.bg_embeds.shape[0] == 32
    assert torch.allclose(out["ce"], ce, atol=1e-4)
    assert torch.allclose(out["loss"], total, atol=1e-4)


def test_dapt_and_dapt_dept_backward_only_trainable(tiny_bb):
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([0, 2])
    mask = (torch.rand(2, 1, 64, 64) > 0.5).float()
    for name in ("dapt", "dapt+dept"):
        model = vp.build_method(name, tiny_bb, NAMES, prompt_depth=DEPTH)
        assert model.mask_source == "data"
        model.loss({"images": x, "labels": y, "masks": mask})["loss"].backward()
        params = model.trainable_parameters()
        assert params and all(p.grad is not None for p in params)
        assert all(p.grad is None for p in tiny_bb.parameters())
        with pytest.raises(ConfigError, match="masks"):
            model.loss({"images": x, "labels": y})
    assert model(x).shape == (2, 3)


# ------------------------------------------------------------------ paired transform
def test_paired_transform_keeps_image_and_mask_aligned():
    arr = np.zeros((48, 80), np.uint8)
    arr[5:30, 10:35] = 1  # an off-centre rectangle: crops and flips both move it
    img = Image.fromarray(np.stack([arr * 255] * 3, -1).astype(np.uint8))
    mask = Image.fromarray(arr * 255, "L").resize((40, 24), Image.NEAREST)  # masks are resized to the image
    t = PairedTrainTransform(32)
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    agreements, seen = [], set()
    for seed in range(25):
        torch.manual_seed(seed)
        x, m = t(img, mask)
        assert x.shape == (3, 32, 32) and m.shape == (1, 32, 32)
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        white = ((x * std + mean).mean(0) > 0.5).float()
        agreements.append(float((white == m[0]).float().mean()))
        torch.manual_seed(seed)  # same seed: same crop and flip
        x2, m2 = t(img, mask)
        assert torch.equal(x, x2) and torch.equal(m, m2)
        seen.add(m.numpy().tobytes())
    assert min(agreements) > 0.9 and float(np.mean(agreements)) > 0.97
    assert len(seen) > 10  # the crops really are random


# ------------------------------------------------------------------ Grad-CAM
def test_gradcam_from_block_formula():
    b, c, rows, cols = 2, 4, 2, 2
    feat = torch.zeros(b, 1 + rows * cols + 2, c)
    feat[:, 1:5, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    grad = torch.zeros_like(feat)
    grad[:, 1:5, 0] = 1.0  # channel weight 1 on channel 0 → CAM = [1, 2, 3, 4] on the 2×2 grid
    cam = gradcam_from_block(feat, grad, 1, (rows, cols), (2, 2), threshold=0.5)
    expected = torch.tensor([[0.0, 0.5], [0.75, 1.0]])  # /max, 0.25 < 0.5 zeroed
    assert torch.allclose(cam[0], expected)
    negative = gradcam_from_block(feat, -grad, 1, (rows, cols), (8, 8))
    assert float(negative.abs().max()) == 0.0  # ReLU
    up = gradcam_from_block(feat, grad, 1, (rows, cols), (8, 8), threshold=0.0)
    assert up.shape == (2, 8, 8) and float(up.max()) == pytest.approx(1.0)


def test_gradcam_masks_on_tiny_model(tiny_bb):
    torch.manual_seed(0)
    model = vp.build_method("dapt-g", tiny_bb, NAMES, prompt_depth=DEPTH)
    assert model.config.masks == "gradcam" and model.mask_source == "model"
    x, y = torch.randn(3, 3, 64, 64), torch.tensor([0, 1, 2])
    cam = model.gradcam_masks(x, y)
    assert cam.shape == (3, 64, 64)
    nz = cam[cam > 0]
    assert float(nz.min()) >= 0.5 and float(cam.amax()) == pytest.approx(1.0)
    assert all(p.grad is None for p in model.trainable_parameters())  # the CAM pass trains nothing
    # the seam's block input is the tensor the last block consumes
    out = tiny_bb.encode_image(x, model.visual_prompts(), return_block_input=True)
    assert out.block_input.shape == (3, 1 + 64 + model.n_ctx, tiny_bb.vision_width)
    assert out.grid == (8, 8) and out.patch_start == 1
    assert torch.allclose(out.pooled, tiny_bb.encode_image(x, model.visual_prompts()), atol=1e-6)
    # a batch without masks falls back to the batch's own Grad-CAM masks
    model.loss({"images": x, "labels": y})["loss"].backward()


# ------------------------------------------------------------------ masks on disk
def _write(path, arr, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).convert(mode).save(path)


def test_mask_layouts_and_values(tmp_path):
    ds = tmp_path / "food-101"
    img = np.full((10, 12, 3), 128, np.uint8)
    label_map = np.zeros((10, 12), np.uint8)
    label_map[2:5, 3:6] = 7   # foreground object id
    label_map[0, :] = 255     # void → background, as the reference
    binary = np.zeros((10, 12), np.uint8)
    binary[:5] = 255
    samples = []
    for cls, name in (("apple_pie", "a1.jpg"), ("pizza", "p1.jpg"), ("pizza", "p2.jpg")):
        _write(ds / "images" / cls / name, img, "RGB")
        samples.append(Sample(str(ds / "images" / cls / name), 0, cls))
    _write(ds / "mask" / "apple_pie" / "a1.png", label_map)     # DAPT: mask/<class>/<file>
    _write(ds / "mask" / "p1.jpg", binary)                      # DAPT: mask/<file> (same name)
    _write(ds / "mask" / "pizza" / "p2.png", binary, "1")       # simple layout, 1-bit PNG
    masks = DiskMasks(samples, ds / "images", ds / "mask")
    a1 = mask_to_array(masks(0, None))
    assert a1.sum() == 9 and a1[0].sum() == 0 and a1[3, 4] == 1
    assert read_mask(ds / "mask" / "pizza" / "p2.png").getextrema() == (0, 255)
    assert mask_to_array(masks(2, None))[:5].all() and not mask_to_array(masks(2, None))[5:].any()
    (ds / "mask" / "p1.jpg").unlink()
    with pytest.raises(DatasetError, match="p1.jpg.*mask/"):
        DiskMasks(samples, ds / "images", ds / "mask")


def test_tiny_suite_masks_are_found():
    task = vp.load_dataset("tiny/shapes", None, shots=2, seed=1)
    masks = DiskMasks.for_task(task)
    m = mask_to_array(masks(0, None))
    assert m.shape == (64, 64) and 0 < m.mean() < 1


# ------------------------------------------------------------------ selection
def test_selection_methods():
    x = torch.tensor([[0.0], [1.0], [10.0], [11.0], [5.0]])
    feats = torch.cat([torch.ones(5, 1), x / 11], dim=1)  # distinct directions after normalisation
    order = kcenter_greedy(feats, 3, seed=0)
    assert len(set(order)) == 3
    d = F.normalize(feats.double(), dim=-1)
    first = order[0]
    far = int((d - d[first]).norm(dim=-1).argmax())
    assert order[1] == far
    h = herding_select(feats, 2)
    mu = d.mean(0)
    assert h[0] == int((mu - d).norm(dim=-1).argmin())
    labels = [0] * 10 + [1] * 4
    idx = select_indices("uniform", labels, 0.5, seed=3)
    assert sorted(idx) == idx and sum(labels[i] == 0 for i in idx) == 5 and sum(labels[i] == 1 for i in idx) == 2
    assert idx == select_indices("uniform", labels, 0.5, seed=3)
    assert len(select_indices("herding", labels, 0.1, features=torch.randn(14, 4))) == 2  # ≥ 1 per class
    with pytest.raises(ConfigError):
        select_indices("kcenter", labels, 0.5)
    with pytest.raises(ConfigError):
        select_indices("uniform", labels, 0.0)


# ------------------------------------------------------------------ protocols on tiny/shapes
_TRAIN = {"epochs": 2, "batch_size": 8, "lr": 0.0035, "precision": "fp32"}  # one step per epoch


def test_base2new_and_few_shot_with_dapt(tmp_path, cache_dir):
    spec = RunSpec("dapt", "", "", out=str(tmp_path / "b2n"), shots=2, backbone="tiny-clip",
                   method_options={"prompt_depth": 2}, train_options={**_TRAIN, "cache_dir": cache_dir},
                   device="cpu")
    summary = base2new(spec, ["tiny/shapes"], seeds=[1], cache_dir=cache_dir)
    row = summary["rows"][0]
    assert 0 <= row["base_acc"] <= 100 and 0 <= row["new_acc"] <= 100
    metrics = [json.loads(line) for line in (tmp_path / "b2n" / "tiny/shapes" / "seed1" / "metrics.jsonl")
               .read_text().splitlines()]
    assert len(metrics) == 2 and all(np.isfinite(r["loss"]) for r in metrics)
    fs_spec = dataclasses.replace(spec, method="dapt-g+dept", out=str(tmp_path / "fs"),
                                  train_options={**spec.train_options, "epochs": 1, "batch_size": 4})
    fs = few_shot(fs_spec, ["tiny/shapes"], shots=[1], seeds=[1])
    assert 0 <= fs["average"]["1-shot"] <= 100


def test_gradcam_masks_recomputed_each_epoch(tiny_bb):
    task = vp.load_dataset("tiny/shapes", None, shots=1, seed=1)
    model = vp.build_method("dapt-g", tiny_bb, task.classnames, prompt_depth=DEPTH)
    model.prepare_epoch(0, task.train, torch.device("cpu"))
    first = model.epoch_masks()
    assert set(first.arrays) == set(range(len(task.train)))
    assert first.arrays[0].shape == (64, 64) and first.arrays[0].dtype == np.uint8
    with torch.no_grad():
        model.ctx.add_(0.5)
    model.prepare_epoch(1, task.train, torch.device("cpu"))
    assert model.epoch == 1 and model.epoch_masks() is not first


@pytest.mark.parametrize("selection", ["uniform", "herding"])  # kcenter: test_cli_data_efficient
def test_data_efficient_protocol(tmp_path, cache_dir, selection):
    spec = RunSpec("coop", "", "", out=str(tmp_path / "de"), shots=None, backbone="tiny-clip",
                   train_options={**_TRAIN, "epochs": 1, "cache_dir": cache_dir}, device="cpu")
    summary = data_efficient(spec, ["tiny/colours"], ratios=[0.05], seeds=[1], selection=selection)
    run = summary["runs"][0]
    assert run["n_train"] == 10  # 1 of 20 images in each of the 10 classes
    assert 0 <= summary["average"]["0.05"] <= 100
    assert (tmp_path / "de" / "data_efficient.md").exists()
    res = json.loads((tmp_path / "de" / "tiny/colours" / f"{selection}_0.05" / "seed1" / "results.json").read_text())
    assert res["selection"] == selection and res["data_ratio"] == 0.05
    assert res["protocol"] == "data-efficient"  # `vlprompt report` tallies it as such (one column per ratio)
    from vlprompt.report import write_report

    write_report(tmp_path / "de", tmp_path / "rep", plots=False)
    md = (tmp_path / "rep" / "data_efficient.md").read_text()
    assert f"## coop ({selection})" in md and "| dataset | 5% |" in md and f"| tiny/colours | {res['acc']:.2f} |" in md


def test_custom_data_simple_mask_layout_and_missing_masks(tmp_path, tiny_bb, cache_dir):
    from vlprompt.data import make_image_folder

    root = tmp_path / "shapes"
    make_image_folder(root, n_train=2, n_val=1, n_test=1, size=64, seed=0)
    task = vp.load_dataset("imagefolder", root)
    for s in task.train:  # simple layout: mask/<path relative to the dataset folder>.png
        rel = Path(s.path).relative_to(root)
        arr = np.zeros((64, 64), np.uint8)
        arr[16:48, 16:48] = 255
        _write((root / "mask" / rel).with_suffix(".png"), arr)
    model = vp.build_method("dapt", tiny_bb, task.classnames, prompt_depth=DEPTH)
    res = vp.fit(model, task, epochs=1, batch_size=len(task.train), lr=0.0035, precision="fp32",
                 cache_dir=cache_dir, evaluate_test=False)
    assert res["epochs"] == 1 and np.isfinite(res["final_loss"])
    next((root / "mask").rglob("*.png")).unlink()
    with pytest.raises(DatasetError, match="have no mask"):
        vp.fit(model, task, run_dir=str(tmp_path / "run"), epochs=1, precision="fp32", cache_dir=cache_dir)
    assert not (tmp_path / "run").exists()  # bad data fails before anything is written


def test_cli_data_efficient(tmp_path, cache_dir, capsys):
    from vlprompt.cli import main

    out = tmp_path / "de"
    assert main(["data-efficient", "--method", "coop", "--datasets", "tiny/shapes", "--ratios", "0.5", "--shots", "4",
                 "--selection", "kcenter", "--seeds", "1", "--root", str(tmp_path), "--out", str(out),
                 "--epochs", "1", "--precision", "fp32", "--cache-dir", cache_dir, "--device", "cpu"]) == 0
    summary = json.loads((out / "data_efficient.json").read_text())
    assert summary["selection"] == "kcenter" and summary["runs"][0]["n_train"] == 20  # 2 of 4 per class
    assert "0.5" in (out / "data_efficient.md").read_text()


def _reference_disk_mask(mask_path, image: Image.Image, size: int) -> torch.Tensor:
    """DAPT's DatasetWrapperMask + ComposePair re-derived: read as RGB, ``resize`` to the image with
    PIL's default filter, the image's RandomResizedCrop box and flip coin (same torch draws), bicubic,
    then first channel, 255 -> 0, > 1 -> 1 (on float16 values)."""
    from torchvision import transforms as T
    from torchvision.transforms import functional as TF

    mask = Image.open(mask_path).convert("RGB").resize(image.size)
    top, left, h, w = T.RandomResizedCrop.get_params(image, [0.08, 1.0], [3.0 / 4.0, 4.0 / 3.0])
    mask = TF.resized_crop(mask, top, left, h, w, [size, size], T.InterpolationMode.BICUBIC)
    if torch.rand(1) < 0.5:
        mask = TF.hflip(mask)
    m = torch.from_numpy(np.array(mask, dtype=np.float16)).permute(2, 0, 1)[:1]
    m[m == 255] = 0
    m[m > 1] = 1
    return m.float()


@pytest.mark.parametrize("kind", ["label_map", "rgb_label_map"])
def test_disk_masks_are_resampled_then_thresholded_as_the_reference(kind, tmp_path):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8))
    labels = np.zeros((19, 29), np.uint8)  # a smaller mask: resized to the image first
    labels[3:12, 5:20] = 7
    labels[12:16, 2:9] = 1
    labels[0, :] = 255  # void
    (tmp_path / "mask").mkdir()
    path = tmp_path / "mask" / "img.png"
    if kind == "label_map":
        Image.fromarray(labels, "L").save(path)
    else:
        Image.fromarray(np.stack([labels, 255 - labels, labels // 2], -1), "RGB").save(path)  # first channel counts
    disk = DiskMasks([Sample(str(tmp_path / "images" / "img.png"), 0, "a")], tmp_path / "images", tmp_path / "mask")
    t = PairedTrainTransform(32)
    edges = 0
    for seed in range(12):
        torch.manual_seed(seed)
        _, ours = t(image, disk(0, image), labels=disk.labels)
        torch.manual_seed(seed)
        ref = _reference_disk_mask(path, image, 32)
        assert torch.equal(ours, ref), seed
        torch.manual_seed(seed)
        _, nearest = t(image, Image.fromarray(labels_to_foreground(labels) * 255, "L"))
        edges += int((nearest != ref).sum())
    assert edges > 0  # the old rule (binarise, then nearest) differs at the edges


def test_gradcam_reference_rule_is_the_released_training_path():
    """DAPT's ``GradCAM.forward_train`` re-derived on seq-first activations ``(L, N, D)``: patch tokens
    between CLS and the appended prompts, weights = mean patch gradient, bmm, ReLU, bilinear with
    align_corners=True, divided by the batch maximum + 1e-6, binarised at 0.5."""
    torch.manual_seed(0)
    b, p, d, n_ctx, size = 3, 4, 16, 2, 24
    feat, grad = torch.randn(b, 1 + p * p + n_ctx, d), torch.randn(b, 1 + p * p + n_ctx, d)
    act, g = feat.permute(1, 0, 2), grad.permute(1, 0, 2)  # (L, N, D), as the hook sees them
    visual = act[1:-n_ctx]
    token_gradient = g[1:-n_ctx].mean(0, keepdim=True)
    ref = F.relu(torch.bmm(visual.permute(1, 0, 2), token_gradient.permute(1, 2, 0))).permute(0, 2, 1)
    ref = F.interpolate(ref.reshape(b, 1, p, p), size=(size, size), mode="bilinear", align_corners=True)
    ref = ref / (ref.max() + 1e-6)
    ref[ref >= 0.5] = 1
    ref[ref < 0.5] = 0
    ours = gradcam_from_block(feat, grad, 1, (p, p), (size, size), 0.5, rule="reference")
    assert torch.equal(ours, ref[:, 0])
    assert 0 < ours.mean() < 1
    per_image = gradcam_from_block(feat, grad, 1, (p, p), (size, size), 0.5)
    assert not torch.equal((per_image > 0).float(), ours)  # the batch maximum changes which pixels survive
    with pytest.raises(ConfigError, match="gradcam_rule"):
        DAPTConfig(gradcam_rule="batch")
