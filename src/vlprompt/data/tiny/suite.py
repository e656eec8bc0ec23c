"""The tiny benchmark suite: deterministic generation, on-disk layout and the manifest.

:func:`generate_suite` writes every task under ``root/<task>/`` in the formats of the real benchmarks:

* split_zhou tasks: ``images/<class>/<split>_NNNN.jpg``, ``split_zhou_<Display>.json`` (``train`` /
  ``val`` / ``test`` lists of ``[relpath, label, classname]``), ``classnames.txt``, ``template.txt``,
  ``task_name.txt`` (SoftCPT) and ``mask/<relpath with .png>`` (1-bit PNG foreground masks);
* VTAB-1k-like tasks in NOAH's extracted format: ``images/train800val200/*.jpg``, ``images/test/*.jpg``,
  ``train800.txt``, ``val200.txt``, ``train800val200.txt``, ``test.txt`` ("relpath label" lines,
  paths relative to the task folder), plus the same ``classnames.txt`` / ``template.txt`` /
  ``task_name.txt`` (no masks: VPT-style methods do not use them);
* ``group_synthetic.txt``, ``group_real.txt`` and ``groups.json`` (SoftCPT task groups) and
  ``manifest.json`` (version, per-task counts, skipped optional tasks, and the identities of every
  test image and every trainable image, for excluding test images from a pretraining corpus).

Every image has its own seed (task, split, class, index), so the files are byte-identical between
generations and independent of generation order.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vlprompt import progress
from vlprompt.cache import cache_root, replace_dir

from . import procedural as P
from . import sources

#: Bump when any generator output changes: the cache path and the manifest carry it.
SUITE_VERSION = "1"
SUITE_ID = "vlprompt-tiny"
IMAGE_SIZE = 64
N_TRAIN, N_VAL, N_TEST = 20, 8, 30  # per class, split_zhou tasks
N_VARIANT_TEST = 30  # per class, test-only domain-shifted variants
VTAB_TRAIN, VTAB_VAL, VTAB_TEST = 800, 200, 400
JPEG_QUALITY = 92  # fixed: images are JPEG (deterministic with a given Pillow/libjpeg), masks 1-bit PNG

Render = Callable[[str, int, int, str], "Item"]


@dataclass
class Item:
    """One generated image: pixels, mask and its identity (``src:...`` for real sources, else None)."""

    image: Image.Image
    mask: np.ndarray
    source_id: str | None = None


@dataclass(frozen=True)
class TaskSpec:
    """A task of the suite.

    Attributes:
        name: folder and registry name (``tiny/<name>``).
        display: the ``<Display>`` of ``split_zhou_<Display>.json``.
        classnames: class names, label order.
        template: the hand-written zero-shot template (with ``{}``).
        task_name: SoftCPT task name (``task_name.txt``).
        group: SoftCPT group (``synthetic`` or ``real``); None for variants and VTAB tasks.
        source: where the images come from (documentation).
        fmt: ``"split_zhou"`` or ``"vtab"``.
        variant_of: the source task of a test-only domain-shifted variant.
        optional: the source may be absent (the task is then skipped).
        augment: training augmentation policy (:data:`vlprompt.data.transforms.AUGMENTS`): CLIP's
            random crop (scale 0.08-1) + flip would change the label of positions, arrow directions,
            counts and the 8x8 digits, so those tasks train on plain views (``"none"``); texture-like
            tasks use mild crops (``"crop"``).
    """

    name: str
    display: str
    classnames: tuple[str, ...]
    template: str
    task_name: str
    group: str | None
    source: str
    fmt: str = "split_zhou"
    variant_of: str | None = None
    optional: bool = False
    augment: str = "none"


def _seed(*parts: object) -> np.random.Generator:
    key = "/".join(str(p) for p in (SUITE_ID, SUITE_VERSION, *parts))
    return np.random.default_rng(zlib.crc32(key.encode()) ^ (len(key) << 32))


# ------------------------------------------------------------------------------------ renderers
_COLOURS10 = tuple(c for c in P.COLOURS if c not in ("gray", "black"))
_NUMBERS = tuple(f"{w} object" if i == 1 else f"{w} objects" for i, w in enumerate(P.NUMBER_WORDS) if i)
_DIRECTIONS = ("east", "north-east", "north", "north-west", "west", "south-west", "south", "south-east")
_POSITIONS = tuple(P.POSITIONS)
_DSPRITES_CELLS = tuple(f"row {r + 1} column {c + 1}" for r in range(4) for c in range(4))


def _r_shapes(task: str, label: int, index: int, split: str, **kw) -> Item:
    s = P.render_scene(_seed(task, split, label, index), shape=P.SHAPES[label], **kw)
    return Item(s.image, s.mask)


def _r_sketch(task: str, label: int, index: int, split: str) -> Item:
    return _r_shapes(task, label, index, split, sketch=True, outline=2, size="large")


def _r_noisy(task: str, label: int, index: int, split: str) -> Item:
    rng = _seed(task, split, label, index, "colour")
    return _r_shapes(task, label, index, split, noise=45.0, colour=str(rng.choice(["gray", "black", "white"])))


def _r_colours(task: str, label: int, index: int, split: str) -> Item:
    s = P.render_scene(_seed(task, split, label, index), colour=_COLOURS10[label],
                       size=str(_seed(task, split, label, index, "s").choice(["medium", "large"])))
    return Item(s.image, s.mask)


def _r_count(task: str, label: int, index: int, split: str, offset: int = 1) -> Item:
    rng = _seed(task, split, label, index)
    s = P.render_scene(rng, count=label + offset, radius=float(rng.uniform(3.2, 4.6)),
                       background=str(rng.choice(["plain", "gradient", "noise"])))
    return Item(s.image, s.mask)


def _r_positions(task: str, label: int, index: int, split: str) -> Item:
    s = P.render_scene(_seed(task, split, label, index), position=_POSITIONS[label], size="small")
    return Item(s.image, s.mask)


def _r_orientation(task: str, label: int, index: int, split: str) -> Item:
    rng = _seed(task, split, label, index)
    angle = -label * math.pi / 4 + rng.uniform(-0.15, 0.15)  # image y grows downwards
    s = P.render_scene(rng, shape="arrow", size="large", rotation=angle, centre=tuple(rng.uniform(26, 38, 2)))
    return Item(s.image, s.mask)


def _r_dsprites(task: str, label: int, index: int, split: str) -> Item:
    rng = _seed(task, split, label, index)
    row, col = divmod(label, 4)
    cx = (col + rng.uniform(0.25, 0.75)) * IMAGE_SIZE / 4
    cy = (row + rng.uniform(0.25, 0.75)) * IMAGE_SIZE / 4
    shape = str(rng.choice(["square", "circle", "star"]))
    s = P.render_scene(rng, shape=shape, colour="white", background="plain", radius=float(rng.uniform(4, 7)),
                       centre=(cx, cy))
    return Item(s.image, s.mask)


def _r_satellite(task: str, label: int, index: int, split: str) -> Item:
    s = P.render_satellite(_seed(task, split, label, index), P.SATELLITE_CLASSES[label])
    return Item(s.image, s.mask)


def _r_texture(task: str, label: int, index: int, split: str) -> Item:
    s = P.render_texture(_seed(task, split, label, index), P.TEXTURE_CLASSES[label])
    return Item(s.image, s.mask)


def _gray_item(small: np.ndarray, rng: np.random.Generator, source_id: str, invert: bool = False) -> Item:
    """An upsampled grayscale image tinted with a random dark/light pair; mask = ink (> 40% of max)."""
    big = np.asarray(Image.fromarray(small).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC), np.float64) / 255.0
    mask = (big > 0.4 * max(big.max(), 1e-6)).astype(np.uint8)
    bg = rng.uniform(0, 60, 3)
    ink = rng.uniform(190, 255, 3)
    if invert:
        bg, ink = 255 - bg, 255 - ink
    img = bg[None, None] * (1 - big[..., None]) + ink[None, None] * big[..., None] + rng.normal(0, 3, (64, 64, 1))
    return Item(P._to_image(img), mask, source_id)


class _IndexedSource:
    """A labelled array source split per class into disjoint train / val / test index lists."""

    def __init__(self, key: str, load: Callable[[], tuple[np.ndarray, np.ndarray]], n_per: dict[str, int],
                 invert: bool = False):
        self.key, self.load, self.n_per, self.invert = key, load, n_per, invert
        self._cache: tuple | None = None

    def _split(self):
        if self._cache is None:
            images, labels = self.load()
            picks: dict[tuple[str, int], list[int]] = {}
            for c in sorted(set(labels.tolist())):
                idx = np.flatnonzero(labels == c)
                idx = idx[_seed(self.key, "perm", c).permutation(len(idx))]
                start = 0
                for split in ("train", "val", "test"):
                    picks[(split, c)] = sorted(idx[start:start + self.n_per[split]].tolist())
                    start += self.n_per[split]
            self._cache = (images, picks)
        return self._cache

    def __call__(self, task: str, label: int, index: int, split: str) -> Item:
        images, picks = self._split()
        src = picks[(split, label)][index]
        return _gray_item(images[src], _seed(task, split, label, index), f"src:{self.key}:{src}", self.invert)


_PER = {"train": N_TRAIN, "val": N_VAL, "test": N_TEST}
_digits = _IndexedSource("sklearn-digits", sources.digits, _PER)
_fashion = _IndexedSource("fashion-mnist-t10k", sources.fashion_mnist, _PER, invert=True)
_animals = _IndexedSource("animal-mnist", sources.animal_mnist, _PER, invert=True)
_TEXTURE_IMAGES: dict[str, np.ndarray] = {}
#: Real-texture crops of the test split come from x >= this fraction of the source width; train/val crops
#: lie entirely left of it, so test pixels never appear in trainable crops.
REAL_TEST_X = 0.6


def _r_real_texture(task: str, label: int, index: int, split: str) -> Item:
    cname = tuple(sources.SKIMAGE_TEXTURES)[label]
    name = sources.SKIMAGE_TEXTURES[cname]
    if name not in _TEXTURE_IMAGES:
        _TEXTURE_IMAGES[name] = sources.skimage_image(name)
    src = _TEXTURE_IMAGES[name]
    h, w = src.shape[:2]
    rng = _seed(task, split, label, index)
    s = int(rng.integers(40, min(96, h, int(w * (1 - REAL_TEST_X))) + 1))
    bound = int(w * REAL_TEST_X)
    x = int(rng.integers(bound, w - s + 1)) if split == "test" else int(rng.integers(0, bound - s + 1))
    y = int(rng.integers(0, h - s + 1))
    crop = Image.fromarray(src[y:y + s, x:x + s]).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
    crop = crop.transpose(int(rng.integers(0, 7))) if rng.random() < 0.5 else crop
    return Item(crop.convert("RGB"), np.ones((IMAGE_SIZE, IMAGE_SIZE), np.uint8), f"src:skimage-{name}:{x},{y},{s}")


# ------------------------------------------------------------------------------------ task list
SPECS: tuple[TaskSpec, ...] = (
    TaskSpec("shapes", "TinyShapes", P.SHAPES, "a drawing of a {}.", "shape recognition", "synthetic",
             "procedural scenes"),
    TaskSpec("colours", "TinyColours", _COLOURS10, "a drawing of a {} object.", "colour recognition",
             "synthetic", "procedural scenes", augment="clip"),
    TaskSpec("counting", "TinyCounting", _NUMBERS, "a picture of {}.", "object counting", "synthetic",
             "procedural scenes"),
    TaskSpec("positions", "TinyPositions", _POSITIONS, "an object in the {} of the picture.",
             "object localisation", "synthetic", "procedural scenes"),
    TaskSpec("orientation", "TinyOrientation", tuple(_DIRECTIONS), "an arrow pointing {}.",
             "arrow direction recognition", "synthetic", "procedural scenes"),
    TaskSpec("textures", "TinyTextures", P.TEXTURE_CLASSES, "{} texture.", "texture recognition", "synthetic",
             "procedural textures (DTD analogue)", augment="crop"),
    TaskSpec("satellite", "TinySatellite", P.SATELLITE_CLASSES, "a centered satellite photo of {}.",
             "satellite land use classification", "synthetic", "procedural tiles (EuroSAT analogue)", augment="crop"),
    TaskSpec("digits", "TinyDigits", tuple(str(i) for i in range(10)), 'a photo of the number: "{}".',
             "handwritten digit recognition", "real", "scikit-learn load_digits"),
    TaskSpec("real_textures", "TinyRealTextures", tuple(sources.SKIMAGE_TEXTURES), "a close-up photo of {}.",
             "real texture recognition", "real", "scikit-image sample images", augment="crop"),
    TaskSpec("fashion", "TinyFashion", sources.FASHION_CLASSES, "a photo of a {}, a type of clothing.",
             "clothing recognition", "real", "Fashion-MNIST (Debian dataset-fashion-mnist)", optional=True,
             augment="crop"),
    TaskSpec("animals", "TinyAnimals", sources.ANIMAL_CLASSES, "a silhouette of a {}.",
             "animal silhouette recognition", "real", "Animal-MNIST (pip animal-mnist)", optional=True,
             augment="crop"),
    TaskSpec("shapes_sketch", "TinyShapesSketch", P.SHAPES, "a drawing of a {}.", "shape recognition", None,
             "procedural scenes: dark outlines on white paper", variant_of="shapes"),
    TaskSpec("shapes_noisy", "TinyShapesNoisy", P.SHAPES, "a drawing of a {}.", "shape recognition", None,
             "procedural scenes: heavy pixel noise, gray/black/white objects", variant_of="shapes"),
    TaskSpec("vtab_clevr_count", "", tuple(str(i) for i in range(3, 11)), "a picture of {} objects.",
             "object counting", None, "procedural scenes (VTAB clevr-count analogue)", fmt="vtab"),
    TaskSpec("vtab_dsprites_location", "", _DSPRITES_CELLS, "a small white shape in {} of a 4 by 4 grid.",
             "object localisation", None, "procedural sprites (VTAB dsprites-location analogue)", fmt="vtab"),
    TaskSpec("vtab_eurosat", "", P.SATELLITE_CLASSES, "a centered satellite photo of {}.",
             "satellite land use classification", None, "procedural tiles (VTAB eurosat analogue)", fmt="vtab"),
)
SPEC_BY_NAME = {s.name: s for s in SPECS}

_RENDER: dict[str, Callable[..., Item]] = {
    "shapes": _r_shapes, "colours": _r_colours, "counting": _r_count, "positions": _r_positions,
    "orientation": _r_orientation, "textures": _r_texture, "satellite": _r_satellite, "digits": _digits,
    "real_textures": _r_real_texture, "fashion": _fashion, "animals": _animals, "shapes_sketch": _r_sketch,
    "shapes_noisy": _r_noisy, "vtab_eurosat": _r_satellite, "vtab_dsprites_location": _r_dsprites,
    "vtab_clevr_count": lambda t, lab, i, sp: _r_count(t, lab, i, sp, offset=3),
}
_AVAILABLE: dict[str, Callable[[], bool]] = {"fashion": sources.has_fashion, "animals": sources.has_animals}


def available(name: str) -> bool:
    """Whether the source of task ``name`` is installed (always True for required sources)."""
    return _AVAILABLE.get(name, lambda: True)()


# ------------------------------------------------------------------------------------ writing
def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)


def _identity(item: Item) -> str:
    if item.source_id:
        return item.source_id
    return "px:" + hashlib.sha1(np.asarray(item.image).tobytes()).hexdigest()[:20]


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)
    return buf.getvalue()


def mask_relpath(relpath: str) -> str:
    """The mask of image ``images/<relpath>`` is ``mask/<mask_relpath(relpath)>`` (suffix -> ``.png``)."""
    return os.path.splitext(relpath)[0] + ".png"


def _save(tdir: Path, rel: str, item: Item, mask: bool = True) -> None:
    _write(tdir / "images" / rel, _jpeg(item.image))
    if mask:
        m = Image.fromarray(item.mask.astype(np.uint8) * 255, "L").convert("1")
        _write(tdir / "mask" / mask_relpath(rel), _png(m))


def _common_files(tdir: Path, spec: TaskSpec) -> None:
    _write(tdir / "classnames.txt", "".join(f"{c}\n" for c in spec.classnames))
    _write(tdir / "template.txt", spec.template + "\n")
    _write(tdir / "task_name.txt", spec.task_name + "\n")


def _gen_zhou(tdir: Path, spec: TaskSpec, ids: dict[str, set[str]]) -> dict:
    render = _RENDER[spec.name]
    counts = {"train": N_TRAIN, "val": N_VAL, "test": N_TEST}
    if spec.variant_of:
        counts = {"train": 0, "val": 0, "test": N_VARIANT_TEST}
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, cname in enumerate(spec.classnames):
        folder = cname.replace(" ", "_").replace("/", "_")
        for sp, k in counts.items():
            for i in range(k):
                item = render(spec.name, label, i, sp)
                rel = f"{folder}/{sp}_{i:04d}.jpg"
                _save(tdir, rel, item)
                split[sp].append([rel, label, cname])
                ids["test" if sp == "test" else "trainable"].add(_identity(item))
    _write(tdir / f"split_zhou_{spec.display}.json", json.dumps(split, indent=None, separators=(",", ":")))
    _common_files(tdir, spec)
    return {k: len(v) for k, v in split.items()}


def _gen_vtab(tdir: Path, spec: TaskSpec, ids: dict[str, set[str]]) -> dict:
    render = _RENDER[spec.name]
    n_cls = len(spec.classnames)
    lists: dict[str, list[str]] = {"train800": [], "val200": [], "test": []}
    for key, sp, k, folder in (("train800", "train", VTAB_TRAIN, "train800val200"),
                               ("val200", "val", VTAB_VAL, "train800val200"),
                               ("test", "test", VTAB_TEST, "test")):
        for i in range(k):
            label = i % n_cls
            item = render(spec.name, label, i // n_cls, sp)
            rel = f"{folder}/{sp}_{i:05d}.jpg"
            _save(tdir, rel, item, mask=False)
            lists[key].append(f"images/{rel} {label}")
            ids["test" if sp == "test" else "trainable"].add(_identity(item))
    lists["train800val200"] = lists["train800"] + lists["val200"]
    for key, lines in lists.items():
        _write(tdir / f"{key}.txt", "".join(f"{line}\n" for line in lines))
    _common_files(tdir, spec)
    return {"train": VTAB_TRAIN, "val": VTAB_VAL, "test": VTAB_TEST}


def is_suite(path: Path) -> bool:
    """True if ``path`` holds a complete suite of the current :data:`SUITE_VERSION`."""
    try:
        meta = json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return meta.get("suite") == SUITE_ID and meta.get("version") == SUITE_VERSION


def generate_suite(root: str | os.PathLike[str], force: bool = False,
                   tasks: Sequence[str] | None = None) -> Path:
    """Generate the suite into ``root`` (the suite folder itself) and return it.

    Nothing is done when ``root`` already holds a suite of this version (unless ``force``). The suite is
    built in a sibling temporary folder and renamed into place, so a crash never leaves a half suite.
    ``tasks`` restricts generation to some tasks (for tests; the manifest then lists only those).
    """
    root = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
    if not force and tasks is None and is_suite(root):
        return root
    progress.say(f"generating the tiny suite into {root} (first use; about half a minute)")
    started = time.perf_counter()
    tmp = root.with_name(f".{root.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    ids: dict[str, set[str]] = {"test": set(), "trainable": set()}
    manifest: dict = {"suite": SUITE_ID, "version": SUITE_VERSION, "image_size": IMAGE_SIZE, "tasks": {},
                      "skipped": {}}
    groups: dict[str, list[str]] = {}
    for spec in SPECS:
        if tasks is not None and spec.name not in tasks:
            continue
        if not available(spec.name):
            manifest["skipped"][spec.name] = f"optional source not installed: {spec.source}"
            continue
        tdir = tmp / spec.name
        counts = (_gen_vtab if spec.fmt == "vtab" else _gen_zhou)(tdir, spec, ids)
        manifest["tasks"][spec.name] = {
            "format": "vtab-1k (NOAH)" if spec.fmt == "vtab" else "split_zhou",
            "split_file": None if spec.fmt == "vtab" else f"split_zhou_{spec.display}.json",
            "classes": len(spec.classnames), **counts, "source": spec.source, "optional": spec.optional,
            "variant_of": spec.variant_of, "group": spec.group, "task_name": spec.task_name,
        }
        if spec.group:
            groups.setdefault(spec.group, []).append(spec.name)
    for group, names in groups.items():
        _write(tmp / f"group_{group}.txt", "".join(f"{n}\n" for n in names))
    _write(tmp / "groups.json", json.dumps(groups, indent=1, sort_keys=True))
    overlap = ids["test"] & ids["trainable"]
    if overlap:  # cannot happen with distinct seeds / disjoint source indices; guard anyway
        raise RuntimeError(f"tiny suite: {len(overlap)} test images also in train/val")
    manifest["groups"] = groups
    manifest["real_texture_test_region"] = f"x >= {REAL_TEST_X} * width of each scikit-image source"
    manifest["test_identities"] = sorted(ids["test"])
    manifest["trainable_identities"] = sorted(ids["trainable"])
    _write(tmp / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
    out = replace_dir(tmp, root)
    progress.say(f"tiny suite ready in {time.perf_counter() - started:.1f}s: {out}")
    return out


def default_suite_dir() -> Path:
    """``$VLPROMPT_CACHE/tiny-suite/v<SUITE_VERSION>`` (default cache: ``~/.cache/vlprompt``)."""
    return cache_root() / "tiny-suite" / f"v{SUITE_VERSION}"
