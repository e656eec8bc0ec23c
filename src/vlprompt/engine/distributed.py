"""Data-parallel training across processes (``torchrun``), without a model wrapper.

Every rank builds the same global batches (same seeded generator) and takes its strided
shard of each; the loss of rank ``r`` is scaled by ``n_r / B`` and gradients are summed with
``all_reduce``, so the update equals a single process's on the global batch exactly. Only
rank 0 writes the run directory.

Launch: ``torchrun --nproc_per_node 2 -m vlprompt.cli train ...`` (gloo on CPU, nccl on GPUs).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)``: from the initialised process group, else from torchrun's env."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init_from_env(device: torch.device) -> tuple[int, int]:
    """Initialise the default process group when launched by torchrun (``WORLD_SIZE > 1``)."""
    rank, size = world()
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, size = world()
    return rank, size


def is_main() -> bool:
    return world()[0] == 0


def shard(batch: torch.Tensor) -> torch.Tensor:
    """This rank's strided share of a global batch of indices."""
    rank, size = world()
    return batch[rank::size] if size > 1 else batch


def sum_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """Sum gradients over ranks (each rank's loss is pre-scaled by its share of the batch)."""
    if world()[1] == 1:
        return
    for p in parameters:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def sum_scalar(value: float, device: torch.device) -> float:
    if world()[1] == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def sum_tensor(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (one all-reduce; nothing with one process) and return it."""
    if world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t
