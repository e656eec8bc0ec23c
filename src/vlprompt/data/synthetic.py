"""A small, learnable synthetic image-folder dataset (for demos, benchmarks and end-to-end tests).

Each class is a coloured shape (``"red circle"``, ``"blue triangle"`` ...) drawn at a random position
and size, with a slightly jittered colour, on a random dull background with pixel noise. Colour and
shape are both class-specific, so a linear probe on almost any features separates the classes.

Example:
    >>> from vlprompt.data import make_image_folder, load_dataset
    >>> root = make_image_folder("/tmp/shapes", n_train=16, n_val=4, n_test=10)
    >>> task = load_dataset("imagefolder", root)
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vlprompt.errors import ConfigError, DatasetError

from .layout import abspath

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 220, 30),
    "purple": (140, 40, 180),
    "orange": (245, 140, 20),
    "cyan": (30, 210, 220),
    "pink": (250, 130, 190),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "brown": (120, 70, 30),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond")
DEFAULT_CLASSES = ("red circle", "green square", "blue triangle", "yellow star", "purple cross")
_MARKER = "synthetic.json"


def _class_styles(classes: Sequence[str]) -> list[tuple[tuple[int, int, int], str]]:
    """(colour, shape) of each class: parsed from its words, else the next unused combination."""
    # i -> (colour i mod 11, shape i mod 7): 77 distinct pairs, the first 11 with distinct colours
    names = list(COLOURS)
    combos = [(names[i % len(names)], SHAPES[i % len(SHAPES)]) for i in range(len(names) * len(SHAPES))]
    styles: list[tuple[str, str] | None] = []
    for name in classes:
        words = name.lower().replace("_", " ").split()
        colour = next((w for w in words if w in COLOURS), None)
        shape = next((w for w in words if w in SHAPES), None)
        parsed = (colour, shape) if colour and shape else None
        styles.append(parsed if parsed not in styles else None)  # a repeated pair gets a fresh one
    used = {s for s in styles if s is not None}
    out = []
    for style in styles:
        if style is None:  # prefer a colour no other class has, then any unused pair
            colours = {c for c, _ in used}
            style = next((c for c in combos if c not in used and c[0] not in colours), None)
            style = style or next(c for c in combos if c not in used)
            used.add(style)
        out.append((COLOURS[style[0]], style[1]))
    return out


def _polygon(
    cx: float, cy: float, r: float, points: int, inner: float | None, turn: float
) -> list[tuple[float, float]]:
    verts = []
    n = points * (2 if inner else 1)
    for k in range(n):
        radius = r if (inner is None or k % 2 == 0) else r * inner
        a = turn + 2 * math.pi * k / n
        verts.append((cx + radius * math.sin(a), cy - radius * math.cos(a)))
    return verts


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple, turn: float
) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(r * 0.35)))
    elif shape == "square":
        draw.polygon(_polygon(cx, cy, r * 1.2, 4, None, math.pi / 4 + turn * 0.2), fill=fill)
    elif shape == "diamond":
        draw.polygon(_polygon(cx, cy, r, 4, None, turn * 0.2), fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, r * 1.15, 3, None, turn * 0.3), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, r * 1.15, 5, 0.42, turn), fill=fill)
    elif shape == "cross":
        w = r * 0.38
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(shape)


def render_image(
    colour: tuple[int, int, int], shape: str, size: int, rng: random.Random, noise: np.ndarray
) -> Image.Image:
    """One image of a class: random dull background, jittered shape, additive pixel ``noise``."""
    bg = tuple(int(rng.uniform(70, 170)) for _ in range(3))
    image = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(image)
    r = rng.uniform(0.2, 0.34) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    fill = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in colour)
    _draw_shape(draw, shape, cx, cy, r, fill, rng.uniform(-0.5, 0.5))
    pixels = np.asarray(image, dtype=np.int16) + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_image_folder(
    root: str | os.PathLike[str],
    classes: Sequence[str] = DEFAULT_CLASSES,
    n_train: int = 16,
    n_val: int = 4,
    n_test: int = 10,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write ``root/{train,val,test}/<class_name>/*.jpg`` and return ``root``.

    Folder names are the class names with spaces as ``_`` (the ``imagefolder`` loader turns them
    back). ``n_val=0`` writes no ``val/`` folder. Calling again with the same arguments reuses the
    existing files; different arguments regenerate them. A non-empty folder that this function did not
    write is never touched.

    Raises:
        ConfigError: invalid counts, size or class names.
        DatasetError: ``root`` is a non-empty folder not created by this function.
    """
    classes = [str(c) for c in classes]
    if (
        len(classes) < 2
        or len(set(classes)) != len(classes)
        or any("/" in c or not c.strip() for c in classes)
    ):
        raise ConfigError(f"classes={classes!r}; expected at least 2 distinct, non-empty names without '/'")
    if min(n_train, n_test) < 1 or n_val < 0 or size < 8:
        raise ConfigError(
            f"n_train={n_train}, n_val={n_val}, n_test={n_test}, size={size}; expected n_train, n_test >= 1, "
            "n_val >= 0 and size >= 8"
        )
    if len(classes) > len(COLOURS) * len(SHAPES):
        raise ConfigError(f"at most {len(COLOURS) * len(SHAPES)} synthetic classes are available")
    base = abspath(root)
    params = {
        "classes": classes,
        "n_train": n_train,
        "n_val": n_val,
        "n_test": n_test,
        "size": size,
        "seed": seed,
    }
    marker = base / _MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text(encoding="utf-8")) == params:
                return base
        except (OSError, ValueError):
            pass
        for split in ("train", "val", "test"):
            shutil.rmtree(base / split, ignore_errors=True)
    elif base.exists() and (not base.is_dir() or any(base.iterdir())):
        raise DatasetError(
            f"'{base}' already exists and is not an (empty) folder written by make_image_folder; "
            "expected a new or empty folder"
        )
    rng = random.Random(seed)
    noise_rng = np.random.default_rng(seed)
    styles = _class_styles(classes)
    for split, count in (("train", n_train), ("val", n_val), ("test", n_test)):
        for name, (colour, shape) in zip(classes, styles, strict=True):
            folder = base / split / name.strip().replace(" ", "_")
            if count:
                folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                noise = noise_rng.normal(0.0, 8.0, size=(size, size, 3)).astype(np.int16)
                render_image(colour, shape, size, rng, noise).save(
                    folder / f"{split}_{i:04d}.jpg", quality=90
                )
    marker.write_text(json.dumps(params), encoding="utf-8")
    return base
