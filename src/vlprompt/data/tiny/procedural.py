"""Deterministic procedural images with exact foreground masks and structured attributes.

Every renderer takes a ``numpy.random.Generator`` and returns a :class:`Scene`: an RGB ``PIL`` image, an
exact ``{0, 1}`` ``uint8`` foreground mask of the same size and a dict of the attributes that produced
it. The same generator state always gives the same pixels (numpy + PIL, no antialiasing in masks).

* :func:`render_scene` -- compositional scenes: ``count`` objects of one ``shape`` / ``colour`` /
  ``size`` on a ``background`` pattern; :func:`caption` describes them in varied phrasings.
* :func:`render_satellite` -- satellite-like tiles (a EuroSAT analogue, :data:`SATELLITE_CLASSES`).
* :func:`render_texture` -- procedural texture patches (a DTD analogue, :data:`TEXTURE_CLASSES`).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> scene = render_scene(rng, shape="star", colour="red", size="small", background="stripes")
    >>> scene.image.size, scene.mask.shape, scene.attrs["count"]
    ((64, 64), (64, 64), 1)
    >>> caption(scene, rng)  # e.g. 'a small red star on a striped background'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 170, 50),
    "blue": (35, 70, 220),
    "yellow": (240, 220, 40),
    "purple": (135, 45, 180),
    "orange": (245, 135, 20),
    "cyan": (40, 210, 215),
    "pink": (250, 125, 185),
    "brown": (115, 70, 35),
    "white": (248, 248, 248),
    "black": (12, 12, 12),
    "gray": (128, 128, 128),
}
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "diamond", "hexagon", "pentagon", "crescent")
BACKGROUNDS = ("plain", "stripes", "dots", "checker", "noise", "gradient")
SIZES: dict[str, float] = {"small": 0.16, "medium": 0.26, "large": 0.38}  # object diameter / image side
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
BACKGROUND_WORDS = {
    "plain": "a plain", "stripes": "a striped", "dots": "a dotted", "checker": "a checkered",
    "noise": "a noisy", "gradient": "a gradient",
}
SATELLITE_CLASSES = (
    "annual crop land", "forest", "herbaceous vegetation land", "highway or road", "industrial buildings",
    "pasture land", "permanent crop land", "residential buildings", "river", "sea or lake",
)
TEXTURE_CLASSES = (
    "striped", "dotted", "zigzagged", "chequered", "marbled", "grid", "wavy", "spiralled", "crosshatched",
    "blotchy",
)


@dataclass
class Scene:
    """One rendered image: ``image`` (RGB), ``mask`` (``uint8`` {0,1}, H x W) and ``attrs``."""

    image: Image.Image
    mask: np.ndarray
    attrs: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- helpers
def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int = 18) -> tuple[int, int, int]:
    d = rng.integers(-amount, amount + 1, size=3)
    return tuple(int(v) for v in np.clip(np.asarray(rgb) + d, 0, 255))


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    return yy, xx


def _smooth_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a random ``cells`` x ``cells`` grid bilinearly upsampled to n x n."""
    small = rng.random((cells + 1, cells + 1))
    img = Image.fromarray((small * 255).astype(np.uint8)).resize((n, n), Image.BILINEAR)
    return np.asarray(img, dtype=np.float64) / 255.0


def _fractal_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    out = 0.5 * _smooth_noise(rng, n, 3) + 0.3 * _smooth_noise(rng, n, 7) + 0.2 * _smooth_noise(rng, n, 15)
    return (out - out.min()) / max(out.max() - out.min(), 1e-9)


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-pixel blend of two colours (shape (3,)) by ``t`` (H x W in [0, 1])."""
    return a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]


def _to_image(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")


def _dull_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two low-saturation background colours of different brightness."""
    base = rng.uniform(70, 170)
    tint = rng.uniform(-25, 25, size=3)
    c1 = np.clip(base + tint, 0, 255)
    c2 = np.clip(c1 + rng.choice([-1, 1]) * rng.uniform(35, 60), 0, 255)
    return c1, c2


