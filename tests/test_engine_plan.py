"""The engine/method seam: a method declares its inputs and hooks (TrainingPlan); the engine names no method.

Throwaway methods are registered inside these tests and trained through the unchanged engine.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vlprompt as vp
from data_fixtures import make_dtd
from kill_resume import fit_killed_after_first_epoch
from vlprompt.data.masks import ArrayMasks
from vlprompt.engine.features import FeatureCache
from vlprompt.engine.train import train_policies
from vlprompt.methods import get_method_class
from vlprompt.methods.base import _REGISTRY, PromptMethod, TrainingPlan, list_methods, register_method

ENGINE = Path(vp.__file__).parent / "engine"


@dataclasses.dataclass(frozen=True)
class _ProbeConfig:
    """Options of the throwaway methods.

    Attributes:
        stride: mask value step between two samples (mask value = epoch * 50 + sample index + 1).
    """

    stride: int = 1


class _MaskedProbe(PromptMethod):
    """Images + masks made by the method itself each epoch (before-epoch hook), an after-training hook,
    a linear head on the frozen image features of the masked images."""

    name = "test-masked-probe"
    Config = _ProbeConfig
    plan = TrainingPlan(steps="images+masks", image_features=False, masks="model", before_epoch=True,
                        after_training=True)

    def __init__(self, backbone, classnames, config) -> None:
        super().__init__(backbone, classnames, config)
        self.head = nn.Linear(backbone.embed_dim, len(classnames))
        self.calls: list[tuple] = []
        self.samples: list = []
        self.epoch = -1
        self._masks: ArrayMasks | None = None

    def eval_text_features(self) -> None:
        return None

    def logits_from_features(self, image_features, text_features=None):
        return self.head(image_features.float())

    def prepare_epoch(self, epoch, samples, device) -> None:
        self.calls.append(("epoch", epoch))
        self.epoch, self.samples = epoch, list(samples)
        size = self.backbone.image_size
        self._masks = ArrayMasks({i: np.full((size, size), epoch * 50 + i + 1, np.uint8) for i in range(len(samples))})

    def epoch_masks(self) -> ArrayMasks:
        return self._masks

    def loss(self, batch):
        masks = batch["masks"]
        assert masks.shape == (len(batch["labels"]), 1, *batch["images"].shape[-2:])
        values = (masks.flatten(1) * 255).round().long()
        assert (values == values[:, :1]).all()  # a constant mask stays constant through the paired transform
        code = values[:, 0] - 1
        assert (code // 50 == self.epoch).all()  # this epoch's masks
        labels = torch.tensor([self.samples[int(i)].label for i in code % 50])
        assert torch.equal(labels, batch["labels"].cpu())  # each image travels with its own mask
        self.calls.append(("step", self.epoch))
        with torch.no_grad():
            feats = self.backbone.encode_image(batch["images"] * masks)
        logits = self.head(feats.float())
        return {"loss": F.cross_entropy(logits, batch["labels"]), "acc": 0.0}

    def finish_training(self, samples, device) -> dict:
        self.calls.append(("finish", len(samples)))
        return {"finished_after_epoch": self.epoch}


class _FitThenTune(PromptMethod):
    """A closed-form fit on cached augmented features (class means), then gradient steps on cached views."""

    name = "test-fit-then-tune"
    Config = _ProbeConfig
    plan = TrainingPlan(steps="image-features", fit_features="train")

    def __init__(self, backbone, classnames, config) -> None:
        super().__init__(backbone, classnames, config)
        self.head = nn.Linear(backbone.embed_dim, len(classnames))
        self.calls: list[tuple] = []

    def eval_text_features(self) -> None:
        return None

    def logits_from_features(self, image_features, text_features=None):
        return self.head(image_features.float())

    def fit_features(self, train, val) -> dict:
        x, y = train
        self.calls.append(("fit", x.clone(), y.clone(), None if val is None else val[0].shape))
        with torch.no_grad():
            means = torch.stack([x[y == c].mean(0) for c in range(len(self.classnames))])
            self.head.weight.copy_(F.normalize(means, dim=-1))
            self.head.bias.zero_()
        self.fitted = self.head.weight.detach().clone()
        return {"fitted_classes": len(self.classnames)}

    def loss(self, batch):
        assert "features" in batch and "images" not in batch  # cached views, never images
        self.calls.append(("step",))
        logits = self.head(batch["features"].float())
        return {"loss": F.cross_entropy(logits, batch["labels"]), "acc": 0.0}


class _AveragedProbe(PromptMethod):
    """Steps on cached views; the after-epoch hook sums the head over epochs (kept in the checkpoint through
    ``training_state``) and the after-training hook installs the average (a PromptSRC-like aggregation)."""

    name = "test-averaged-probe"
    Config = _ProbeConfig
    plan = TrainingPlan(steps="image-features", after_epoch=True, after_training=True)

    def __init__(self, backbone, classnames, config) -> None:
        super().__init__(backbone, classnames, config)
        self.head = nn.Linear(backbone.embed_dim, len(classnames))
        self.total = torch.zeros_like(self.head.weight)
        self.count = 0
        self.ended: list[int] = []

    def eval_text_features(self) -> None:
        return None

    def logits_from_features(self, image_features, text_features=None):
        return self.head(image_features.float())

    def loss(self, batch):
        logits = self.head(batch["features"].float())
        return {"loss": F.cross_entropy(logits, batch["labels"]), "acc": 0.0}

    def end_epoch(self, epoch: int) -> None:
        self.ended.append(epoch)
        self.total = self.total + self.head.weight.detach()
        self.count += 1

    def training_state(self) -> dict:
        return {"total": self.total.clone(), "count": self.count}

    def load_training_state(self, state: dict) -> None:
        self.total, self.count = state["total"].clone(), int(state["count"])

    def finish_training(self, samples, device) -> dict:
        with torch.no_grad():
            self.head.weight.copy_(self.total / self.count)
        return {"averaged_epochs": self.count}


@pytest.fixture
def throwaway_methods():
    """Register the throwaway methods for one test only (the registry matrix never sees them)."""
    for cls in (_MaskedProbe, _FitThenTune, _AveragedProbe):
        register_method(cls)
    yield
    for cls in (_MaskedProbe, _FitThenTune, _AveragedProbe):
        _REGISTRY.pop(cls.name, None)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from vlprompt.data import make_image_folder

    root = tmp_path_factory.mktemp("plan") / "shapes"
    make_image_folder(root, n_train=3, n_val=2, n_test=2, size=64, seed=0)
    return root


def test_images_masks_and_hooks_train_through_the_unchanged_engine(throwaway_methods, folder, tiny_bb, cache_dir,
                                                                   tmp_path):
    task = vp.load_dataset("imagefolder", folder)
    model = vp.build_method("test-masked-probe", tiny_bb, task.classnames)
    res = vp.fit(model, task, run_dir=str(tmp_path / "run"), epochs=2, batch_size=4, lr=0.01, precision="fp32",
                 cache_dir=cache_dir)
    steps = len(task.train) // 4
    assert model.calls == [("epoch", 0), *[("step", 0)] * steps, ("epoch", 1), *[("step", 1)] * steps,
                           ("finish", len(task.train))]
    assert res["epochs"] == 2 and res["finished_after_epoch"] == 1 and res["feature_views"] is None
    assert 0.0 <= res["acc"] <= 100.0 and res["n_test"] == len(task.test)
    assert model.mask_source == "model" and not model.uses_image_features and model.needs_training
    loaded = vp.load_prompt(tmp_path / "run" / "prompt.safetensors", tiny_bb)
    assert torch.equal(loaded.head.weight, model.head.weight)


def test_a_resumed_run_calls_the_epoch_hook_for_the_remaining_epochs_and_ends_identical(
        throwaway_methods, folder, tiny_bb, cache_dir, tmp_path):
    task = vp.load_dataset("imagefolder", folder)
    opts = dict(epochs=3, batch_size=4, lr=0.01, precision="fp32", cache_dir=cache_dir, evaluate_test=False)
    vp.seed_everything(1)
    whole = vp.build_method("test-masked-probe", tiny_bb, task.classnames)
    vp.fit(whole, task, run_dir=str(tmp_path / "whole"), **opts)

    vp.seed_everything(1)
    first = vp.build_method("test-masked-probe", tiny_bb, task.classnames)
    fit_killed_after_first_epoch(first, task, str(tmp_path / "resumed"), **opts)
    vp.seed_everything(1)
    second = vp.build_method("test-masked-probe", tiny_bb, task.classnames)
    vp.fit(second, task, run_dir=str(tmp_path / "resumed"), **opts)
    assert [c for c in second.calls if c[0] == "epoch"] == [("epoch", 1), ("epoch", 2)]
    assert torch.equal(second.head.weight, whole.head.weight) and torch.equal(second.head.bias, whole.head.bias)
    assert (tmp_path / "resumed" / "metrics.jsonl").read_text().count("\n") == 3


def test_closed_form_fit_then_steps_on_cached_views(throwaway_methods, folder, tiny_bb, cache_dir):
    task = vp.load_dataset("imagefolder", folder)
    model = vp.build_method("test-fit-then-tune", tiny_bb, task.classnames)
    res = vp.fit(model, task, epochs=2, batch_size=4, lr=0.01, precision="fp32", cache_dir=cache_dir,
                 feature_views=2, seed=3)
    steps = len(task.train) // 4
    assert [c[0] for c in model.calls] == ["fit", *["step"] * (2 * steps)]
    _, x, y, val_shape = model.calls[0]
    cache = FeatureCache(tiny_bb, "fp32", torch.device("cpu"), cache_dir)
    cfg = vp.TrainConfig(feature_views=2, seed=3)
    view0 = cache.get(task.train, "train", view=0, seed=3, augment=train_policies(task, cfg))
    assert torch.equal(x, view0)  # the fit sees the run's first augmented view
    assert torch.equal(y, torch.tensor([s.label for s in task.train]))
    assert val_shape == (len(task.val), tiny_bb.embed_dim)
    assert res["fitted_classes"] == len(task.classnames) and res["epochs"] == 2 and res["feature_views"] == 2
    assert not torch.equal(model.head.weight, model.fitted)  # the steps continued from the fit


def test_after_epoch_hook_state_survives_a_kill_and_the_average_is_installed(throwaway_methods, folder, tiny_bb,
                                                                              cache_dir, tmp_path):
    task = vp.load_dataset("imagefolder", folder)
    opts = dict(epochs=3, batch_size=4, lr=0.05, precision="fp32", cache_dir=cache_dir, evaluate_test=False,
                feature_views=2)
    vp.seed_everything(1)
    whole = vp.build_method("test-averaged-probe", tiny_bb, task.classnames)
    snapshots: list[torch.Tensor] = []
    res = vp.fit(whole, task, run_dir=str(tmp_path / "whole"), **opts,
                 on_epoch_end=lambda e, row: snapshots.append(whole.head.weight.detach().clone()))
    assert whole.ended == [0, 1, 2] and res["averaged_epochs"] == 3
    expected = torch.zeros_like(snapshots[0])
    for w in snapshots:  # the same additions in the same order: exact
        expected = expected + w
    assert torch.equal(whole.head.weight, expected / 3)
    saved = vp.load_prompt(tmp_path / "whole" / "prompt.safetensors", tiny_bb)
    assert torch.equal(saved.head.weight, expected / 3)  # the average is what is saved

    vp.seed_everything(1)
    fit_killed_after_first_epoch(vp.build_method("test-averaged-probe", tiny_bb, task.classnames), task,
                                 str(tmp_path / "resumed"), **opts)
    checkpoint = torch.load(tmp_path / "resumed" / "checkpoint" / "last.pt", weights_only=True)
    assert checkpoint["method_state"]["count"] == 1
    vp.seed_everything(1)
    resumed = vp.build_method("test-averaged-probe", tiny_bb, task.classnames)
    vp.fit(resumed, task, run_dir=str(tmp_path / "resumed"), **opts)
    assert resumed.ended == [1, 2] and resumed.count == 3
    assert torch.equal(resumed.head.weight, whole.head.weight) and torch.equal(resumed.head.bias, whole.head.bias)


def test_a_method_without_hook_state_writes_no_method_state(tiny_bb, folder, cache_dir, tmp_path):
    task = vp.load_dataset("imagefolder", folder)
    model = vp.build_method("coop", tiny_bb, task.classnames, n_ctx=2)
    vp.fit(model, task, run_dir=str(tmp_path / "run"), epochs=1, batch_size=4, precision="fp32", cache_dir=cache_dir,
           evaluate_test=False, feature_views=1)
    assert "method_state" not in torch.load(tmp_path / "run" / "checkpoint" / "last.pt", weights_only=True)


def test_plan_checks_and_read_only_views():
    with pytest.raises(ValueError, match="image_features=True"):
        TrainingPlan(steps="image-features", image_features=False)
    with pytest.raises(ValueError, match="steps"):
        TrainingPlan(steps="pixels")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fit_features"):
        TrainingPlan(fit_features="val")  # type: ignore[arg-type]
    assert not TrainingPlan(steps="none").trains and TrainingPlan(steps="none", fit_features="test").trains
    assert TrainingPlan(steps="images", image_features=False, masks="model").mask_source is None
    assert get_method_class("zeroshot").needs_training is False
    assert get_method_class("maple").uses_image_features is False
    assert get_method_class("linear-probe").feature_transform == "test"


def test_the_pre_plan_class_attributes_are_refused():
    with pytest.raises(TypeError, match="uses_image_features; declare plan"):
        type("OldStyle", (PromptMethod,), {"uses_image_features": False})


def test_derived_attributes_cannot_drift_from_the_plan(tiny_bb):
    model = vp.build_method("coop", tiny_bb, ["a", "b"], n_ctx=2)
    with pytest.raises(AttributeError, match="plan"):
        model.uses_image_features = False
    model.plan = TrainingPlan(steps="images", image_features=False)  # an instance may declare its own
    assert not model.uses_image_features and type(model).uses_image_features
    dapt_g = vp.build_method("dapt-g+dept", tiny_bb, ["a", "b"], prompt_depth=2)
    assert dapt_g.plan == dapt_g.inner.plan and dapt_g.mask_source == "model"


def test_engine_names_no_method_and_probes_no_method_attribute():
    names = {n.lstrip("+") for n in list_methods()}
    for path in sorted(ENGINE.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in names, f"{path.name} names the method {node.value!r}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in (
                    "hasattr", "getattr", "isinstance") and node.args:
                target = node.args[0]
                assert not (isinstance(target, ast.Name) and target.id == "model"), (
                    f"{path.name}:{node.lineno} probes the method with {node.func.id}; declare it in its TrainingPlan")


def test_a_method_declares_its_own_dataset_template(tmp_path, cache_dir):
    """KgCoOp's DTD template comes from its ``dataset_templates``, not from a name check in the protocols."""
    from vlprompt.data.templates import KGCOOP_DTD_TEMPLATE
    from vlprompt.engine.run import RunDir
    from vlprompt.protocols.runs import RunSpec, train_run

    make_dtd(tmp_path)
    train = {"epochs": 1, "batch_size": 2, "precision": "fp32", "cache_dir": cache_dir, "feature_views": 1}
    for method, template in (("kgcoop", KGCOOP_DTD_TEMPLATE), ("zeroshot", "{} texture.")):
        out = tmp_path / "runs" / method
        train_run(RunSpec(method, "dtd", str(tmp_path), str(out), shots=1, method_options={"n_ctx": 2}
                          if method == "kgcoop" else {}, train_options=train, device="cpu"))
        assert RunDir(out).read_config()["method_config"]["template"] == template
    assert get_method_class("coop").dataset_templates == {}
