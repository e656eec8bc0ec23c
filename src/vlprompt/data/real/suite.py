"""The real-data suite: dataset specs, deterministic split selection and writing in CoOp's format.

Each dataset is generated on its own, on first use, into ``<suite>/<name>/``:

* ``images/<class folder>/<source id>.png`` (arrays, saved losslessly at their native size) or ``.jpg``
  (textiles: the package's JPEG bytes, copied verbatim);
* ``split_zhou_<Display>.json`` (``train`` / ``val`` / ``test`` lists of ``[relpath, label, classname]``),
  ``classnames.txt``, ``template.txt``;
* ``manifest.json`` written last (suite id, version, counts, source identities per split): a folder
  without a current manifest is regenerated.

Which source images go to which split is a seeded permutation per (dataset, class), so two generations
write byte-identical files and train / val / test never share an image (nor, for texture tiles, a pixel).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vlprompt.cache import cache_root, replace_dir
from vlprompt.errors import DatasetError

from . import sources

#: Bump when any output changes: the cache path and the manifests carry it.
SUITE_VERSION = "1"
SUITE_ID = "vlprompt-real"
SPLITS = ("train", "val", "test")
Reader = Callable[[], tuple[sources.Images, list[int], list[str]]]


@dataclass(frozen=True)
class RealSpec:
    """A dataset of the real suite.

    Attributes:
        name: folder and registry name (``real/<name>``).
        display: the ``<Display>`` of ``split_zhou_<Display>.json``.
        classnames: class names in label order (base = first ceil(n/2), new = the rest).
        template: the hand-written zero-shot template (``{}`` = class name).
        source: where the images come from (documentation, error messages).
        install: the command that installs an optional source (empty for required sources).
        per_class: images per class in train / val / test (test at most 100).
        augment: training augmentation policy (``clip`` | ``crop`` | ``none``).
        read: the reader of the source (``(images, labels, ids)``, see :mod:`.sources`).
        available: whether the source is installed (cheap: no heavy import).
        test_from: a separate reader for the test split (Fashion-MNIST: its ``t10k`` file), or None to
            draw all three splits from disjoint parts of one permutation.
    """

    name: str
    display: str
    classnames: tuple[str, ...]
    template: str
    source: str
    install: str
    per_class: tuple[int, int, int]
    augment: str
    read: Reader
    available: Callable[[], bool]
    test_from: Reader | None = None

    @property
    def optional(self) -> bool:
        return bool(self.install)


FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot")
#: Animal-MNIST's labels 0..9, in the order its README lists them.
ANIMAL_CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
#: label -> scikit-image source (interleaved so that base and new both mix textures and LFW crops).
PATCH_SOURCES = ("brick", "face", "grass", "background", "gravel")
PATCH_CLASSES = ("brick wall", "human face", "grass", "plain background", "gravel")
TEXTILE_CLASSES = ("defect-free fabric", "fabric with a small local defect", "fabric with a global defect")

SPECS: tuple[RealSpec, ...] = (
    RealSpec("digits", "RealDigits", tuple(str(i) for i in range(10)), 'a photo of the number: "{}".',
             "scikit-learn load_digits (8x8)", "", (40, 10, 100), "none", sources.digits, sources.has_sklearn),
    RealSpec("skimage_patches", "RealSkimagePatches", PATCH_CLASSES, "a grayscale close-up photo of {}.",
             "scikit-image brick/grass/gravel (51x51 tiles) and lfw_subset (25x25)", "", (20, 5, 75), "crop",
             lambda: sources.skimage_patches(PATCH_SOURCES), sources.has_skimage),
    RealSpec("fashion_mnist", "RealFashionMNIST", FASHION_CLASSES, "a grayscale photo of a {}, a fashion product.",
             "Fashion-MNIST (Debian dataset-fashion-mnist; train file -> train/val, t10k -> test)",
             sources.FASHION_INSTALL, (40, 10, 100), "crop", lambda: sources.fashion_mnist("train"),
             sources.has_fashion, test_from=lambda: sources.fashion_mnist("t10k")),
    RealSpec("animal_mnist", "RealAnimalMNIST", ANIMAL_CLASSES, "a silhouette of a {}.",
             "Animal-MNIST (PyPI animal-mnist)", sources.ANIMAL_INSTALL, (40, 10, 100), "crop",
             sources.animal_mnist, sources.has_animals),
    RealSpec("textiles", "RealTextiles", TEXTILE_CLASSES, "a close-up photo of {}.",
             "conformal-clip-data simulated textiles (250x250)", sources.TEXTILE_INSTALL, (40, 10, 100), "none",
             sources.textiles, sources.has_textiles),
)
SPEC_BY_NAME = {s.name: s for s in SPECS}


def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("/".join(str(p) for p in (SUITE_ID, SUITE_VERSION, *parts)).encode()))


def _pick(spec: RealSpec, labels: list[int], eligible: np.ndarray, splits: tuple[str, ...],
          tag: str) -> dict[str, list[list[int]]]:
    """Per split, per label: sorted source indices; disjoint slices of a seeded per-class permutation of
    the ``eligible`` indices."""
    arr = np.asarray(labels)
    sizes = dict(zip(SPLITS, spec.per_class, strict=True))
    out: dict[str, list[list[int]]] = {sp: [] for sp in splits}
    for label in range(len(spec.classnames)):
        idx = np.flatnonzero((arr == label) & eligible)
        need = sum(sizes[sp] for sp in splits)
        if len(idx) < need:
            raise DatasetError(f"real/{spec.name}: class {label} has {len(idx)} distinct images in {spec.source}, "
                               f"expected at least {need}")
        idx = idx[_rng(spec.name, tag, label).permutation(len(idx))]
        start = 0
        for sp in splits:
            out[sp].append(sorted(int(i) for i in idx[start:start + sizes[sp]]))
            start += sizes[sp]
    return out


def _content(image: np.ndarray | bytes) -> str:
    """A digest of the pixels (arrays) or file bytes, to drop duplicate source images."""
    data = image if isinstance(image, bytes) else np.ascontiguousarray(image).tobytes()
    return hashlib.sha1(data).hexdigest()


def _encode(image: np.ndarray | bytes) -> tuple[bytes, str]:
    if isinstance(image, bytes):
        return image, ".jpg"
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue(), ".png"


def _folder(classname: str) -> str:
    return classname.replace(" ", "_").replace("/", "_")


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def is_generated(path: Path) -> bool:
    """True if ``path`` holds a complete dataset of the current :data:`SUITE_VERSION`."""
    try:
        meta = json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return meta.get("suite") == SUITE_ID and meta.get("version") == SUITE_VERSION


def generate_dataset(spec: RealSpec, target: Path, force: bool = False) -> Path:
    """Write dataset ``spec`` into ``target`` (built in a sibling temporary folder, then renamed).

    Raises:
        DatasetError: the source is not installed (the message names the install command).
    """
    target = Path(os.path.abspath(os.path.expanduser(os.fspath(target))))
    if not force and is_generated(target):
        return target
    if not spec.available():
        raise DatasetError(f"real/{spec.name} needs {spec.source}, which is not installed; "
                           f"install it with: {spec.install or 'pip install vlprompt[tiny]'}")
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        _fill(spec, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not force and is_generated(target):  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
        return target
    return replace_dir(tmp, target)


def _fill(spec: RealSpec, tmp: Path) -> None:
    """Write the images, split file, class names, template and manifest of ``spec`` into ``tmp``."""
    parts: list[tuple[tuple[str, ...], Reader, str]]
    if spec.test_from is None:
        parts = [(SPLITS, spec.read, "all")]
    else:  # test first, so that train/val can exclude copies of test images
        parts = [(("test",), spec.test_from, "test"), (("train", "val"), spec.read, "trainval")]
    split: dict[str, list[list]] = {sp: [] for sp in SPLITS}
    identities: dict[str, list[str]] = {sp: [] for sp in SPLITS}
    used: dict[str, str] = {}  # content digest -> split, over every written image
    for splits, read, tag in parts:
        images, labels, ids = read()
        digests = [_content(im) for im in images]
        first: set[str] = set()
        eligible = np.zeros(len(images), bool)
        for i, d in enumerate(digests):  # the first copy of each distinct image not used by another split
            eligible[i] = d not in first and d not in used
            first.add(d)
        picks = _pick(spec, labels, eligible, splits, tag)
        for sp in splits:
            for label, indices in enumerate(picks[sp]):
                cname = spec.classnames[label]
                for i in indices:
                    data, ext = _encode(images[i])
                    rel = f"{_folder(cname)}/{ids[i]}{ext}"
                    _write(tmp / "images" / rel, data)
                    split[sp].append([rel, label, cname])
                    identities[sp].append(f"{tag}:{ids[i]}")
                    if used.setdefault(digests[i], sp) != sp:  # guard: eligibility excludes this
                        raise RuntimeError(f"real/{spec.name}: an image of {sp} is also in {used[digests[i]]}")
    _write(tmp / f"split_zhou_{spec.display}.json", json.dumps(split, separators=(",", ":")))
    _write(tmp / "classnames.txt", "".join(f"{c}\n" for c in spec.classnames))
    _write(tmp / "template.txt", spec.template + "\n")
    manifest = {"suite": SUITE_ID, "version": SUITE_VERSION, "dataset": spec.name, "source": spec.source,
                "classes": len(spec.classnames), "augment": spec.augment,
                "split_file": f"split_zhou_{spec.display}.json",
                **{sp: len(split[sp]) for sp in SPLITS}, "identities": identities}
    _write(tmp / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True))


def default_suite_dir() -> Path:
    """``$VLPROMPT_CACHE/real-suite/v<SUITE_VERSION>`` (default cache: ``~/.cache/vlprompt``)."""
    return cache_root() / "real-suite" / f"v{SUITE_VERSION}"