# ----------------------------------------------------------------------------------------- backgrounds
def render_background(rng: np.random.Generator, pattern: str, n: int = 64) -> np.ndarray:
    """An n x n x 3 float background of ``pattern`` (one of :data:`BACKGROUNDS`) in dull colours."""
    c1, c2 = _dull_colours(rng)
    yy, xx = _grid(n)
    if pattern == "plain":
        t = np.zeros((n, n))
    elif pattern == "stripes":
        period = rng.uniform(6, 12)
        ang = rng.uniform(0, math.pi)
        t = ((xx * math.cos(ang) + yy * math.sin(ang)) % period < period / 2).astype(float)
    elif pattern == "dots":
        period = int(rng.integers(7, 11))
        r = period * rng.uniform(0.18, 0.3)
        off = rng.uniform(0, period, 2)
        dy = (yy + off[0]) % period - period / 2
        dx = (xx + off[1]) % period - period / 2
        t = (dx * dx + dy * dy <= r * r).astype(float)
    elif pattern == "checker":
        period = int(rng.integers(6, 13))
        t = (((xx // period) + (yy // period)) % 2).astype(float)
    elif pattern == "noise":
        t = _fractal_noise(rng, n)
    elif pattern == "gradient":
        ang = rng.uniform(0, 2 * math.pi)
        g = xx * math.cos(ang) + yy * math.sin(ang)
        t = (g - g.min()) / max(g.max() - g.min(), 1e-9)
    else:
        raise ValueError(f"unknown background {pattern!r}; expected one of {BACKGROUNDS}")
    return _mix(c1, c2, t) + rng.normal(0, 4, (n, n, 1))


# ----------------------------------------------------------------------------------------- shapes
def _polygon(cx: float, cy: float, r: float, k: int, rot: float, inner: float | None = None) -> list:
    pts = []
    steps = 2 * k if inner is not None else k
    for i in range(steps):
        a = rot + 2 * math.pi * i / steps - math.pi / 2
        rr = r if inner is None or i % 2 == 0 else r * inner
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def shape_mask(shape: str, cx: float, cy: float, r: float, n: int = 64, rot: float = 0.0,
               outline: int = 0) -> np.ndarray:
    """Exact {0,1} mask (n x n ``uint8``) of ``shape`` centred at (cx, cy) with radius ``r``.

    ``outline`` > 0 keeps only the contour of that width (filled shape minus its erosion): a sketch.
    """
    img = Image.new("L", (n, n), 0)
    d = ImageDraw.Draw(img)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape in ("circle", "ring", "crescent"):
        d.ellipse(box, fill=255)
        if shape == "ring":
            ri = r * 0.55
            d.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=0)
        elif shape == "crescent":
            o = r * 0.45
            pts = _rotate([(cx + o, cy - o * 0.3)], cx, cy, rot)[0]
            d.ellipse((pts[0] - r, pts[1] - r, pts[0] + r, pts[1] + r), fill=0)
    else:
        if shape == "cross":
            t = r * 0.36
            pts = [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t),
                   (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t),
                   (cx - r, cy - t), (cx - t, cy - t)]
            pts = _rotate(pts, cx, cy, rot)
        elif shape == "arrow":  # points along +x before rotation
            t, h = r * 0.22, r * 0.5
            pts = [(cx - r, cy - t), (cx + r - h, cy - t), (cx + r - h, cy - h), (cx + r, cy),
                   (cx + r - h, cy + h), (cx + r - h, cy + t), (cx - r, cy + t)]
            pts = _rotate(pts, cx, cy, rot)
        elif shape == "square":
            pts = _polygon(cx, cy, r * 1.0, 4, rot + math.pi / 4)
        elif shape == "diamond":
            pts = _rotate([(cx, cy - r), (cx + r * 0.62, cy), (cx, cy + r), (cx - r * 0.62, cy)], cx, cy, rot)
        elif shape == "triangle":
            pts = _polygon(cx, cy + r * 0.15, r * 1.05, 3, rot)
        elif shape == "star":
            pts = _polygon(cx, cy, r * 1.05, 5, rot, inner=0.42)
        elif shape == "hexagon":
            pts = _polygon(cx, cy, r, 6, rot)
        elif shape == "pentagon":
            pts = _polygon(cx, cy, r, 5, rot)
        else:
            raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
        d.polygon(pts, fill=255)
    mask = np.asarray(img) > 0
    if outline:
        mask = mask & ~_erode(mask, int(outline))
    return mask.astype(np.uint8)


def _erode(mask: np.ndarray, w: int) -> np.ndarray:
    """Binary erosion of ``mask`` by a (2w+1) square."""
    out = mask.copy()
    n0, n1 = mask.shape
    padded = np.pad(mask, w, constant_values=False)
    for dy in range(-w, w + 1):
        for dx in range(-w, w + 1):
            out &= padded[w + dy:w + dy + n0, w + dx:w + dx + n1]
    return out


def _rotate(pts: list, cx: float, cy: float, rot: float) -> list:
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c) for x, y in pts]


