"""Data-parallel training: 2 gloo processes on CPU train the same prompt as one process."""

from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

TRAIN = {"epochs": 3, "batch_size": 4, "lr": 0.002, "precision": "fp32", "feature_views": 2}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(root: str, cache: str, out: str) -> None:
    import vlprompt as vp

    torch.set_num_threads(1)
    task = vp.load_dataset("imagefolder", root, shots=4, seed=1)
    bb = vp.load_backbone("tiny-clip")
    vp.seed_everything(1)
    model = vp.build_method("coop", bb, task.classnames, n_ctx=4)
    vp.fit(model, task, run_dir=out, cache_dir=cache, **TRAIN)


def _worker(rank: int, world: int, port: int, root: str, cache: str, out: str) -> None:
    import torch.distributed as dist

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world)})
    try:
        _train(root, cache, out)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_two_gloo_processes_equal_one_process(shapes_root, tmp_path):
    cache = str(tmp_path / "cache")
    _train(str(shapes_root), cache, str(tmp_path / "single"))  # also fills the feature cache
    mp.spawn(_worker, args=(2, _free_port(), str(shapes_root), cache, str(tmp_path / "ddp")), nprocs=2, join=True)
    single = load_file(str(tmp_path / "single" / "prompt.safetensors"))
    ddp = load_file(str(tmp_path / "ddp" / "prompt.safetensors"))
    assert single.keys() == ddp.keys()
    for k in single:
        assert torch.allclose(single[k], ddp[k], atol=1e-5), (k, (single[k] - ddp[k]).abs().max())
    import json

    res = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert res["env"]["world_size"] == 2
    assert res["acc"] == json.loads((tmp_path / "single" / "results.json").read_text())["acc"]
