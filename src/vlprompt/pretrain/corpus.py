"""The tiny-clip pretraining corpus: a deterministic, indexable stream of (64x64 RGB image, caption) pairs.

Item ``i`` of a corpus with seed ``s`` is a pure function of ``(s, i)`` (and of the installed optional
sources): its random generator is ``numpy.random.default_rng([CORPUS_KEY, s, i])``, a SeedSequence stream
disjoint from the tiny suite's crc32-keyed per-image seeds. The generator first picks a *source* with the
mixture weights of :data:`MIXTURE`, then renders an image and one of several captions for it.

Sources (weights are renormalised over the sources that are available):

========================  ======  ==================================================================
source                    weight  images / captions
========================  ======  ==================================================================
``scenes``                0.20    procedural compositional scenes (shape, colour, size, count 1-4,
                                  background); captions from :func:`procedural.caption` or short forms
``counting``              0.07    1-10 small objects; "a picture of three objects.", "3 red stars", ...
``positions``             0.06    one small object in one of 9 named positions
``arrows``                0.06    arrows in 8 compass directions ("an arrow pointing north-east.")
``grid``                  0.04    a small white sprite in a cell of a 4x4 grid
``textures``              0.09    procedural texture patches (10 classes, blob or full frame)
``satellite``             0.09    procedural satellite-like tiles (10 land-use classes)
``digits``                0.09    scikit-learn digits, tinted, class-name captions in varied templates
``real_textures``         0.09    crops of scikit-image sample images (brick, grass, gravel, ...)
``fashion`` (optional)    0.11    Fashion-MNIST t10k file (Debian ``dataset-fashion-mnist``)
``animals`` (optional)    0.10    Animal-MNIST silhouettes (``pip install --no-deps animal-mnist``)
========================  ======  ==================================================================

Leakage control against the tiny suite (``manifest.json``):

* real indexed sources (digits, Fashion-MNIST, Animal-MNIST) never use a source index that the manifest
  lists (``src:<key>:<index>``; by default both ``test_identities`` and ``trainable_identities``, so the
  suite's val splits stay honest for zero-shot evaluation). An optional source whose task is absent from
  the manifest (installed after the suite was generated) is *not used*, since its test indices are unknown;
* scikit-image crops lie entirely in ``x < REAL_TEST_X * width`` (the suite's test crops start at
  ``x >= REAL_TEST_X * width``) and a crop whose identity is listed is redrawn;
* procedural images use their own seed stream and are also checked against the manifest's ``px:`` pixel
  hashes (sha1 of the raw RGB bytes, as the suite computes them); a colliding image is re-rendered.

Images are passed through JPEG (quality 92, as the suite stores its images) so that pretraining sees the
same compression artifacts as evaluation. The suite's domain-shifted test variants (sketch, heavy noise)
are deliberately not imitated.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlprompt.data.tiny import procedural as P
from vlprompt.data.tiny import sources
from vlprompt.data.tiny.suite import REAL_TEST_X
from vlprompt.data.transforms import CLIP_MEAN, CLIP_STD

__all__ = ["MIXTURE", "CorpusItem", "PretrainCorpus", "images_to_tensor", "load_exclusions"]

#: Entropy word of the corpus' seed stream (distinct from the suite's crc32 keys).
CORPUS_KEY = 0x7C11_C0DE
IMAGE_SIZE = 64
JPEG_QUALITY = 92
#: A nominal length: the corpus is a function of the index, any non-negative int works.
NOMINAL_LENGTH = 2**31

MIXTURE: dict[str, float] = {
    "scenes": 0.20, "counting": 0.07, "positions": 0.06, "arrows": 0.06, "grid": 0.04, "textures": 0.09,
    "satellite": 0.09, "digits": 0.09, "real_textures": 0.09, "fashion": 0.11, "animals": 0.10,
}
#: Manifest task that covers each real indexed source, and its identity key in the manifest.
_INDEXED = {"digits": ("digits", "sklearn-digits"), "fashion": ("fashion", "fashion-mnist-t10k"),
            "animals": ("animals", "animal-mnist")}
_OPTIONAL = {"fashion": sources.has_fashion, "animals": sources.has_animals}

_COLOURS = tuple(c for c in P.COLOURS if c not in ("gray", "black"))
_DIRECTIONS = ("east", "north-east", "north", "north-west", "west", "south-west", "south", "south-east")
_DIGIT_WORDS = P.NUMBER_WORDS[:10]


@dataclass
class CorpusItem:
    """One corpus pair: ``image`` (64x64 RGB, JPEG round-tripped), ``caption``, ``source`` and the
    suite-style ``identity`` (``src:...`` or ``px:<sha1>``) used for the leakage checks."""

    image: Image.Image
    caption: str
    source: str
    identity: str


def _px_identity(img: Image.Image) -> str:
    return "px:" + hashlib.sha1(np.asarray(img).tobytes()).hexdigest()[:20]


def _jpeg(img: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def load_exclusions(manifest: str | os.PathLike[str] | dict,
                    splits: Sequence[str] = ("test", "trainable")) -> tuple[set[str], set[str]]:
    """Identities to exclude and the task names the manifest covers.

    Args:
        manifest: a ``manifest.json`` path, a suite folder holding one, or the parsed dict.
        splits: ``"test"`` and/or ``"trainable"`` (train + val) identities.
    """
    if not isinstance(manifest, dict):
        path = Path(manifest)
        if path.is_dir():
            path = path / "manifest.json"
        manifest = json.loads(path.read_text(encoding="utf-8"))
    ids: set[str] = set()
    for sp in splits:
        ids.update(manifest.get(f"{sp}_identities", []))
    return ids, set(manifest.get("tasks", {}))


def _tint(small: np.ndarray, rng: np.random.Generator, invert: bool) -> Image.Image:
    """Upsample a grayscale image and colour it with a random dark/light pair (light ink on dark or inverse)."""
    big = np.asarray(Image.fromarray(small).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC), np.float64) / 255.0
    lo, hi = rng.uniform(0, 70, 3), rng.uniform(180, 255, 3)
    bg, ink = (hi, lo) if invert else (lo, hi)
    img = bg[None, None] * (1 - big[..., None]) + ink[None, None] * big[..., None]
    img = img + rng.normal(0, rng.uniform(0, 6), (IMAGE_SIZE, IMAGE_SIZE, 1))
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")


def _pick(rng: np.random.Generator, forms: Sequence[str]) -> str:
    return str(forms[int(rng.integers(len(forms)))])


class PretrainCorpus:
    """Deterministic indexable corpus of (image, caption) pairs; see the module docstring.

    Args:
        manifest: the tiny suite's ``manifest.json`` (path, suite folder or dict) whose identities are
            excluded; ``None`` reads the suite of :func:`vlprompt.data.tiny.ensure_suite` (generating it
            if needed).
        seed: corpus seed (item ``i`` depends only on ``seed`` and ``i``).
        mixture: source weights (defaults to :data:`MIXTURE`); unavailable sources are dropped.
        exclude_splits: which manifest identities to exclude (default: every suite image).
        optional_sources: use the optional sources (Fashion-MNIST, Animal-MNIST) when they are installed;
            False leaves them out whatever is installed (the shipped tiny-clip recipe).

    Example:
        >>> corpus = PretrainCorpus(seed=0)
        >>> item = corpus.item(12)
        >>> item.image.size, item.caption
    """

    def __init__(self, manifest: str | os.PathLike[str] | dict | None = None, seed: int = 0,
                 mixture: dict[str, float] | None = None,
                 exclude_splits: Sequence[str] = ("test", "trainable"), optional_sources: bool = True):
        if manifest is None:
            from vlprompt.data.tiny import ensure_suite

            manifest = ensure_suite()
        self.excluded, covered = load_exclusions(manifest, exclude_splits)
        self.seed = int(seed)
        mix = dict(MIXTURE if mixture is None else mixture)
        self.skipped: dict[str, str] = {}
        for name in list(mix):
            if name not in _RENDERERS:
                raise ValueError(f"unknown corpus source {name!r}; known: {sorted(_RENDERERS)}")
            if name in _OPTIONAL and not optional_sources:
                self.skipped[name] = "optional source left out (optional_sources=False)"
            elif name in _OPTIONAL and not _OPTIONAL[name]():
                self.skipped[name] = "optional source not installed"
            elif name in _INDEXED and _INDEXED[name][0] not in covered:
                self.skipped[name] = "installed but not in the suite manifest (its test images are unknown)"
            if name in self.skipped or mix[name] <= 0:
                mix.pop(name)
        if not mix:
            raise ValueError("empty corpus mixture")
        total = sum(mix.values())
        self.mixture = {k: v / total for k, v in mix.items()}
        self._names = list(self.mixture)
        self._cum = np.cumsum([self.mixture[k] for k in self._names])
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]] = {}
        self._textures: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return NOMINAL_LENGTH

    def __getitem__(self, index: int) -> tuple[Image.Image, str]:
        it = self.item(index)
        return it.image, it.caption

    def describe(self) -> dict:
        """The effective mixture and skipped sources (for ``recipe.json``)."""
        return {"seed": self.seed, "mixture": {k: round(v, 4) for k, v in self.mixture.items()},
                "skipped": dict(self.skipped), "excluded_identities": len(self.excluded)}

    def item(self, index: int, source: str | None = None) -> CorpusItem:
        """The ``index``-th pair (a pure function of ``seed``, ``index`` and ``source``).

        ``source`` forces the source (one of :attr:`mixture`) instead of drawing it from the mixture.
        """
        if index < 0:
            raise IndexError(index)
        rng = np.random.default_rng([CORPUS_KEY, self.seed, int(index)])
        draw = rng.random()
        if source is not None:
            if source not in self.mixture:
                raise ValueError(f"corpus source {source!r} is not in the mixture {sorted(self.mixture)}")
            name = source
        else:
            name = self._names[min(int(np.searchsorted(self._cum, draw * self._cum[-1], side="right")),
                                   len(self._names) - 1)]
        for attempt in range(16):
            r = rng if attempt == 0 else np.random.default_rng([CORPUS_KEY, self.seed, int(index), attempt])
            img, cap, ident = _RENDERERS[name](self, r)
            ident = ident or _px_identity(img)
            if ident not in self.excluded:
                return CorpusItem(_jpeg(img), cap, name, ident)
        raise RuntimeError(f"corpus item {index}: 16 renderings in a row collided with suite images")

    def batch(self, indices: Sequence[int], sources: Sequence[str | None] | None = None
              ) -> tuple[torch.Tensor, list[str]]:
        """Normalised image tensor ``(B, 3, 64, 64)`` (CLIP mean/std) and captions of ``indices``.

        ``sources`` (one per index, ``None`` = drawn from the mixture) forces each item's source.
        """
        srcs = list(sources) if sources is not None else [None] * len(indices)
        items = [self.item(i, s) for i, s in zip(indices, srcs, strict=True)]
        return images_to_tensor([it.image for it in items]), [it.caption for it in items]

    def batch_sources(self, step: int, batch_size: int, grouped: int) -> list[str | None]:
        """Per-item sources of the batch of ``step``: ``grouped`` sources drawn (without replacement,
        by mixture weight) fill ``grouped`` equal slices of half the batch; the other half is mixed.

        ``grouped = 0`` gives a fully mixed batch (every source drawn per item).
        """
        if grouped <= 0:
            return [None] * batch_size
        rng = np.random.default_rng([CORPUS_KEY, self.seed, 0x6B47C4, int(step)])
        k = min(grouped, len(self._names))
        names = rng.choice(self._names, size=k, replace=False, p=[self.mixture[n] for n in self._names])
        half = batch_size // 2
        out: list[str | None] = [str(names[(j * k) // half]) for j in range(half)]
        return out + [None] * (batch_size - half)

    # ------------------------------------------------------------------ real sources
    def _indexed(self, name: str) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
        if name not in self._arrays:
            load: Callable[[], tuple[np.ndarray, np.ndarray]] = {
                "digits": sources.digits, "fashion": sources.fashion_mnist, "animals": sources.animal_mnist}[name]
            images, labels = load()
            prefix = f"src:{_INDEXED[name][1]}:"
            banned = {int(i[len(prefix):]) for i in self.excluded if i.startswith(prefix)}
            keep = np.array([i for i in range(len(labels)) if i not in banned], dtype=np.int64)
            by_class = {int(c): keep[labels[keep] == c] for c in np.unique(labels)}
            self._arrays[name] = (images, labels, by_class)
        return self._arrays[name]

    def _real(self, name: str, rng: np.random.Generator, classes: Sequence[str], forms: Sequence[str],
              invert: bool | None = None) -> tuple[Image.Image, str, str]:
        images, _, by_class = self._indexed(name)
        label = int(rng.integers(len(classes)))
        pool = by_class[label]
        src = int(pool[int(rng.integers(len(pool)))])
        inv = bool(rng.random() < 0.5) if invert is None else invert
        img = _tint(images[src], rng, inv)
        return img, _pick(rng, forms).format(classes[label]), f"src:{_INDEXED[name][1]}:{src}"

    def _texture_image(self, file: str) -> np.ndarray:
        if file not in self._textures:
            self._textures[file] = sources.skimage_image(file)
        return self._textures[file]


# ---------------------------------------------------------------------- renderers: (corpus, rng) -> img, caption, id
def _scene_caption(rng: np.random.Generator, s: P.Scene) -> str:
    a = s.attrs
    if rng.random() < 0.55:
        return P.caption(s, rng)
    k, shape, colour = a["count"], a["shape"], a["colour"]
    noun = shape if k == 1 else P._plural(shape, k)
    forms = (f"a drawing of a {shape}.", f"a drawing of a {colour} object.", f"a {colour} {shape}.",
             f"a {a['size']} {shape}.", f"a photo of a {shape}.", f"{P.NUMBER_WORDS[k]} {colour} {noun}.")
    if k > 1:
        forms = forms[1:2] + forms[5:]
    return _pick(rng, forms)


def _r_scenes(c: PretrainCorpus, rng: np.random.Generator):
    count = int(rng.choice([1, 1, 1, 1, 2, 3, 4]))
    s = P.render_scene(rng, count=count, outline=2 if rng.random() < 0.1 else 0)
    return s.image, _scene_caption(rng, s), None


def _r_counting(c: PretrainCorpus, rng: np.random.Generator):
    k = int(rng.integers(1, 11))
    s = P.render_scene(rng, count=k, radius=float(rng.uniform(3.0, 5.0)),
                       background=str(rng.choice(["plain", "gradient", "noise", "dots"])))
    noun = P._plural(s.attrs["shape"], k)
    word = P.NUMBER_WORDS[k]
    obj = "object" if k == 1 else "objects"
    forms = (f"a picture of {word} {obj}.", f"a picture of {k} {obj}.", f"{word} {noun}.", f"{k} {noun}.",
             f"{word} {s.attrs['colour']} {noun}.", f"a picture of {word} {noun}.", f"there are {k} {obj}.")
    return s.image, _pick(rng, forms), None


def _r_positions(c: PretrainCorpus, rng: np.random.Generator):
    pos = str(rng.choice(list(P.POSITIONS)))
    s = P.render_scene(rng, position=pos, size=str(rng.choice(["small", "small", "medium"])))
    a = s.attrs
    forms = (f"an object in the {pos} of the picture.", f"a {a['colour']} {a['shape']} in the {pos}.",
             f"a {a['shape']} in the {pos} of the image.", f"something in the {pos}.")
    return s.image, _pick(rng, forms), None


def _r_arrows(c: PretrainCorpus, rng: np.random.Generator):
    d = int(rng.integers(8))
    angle = -d * math.pi / 4 + rng.uniform(-0.2, 0.2)  # image y grows downwards
    s = P.render_scene(rng, shape="arrow", size=str(rng.choice(["medium", "large"])), rotation=angle,
                       centre=tuple(rng.uniform(22, 42, 2)))
    name = _DIRECTIONS[d]
    forms = (f"an arrow pointing {name}.", f"a {s.attrs['colour']} arrow pointing {name}.",
             f"an arrow facing {name}.", f"a sign pointing {name}.")
    return s.image, _pick(rng, forms), None


def _r_grid(c: PretrainCorpus, rng: np.random.Generator):
    row, col = int(rng.integers(4)), int(rng.integers(4))
    shape = str(rng.choice(["square", "circle", "star", "triangle"]))
    cx = (col + rng.uniform(0.25, 0.75)) * IMAGE_SIZE / 4
    cy = (row + rng.uniform(0.25, 0.75)) * IMAGE_SIZE / 4
    s = P.render_scene(rng, shape=shape, colour="white", background="plain", radius=float(rng.uniform(4, 7)),
                       centre=(cx, cy))
    cell = f"row {row + 1} column {col + 1}"
    forms = (f"a small white shape in {cell} of a 4 by 4 grid.", f"a white {shape} in {cell}.",
             f"a sprite in {cell}.")
    return s.image, _pick(rng, forms), None


def _r_textures(c: PretrainCorpus, rng: np.random.Generator):
    label = str(rng.choice(P.TEXTURE_CLASSES))
    s = P.render_texture(rng, label, full=bool(rng.random() < 0.3))
    cap = P.caption(s, rng) if rng.random() < 0.6 else _pick(rng, ("{} texture.", "a {} pattern.")).format(label)
    return s.image, cap, None


def _r_satellite(c: PretrainCorpus, rng: np.random.Generator):
    label = str(rng.choice(P.SATELLITE_CLASSES))
    s = P.render_satellite(rng, label)
    cap = P.caption(s, rng) if rng.random() < 0.6 else f"a centered satellite photo of {label}."
    return s.image, cap, None


_DIGIT_FORMS = ('a photo of the number: "{}".', "a handwritten digit {}.", "the number {}.", "a blurry digit {}.",
                "a drawing of the number {}.", "a pixelated {}.")


def _r_digits(c: PretrainCorpus, rng: np.random.Generator):
    img, cap, ident = c._real("digits", rng, [str(i) for i in range(10)], _DIGIT_FORMS)
    if rng.random() < 0.2:  # number words, e.g. "the number seven."
        d = int(cap.split('"')[1]) if '"' in cap else int(cap.rstrip(".").split()[-1])
        cap = f"the number {_DIGIT_WORDS[d]}."
    return img, cap, ident


def _r_fashion(c: PretrainCorpus, rng: np.random.Generator):
    forms = ("a photo of a {}, a type of clothing.", "a {}.", "a grayscale photo of a {}.",
             "a low resolution photo of a {}.", "a picture of a {}, a piece of clothing.", "a product photo of a {}.")
    return c._real("fashion", rng, sources.FASHION_CLASSES, forms)


def _r_animals(c: PretrainCorpus, rng: np.random.Generator):
    forms = ("a silhouette of a {}.", "the shape of a {}.", "a black and white image of a {}.", "a {}.",
             "an animal: a {}.", "the outline of a {}.")
    return c._real("animals", rng, sources.ANIMAL_CLASSES, forms)


def _r_real_textures(c: PretrainCorpus, rng: np.random.Generator):
    names = tuple(sources.SKIMAGE_TEXTURES)
    cname = names[int(rng.integers(len(names)))]
    file = sources.SKIMAGE_TEXTURES[cname]
    src = c._texture_image(file)
    h, w = src.shape[:2]
    bound = int(w * REAL_TEST_X)  # suite test crops start at x >= bound; ours end before it
    s = int(rng.integers(32, min(112, h, bound) + 1))
    x = int(rng.integers(0, bound - s + 1))
    y = int(rng.integers(0, h - s + 1))
    crop = Image.fromarray(src[y:y + s, x:x + s]).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC).convert("RGB")
    if rng.random() < 0.5:
        crop = crop.transpose(int(rng.integers(0, 7)))
    forms = ("a close-up photo of {}.", "a photo of {}.", "{}.", "a texture of {}.", "a cropped image of {}.")
    return crop, _pick(rng, forms).format(cname), f"src:skimage-{file}:{x},{y},{s}"


_RENDERERS: dict[str, Callable[[PretrainCorpus, np.random.Generator], tuple[Image.Image, str, str | None]]] = {
    "scenes": _r_scenes, "counting": _r_counting, "positions": _r_positions, "arrows": _r_arrows, "grid": _r_grid,
    "textures": _r_textures, "satellite": _r_satellite, "digits": _r_digits, "real_textures": _r_real_textures,
    "fashion": _r_fashion, "animals": _r_animals,
}


def images_to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """``(B, 3, H, W)`` float tensor normalised with CLIP's mean/std (the suite's test transform at 64 px)."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images]) / 255.0
    t = torch.from_numpy(arr).permute(0, 3, 1, 2)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return ((t - mean) / std).contiguous()
