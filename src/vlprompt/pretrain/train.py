"""Contrastive pretraining of ``tiny-clip`` on :class:`~vlprompt.pretrain.corpus.PretrainCorpus`.

:func:`pretrain` writes into ``out_dir``:

* ``curve.jsonl`` -- one line per step: ``step``, ``loss``, ``lr``, ``seconds`` (wall time since the first
  step), ``logit_scale``; steps with a zero-shot evaluation also carry ``zeroshot_val`` (accuracy per task
  on the tiny suite's val splits);
* ``tiny-clip.safetensors`` -- the state dict (fp16 storage by default; :func:`read_checkpoint` casts to
  fp32), loadable with ``vlprompt.load_backbone("tiny-clip", weights=...)``;
* ``recipe.json`` -- every argument, the corpus mixture, model config and library versions;
* ``metrics.json`` -- final loss, step time, zero-shot val accuracy, checkpoint size and sha256.

Training is deterministic for a given seed, thread count and library versions: the corpus batch of step
``s`` is items ``s*B .. s*B+B-1``, ``torch.manual_seed(seed)`` precedes model creation and the thread count
is fixed (default 2).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.loss import ClipLoss
from PIL import Image
from safetensors.torch import save_file

from vlprompt.backbones.checkpoints import file_sha256, uses_quick_gelu
from vlprompt.backbones.configs import TINY_CONFIGS, register_configs

from .corpus import PretrainCorpus, images_to_tensor

__all__ = ["DEFAULT_EVAL_TASKS", "DEFAULT_RECIPE", "build_model", "pretrain", "pretrain_main",
           "zero_shot_accuracy"]

ARCH = "tiny-clip"
#: Tasks evaluated zero-shot (val split) during training: cheap (80 images each) and diverse.
DEFAULT_EVAL_TASKS: tuple[str, ...] = ("shapes", "colours", "digits", "textures")
#: The full recipe. ``steps`` is sized from the step time measured on 2 CPU cores (docs/tiny-clip.md).
DEFAULT_RECIPE: dict = {
    "steps": 1500, "batch_size": 128, "lr": 1e-3, "weight_decay": 0.1, "warmup_steps": 30, "seed": 0,
    "precision": "bf16", "num_threads": 2, "eval_every": 100, "storage": "fp16", "grouped_sources": 0,
    "optional_sources": True,
}
MAX_LOG_SCALE = math.log(100.0)


def build_model(seed: int = 0) -> torch.nn.Module:
    """A freshly initialised fp32 open_clip ``tiny-clip`` (``torch.manual_seed(seed)`` first)."""
    register_configs()
    torch.manual_seed(seed)
    return open_clip.create_model(ARCH)


class SeamForward:
    """The training forward through vlprompt's backbone seams instead of ``model(images, tokens)``.

    Same math as open_clip's forward (the seams equal it to float rounding), but the text tower runs
    only up to the longest EOT of the batch (captions are far shorter than 77 tokens) and the blocks
    keep the batch-first layout, which bf16 autocast on CPU needs to be fast.
    """

    def __init__(self, model: torch.nn.Module, tokenizer) -> None:
        from vlprompt.backbones.clip import ClipBackbone

        self.bb = ClipBackbone(model, tokenizer, name=ARCH)
        for p in model.parameters():  # the wrapper freezes; pretraining trains everything
            p.requires_grad_(True)

    def __call__(self, images: torch.Tensor, tokens: torch.Tensor):
        bb = self.bb
        img = bb.encode_image(images, normalize=True)
        txt = bb.encode_text(bb.embed(tokens), bb.eot_index(tokens), normalize=True)
        return img, txt, bb.model.logit_scale.exp()


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "ln" in name or "bias" in name or "logit_scale" in name or "embedding" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98), eps=1e-6)


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return 0.5 * lr * (1 + math.cos(math.pi * min(1.0, t)))


@torch.no_grad()
def zero_shot_accuracy(model: torch.nn.Module, tokenizer, task, split: str = "val") -> float:
    """Top-1 zero-shot accuracy of ``model`` on ``task.<split>`` with the task's hand-written template."""
    was_training = model.training
    model.eval()
    try:
        text = model.encode_text(tokenizer([task.template.format(c) for c in task.classnames]), normalize=True)
        samples = getattr(task, split)
        correct = 0
        for i in range(0, len(samples), 256):
            chunk = samples[i:i + 256]
            imgs = images_to_tensor([Image.open(s.path).convert("RGB") for s in chunk])
            pred = (model.encode_image(imgs, normalize=True) @ text.T).argmax(dim=-1)
            correct += int((pred == torch.tensor([s.label for s in chunk])).sum())
        return correct / max(1, len(samples))
    finally:
        model.train(was_training)


