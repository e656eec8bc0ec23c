"""CoOp lpclip's linear-probe protocol (``few_shot(..., repeats=N)``) against the reference's rules."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from vlprompt.data import load_dataset, sample_lpclip
from vlprompt.data.task import Sample, Task
from vlprompt.errors import ConfigError, DatasetError
from vlprompt.protocols import RunSpec, few_shot


def _reference_indices(train_label, val_label, num_shot, seed):
    """The sampling of CoOp ``lpclip/linear_probe.py``, re-written from its logic: seed numpy's global
    generator with the run number, then per sorted train label ``np.random.choice`` without replacement
    from ``np.where(label)``, train first, then val with ``val_shot_list``."""
    val_shot_list = {1: 1, 2: 2, 4: 4, 8: 4, 16: 4}
    np.random.seed(seed)
    all_label_list = np.unique(train_label)
    train_idx, val_idx = [], []
    for label in all_label_list:
        train_idx.extend(np.random.choice(np.where(train_label == label)[0], size=num_shot, replace=False))
    for label in all_label_list:
        val_idx.extend(np.random.choice(np.where(val_label == label)[0], size=val_shot_list[num_shot],
                                        replace=False))
    return train_idx, val_idx


def _shuffled_task(n_cls=5, n_train=20, n_val=6):
    rng = random.Random(0)
    train = [Sample(f"/d/tr{i}_{c}.jpg", c, f"c{c}") for c in range(n_cls) for i in range(n_train)]
    val = [Sample(f"/d/va{i}_{c}.jpg", c, f"c{c}") for c in range(n_cls) for i in range(n_val)]
    rng.shuffle(train)
    rng.shuffle(val)  # labels interleaved: dataset order matters, as in a split file
    return Task("synthetic", [f"c{c}" for c in range(n_cls)], "a photo of a {}.", train, val, [], Path("/d"))


@pytest.mark.parametrize("shots", [1, 2, 4, 8, 16])
def test_lpclip_sample_is_the_reference_draw(shots):
    task = _shuffled_task()
    train_label = np.array([s.label for s in task.train])
    val_label = np.array([s.label for s in task.val])
    for seed in (1, 2, 10):
        tr_idx, va_idx = _reference_indices(train_label, val_label, shots, seed)
        got = sample_lpclip(task, shots, seed)
        assert [s.path for s in got.train] == [task.train[i].path for i in tr_idx]
        assert [s.path for s in got.val] == [task.val[i].path for i in va_idx]
        assert (got.shots, got.seed) == (shots, seed)


def test_lpclip_sample_errors_and_no_val():
    task = _shuffled_task(n_train=3)
    with pytest.raises(DatasetError, match="fewer than the 4"):
        sample_lpclip(task, 4, 1)
    task = _shuffled_task()
    no_val = task.with_splits(val=[])
    assert sample_lpclip(no_val, 2, 1).val == []
    assert [s.path for s in sample_lpclip(no_val, 2, 1).train] == [s.path for s in sample_lpclip(task, 2, 1).train]


def _lp_spec(root, out, cache_dir):
    return RunSpec("linear-probe", "imagefolder", str(root), out=str(out), shots=None,
                   method_options={"search_steps": 1, "max_iter": 50}, train_options={"cache_dir": cache_dir})


def test_few_shot_repeats_follows_lpclip(shapes_root, cache_dir, tmp_path, one_thread):
    out = tmp_path / "lp"
    s = few_shot(_lp_spec(shapes_root, out, cache_dir), ["imagefolder"], shots=[1, 2], seeds=[7], repeats=2)
    assert s["sampling"] == "lpclip" and s["repeats"] == 2
    assert [(r["shots"], r["seed"]) for r in s["runs"]] == [(1, 1), (1, 2), (2, 1), (2, 2)]  # runs 1..N
    full = load_dataset("imagefolder", shapes_root)
    labels = np.array([x.label for x in full.train])
    val_labels = np.array([x.label for x in full.val])
    root = Path(shapes_root)
    for r in s["runs"]:
        run = out / "imagefolder" / f"shots{r['shots']}" / f"seed{r['seed']}"
        stored = json.loads((run / "split.json").read_text())
        tr_idx, va_idx = _reference_indices(labels, val_labels, r["shots"], r["seed"])
        assert [root / e[0] for e in stored["train"]] == [Path(full.train[i].path) for i in tr_idx]
        assert [root / e[0] for e in stored["val"]] == [Path(full.val[i].path) for i in va_idx]
        assert json.loads((run / "results.json").read_text())["acc"] == r["acc"]
    row = s["rows"][0]
    for k in (1, 2):
        accs = [r["acc"] for r in s["runs"] if r["shots"] == k]
        assert row[f"{k}-shot"] == pytest.approx(np.mean(accs))
        assert row[f"{k}-shot std"] == pytest.approx(np.std(accs))  # population std, as the reference
    assert "std" in (out / "few_shot.md").read_text()


def test_few_shot_repeats_refuses_bad_input_before_training(shapes_root, cache_dir, tmp_path):
    spec = _lp_spec(shapes_root, tmp_path / "lp", cache_dir)
    with pytest.raises(DatasetError, match="fewer than the 16"):  # 8 train images per class
        few_shot(spec, ["imagefolder"], shots=[1, 16], repeats=2)
    assert not (tmp_path / "lp" / "imagefolder" / "shots1").exists()
    with pytest.raises(ConfigError, match="linear-probe option"):
        few_shot(RunSpec("coop", "imagefolder", str(shapes_root), out=str(tmp_path / "c")), ["imagefolder"],
                 shots=[1], repeats=2)
    for bad in (0, True, 1.5):
        with pytest.raises(ConfigError, match="repeats"):
            few_shot(spec, ["imagefolder"], shots=[1], repeats=bad)


def test_cli_repeats(shapes_root, tmp_path, capsys):
    from vlprompt.cli import main

    args = ["few-shot", "--datasets", "imagefolder", "--root", str(shapes_root), "--shots-list", "16",
            "--out", str(tmp_path / "cli"), "--repeats", "2"]
    assert main([*args, "--method", "coop"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "linear-probe option" in err[0]
    assert main([*args, "--method", "linear-probe"]) == 2  # 8 images per class < 16
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fewer than the 16" in err[0]
    assert not (tmp_path / "cli" / "imagefolder").exists()
