"""Run directories: atomic writes of config, metrics, results, prompt and checkpoints.

Layout::

    RUN/
      config.yaml        fully resolved configuration
      metrics.jsonl      one JSON line per epoch
      results.json       final numbers + environment
      prompt.safetensors trainable weights      prompt.json  how to reload them
      split.json         the few-shot sample (paths relative to the dataset's image dir)
      log.txt            human-readable log
      checkpoint/last.pt state for exact resume
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import yaml


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` via a temp file + rename (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(tmp, mode) as f:
        f.write(data)
    os.replace(tmp, path)


class RunDir:
    """Reads and writes the files of one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # ---------------------------------------------------------------- files
    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint" / "last.pt"

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict[str, Any]:
        p = self.path / "config.yaml"
        return yaml.safe_load(p.read_text()) if p.exists() else {}

    def write_results(self, results: dict[str, Any]) -> None:
        atomic_write(self.path / "results.json", json.dumps(results, indent=2) + "\n")

    def read_results(self) -> dict[str, Any] | None:
        p = self.path / "results.json"
        return json.loads(p.read_text()) if p.exists() else None

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        atomic_write(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    def read_metrics(self) -> list[dict[str, Any]]:
        p = self.path / "metrics.jsonl"
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []

    def log(self, message: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.path / "log.txt", "a") as f:
            f.write(f"[{stamp}] {message}\n")

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint_path.with_name(f".last.pt.tmp{os.getpid()}")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_path)

    def load_checkpoint(self) -> dict[str, Any] | None:
        if not self.checkpoint_path.exists():
            return None
        # our own file, plain tensors and numbers: loadable without unpickling code
        return torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