def _suite_root(manifest) -> Path | None:
    if manifest is None or isinstance(manifest, dict):
        return None
    p = Path(manifest)
    return p if p.is_dir() else p.parent


def pretrain(
    out_dir: str | os.PathLike[str],
    steps: int = DEFAULT_RECIPE["steps"],
    batch_size: int = DEFAULT_RECIPE["batch_size"],
    lr: float = DEFAULT_RECIPE["lr"],
    seed: int = DEFAULT_RECIPE["seed"],
    weight_decay: float = DEFAULT_RECIPE["weight_decay"],
    warmup_steps: int | None = None,
    precision: str = DEFAULT_RECIPE["precision"],
    num_threads: int = DEFAULT_RECIPE["num_threads"],
    eval_every: int = DEFAULT_RECIPE["eval_every"],
    eval_tasks: Sequence[str] = DEFAULT_EVAL_TASKS,
    storage: str = DEFAULT_RECIPE["storage"],
    manifest: str | os.PathLike[str] | dict | None = None,
    fixed_batch: bool = False,
    grouped_sources: int = DEFAULT_RECIPE["grouped_sources"],
    optional_sources: bool = DEFAULT_RECIPE["optional_sources"],
    log: Callable[[str], None] | None = print,
) -> dict:
    """Train tiny-clip contrastively and write curve, checkpoint, recipe and metrics into ``out_dir``.

    Args:
        out_dir: output folder (created).
        steps, batch_size, lr, seed, weight_decay: the optimisation recipe (AdamW, betas (0.9, 0.98)).
        warmup_steps: linear warmup length (default ``min(30, steps // 20)``), then cosine to 0.
        precision: ``"fp32"`` or ``"bf16"`` (CPU autocast around the forward pass).
        num_threads: ``torch.set_num_threads`` (fixed for determinism).
        eval_every: zero-shot val evaluation every this many steps (0: only at the end); ``eval_tasks``
            empty disables it.
        storage: ``"fp16"`` (default, halves the file) or ``"fp32"`` for the checkpoint tensors.
        manifest: tiny suite manifest / folder (corpus exclusions and evaluation tasks); ``None``: the
            default suite (generated on first use).
        fixed_batch: train on the same batch (items ``0..B-1``) every step (tests, debugging).
        grouped_sources: half of every batch comes from this many sources (equal slices), so the
            contrastive loss sees many same-source negatives (positions vs positions, ...); the other
            half is drawn from the mixture. 0: fully mixed batches.
        optional_sources: add Fashion-MNIST / Animal-MNIST to the corpus when installed (and in the
            suite). On in the shipped recipe: the shipped checkpoint was trained with both; without them
            installed the run differs from it (a warning is logged).
        log: progress printer (``None``: silent).

    Returns:
        the metrics dict (also written to ``metrics.json``).
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', not {precision!r}")
    if storage not in ("fp16", "fp32"):
        raise ValueError(f"storage must be 'fp16' or 'fp32', not {storage!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    warmup = min(30, steps // 20) if warmup_steps is None else int(warmup_steps)
    torch.set_num_threads(int(num_threads))
    corpus = PretrainCorpus(manifest, seed=seed, optional_sources=optional_sources)
    missing = sorted(corpus.skipped) if optional_sources else []  # with it off, skipping them is the choice
    if missing and log is not None:
        log(f"warning: corpus sources {missing} are skipped ({'; '.join(corpus.skipped[n] for n in missing)}); "
            "the shipped tiny-clip was trained with them, so this run will not reproduce it (install: "
            "apt-get install dataset-fashion-mnist; pip install --no-deps animal-mnist; then regenerate the suite)")
    model = build_model(seed)
    model.train()
    tokenizer = open_clip.get_tokenizer(ARCH)
    opt = _optimizer(model, lr, weight_decay)
    loss_fn = ClipLoss()
    seams = SeamForward(model, tokenizer)
    tasks = []
    if eval_tasks:
        from vlprompt.data.tiny import load_tiny_task

        tasks = [load_tiny_task(name, _suite_root(manifest)) for name in eval_tasks]

    recipe = {
        "arch": ARCH, "model_config": TINY_CONFIGS[ARCH], "steps": steps, "batch_size": batch_size, "lr": lr,
        "seed": seed, "weight_decay": weight_decay, "warmup_steps": warmup, "schedule": "linear warmup + cosine",
        "optimizer": "AdamW(betas=(0.9, 0.98), eps=1e-6; no decay on biases/norms/embeddings/logit_scale)",
        "loss": "open_clip ClipLoss (symmetric InfoNCE), logit_scale clamped to log(100)",
        "precision": precision, "num_threads": num_threads, "storage": storage, "eval_tasks": list(eval_tasks),
        "eval_every": eval_every, "fixed_batch": fixed_batch, "grouped_sources": grouped_sources,
        "optional_sources": optional_sources, "corpus": corpus.describe(),
        "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
    }
    (out / "recipe.json").write_text(json.dumps(recipe, indent=1), encoding="utf-8")

    def evaluate() -> dict[str, float]:
        return {t.name: round(zero_shot_accuracy(model, tokenizer, t, "val"), 4) for t in tasks}

    losses: list[float] = []
    step_times: list[float] = []
    data_times: list[float] = []
    last_eval: dict[str, float] = {}
    t0 = time.perf_counter()
    with open(out / "curve.jsonl", "w", encoding="utf-8") as curve:
        for step in range(steps):
            ts = time.perf_counter()
            start = 0 if fixed_batch else step * batch_size
            images, captions = corpus.batch(range(start, start + batch_size),
                                            corpus.batch_sources(step, batch_size, grouped_sources))
            tokens = tokenizer(captions)
            td = time.perf_counter()
            cur_lr = lr_at(step, steps, lr, warmup)
            for g in opt.param_groups:
                g["lr"] = cur_lr
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                img_f, txt_f, scale = seams(images, tokens)
            loss = loss_fn(img_f.float(), txt_f.float(), scale.float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOG_SCALE)
            now = time.perf_counter()
            step_times.append(now - ts)
            data_times.append(td - ts)
            losses.append(loss.detach().item())
            row = {"step": step + 1, "loss": round(losses[-1], 5), "lr": cur_lr, "seconds": round(now - t0, 3),
                   "logit_scale": round(model.logit_scale.detach().exp().item(), 3)}
            if tasks and ((eval_every and (step + 1) % eval_every == 0) or step + 1 == steps):
                last_eval = evaluate()
                row["zeroshot_val"] = last_eval
            curve.write(json.dumps(row) + "\n")
            curve.flush()
            if log and (step + 1 == 1 or (step + 1) % 50 == 0 or step + 1 == steps or "zeroshot_val" in row):
                log(f"step {step + 1}/{steps} loss {losses[-1]:.4f} lr {cur_lr:.2e} "
                    f"{now - t0:.1f}s" + (f" zero-shot val {last_eval}" if "zeroshot_val" in row else ""))
    total = time.perf_counter() - t0

    sd = model.state_dict()
    dtype = torch.float16 if storage == "fp16" else torch.float32
    tensors = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous() for k, v in sd.items()}
    ckpt = out / f"{ARCH}.safetensors"
    # one metadata key only: safetensors serialises the metadata map in hash order, which varies per process
    # the activation is recorded inside it (see vlprompt.backbones.checkpoints.recorded_activation)
    activation = "quick_gelu" if uses_quick_gelu(model) else "gelu"
    meta = json.dumps({"arch": ARCH, "seed": seed, "steps": steps, "storage": storage, "activation": activation},
                      sort_keys=True)
    save_file(tensors, str(ckpt), metadata={"vlprompt": meta})
    timed = step_times[1:] or step_times  # the first step includes lazy initialisation
    metrics = {
        "steps": steps, "batch_size": batch_size, "final_loss": losses[-1] if losses else None,
        "final_loss_mean10": float(np.mean(losses[-10:])) if losses else None,
        "initial_loss": losses[0] if losses else None, "total_seconds": round(total, 2),
        "step_seconds_mean": round(float(np.mean(timed)), 4) if timed else None,
        "data_seconds_mean": round(float(np.mean(data_times[1:] or data_times)), 4) if data_times else None,
        "precision": precision, "num_threads": num_threads,
        "zeroshot_val": last_eval, "checkpoint": ckpt.name, "checkpoint_bytes": ckpt.stat().st_size,
        "checkpoint_sha256": file_sha256(ckpt), "n_params": sum(p.numel() for p in model.parameters()),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    if log:
        log(f"wrote {ckpt} ({metrics['checkpoint_bytes'] / 1e6:.2f} MB), metrics.json, recipe.json, curve.jsonl")
    return metrics


def pretrain_main(argv: Sequence[str] | None = None) -> int:
    """``vlprompt pretrain-tiny``: the command line of :func:`pretrain`. Returns the exit status."""
    r = DEFAULT_RECIPE
    p = argparse.ArgumentParser(
        prog="vlprompt pretrain-tiny",
        description="Pretrain tiny-clip on the deterministic offline corpus (defaults: the full recipe, "
                    "sized for about an hour on 2 CPU cores). Writes curve.jsonl, tiny-clip.safetensors, "
                    "recipe.json and metrics.json into --out.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--steps", type=int, default=r["steps"])
    p.add_argument("--batch-size", type=int, default=r["batch_size"])
    p.add_argument("--lr", type=float, default=r["lr"])
    p.add_argument("--seed", type=int, default=r["seed"])
    p.add_argument("--weight-decay", type=float, default=r["weight_decay"])
    p.add_argument("--warmup-steps", type=int, default=None, help="default: min(30, steps // 20)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=r["precision"])
    p.add_argument("--threads", type=int, default=r["num_threads"], help="torch threads (fixed for determinism)")
    p.add_argument("--eval-every", type=int, default=r["eval_every"],
                   help="zero-shot val evaluation period in steps (0: only at the end)")
    p.add_argument("--eval-tasks", default=",".join(DEFAULT_EVAL_TASKS),
                   help="comma-separated tiny tasks evaluated zero-shot on val ('' disables)")
    p.add_argument("--grouped-sources", type=int, default=r["grouped_sources"],
                   help="half of each batch comes from this many corpus sources (0: fully mixed batches)")
    p.add_argument("--optional-sources", action=argparse.BooleanOptionalAction, default=r["optional_sources"],
                   help="train on Fashion-MNIST / Animal-MNIST when installed (default: on, as the shipped "
                        "checkpoint was; --no-optional-sources leaves them out)")
    p.add_argument("--storage", choices=("fp16", "fp32"), default=r["storage"], help="checkpoint tensor dtype")
    p.add_argument("--suite", default=None, help="tiny suite folder (default: the cache, generated if needed)")
    a = p.parse_args(list(argv) if argv is not None else None)
    if a.steps < 1 or a.batch_size < 2:
        p.error("--steps must be >= 1 and --batch-size >= 2")
    pretrain(a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed, weight_decay=a.weight_decay,
             warmup_steps=a.warmup_steps, precision=a.precision, num_threads=a.threads, eval_every=a.eval_every,
             eval_tasks=[t for t in a.eval_tasks.split(",") if t], storage=a.storage, manifest=a.suite,
             grouped_sources=a.grouped_sources, optional_sources=a.optional_sources)
    return 0
