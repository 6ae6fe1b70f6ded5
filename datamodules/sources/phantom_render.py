"""Procedural dermoscopy-like images drawn from known attributes (numpy, vectorised per image).

An image is composed the way a dermoscope sees skin: textured skin of a Fitzpatrick tone with
surface creases, a pigmented lesion (shape from its border irregularity, asymmetry and diameter;
colour zones from its colour count; pigment network, dots/globules and, for malignant lesions, a
blue-white veil), hair over everything, then uneven lighting and the dark circular field stop of
the lens. Each attribute changes something a classifier can see even at 32 px, because a judge
network scores generated images against these attributes.

Images smaller than ``RENDER_MIN`` px are drawn at that size and area-averaged down (anti-aliasing).
Coordinates run over [-1, 1] across the field of view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import math

import numpy as np
from PIL import Image

RENDERER_VERSION = 8  # bump when pixels change: it keys the on-disk cache
RENDER_MIN = 48  # supersampling floor: small images are drawn at 48 px and area-averaged down

# Fitzpatrick I-VI skin colours (RGB in [0, 1]): medians of the UCI "Skin Segmentation" skin pixels
# at luminance quantiles 0.95, 0.8, 0.6, 0.4, 0.2, 0.04 (see ``uci_palette``), so the phantom needs
# no data files. Type VI is darkened by 20 %: the UCI faces are brightly lit.
SKIN_PALETTE = np.array([
    [0.996, 0.761, 0.624],
    [0.914, 0.714, 0.643],
    [0.871, 0.631, 0.494],
    [0.831, 0.557, 0.392],
    [0.647, 0.420, 0.227],
    [0.405, 0.270, 0.214],
], np.float32)
UCI_QUANTILES = (0.95, 0.8, 0.6, 0.4, 0.2, 0.04)

# The five dermoscopic pigment colours, in the order of the ``colours`` vocabulary.
COLOUR_NAMES = ("light brown", "dark brown", "black", "blue-grey", "red")
PIGMENTS = np.array([
    [0.66, 0.45, 0.30],  # light brown
    [0.38, 0.22, 0.13],  # dark brown
    [0.11, 0.08, 0.08],  # black
    [0.33, 0.36, 0.43],  # blue-grey
    [0.78, 0.33, 0.36],  # red
], np.float32)
OPACITY = np.array([0.72, 0.9, 0.95, 0.85, 0.7], np.float32)  # how much skin shows through each pigment
DARKNESS_ORDER = np.argsort(PIGMENTS.sum(axis=1))  # darkest first: dark centres, light rims
VEIL = np.array([0.62, 0.70, 0.82], np.float32)  # blue-white veil of malignant lesions (whitish, not blue-grey)
ANGLES = np.linspace(-np.pi, np.pi, 512, endpoint=False)  # boundary radius is tabulated at these angles
RADIUS_BINS = ((0.20, 0.27), (0.34, 0.43), (0.52, 0.64))  # lesion radius per diameter bin (field = 2)


@dataclass
class LesionSpec:
    """Ground truth of one phantom image. ``colours`` indexes ``COLOUR_NAMES``."""

    malignant: bool
    irregularity: float  # continuous border irregularity; the ``border`` attribute is irregularity > 0.5
    asymmetric: bool
    colours: list[int] = field(default_factory=list)
    diameter: int = 0  # bin: 0 small, 1 medium, 2 large


def uci_palette(path: str) -> np.ndarray:
    """Recompute ``SKIN_PALETTE`` (before the type-VI darkening) from the UCI ``Skin_NonSkin.txt``."""
    rows = np.loadtxt(path, dtype=np.int64)
    skin = rows[rows[:, 3] == 1][:, [2, 1, 0]] / 255.0  # B G R -> R G B
    skin = skin[np.argsort(skin @ np.array([0.299, 0.587, 0.114]))]
    n = len(skin)
    return np.array([np.median(skin[int(max(0, q - 0.04) * n): int(min(1, q + 0.04) * n)], axis=0) for q in UCI_QUANTILES])


def value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1] of shape (size, size): a random (cells+1)^2 lattice, smoothstep-interpolated."""
    lattice = rng.random((cells + 1, cells + 1), dtype=np.float32)
    i, f, g = lattice_weights(size, cells)
    rows = lattice[i] * g[:, None] + lattice[i + 1] * f[:, None]  # (size, cells+1)
    return rows[:, i] * g + rows[:, i + 1] * f


