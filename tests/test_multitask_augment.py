"""Per-sample augmentation in task groups (each member keeps its own policy) and DAPT's paired
transform following the task's policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import vlprompt as vp
from vlprompt.data.images import ImageDataset, policy_transforms
from vlprompt.data.masks import MaskedImageDataset, PairedTrainTransform
from vlprompt.data.multitask import merge_tasks
from vlprompt.data.transforms import CLIP_MEAN, CLIP_STD, PER_SAMPLE, sample_policies, test_transform
from vlprompt.engine.features import FeatureCache
from vlprompt.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def _group(shapes_root, policies=("none", "crop")):
    """Two copies of the shapes dataset as a two-task group, each member with its own policy."""
    base = vp.load_dataset("imagefolder", shapes_root, shots=2, seed=1)
    tasks = []
    for i, policy in enumerate(policies):
        tasks.append(base.with_splits(name=f"shapes{i}", augment=policy, extra={"task_name": f"task {i}"}))
    return merge_tasks(tasks, "pair")


def test_group_samples_keep_their_tasks_policy(shapes_root):
    group = _group(shapes_root)
    n = len(group.train) // 2
    assert group.augment == PER_SAMPLE
    assert [s.augment for s in group.train] == ["none"] * n + ["crop"] * n
    assert [t["augment"] for t in group.extra["tasks"]] == ["none", "crop"]
    assert sample_policies(group.train, group.augment) == ["none"] * n + ["crop"] * n
    assert sample_policies(group.train, group.augment, override="clip") == ["clip"] * (2 * n)  # global override
    assert _group(shapes_root, ("crop", "crop")).augment == "crop"  # one common policy: the task's own
    with pytest.raises(ConfigError, match="no augmentation policy"):
        sample_policies([vp.data.task.Sample("x.png", 0)], PER_SAMPLE)
    # base/new subsampling of the tiny suite's mixed group keeps every sample's policy
    real = vp.load_dataset("tiny-group/real", None, shots=1, subsample="base")
    infos = real.extra["tasks"]
    by_task = {t["name"]: t["augment"] for t in infos}  # fashion / animals join the group when installed
    assert (by_task["tiny/digits"], by_task["tiny/real_textures"]) == ("none", "crop") and real.augment == PER_SAMPLE
    for s in real.train:
        (info,) = [t for t in infos if t["offset"] <= s.label < t["offset"] + t["num_classes"]]
        assert s.augment == info["augment"]


def test_feature_cache_uses_each_samples_policy(tiny_bb, shapes_root, tmp_path):
    group = _group(shapes_root)
    policies = sample_policies(group.train, group.augment)
    n = len(group.train) // 2
    cache = FeatureCache(tiny_bb, "fp32", torch.device("cpu"), tmp_path)
    mixed = cache.get(group.train, "train", view=1, seed=2, augment=policies)
    assert mixed.shape == (2 * n, tiny_bb.embed_dim) and cache.computed == 2  # one set per policy
    # each policy's samples are cached under that policy's key: the same as asking for them alone
    fresh = FeatureCache(tiny_bb, "fp32", torch.device("cpu"), tmp_path / "other")
    assert torch.equal(mixed[:n], fresh.get(group.train[:n], "train", view=1, seed=2, augment="none"))
    assert torch.equal(mixed[n:], fresh.get(group.train[n:], "train", view=1, seed=2, augment="crop"))
    assert torch.allclose(mixed[:n], fresh.get(group.train[:n], "test"), atol=1e-6)  # "none" = the plain view
    # the key distinguishes the per-sample set from one global policy
    assert not torch.equal(cache.get(group.train, "train", view=1, seed=2, augment="crop"), mixed)
    again = FeatureCache(tiny_bb, "fp32", torch.device("cpu"), tmp_path)
    assert torch.equal(again.get(group.train, "train", view=1, seed=2, augment=policies), mixed)
    assert again.computed == 0  # read back from the persisted per-policy entries
    with pytest.raises(ConfigError, match="policies for"):
        cache.get(group.train, "train", augment=policies[:-1])


def test_image_dataset_per_sample_transforms(shapes_root):
    group = _group(shapes_root)
    tfs = policy_transforms(sample_policies(group.train, group.augment),
                            lambda p: vp.data.train_transform(32, augment=p))
    assert len({id(t) for t in tfs}) == 2  # each policy built once
    ds = ImageDataset(group.train, per_sample=tfs)
    plain = test_transform(32)
    torch.manual_seed(0)
    x0, _, _ = ds[0]  # digits-like member: "none" = the plain view, deterministic
    assert torch.equal(x0, plain(Image.open(group.train[0].path)))
    last = len(group.train) - 1
    crops = {ds[last][0].numpy().tobytes() for _ in range(5)}
    assert len(crops) > 1  # the "crop" member is randomly cropped
    with pytest.raises(ConfigError, match="transforms for"):
        ImageDataset(group.train, per_sample=tfs[:1])


@pytest.mark.parametrize("views", [0, 2])
def test_fit_on_a_mixed_group(tiny_bb, shapes_root, cache_dir, views):
    group = _group(shapes_root)
    model = vp.build_method("softcpt-nata", tiny_bb, group.classnames, tasks=vp.task_structure(group), n_ctx=2)
    res = vp.fit(model, group, epochs=1, batch_size=8, feature_views=views, cache_dir=cache_dir,
                 evaluate_test=False, progress=False)
    assert res["augment"] == PER_SAMPLE and np.isfinite(res["final_loss"])
    res = vp.fit(model, group, epochs=1, batch_size=8, feature_views=views, cache_dir=cache_dir, augment="clip",
                 evaluate_test=False, progress=False)
    assert res["augment"] == "clip"


# ------------------------------------------------------------------ DAPT's paired transform
def _image_and_mask():
    arr = np.zeros((48, 80), np.uint8)
    arr[5:30, 10:35] = 1  # off-centre: crops and flips move it
    img = Image.fromarray(np.stack([arr * 255] * 3, -1).astype(np.uint8))
    return img, Image.fromarray(arr * 255, "L").resize((40, 24), Image.NEAREST)


def _white(x):
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    return ((x * std + mean).mean(0) > 0.5).float()


def test_paired_transform_none_is_the_test_geometry():
    img, mask = _image_and_mask()
    t = PairedTrainTransform(32, augment="none")
    outs = set()
    for seed in range(5):
        torch.manual_seed(seed)
        x, m = t(img, mask)
        outs.add(x.numpy().tobytes() + m.numpy().tobytes())
    assert len(outs) == 1  # no randomness
    assert torch.allclose(x, test_transform(32)(img), atol=1e-6)  # exactly the plain view
    assert float((_white(x) == m[0]).float().mean()) > 0.95  # the mask follows the image


def test_paired_transform_crop_has_no_flip_and_mild_scale():
    img, mask = _image_and_mask()
    t = PairedTrainTransform(32, augment="crop")
    seen, left_heavy = set(), 0
    for seed in range(30):
        torch.manual_seed(seed)
        x, m = t(img, mask)
        assert float((_white(x) == m[0]).float().mean()) > 0.9
        # the object sits in the left half of the image; without flips it never ends up mostly right
        cols = m[0].sum(0)
        left_heavy += int(cols[:16].sum() >= cols[16:].sum())
        seen.add(m.numpy().tobytes())
    assert left_heavy == 30 and len(seen) > 5
    # "clip" flips: some crops put the object on the right
    clip = PairedTrainTransform(32, augment="clip")
    right = 0
    for seed in range(30):
        torch.manual_seed(seed)
        _, m = clip(img, mask)
        cols = m[0].sum(0)
        right += int(cols[16:].sum() > cols[:16].sum())
    assert right > 0
    with pytest.raises(ConfigError, match="augmentation policy"):
        PairedTrainTransform(32, augment="flip")


def test_masked_dataset_per_sample_paired_transforms(shapes_root):
    group = _group(shapes_root)
    tfs = policy_transforms(sample_policies(group.train, group.augment),
                            lambda p: PairedTrainTransform(32, augment=p))

    def masks(index, image):
        return Image.new("L", image.size, 255)

    ds = MaskedImageDataset(group.train, masks, tfs)
    x, m, label, idx = ds[0]
    assert torch.allclose(x, test_transform(32)(Image.open(group.train[0].path)), atol=1e-6)
    assert m.shape == (1, 32, 32) and label == group.train[0].label and idx == 0
