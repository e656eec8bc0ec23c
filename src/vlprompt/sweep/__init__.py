"""Declared sweeps: a YAML grid expanded to runs, executed on local processes or a Ray cluster.

Example:
    >>> from vlprompt.sweep import load_sweep, run_sweep
    >>> run_sweep(load_sweep("sweep.yaml"), executor="local", workers=2)
"""

from .progress import Progress
from .run import execute, is_complete, run_sweep, sweep_main
from .spec import DatasetEntry, MethodEntry, Sweep, SweepRun, load_sweep, parse_sweep, run_id, validate_sweep

__all__ = [
    "DatasetEntry", "MethodEntry", "Progress", "Sweep", "SweepRun", "execute", "is_complete", "load_sweep",
    "parse_sweep", "run_id", "run_sweep", "sweep_main", "validate_sweep",
]
