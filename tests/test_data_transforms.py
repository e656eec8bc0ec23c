"""CLIP transforms and the image Dataset."""

from __future__ import annotations

import torch
from PIL import Image

from data_fixtures import write_image
from vlprompt.data import ImageDataset, Sample, transforms
from vlprompt.data.transforms import CLIP_MEAN, CLIP_STD, transform_id


def test_constants():
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert CLIP_STD == (0.26862954, 0.26130258, 0.27577711)


def test_output_shapes_for_odd_images():
    for mode, shape in (("RGB", (50, 30)), ("L", (40, 90)), ("RGBA", (32, 32)), ("P", (33, 20))):
        image = Image.new(mode, shape)
        for build in (transforms.test_transform, transforms.train_transform):
            out = build(24)(image)
            assert out.shape == (3, 24, 24) and out.dtype == torch.float32


def test_test_transform_keeps_aspect_and_normalises():
    image = Image.new("RGB", (40, 20), (255, 255, 255))
    out = transforms.test_transform(16)(image)
    expected = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(out.mean(dim=(1, 2)), expected, atol=1e-3)
    t = transforms.test_transform(16).transforms
    assert t[1].size == 16  # int: resize the shorter side
    assert t[1].interpolation.value == "bicubic"
    rrc = transforms.train_transform(16).transforms[1]
    assert rrc.scale == (0.08, 1.0) and rrc.interpolation.value == "bicubic"


def test_transform_id_distinguishes_transforms():
    ids = {transform_id(k, s) for k in ("train", "test") for s in (224, 336)}
    assert len(ids) == 4
    assert transform_id("test", 224) == transform_id("test", 224)
    assert transform_id("test", 224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) != transform_id("test", 224)


def test_image_dataset_returns_tensor_label_index(tmp_path):
    samples = [Sample(str(write_image(tmp_path / f"{i}.jpg", i)), i % 2, f"c{i % 2}") for i in range(3)]
    ds = ImageDataset(samples, transforms.test_transform(8), split="test")
    assert len(ds) == 3 and ds.labels == [0, 1, 0]
    image, label, index = ds[2]
    assert image.shape == (3, 8, 8) and label == 0 and index == 2
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch[0].shape == (3, 3, 8, 8) and batch[2].tolist() == [0, 1, 2]


def test_augmentation_policies():
    import pytest

    from vlprompt.errors import ConfigError

    mild = transforms.train_transform(16, augment="crop").transforms
    assert mild[1].scale == (0.5, 1.0)
    assert not any(type(t).__name__ == "RandomHorizontalFlip" for t in mild)
    plain = transforms.train_transform(16, augment="none")
    image = Image.new("RGB", (40, 20), (10, 200, 30))
    assert torch.equal(plain(image), transforms.test_transform(16)(image))
    ids = {transform_id("train", 16, augment=a) for a in transforms.AUGMENTS}
    assert len(ids) == 3
    assert transform_id("train", 16) == transform_id("train", 16, augment="clip")
    with pytest.raises(ConfigError, match="augmentation policy 'flip'"):
        transforms.train_transform(16, augment="flip")
