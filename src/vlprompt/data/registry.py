"""Registry of dataset loaders, looked up by a forgiving name.

A loader is a function ``fn(root: Path) -> Task`` that reads a *full* dataset (no few-shot sampling,
no class subsampling) from ``root``. Names are matched case-insensitively and ignoring ``-``, ``_``,
spaces and dots, so ``"EuroSAT"``, ``"eurosat"``, ``"oxford_pets"``, ``"OxfordPets"``, ``"imagenet-v2"``
and ``"imagenetv2"`` all work.

Example:
    >>> from vlprompt.data.registry import register_dataset, get_loader
    >>> @register_dataset("my_data", "mine")
    ... def load_my_data(root):
    ...     ...
    >>> get_loader("My-Data") is load_my_data
    True
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from vlprompt.errors import ConfigError

from .task import Task

Loader = Callable[[Path], Task]
F = TypeVar("F", bound=Loader)

# normalised key -> (canonical name, loader)
_LOADERS: dict[str, tuple[str, Loader]] = {}
_CANONICAL: dict[str, Loader] = {}


def normalize_name(name: str) -> str:
    """The lookup key of a dataset name: lower case without ``-``, ``_``, spaces or dots."""
    return "".join(ch for ch in str(name).lower() if ch not in "-_ .")


def register_dataset(name: str, *aliases: str) -> Callable[[F], F]:
    """Decorator registering ``fn(root: Path) -> Task`` under ``name`` (canonical) and ``aliases``.

    Raises:
        ConfigError: if a name is already taken by a different loader.

    Example:
        >>> @register_dataset("toy")
        ... def load_toy(root): ...
    """

    def decorator(fn: F) -> F:
        for alias in (name, *aliases):
            key = normalize_name(alias)
            if not key:
                raise ConfigError(f"invalid dataset name {alias!r}: expected a non-empty name")
            taken = _LOADERS.get(key)
            if taken is not None and not _same_function(taken[1], fn):
                raise ConfigError(
                    f"dataset name {alias!r} is already registered (as {taken[0]!r}); "
                    "expected a new, unused name"
                )
        for alias in (name, *aliases):
            _LOADERS[normalize_name(alias)] = (name, fn)
        _CANONICAL[name] = fn
        return fn

    return decorator


def _same_function(a: Loader, b: Loader) -> bool:
    """True if ``a`` and ``b`` are the same loader (also across a module reload)."""
    if a is b:
        return True
    return (getattr(a, "__module__", None), getattr(a, "__qualname__", None)) == (
        getattr(b, "__module__", None),
        getattr(b, "__qualname__", None),
    )


def list_datasets() -> list[str]:
    """Sorted canonical names of all registered datasets.

    Example:
        >>> "eurosat" in list_datasets()  # after ``import vlprompt.data``
        True
    """
    return sorted(_CANONICAL)


def canonical_name(name: str) -> str:
    """The canonical registered name for ``name`` (e.g. ``"OxfordPets"`` -> ``"oxford_pets"``)."""
    return _lookup(name)[0]


def get_loader(name: str) -> Loader:
    """The loader registered for ``name``.

    Raises:
        ConfigError: unknown name; the message lists the known names.
    """
    return _lookup(name)[1]


def _lookup(name: str) -> tuple[str, Loader]:
    entry = _LOADERS.get(normalize_name(name))
    if entry is None:
        known = ", ".join(list_datasets()) or "(none registered)"
        raise ConfigError(f"unknown dataset {name!r}; expected one of: {known}")
    return entry
