"""Optional TensorBoard / W&B logging of runs (vlprompt.engine.loggers)."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

import vlprompt as vp
from vlprompt.cli import build_parser, main
from vlprompt.engine.config import TrainConfig
from vlprompt.engine.loggers import EPOCH_SCALARS, log_results, normalize_log_to
from vlprompt.errors import ConfigError
from vlprompt.sweep.spec import parse_sweep

TRAIN = {"epochs": 2, "lr": 0.002, "batch_size": 4, "precision": "fp32", "feature_views": 1, "progress": False}


pytestmark = pytest.mark.usefixtures("one_thread")


def _task(root):
    return vp.load_dataset("imagefolder", root, shots=2, seed=1)


def _fit(tiny_bb, root, cache_dir, run_dir, on_epoch_end=None, task=None, **kw):
    task = task or _task(root)
    vp.seed_everything(1)
    model = vp.build_method("coop", tiny_bb, task.classnames, n_ctx=2)
    return vp.fit(model, task, run_dir=run_dir, cache_dir=cache_dir, on_epoch_end=on_epoch_end, **{**TRAIN, **kw})


def _scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_scalars_equal_metrics_jsonl(tiny_bb, shapes_root, cache_dir, tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    res = _fit(tiny_bb, shapes_root, cache_dir, str(run), log_to=["tensorboard"])
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    scalars = _scalars(run / "tensorboard")
    rows = _metrics(run)
    assert len(rows) == 2
    for key, tag in EPOCH_SCALARS.items():
        assert [s for s, _ in scalars[tag]] == [r["epoch"] for r in rows]
        assert [v for _, v in scalars[tag]] == pytest.approx([r[key] for r in rows], rel=1e-6, abs=1e-9)
    for key in ("acc", "train_seconds", "eval_seconds"):
        assert scalars[f"results/{key}"] == [(2, pytest.approx(res[key], rel=1e-6))]
    assert "results/new_acc" not in scalars  # base-to-new numbers only when present
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["train"]["log_to"] == ["tensorboard"]


def test_resume_does_not_duplicate_steps(tiny_bb, shapes_root, cache_dir, tmp_path):
    pytest.importorskip("tensorboard")

    class Killed(Exception):
        pass

    def kill(epoch, _):
        if epoch == 0:
            raise Killed

    run = tmp_path / "run"
    with pytest.raises(Killed):
        _fit(tiny_bb, shapes_root, cache_dir, str(run), on_epoch_end=kill, log_to="tensorboard")
    assert [s for s, _ in _scalars(run / "tensorboard")["train/loss"]] == [0]
    _fit(tiny_bb, shapes_root, cache_dir, str(run), log_to="tensorboard")  # resumes from epoch 0's checkpoint
    scalars = _scalars(run / "tensorboard")
    rows = _metrics(run)
    assert [s for s, _ in scalars["train/loss"]] == [0, 1]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    # base-to-new numbers added later (protocols, sweeps, `vlprompt eval`) join the same curves
    log_results(run, {"epochs": 2, "new_acc": 40.0, "hm": 45.0})
    scalars = _scalars(run / "tensorboard")
    assert scalars["results/new_acc"] == [(2, 40.0)] and scalars["results/hm"] == [(2, 45.0)]
    assert len(scalars["results/acc"]) == 1 and [s for s, _ in scalars["train/loss"]] == [0, 1]


def test_logging_options_change_neither_fingerprint_nor_sweep_ids(tiny_bb, shapes_root, cache_dir, tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    _fit(tiny_bb, shapes_root, cache_dir, str(run), epochs=1)
    plain = yaml.safe_load((run / "config.yaml").read_text())["fingerprint"]
    _fit(tiny_bb, shapes_root, cache_dir, str(run), epochs=1, log_to="tensorboard")  # same run: no refusal
    assert yaml.safe_load((run / "config.yaml").read_text())["fingerprint"] == plain

    def ids(train):
        sweep = parse_sweep({"methods": ["coop"], "datasets": ["eurosat"], "data_root": "/d",
                             "overrides": {"train": train}})
        return [r.id for r in sweep.expand()]

    assert ids({"epochs": 1, "log_to": ["tensorboard"], "log_project": "p"}) == ids({"epochs": 1})


def test_wandb_offline_run_in_run_dir(tiny_bb, shapes_root, cache_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))
    monkeypatch.delenv("WANDB_MODE", raising=False)  # default: offline
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    _fit(tiny_bb, shapes_root, cache_dir, str(run), epochs=1, log_to=["wandb"], log_project="test")
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("run-*.wandb"))


def test_unknown_logger_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown logger 'mlflow'.*tensorboard, wandb"):
        TrainConfig(log_to=("mlflow",))
    with pytest.raises(ConfigError, match="unknown logger"):
        TrainConfig.from_kwargs(log_to="tensorboard,comet")
    assert TrainConfig.from_kwargs(log_to="TensorBoard, wandb").log_to == ("tensorboard", "wandb")
    assert normalize_log_to(["wandb", "wandb"]) == ("wandb",) and normalize_log_to(None) == ()


@pytest.mark.parametrize("name", ["tensorboard", "wandb"])
def test_missing_package_names_the_extra(name, tiny_bb, shapes_root, cache_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, name, None)  # `import <name>` raises ImportError
    with pytest.raises(ConfigError, match=rf"pip install 'vlprompt\[{name}\]'"):
        _fit(tiny_bb, shapes_root, cache_dir, str(tmp_path / "run"), log_to=[name])
    assert not (tmp_path / "run").exists()  # failed before anything was written


def test_log_to_needs_a_run_dir(tiny_bb, shapes_root, cache_dir):
    with pytest.raises(ConfigError, match="needs a run directory"):
        _fit(tiny_bb, shapes_root, cache_dir, None, log_to=["tensorboard"])


def test_cli_log_to_option(tmp_path, monkeypatch, capsys):
    args = build_parser().parse_args(["train", "--method", "coop", "--dataset", "x", "--root", "r", "--out", "o",
                                      "--log-to", "tensorboard,wandb", "--log-project", "p"])
    from vlprompt.cli import _train_options

    opts = _train_options(args)
    assert opts["log_to"] == "tensorboard,wandb" and opts["log_project"] == "p"
    assert TrainConfig.from_kwargs(log_to=opts["log_to"]).log_to == ("tensorboard", "wandb")
    for cmd in (["base2new", "--datasets", "d"], ["few-shot", "--datasets", "d"]):
        a = build_parser().parse_args([*cmd, "--method", "coop", "--root", "r", "--out", "o", "--log-to", "wandb"])
        assert _train_options(a)["log_to"] == "wandb"
    code = main(["train", "--method", "coop", "--dataset", "imagefolder", "--root", str(tmp_path), "--out",
                 str(tmp_path / "o"), "--log-to", "mlflow"])
    assert code == 2 and "unknown logger 'mlflow'" in capsys.readouterr().err


def test_sweep_base2new_run_logs_new_acc_and_hm(shapes_root, cache_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from vlprompt.sweep.run import execute

    sweep = parse_sweep({"methods": ["coop"], "datasets": [f"imagefolder@{shapes_root}"], "protocol": "base2new",
                         "shots": [2], "out": str(tmp_path / "sweep"), "cache_dir": cache_dir,
                         "overrides": {"train": {**TRAIN, "epochs": 1, "log_to": ["tensorboard"]}}})
    (run,) = sweep.expand()
    assert execute(run)["status"] == "done"
    res = json.loads((tmp_path / "sweep" / run.id / "results.json").read_text())
    assert "log_to" not in res["sweep"]["train_options"]
    scalars = _scalars(tmp_path / "sweep" / run.id / "tensorboard")
    for key in ("base_acc", "new_acc", "hm"):
        assert scalars[f"results/{key}"] == [(1, pytest.approx(res[key], rel=1e-6))]
    cfg = yaml.safe_load((tmp_path / "sweep" / run.id / "config.yaml").read_text())
    assert cfg["train"]["log_name"] == run.id
