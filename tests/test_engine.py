"""Engine tests: Dassl schedule, exact resume, feature cache, image path, run directory."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import vlprompt as vp
from vlprompt.engine.config import TrainConfig
from vlprompt.engine.features import FeatureCache
from vlprompt.engine.schedule import lr_at_epoch
from vlprompt.errors import ConfigError

TRAIN = {"epochs": 4, "lr": 0.002, "batch_size": 4, "precision": "fp32", "feature_views": 2}


def test_dassl_schedule():
    cfg = TrainConfig(epochs=10, lr=0.0035)
    assert lr_at_epoch(cfg, 0) == 1e-5
    for e in range(1, 10):
        assert lr_at_epoch(cfg, e) == pytest.approx(0.0035 * 0.5 * (1 + math.cos(math.pi * (e - 1) / 10)))
    assert lr_at_epoch(TrainConfig(epochs=10, lr=0.1, scheduler="constant"), 5) == 0.1


def test_bad_train_config():
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="unknown training option"):
        TrainConfig.from_kwargs(epoch=3)


def _task(root):
    return vp.load_dataset("imagefolder", root, shots=4, seed=1)


def _train(tiny_bb, root, cache_dir, run_dir=None, on_epoch_end=None):
    vp.seed_everything(1)
    model = vp.build_method("coop", tiny_bb, _task(root).classnames, n_ctx=4)
    res = vp.fit(model, _task(root), run_dir=run_dir, on_epoch_end=on_epoch_end, cache_dir=cache_dir, **TRAIN)
    return model, res


class Killed(Exception):
    pass


def test_resume_after_kill_gives_identical_results(tiny_bb, shapes_root, cache_dir, tmp_path):
    _, full = _train(tiny_bb, shapes_root, cache_dir, run_dir=str(tmp_path / "full"))

    def kill_after_epoch_1(epoch, _):
        if epoch == 1:
            raise Killed

    run = tmp_path / "killed"
    with pytest.raises(Killed):
        _train(tiny_bb, shapes_root, cache_dir, run_dir=str(run), on_epoch_end=kill_after_epoch_1)
    assert (run / "checkpoint" / "last.pt").exists() and not (run / "results.json").exists()
    _, resumed = _train(tiny_bb, shapes_root, cache_dir, run_dir=str(run))
    for key in ("acc", "final_loss", "trainable_params", "n_test"):
        assert resumed[key] == full[key]
    a = load_file(str(tmp_path / "full" / "prompt.safetensors"))
    b = load_file(str(run / "prompt.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows_full = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    rows_res = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows_res] == [r["loss"] for r in rows_full]
    assert len(rows_res) == TRAIN["epochs"]


def test_checkpoint_of_other_config_is_refused(tiny_bb, shapes_root, cache_dir, tmp_path):
    run = tmp_path / "run"
    _train(tiny_bb, shapes_root, cache_dir, run_dir=str(run))
    model = vp.build_method("coop", tiny_bb, _task(shapes_root).classnames, n_ctx=8)
    with pytest.raises(ConfigError, match="different configuration"):
        vp.fit(model, _task(shapes_root), run_dir=str(run), cache_dir=cache_dir, **TRAIN)


def test_run_directory_contents(tiny_bb, shapes_root, cache_dir, tmp_path):
    run = tmp_path / "run"
    _, res = _train(tiny_bb, shapes_root, cache_dir, run_dir=str(run))
    for name in ("config.yaml", "metrics.jsonl", "results.json", "prompt.safetensors", "prompt.json",
                 "log.txt", "split.json", "checkpoint/last.pt"):
        assert (run / name).exists(), name
    results = json.loads((run / "results.json").read_text())
    for key in ("method", "dataset", "protocol", "backbone", "shots", "seed", "acc", "train_seconds",
                "eval_seconds", "trainable_params"):
        assert key in results, key
    assert results["trainable_params"] == 4 * tiny_bb.text_width
    split = json.loads((run / "split.json").read_text())
    assert all(not p.startswith("/") for p, _, _ in split["train"])
    assert len(split["train"]) == 4 * 5


def test_feature_cache_persists_and_is_deterministic(tiny_bb, shapes_root, tmp_path):
    task = _task(shapes_root)
    c1 = FeatureCache(tiny_bb, "fp32", torch.device("cpu"), tmp_path)
    a = c1.get(task.train, "train", view=1, seed=3)
    c2 = FeatureCache(tiny_bb, "fp32", torch.device("cpu"), tmp_path)
    b = c2.get(task.train, "train", view=1, seed=3)
    assert c1.computed == 1 and c2.computed == 0 and torch.equal(a, b)
    c3 = FeatureCache(tiny_bb, "fp32", torch.device("cpu"), tmp_path, persist=False)
    assert torch.equal(c3.get(task.train, "train", view=1, seed=3), a)  # same augmentation, recomputed
    assert not torch.equal(c3.get(task.train, "train", view=2, seed=3), a)  # another view differs
    none = c3.get(task.train, "train", view=1, seed=3, augment="none")  # policy "none" = the plain view
    assert torch.allclose(none, c3.get(task.train, "test"), atol=1e-6)
    plain = c3.get(task.test, "test")
    with torch.no_grad():
        from vlprompt.data import ImageDataset, test_transform

        ds = ImageDataset(task.test[:2], test_transform(tiny_bb.image_size))
        direct = tiny_bb.model.encode_image(torch.stack([ds[0][0], ds[1][0]]))
    assert torch.allclose(plain[:2], direct, atol=1e-5)


def test_per_step_augmentation_path_and_bf16(tiny_bb, shapes_root, cache_dir):
    task = _task(shapes_root)
    model = vp.build_method("coop", tiny_bb, task.classnames, n_ctx=4)
    res = vp.fit(model, task, epochs=2, batch_size=8, feature_views=0, precision="bf16", cache_dir=cache_dir)
    assert res["feature_views"] == 0 and 0 <= res["acc"] <= 100
    assert math.isfinite(res["final_loss"])
    assert res["augment"] == task.augment == "clip"
    res = vp.fit(model, task, epochs=1, batch_size=8, augment="crop", cache_dir=cache_dir, evaluate_test=False)
    assert res["augment"] == "crop"
