"""benchmarks/engine_fingerprints.py (the refactor guard) must cover every registered method."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "engine_fingerprints.py"


def test_fingerprint_runs_cover_every_registered_method_and_plugin():
    import vlprompt  # noqa: F401  (registers the methods)
    from vlprompt.methods.base import _PLUGINS, _REGISTRY

    spec = importlib.util.spec_from_file_location("engine_fingerprints", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    runs = mod.runs()
    names = [r[0] for r in runs]
    assert len(names) == len(set(names))
    methods = {part for r in runs for part in r[1].split("+")[:1]}
    assert set(_REGISTRY) <= methods, sorted(set(_REGISTRY) - methods)
    plugins = {part for r in runs for part in r[1].split("+")[1:]}
    assert set(_PLUGINS) <= plugins, sorted(set(_PLUGINS) - plugins)