@lru_cache(maxsize=64)
def lattice_weights(size: int, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.linspace(0.0, cells, size, endpoint=False) + cells / size / 2
    i = np.minimum(t.astype(int), cells - 1)
    f = t - i
    f = (f * f * (3 - 2 * f)).astype(np.float32)
    return i, f, 1 - f


def fbm(rng: np.random.Generator, size: int, cells: int, octaves: int = 3) -> np.ndarray:
    """Fractal noise in about [-1, 1]: octaves of value noise, each twice as fine and half as strong."""
    total = np.zeros((size, size), np.float32)
    for octave in range(octaves):
        total += (value_noise(rng, size, cells * 2**octave) - 0.5) * 0.5**octave
    return total * np.float32(1.6)


class NoiseBank:
    """Fractal noise fields for one image: two are computed, the rest are their rotations and mirrors.

    Noise is most of the render time; the eight symmetries of a square field look like independent
    fields for texture, warps and mottling, at no cost.
    """

    def __init__(self, rng: np.random.Generator, size: int):
        self.bases = {3: fbm(rng, size, 3), 4: fbm(rng, size, 4)}
        self.used = {3: 0, 4: 0}

    def __call__(self, cells: int) -> np.ndarray:
        key = 4 if cells >= 4 else 3
        k = self.used[key]
        self.used[key] += 1
        field = np.rot90(self.bases[key], k % 4)
        return np.ascontiguousarray(field.T if (k // 4) % 2 else field)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * x))


def render(spec: LesionSpec | None, skin_tone: int, hair: bool, size: int, rng: np.random.Generator) -> np.ndarray:
    """One image (size, size, 3) uint8; ``spec=None`` renders normal skin without a lesion."""
    s = max(size, RENDER_MIN)
    x, y = field_grid(s)
    pixel = 2.0 / s

    noise = NoiseBank(rng, s)
    image = skin(rng, noise, x, y, s, skin_tone)
    if spec is not None:
        image = lesion(rng, noise, x, y, s, pixel, spec, image)
    if hair:
        image = hairs(rng, x, y, pixel, skin_tone, image)
    image = optics(rng, x, y, pixel, image)
    image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    if s == size:
        return image
    if s % size == 0:
        factor = s // size
        return (image.reshape(size, factor, size, factor, 3).mean(axis=(1, 3)) + 0.5).astype(np.uint8)
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BOX))  # area average


@lru_cache(maxsize=8)
def field_grid(s: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (s, s) over [-1, 1]; float32 throughout (twice the speed of float64)."""
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    return (x + 0.5) / s * 2 - 1, (y + 0.5) / s * 2 - 1


def skin(rng: np.random.Generator, noise: NoiseBank, x: np.ndarray, y: np.ndarray, s: int, tone: int) -> np.ndarray:
    """Skin of Fitzpatrick ``tone`` (1-6): blotchy tone, redness, surface creases and pores."""
    # Under a contact dermoscope skin looks pinker than in daylight: blood shows through the gel.
    base = SKIN_PALETTE[tone - 1] * rng.uniform(0.94, 1.04, 3) * np.array([1.02, 0.88, 0.92])
    image = np.broadcast_to(base.astype(np.float32), (s, s, 3)).copy()
    image *= (1 + 0.09 * noise(3))[..., None]
    redness = np.clip(noise(2) + 0.3, 0, None)[..., None] * rng.uniform(0.02, 0.16)
    image += redness * np.array([0.2, -0.3, -0.15], np.float32)
    # Surface creases: two families of fine lines, the rhomboid pattern of skin under a lens.
    warp = noise(3) * 0.6
    for _ in range(2):
        angle = rng.uniform(0, np.pi)
        u = x * math.cos(angle) + y * math.sin(angle)
        crease = np.exp(-np.sin(np.pi * (u * rng.uniform(5, 9) + warp)) ** 2 / 0.02)
        image *= (1 - rng.uniform(0.03, 0.07) * crease)[..., None]
    image *= (1 + rng.normal(0, 0.018, (s, s)).astype(np.float32))[..., None]  # pores and sensor grain
    return image


def outline(rng: np.random.Generator, spec: LesionSpec) -> tuple[float, float, np.ndarray]:
    """Centre and boundary radius rho(theta) tabulated at ``ANGLES``: ellipse, lobes, border harmonics, notches."""
    cx, cy = (float(c) for c in np.clip(rng.normal(0, 0.07, 2), -0.15, 0.15))
    radius = rng.uniform(*RADIUS_BINS[spec.diameter])
    theta = ANGLES
    shape = 1 + rng.uniform(0.0, 0.12) * np.cos(2 * (theta - rng.uniform(0, np.pi)))
    if spec.asymmetric:
        first = rng.uniform(0, 2 * np.pi)
        second = first + rng.uniform(0.6, 1.4) * (1 if rng.random() < 0.5 else -1)  # never opposite: no mirror axis
        shape += bump(theta, first, rng.uniform(0.45, 0.6), rng.uniform(0.45, 0.7))
        shape += bump(theta, second, rng.uniform(0.18, 0.3), rng.uniform(0.35, 0.55))
        radius *= 0.88
    irr = spec.irregularity
    ks = np.arange(3, 15)
    amps = (0.012 + irr**2 * 0.42 / ks) * rng.uniform(0.4, 1.0, ks.size)
    shape += (amps[:, None] * np.cos(ks[:, None] * theta + rng.uniform(0, 2 * np.pi, ks.size)[:, None])).sum(0)
    if irr > 0.5:
        for _ in range(rng.integers(2, 5)):
            shape -= bump(theta, rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.22) * irr, rng.uniform(0.08, 0.2))
    return cx, cy, radius * shape


def bump(theta: np.ndarray, centre: float, height: float, width: float) -> np.ndarray:
    """A Gaussian bump on the circle (angles wrap)."""
    return height * np.exp(-(np.angle(np.exp(1j * (theta - centre)))) ** 2 / (2 * width**2))


def lesion(rng: np.random.Generator, noise: NoiseBank, x: np.ndarray, y: np.ndarray, s: int, pixel: float, spec: LesionSpec, image: np.ndarray) -> np.ndarray:
    """Composite a pigmented lesion of ``spec`` over the skin ``image``."""
    cx, cy, table = outline(rng, spec)
    dx, dy = x - cx, y - cy
    r, theta = np.sqrt(dx * dx + dy * dy), np.arctan2(dy, dx)
    boundary = table.astype(np.float32)[((theta + np.pi) / (2 * np.pi) * ANGLES.size).astype(int) % ANGLES.size]
    t = r / boundary  # 0 at the centre, 1 on the border
    edge = rng.uniform(0.008, 0.02) if spec.irregularity > 0.5 else rng.uniform(0.03, 0.05)
    fringe = 1 + 0.05 * noise(4) * (1 + spec.irregularity)  # feathery, uneven margin
    inside = sigmoid((boundary * fringe - r) / max(edge, pixel * 0.5))

    # Colour zones: concentric rings (darkest inside) when symmetric, warped Voronoi patches otherwise.
    colours = sorted(spec.colours, key=lambda c: list(DARKNESS_ORDER).index(c))
    n = len(colours)
    warp = noise(3) * 0.2
    if n == 1:
        weights = np.ones((1, s, s), np.float32)
    elif not spec.asymmetric:
        bounds = np.sqrt((np.arange(n) + 0.5) / n)  # equal-area rings
        weights = softmax(-np.abs((t + warp)[None] - bounds[:, None, None]) / 0.06)
    else:
        angles = rng.uniform(0, 2 * np.pi) + np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(-0.4, 0.4, n)
        reach = rng.uniform(0.25, 0.6, n)
        sx, sy = ((reach * f(angles)).astype(np.float32)[:, None, None] for f in (np.cos, np.sin))
        u, v = t * np.cos(theta) - sx, t * np.sin(theta) - sy
        weights = softmax(-(np.sqrt(u * u + v * v) + warp[None]) / 0.07)
    tint = np.clip(0.7 + 0.35 * image.mean(-1, keepdims=True) / 0.7, 0.75, 1.1)  # lesions darker on dark skin
    colour = np.tensordot(weights, PIGMENTS[colours], axes=(0, 0)) * tint  # (H, W, 3)
    colour *= (1 + 0.22 * noise(4) + 0.1 * (1 - np.clip(t, 0, 1)) ** 2)[..., None]  # mottled pigment, lighter centre glow
    density = np.tensordot(weights, OPACITY[colours], axes=(0, 0)) * (0.9 + 0.1 * noise(3))
    alpha = inside * np.clip(density, 0, 1)

    if spec.malignant or rng.random() < 0.6:
        strength = rng.uniform(0.3, 0.5) if spec.malignant else rng.uniform(0.15, 0.3)
        colour *= (1 - strength * pigment_network(rng, noise, x, y, s, spec.malignant) * (1 - np.clip(t, 0, 1) ** 3))[..., None]
    colour = globules(rng, dx, dy, t, theta, pixel, spec.malignant, colour, float(np.median(table)))
    if spec.malignant:  # blue-white veil: a whitish-blue structureless area off centre
        angle, reach = rng.uniform(0, 2 * np.pi), rng.uniform(0.15, 0.45)
        veil_radius = rng.uniform(0.28, 0.45) + noise(3) * 0.15
        distance = np.sqrt((t * np.cos(theta) - reach * math.cos(angle)) ** 2 + (t * np.sin(theta) - reach * math.sin(angle)) ** 2)
        veil = sigmoid((veil_radius - distance) / 0.08) * rng.uniform(0.45, 0.65)
        colour = colour * (1 - veil[..., None]) + VEIL * veil[..., None]
    return image * (1 - alpha[..., None]) + colour * alpha[..., None]


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.exp(z - z.max(0, keepdims=True))
    return z / z.sum(0, keepdims=True)


def pigment_network(rng: np.random.Generator, noise: NoiseBank, x: np.ndarray, y: np.ndarray, s: int, atypical: bool) -> np.ndarray:
    """Mesh of dark lines in [0, 1] (three line families 60 degrees apart); atypical: coarse, thick, broken."""
    cell = rng.uniform(0.11, 0.15) if atypical else rng.uniform(0.07, 0.1)
    angle = rng.uniform(0, np.pi)
    wobble = noise(4) * (1.0 if atypical else 0.45)
    width = 0.3 if atypical else 0.15
    lines = np.zeros(x.shape, np.float32)
    for family in range(3):
        a = angle + family * np.pi / 3
        u = (x * math.cos(a) + y * math.sin(a)) / cell + wobble
        lines = np.maximum(lines, np.exp(-np.sin(np.pi * u) ** 2 / width))
    if atypical:
        lines *= value_noise(rng, s, 5) > 0.35
    return lines


def globules(rng: np.random.Generator, dx, dy, t, theta, pixel: float, malignant: bool, colour: np.ndarray, radius: float) -> np.ndarray:
    """Dots and globules: even and central in benign lesions, irregular and peripheral in malignant ones."""
    if not malignant and rng.random() < 0.5:
        return colour
    count = rng.integers(6, 22)
    if malignant:
        angles = rng.uniform(0, 2 * np.pi) + rng.normal(0, 1.0, count)
        reach = rng.uniform(0.65, 1.05, count)
        sizes = rng.uniform(0.012, 0.04, count)
    else:
        angles = rng.uniform(0, 2 * np.pi, count)
        reach = np.sqrt(rng.uniform(0, 0.6, count))
        sizes = rng.uniform(0.018, 0.028, count)
    px, py = reach * radius * np.cos(angles), reach * radius * np.sin(angles)
    px, py, sizes = (a.astype(np.float32)[:, None, None] for a in (px, py, np.maximum(sizes, pixel * 0.7)))
    margin = (sizes - np.sqrt((dx[None] - px) ** 2 + (dy[None] - py) ** 2)).max(0)
    dots = sigmoid(margin / (pixel * 0.5))[..., None] * 0.85
    dot_colour = PIGMENTS[2] if malignant else PIGMENTS[1] * 0.8
    return colour * (1 - dots) + dot_colour * dots


def hairs(rng: np.random.Generator, x, y, pixel: float, tone: int, image: np.ndarray) -> np.ndarray:
    """2-7 curved dark hairs across the field."""
    colour = np.array([0.07, 0.05, 0.04], np.float32) if tone > 2 or rng.random() < 0.7 else np.array([0.35, 0.25, 0.15], np.float32)
    cover = np.zeros(x.shape, np.float32)
    for _ in range(rng.integers(2, 8)):
        px, py = rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.8)
        angle, bend = rng.uniform(0, np.pi), rng.uniform(-0.6, 0.6)
        u = (x - px) * math.cos(angle) + (y - py) * math.sin(angle)
        v = -(x - px) * math.sin(angle) + (y - py) * math.cos(angle)
        distance = np.abs(v - bend * u**2) / np.sqrt(1 + (2 * bend * u) ** 2)
        width = rng.uniform(0.7, 1.3) * pixel
        strand = np.exp(-((distance / width) ** 2)) * (np.abs(u - rng.uniform(-0.3, 0.3)) < rng.uniform(0.6, 1.6))
        cover = np.maximum(cover, strand * rng.uniform(0.75, 0.95))
    return image * (1 - cover[..., None]) + colour * cover[..., None]


def optics(rng: np.random.Generator, x, y, pixel: float, image: np.ndarray) -> np.ndarray:
    """Uneven illumination and, mostly, the dark circular field stop of a contact dermoscope."""
    angle = rng.uniform(0, 2 * np.pi)
    r = np.sqrt(x * x + y * y)
    light = 1 + rng.uniform(0, 0.1) * (x * math.cos(angle) + y * math.sin(angle)) - rng.uniform(0.05, 0.15) * r**2
    image = image * light[..., None] * rng.uniform(0.92, 1.05)
    if rng.random() < 0.7:
        field_radius = rng.uniform(0.98, 1.3)
        stop = sigmoid((field_radius - r) / max(0.02, pixel))
        image = image * stop[..., None] + rng.uniform(0.01, 0.05) * (1 - stop[..., None])
    return image