def _place(rng: np.random.Generator, count: int, r: float, n: int, position: str | None) -> list:
    """``count`` centres whose discs of radius r do not overlap (deterministic rejection sampling)."""
    lo, hi = r + 1, n - r - 1
    if position is not None and count == 1:
        fx, fy = POSITIONS[position]
        span = (hi - lo) / 3
        x = lo + span * (fx + rng.uniform(0.1, 0.9))
        y = lo + span * (fy + rng.uniform(0.1, 0.9))
        return [(x, y)]
    centres: list[tuple[float, float]] = []
    gap = 2 * r + 1
    for _ in range(count * 400):
        x, y = rng.uniform(lo, hi, 2)
        if all((x - a) ** 2 + (y - b) ** 2 >= gap * gap for a, b in centres):
            centres.append((float(x), float(y)))
            if len(centres) == count:
                return centres
    # fallback: a regular grid (always fits for the sizes used)
    k = math.ceil(math.sqrt(count))
    step = (hi - lo) / max(k - 1, 1)
    return [(lo + step * (i % k), lo + step * (i // k)) for i in range(count)]


#: 3 x 3 grid cell (column, row) of each named position.
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0), "top": (1, 0), "top right": (2, 0), "left": (0, 1), "center": (1, 1),
    "right": (2, 1), "bottom left": (0, 2), "bottom": (1, 2), "bottom right": (2, 2),
}


def render_scene(
    rng: np.random.Generator,
    shape: str | None = None,
    colour: str | None = None,
    size: str | None = None,
    count: int | None = None,
    background: str | None = None,
    position: str | None = None,
    image_size: int = 64,
    outline: int = 0,
    noise: float = 0.0,
    sketch: bool = False,
    radius: float | None = None,
    rotation: float | None = None,
    centre: tuple[float, float] | None = None,
) -> Scene:
    """A scene of ``count`` objects of one shape/colour/size on a background pattern.

    Unset attributes are drawn from ``rng``. ``outline`` > 0 draws contours only; ``sketch`` draws dark
    contours on a white paper background (a sketch domain); ``noise`` adds Gaussian pixel noise of that
    standard deviation (0-255 scale) after compositing. ``radius`` overrides the size (pixels),
    ``rotation`` the random angle (radians) and ``centre`` the position (pixels, one object).
    The mask marks exactly the object pixels.
    """
    n = image_size
    shape = shape or str(rng.choice(SHAPES))
    colour = colour or str(rng.choice([c for c in COLOURS if c not in ("gray", "black")]))
    size = size or str(rng.choice(list(SIZES)))
    count = int(count or 1)
    background = background or str(rng.choice(BACKGROUNDS))
    r = radius if radius is not None else SIZES[size] * n / 2 * rng.uniform(0.9, 1.1)
    rot = float(rng.uniform(0, 2 * math.pi)) if shape not in ("circle", "ring") else 0.0
    if rotation is not None:
        rot = float(rotation)
    if sketch:
        canvas = np.full((n, n, 3), 245.0) + rng.normal(0, 3, (n, n, 1))
        outline = outline or 2
        paint = np.asarray(_jitter(rng, (30, 30, 30), 15), dtype=np.float64)
    else:
        canvas = render_background(rng, background, n)
        paint = np.asarray(_jitter(rng, COLOURS[colour]), dtype=np.float64)
    mask = np.zeros((n, n), dtype=np.uint8)
    objects = []
    centres = [centre] if centre is not None else _place(rng, count, r, n, position)
    for cx, cy in centres:
        m = shape_mask(shape, cx, cy, r, n, rot, outline)
        mask |= m
        objects.append({"x": round(cx / n, 4), "y": round(cy / n, 4)})
    shade = 1.0 + rng.normal(0, 0.04, (n, n, 1))
    canvas = np.where(mask[..., None] > 0, paint[None, None, :] * shade, canvas)
    if noise:
        canvas = canvas + rng.normal(0, noise, (n, n, 3))
    attrs = {
        "kind": "scene", "shape": shape, "colour": colour, "size": size, "count": count,
        "background": "paper" if sketch else background, "position": position, "objects": objects,
        "outline": bool(outline), "sketch": sketch,
    }
    return Scene(_to_image(canvas), mask, attrs)


_PLURAL = {"cross": "crosses"}


def _plural(shape: str, k: int) -> str:
    return shape if k == 1 else _PLURAL.get(shape, shape + "s")


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A varied natural-language description of ``scene`` (any renderer of this module).

    Example: ``"a small red star on a striped background"``, ``"two blue rings"``.
    """
    a = scene.attrs
    kind = a.get("kind")
    if kind == "satellite":
        forms = ("a satellite photo of {}.", "an aerial view of {}.", "a satellite image showing {}.",
                 "{} seen from above.")
        return str(rng.choice(forms)).format(a["label"])
    if kind == "texture":
        forms = ("a {} texture.", "a close-up of a {} pattern.", "a {} surface.", "{} texture patch.")
        return str(rng.choice(forms)).format(a["label"])
    if kind != "scene":
        return str(a.get("label", "an image"))
    k, shape, colour, size = a["count"], a["shape"], a["colour"], a["size"]
    noun = _plural(shape, k)
    qty = ("a" if k == 1 else NUMBER_WORDS[k]) if k < len(NUMBER_WORDS) else str(k)
    bg = "a white paper" if a.get("sketch") else BACKGROUND_WORDS[a["background"]]
    colour_word = "" if a.get("sketch") else colour
    size_word = size
    style = int(rng.integers(0, 7))
    parts = " ".join(p for p in (size_word if style in (0, 3) else "", colour_word) if p)
    if k == 1:
        qty = "an" if (parts or noun)[0] in "aeiou" else "a"
    if style == 0:
        text = f"{qty} {parts} {noun} on {bg} background"
    elif style == 1:
        text = f"{qty} {parts} {noun}"
    elif style == 2:
        text = f"a picture of {qty} {parts} {noun}"
    elif style == 3:
        text = f"{qty} {parts} {noun}, {bg[2:] if bg.startswith('a ') else bg} background"
    elif style == 4:
        text = f"{NUMBER_WORDS[k] if k < len(NUMBER_WORDS) else k} {_plural(shape, k)} in {colour_word or 'black'}"
    elif style == 5:
        where = f" in the {a['position']}" if a.get("position") else ""
        text = f"{qty} {parts} {noun}{where}"
    else:
        text = f"{bg} background with {qty} {parts} {noun}"
    if a.get("sketch") and style in (1, 2):
        text = f"a sketch of {text}"
    return " ".join(text.replace(" ,", ",").split())


# ----------------------------------------------------------------------------------------- satellite
def render_satellite(rng: np.random.Generator, label: str, image_size: int = 64) -> Scene:
    """A satellite-like tile of land-cover class ``label`` (one of :data:`SATELLITE_CLASSES`).

    Mask rule: the pixels of the class-defining structure (water of a river / lake, the road, the
    buildings, the crop rows or tree rows); for homogeneous cover (forest, herbaceous, pasture) the
    whole tile.
    """
    n = image_size
    yy, xx = _grid(n)
    noise = _fractal_noise(rng, n)
    mask = np.ones((n, n), dtype=bool)
    grass = np.array([95, 135, 60]) + rng.uniform(-15, 15, 3)
    if label == "annual crop land":
        period = rng.uniform(5, 9)
        ang = rng.uniform(0, math.pi)
        band = ((xx * math.cos(ang) + yy * math.sin(ang)) // period) % 3
        cols = np.array([[170, 150, 90], [120, 150, 60], [150, 120, 80]]) + rng.uniform(-15, 15, (3, 3))
        img = cols[band.astype(int)] * (0.9 + 0.2 * noise[..., None])
    elif label == "forest":
        img = _mix(np.array([25, 70, 30]), np.array([55, 105, 45]), _fractal_noise(rng, n)) * \
            (0.85 + 0.3 * rng.random((n, n, 1)))
    elif label == "herbaceous vegetation land":
        img = _mix(np.array([110, 130, 70]), np.array([150, 140, 90]), noise) + rng.normal(0, 8, (n, n, 3))
    elif label == "pasture land":
        img = _mix(grass, grass + 25, _smooth_noise(rng, n, 2)) + rng.normal(0, 3, (n, n, 3))
    elif label == "highway or road":
        img = _mix(grass, grass * 0.8 + 30, noise)
        ang = rng.uniform(0, math.pi)
        off = rng.uniform(-12, 12)
        dist = np.abs((xx - n / 2) * math.sin(ang) - (yy - n / 2) * math.cos(ang) - off)
        mask = dist < rng.uniform(3, 5)
        img = np.where(mask[..., None], np.array([95, 95, 100]) + rng.normal(0, 4, (n, n, 3)), img)
        lane = (dist < 0.6) & (((xx + yy) // 4) % 2 == 0)
        img = np.where(lane[..., None], np.array([225, 225, 210]), img)
    elif label in ("river", "sea or lake"):
        img = _mix(grass, np.array([150, 135, 95]), noise)
        if label == "river":
            amp, freq, ph = rng.uniform(4, 10), rng.uniform(0.06, 0.14), rng.uniform(0, 2 * math.pi)
            horizontal = bool(rng.integers(0, 2))
            coord = (yy if horizontal else xx)
            centre = n / 2 + rng.uniform(-10, 10) + amp * np.sin(freq * (xx if horizontal else yy) + ph)
            mask = np.abs(coord - centre) < rng.uniform(3.5, 6)
        else:
            mask = _fractal_noise(rng, n) + (1 - np.hypot(xx - n / 2, yy - n / 2) / n) * 0.9 > \
                rng.uniform(0.9, 1.1)
        water = np.array([30, 60, 110]) + rng.uniform(-10, 10, 3)
        img = np.where(mask[..., None], _mix(water, water + 20, noise), img)
    elif label in ("residential buildings", "industrial buildings"):
        img = _mix(grass * 0.9 + 20, np.array([150, 145, 135]), noise)
        canvas = Image.new("L", (n, n), 0)
        d = ImageDraw.Draw(canvas)
        roofs = Image.new("RGB", (n, n))
        dr = ImageDraw.Draw(roofs)
        if label == "residential buildings":
            step = int(rng.integers(9, 13))
            for gy in range(1, n - 4, step):
                for gx in range(1, n - 4, step):
                    if rng.random() < 0.8:
                        w, h = rng.integers(4, step - 2, 2)
                        box = (gx, gy, gx + int(w), gy + int(h))
                        d.rectangle(box, fill=255)
                        dr.rectangle(box, fill=_jitter(rng, (170, 80, 60), 30))
        else:
            for _ in range(int(rng.integers(2, 5))):
                x0, y0 = rng.integers(0, n - 20, 2)
                w, h = rng.integers(14, 30, 2)
                box = (int(x0), int(y0), int(x0 + w), int(y0 + h))
                d.rectangle(box, fill=255)
                dr.rectangle(box, fill=_jitter(rng, (185, 185, 190), 15))
        mask = np.asarray(canvas) > 0
        img = np.where(mask[..., None], np.asarray(roofs, dtype=np.float64), img)
    elif label == "permanent crop land":
        img = _mix(np.array([140, 120, 80]), np.array([120, 130, 70]), noise)
        period = int(rng.integers(6, 9))
        off = rng.integers(0, period, 2)
        r = rng.uniform(1.6, 2.4)
        dy = (yy + off[0]) % period - period / 2
        dx = (xx + off[1]) % period - period / 2
        mask = dx * dx + dy * dy <= r * r
        img = np.where(mask[..., None], np.array([45, 95, 40]) + rng.normal(0, 6, (n, n, 3)), img)
    else:
        raise ValueError(f"unknown satellite class {label!r}; expected one of {SATELLITE_CLASSES}")
    img = img * rng.uniform(0.85, 1.15) + rng.normal(0, 3, (n, n, 3))
    return Scene(_to_image(img), mask.astype(np.uint8), {"kind": "satellite", "label": label})


# ----------------------------------------------------------------------------------------- textures
def texture_field(rng: np.random.Generator, label: str, n: int = 64) -> np.ndarray:
    """An n x n pattern intensity in [0, 1] of texture class ``label`` (:data:`TEXTURE_CLASSES`)."""
    yy, xx = _grid(n)
    ang = rng.uniform(0, math.pi)
    u = xx * math.cos(ang) + yy * math.sin(ang)
    v = -xx * math.sin(ang) + yy * math.cos(ang)
    period = rng.uniform(6, 11)
    if label == "striped":
        return (u % period < period * rng.uniform(0.35, 0.6)).astype(float)
    if label == "dotted":
        r = period * rng.uniform(0.15, 0.25)
        du, dv = u % period - period / 2, v % period - period / 2
        return (du * du + dv * dv <= r * r).astype(float)
    if label == "zigzagged":
        tri = np.abs((u / period) % 2 - 1) * period
        return ((v + tri * 1.2) % period < period / 2).astype(float)
    if label == "chequered":
        return (((np.floor(u / period) + np.floor(v / period)) % 2) == 0).astype(float)
    if label == "marbled":
        t = np.sin(u / period * 1.3 + 6 * _fractal_noise(rng, n))
        return (t + 1) / 2
    if label == "grid":
        w = rng.uniform(1.2, 2.2)
        return (((u % period) < w) | ((v % period) < w)).astype(float)
    if label == "wavy":
        return (np.sin((v + rng.uniform(2, 5) * np.sin(u / period * 2)) / period * 2 * math.pi) > 0).astype(float)
    if label == "spiralled":
        cy, cx = rng.uniform(n * 0.3, n * 0.7, 2)
        rr = np.hypot(xx - cx, yy - cy)
        th = np.arctan2(yy - cy, xx - cx)
        return (np.sin(rr / period * 2 * math.pi - th * 2) > 0).astype(float)
    if label == "crosshatched":
        a = ((u + v) % period) < 1.6
        b = ((u - v) % period) < 1.6
        return (a | b).astype(float)
    if label == "blotchy":
        return (_fractal_noise(rng, n) > rng.uniform(0.45, 0.6)).astype(float)
    raise ValueError(f"unknown texture class {label!r}; expected one of {TEXTURE_CLASSES}")


def render_texture(rng: np.random.Generator, label: str, image_size: int = 64, full: bool = False) -> Scene:
    """A texture patch of class ``label``: the pattern fills a random blob (``mask``) over a plain,
    slightly noisy background, or the whole image when ``full``."""
    n = image_size
    t = texture_field(rng, label, n)
    hue = rng.uniform(40, 215, 3)
    other = np.clip(hue + rng.choice([-1, 1], 3) * rng.uniform(50, 100, 3), 0, 255)
    tex = _mix(hue, other, t) + rng.normal(0, 5, (n, n, 3))
    if full:
        mask = np.ones((n, n), dtype=bool)
    else:
        yy, xx = _grid(n)
        cy, cx = rng.uniform(n * 0.38, n * 0.62, 2)
        ry, rx = rng.uniform(n * 0.28, n * 0.42, 2)
        wob = 0.15 * (_smooth_noise(rng, n, 4) - 0.5)
        mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1 + wob
    bg = np.full((n, n, 3), rng.uniform(90, 170)) + rng.normal(0, 4, (n, n, 1))
    img = np.where(mask[..., None], tex, bg)
    return Scene(_to_image(img), mask.astype(np.uint8), {"kind": "texture", "label": label})
