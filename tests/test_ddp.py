"""Data-parallel training: 2 gloo processes on CPU train the same prompt as one process.

What holds depends on the precision. fp32: the trained prompt equals the single-process one to fp32
rounding (the shards' gradients are summed in fp32, and fp32 kernels round a shard's samples as
they round the whole batch's). bf16 / fp16 autocast: each rank's matmuls round its shard's gradient
contributions to bf16 before they are summed, which a single process does over the whole batch, so
the prompts agree only to bf16 rounding of the update: the difference is a small fraction of how
far training moved the prompt, not zero.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

TRAIN = {"epochs": 3, "batch_size": 4, "lr": 0.002, "feature_views": 2}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(root: str, cache: str, out: str, precision: str) -> dict:
    import vlprompt as vp

    torch.set_num_threads(1)
    task = vp.load_dataset("imagefolder", root, shots=4, seed=1)
    bb = vp.load_backbone("tiny-clip")
    vp.seed_everything(1)
    model = vp.build_method("coop", bb, task.classnames, n_ctx=4)
    init = {k: v.detach().clone() for k, v in model.prompt_state_dict().items()}
    vp.fit(model, task, run_dir=out, cache_dir=cache, precision=precision, **TRAIN)
    return init


def _worker(rank: int, world: int, port: int, root: str, cache: str, out: str, precision: str) -> None:
    import torch.distributed as dist

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world)})
    try:
        _train(root, cache, out, precision)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_two_gloo_processes_equal_one_process(precision, shapes_root, tmp_path):
    cache = str(tmp_path / "cache")
    init = _train(str(shapes_root), cache, str(tmp_path / "single"), precision)  # also fills the feature cache
    mp.spawn(_worker, args=(2, _free_port(), str(shapes_root), cache, str(tmp_path / "ddp"), precision), nprocs=2,
             join=True)
    single = load_file(str(tmp_path / "single" / "prompt.safetensors"))
    ddp = load_file(str(tmp_path / "ddp" / "prompt.safetensors"))
    assert single.keys() == ddp.keys()
    import json

    res = json.loads((tmp_path / "ddp" / "results.json").read_text())
    ref = json.loads((tmp_path / "single" / "results.json").read_text())
    assert res["env"]["world_size"] == 2
    for k in single:
        diff, moved = (single[k] - ddp[k]).norm(), (single[k] - init[k]).norm()
        print(f"{precision} {k}: max|diff| {float((single[k] - ddp[k]).abs().max()):.3g}, "
              f"|diff| / |moved| {float(diff / moved):.3g}; acc {ref['acc']} vs {res['acc']}")
        if precision == "fp32":
            assert torch.allclose(single[k], ddp[k], atol=1e-5), (k, (single[k] - ddp[k]).abs().max())
        else:
            assert diff <= 0.05 * moved, (k, float(diff / moved))
    if precision == "fp32":
        assert res["acc"] == ref["acc"]
