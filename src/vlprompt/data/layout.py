"""Helpers shared by the dataset loaders: locating a dataset folder, listing images, error texts.

Nothing here writes to disk.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from vlprompt.errors import DatasetError

from .task import Sample

#: File extensions treated as images when a loader scans folders (compared case-insensitively).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})


def abspath(path: str | os.PathLike[str]) -> Path:
    """``path`` with ``~`` expanded, made absolute without resolving symlinks."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def outside_reason(rel: str) -> str | None:
    """Why ``rel`` is not a relative path that stays inside the folder it is relative to, or ``None``.

    Checked on the text (symlinks inside the folder are allowed): an absolute path (``/x``, ``\\x``,
    ``C:/x``) or one whose ``..`` components climb above the folder (``../../etc/passwd``).
    """
    if os.path.isabs(rel) or rel.startswith(("/", "\\")) or (rel[1:3] in (":/", ":\\") and rel[0].isalpha()):
        return "is an absolute path"
    norm = os.path.normpath(rel.replace("\\", "/"))
    if norm == ".." or norm.startswith("../"):
        return "leads outside the folder through '..'"
    return None


def check_inside(rel: str, where: str, folder: str | os.PathLike[str] | None = None) -> str:
    """``rel`` if it is a relative path inside ``folder`` (see :func:`outside_reason`).

    Raises:
        DatasetError: ``"<where>: path '<rel>' is an absolute path; expected ..."``, naming the entry's
            place (file, line or entry number) and the folder paths are relative to.
    """
    reason = outside_reason(rel)
    if reason is not None:
        target = f"the image folder '{folder}'" if folder is not None else "the dataset's image folder"
        raise DatasetError(f"{where}: path {rel!r} {reason}; expected paths relative to {target}, inside it")
    return rel


def pretty_classname(name: str) -> str:
    """A class name ready for a prompt: underscores become spaces, whitespace collapsed."""
    return " ".join(str(name).replace("_", " ").split())


def layout_tree(folder: str, entries: Sequence[str], top: str = "$DATA") -> str:
    """A short indented tree: ``top/`` containing ``folder/`` containing ``entries``."""
    lines = [f"    {top}/", f"      {folder}/"]
    lines += [f"        {entry}" for entry in entries]
    return "\n".join(lines)


def find_dataset_dir(
    root: str | os.PathLike[str],
    folder: str,
    markers: Iterable[str],
    display: str,
    entries: Sequence[str],
) -> Path:
    """The dataset folder: ``root/folder`` or ``root`` itself when it already is that folder.

    Args:
        root: the user's data directory (``$DATA``) or the dataset folder itself.
        folder: the dataset's folder name under ``$DATA`` (e.g. ``"eurosat"``).
        markers: names inside the dataset folder that identify it (its image dir, split file...).
        display: the dataset's name for messages.
        entries: the expected contents of the folder, for the error message.

    Raises:
        DatasetError: neither candidate exists; the message shows the expected layout.
    """
    base = abspath(root)
    candidate = base / folder
    if candidate.is_dir():
        return candidate
    if base.is_dir() and (base.name.lower() == folder.lower() or any((base / m).exists() for m in markers)):
        return base
    what = "does not exist" if not base.exists() else f"contains no '{folder}/' folder"
    raise DatasetError(
        f"{display} dataset not found: '{base}' {what}. Expected root to be the data directory "
        f"that contains '{folder}/' (or that folder itself), laid out as:\n"
        + layout_tree(folder, entries, top=str(base) if base.name != folder else "$DATA")
    )


def require_dir(path: Path, display: str, folder: str, entries: Sequence[str]) -> Path:
    """``path`` if it is a directory, else a DatasetError showing the expected layout."""
    if not path.is_dir():
        raise DatasetError(
            f"{display}: folder '{path}' is missing. Expected this layout:\n" + layout_tree(folder, entries)
        )
    return path


def require_file(path: Path, display: str, folder: str, entries: Sequence[str]) -> Path:
    """``path`` if it is a file, else a DatasetError showing the expected layout."""
    if not path.is_file():
        raise DatasetError(
            f"{display}: file '{path}' is missing. Expected this layout:\n" + layout_tree(folder, entries)
        )
    return path


def is_image(name: str) -> bool:
    """True for a non-hidden file name with an image extension."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_images(directory: Path) -> list[Path]:
    """Image files directly inside ``directory``, sorted by name."""
    with os.scandir(directory) as it:
        names = sorted(e.name for e in it if is_image(e.name) and e.is_file())
    return [directory / n for n in names]


def list_subdirs(directory: Path) -> list[str]:
    """Names of the non-hidden sub-directories of ``directory``, sorted."""
    with os.scandir(directory) as it:
        return sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir())


def read_text_lines(path: Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file, stripped of surrounding whitespace."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read '{path}': {exc}; expected a UTF-8 text file") from exc
    return [line.strip() for line in text.splitlines() if line.strip()]


def check_some_exist(samples: dict[str, list[Sample]], display: str, where: Path) -> None:
    """Cheap sanity check: the first image of every split exists (catches a wrong image folder).

    Raises:
        DatasetError: naming the missing file and the folder images were expected in.
    """
    for split, items in samples.items():
        if items and not os.path.isfile(items[0].path):
            raise DatasetError(
                f"{display}: image '{items[0].path}' listed in the {split} split does not exist; "
                f"expected the images under '{where}'"
            )
