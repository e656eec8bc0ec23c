"""The real-data suite: small benchmarks of real labelled images that ship in packages, in CoOp's format.

Importing this package registers every dataset as ``real/<name>`` (alias ``real_<name>``). On first use a
dataset is generated into ``$VLPROMPT_CACHE/real-suite/v<version>/<name>`` (default cache
``~/.cache/vlprompt``); a ``root`` that already holds a current copy (``root/<name>``,
``root/real-suite/<name>`` or ``root/real-suite/v<version>/<name>``) is read instead, any other ``root``
(or ``None``) is ignored and nothing is written there. Datasets whose optional source is not installed
raise a :class:`~vlprompt.errors.DatasetError` naming the install command. See ``docs/real-suite.md``.

Example:
    >>> import vlprompt as vp
    >>> task = vp.load_dataset("real/digits", None, shots=16, seed=1, subsample="base")
    >>> task.classnames
    ['0', '1', '2', '3', '4']
"""

from __future__ import annotations

import os
from pathlib import Path

from ..registry import register_dataset
from ..splitfile import generated_split_task
from ..task import Task
from .suite import (
    SPEC_BY_NAME,
    SPECS,
    SUITE_VERSION,
    RealSpec,
    default_suite_dir,
    generate_dataset,
    is_generated,
)

__all__ = [
    "SPECS",
    "SUITE_VERSION",
    "RealSpec",
    "dataset_dir",
    "default_suite_dir",
    "generate_dataset",
    "load_real_dataset",
    "real_dataset_names",
    "real_status",
]


def real_dataset_names(include_missing: bool = True) -> list[str]:
    """Names (without ``real/``) of the suite's datasets; only those whose source is installed unless asked."""
    return [s.name for s in SPECS if include_missing or s.available()]


def real_status() -> dict[str, str]:
    """``real/<name>`` -> ``"available"`` or ``"missing: <install command>"`` (for ``vlprompt datasets``)."""
    return {f"real/{s.name}": "available" if s.available() else f"missing: {s.install}" for s in SPECS}


def dataset_dir(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """The folder of dataset ``name``: a current copy under ``root`` if there is one, else the cache folder,
    generated there first if needed.

    Raises:
        DatasetError: the dataset's source is not installed.
    """
    spec = SPEC_BY_NAME[name]
    if root is not None and os.fspath(root) not in ("", "."):
        base = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
        for cand in (base / name, base / "real-suite" / name, base / "real-suite" / f"v{SUITE_VERSION}" / name):
            if is_generated(cand):
                return cand
    return generate_dataset(spec, default_suite_dir() / name)


def load_real_dataset(name: str, root: str | os.PathLike[str] | None = None) -> Task:
    """The full dataset ``real/<name>`` (no few-shot sampling), read from :func:`dataset_dir`.

    Raises:
        DatasetError: the source is not installed, or the generated files are malformed.
    """
    spec = SPEC_BY_NAME[name]
    return generated_split_task(f"real/{name}", dataset_dir(name, root), spec.display, spec.augment,
                                {"source": spec.source, "optional": spec.optional})


def _register(name: str) -> None:
    def loader(root: Path | None) -> Task:
        return load_real_dataset(name, root)

    loader.__qualname__ = f"load_real_{name}"
    register_dataset(f"real/{name}", f"real_{name}")(loader)


for _spec in SPECS:
    _register(_spec.name)
