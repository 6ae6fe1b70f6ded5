"""Preprocessing (once, before caching) and augmentation (per training item).

Preprocessing follows the usual dermoscopy pipeline: resize the short side and centre-crop to a
square, optionally Gaussian-denoise, optionally equalise illumination colour with Shades of Gray
(Finlayson & Trezzi 2004; the ISIC-challenge favourite, Barata et al. 2015, power p = 6).
Augmentation is what keeps a lesion a lesion: flips, 90-degree rotations, small brightness
changes; it runs on training items only.
"""

from __future__ import annotations

import math
import zlib

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor


class ImageTooSmallError(ValueError):
    pass


class TruncatedImageError(OSError):
    """An image file that holds fewer pixels than its header promises."""


def to_8bit(image: Image.Image) -> Image.Image:
    """16- and 32-bit integer images (``I;16*``, ``I``) scaled to 8 bits; ``convert("RGB")`` would clip them to white."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8), mode="L")
    return image


PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))  # x0, y0, dx, dy


def check_png_complete(path: Path | str, image: Image.Image) -> None:
    """A PNG's image data must hold every row its header promises: Pillow fills missing rows with black, silently."""
    if image.format != "PNG":
        return
    with open(path, "rb") as stream:
        data = stream.read()
    width, height, depth, colour, interlace = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"), data[24], data[25], data[28]
    if colour not in PNG_CHANNELS:
        return  # Pillow refuses it itself
    position, compressed = 8, []
    while position + 8 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        if kind == b"IDAT":
            compressed.append(data[position + 8 : position + 8 + length])
        if kind == b"IEND":
            break
        position += 12 + length
    bits = depth * PNG_CHANNELS[colour]

    def rows(columns: int, count: int) -> int:  # a filter byte per row, then the packed samples
        return count * (1 + math.ceil(columns * bits / 8)) if columns > 0 and count > 0 else 0

    passes = ADAM7 if interlace else ((0, 0, 1, 1),)
    expected = sum(rows(math.ceil((width - x0) / dx), math.ceil((height - y0) / dy)) for x0, y0, dx, dy in passes)
    try:
        held = len(zlib.decompressobj().decompress(b"".join(compressed), expected + 1))  # no more than it needs
    except zlib.error as error:
        raise TruncatedImageError(f"image {path}: damaged PNG data ({error})") from None
    if held < expected:
        raise TruncatedImageError(f"image {path} holds {held} of the {expected} bytes of pixel rows its header promises "
                                  f"({width}x{height}): truncated or damaged")


@contextmanager
def open_image(path: Path | str) -> Iterator[Image.Image]:
    """``Image.open(path)``, whose refusal of a decompression bomb names the file (a ``ValueError``)."""
    try:
        opened = Image.open(path)
    except Image.DecompressionBombError as error:
        raise ValueError(f"image {path} has more pixels than Pillow's safety limit ({error}); it may be a decompression bomb") from None
    with opened as image:
        yield image


def read_rgb(path: Path | str) -> Image.Image:
    """An image file as a loaded 8-bit RGB image: 16-bit scaled, a truncated PNG or a bomb refused naming the file."""
    with open_image(path) as image:
        check_png_complete(path, image)
        rgb = to_8bit(image).convert("RGB")
        rgb.load()
        return rgb


def load_square(path: Path | str, size: int, allow_upscale: bool = False) -> np.ndarray:
    """Decode an image file to (size, size, 3) uint8: short side resized to ``size``, centre crop.

    JPEG draft mode decodes at the smallest power-of-two reduction that still covers ``size``,
    which makes caching thousands of photos at 32-64 px several times faster. 16-bit images are
    scaled to 8 bits; a PNG with fewer rows than its header promises and an image over Pillow's
    decompression-bomb limit raise an error naming the file.
    """
    with open_image(path) as image:
        check_png_complete(path, image)
        width, height = image.size
        if min(width, height) < size and not allow_upscale:
            raise ImageTooSmallError(
                f"image {path} is {width}x{height}, smaller than image_size={size}; "
                "use a smaller data.image_size or set data.allow_upscale=true"
            )
        scale = size / min(width, height)
        if image.format == "JPEG":
            image.draft("RGB", (max(size, int(width * scale + 1)), max(size, int(height * scale + 1))))
        return square(to_8bit(image).convert("RGB"), size)


def square(image: Image.Image, size: int) -> np.ndarray:
    """Resize the short side of ``image`` to ``size`` (antialiased) and centre-crop to (size, size, 3) uint8."""
    width, height = image.size
    scale = size / min(width, height)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    if new != (width, height):
        factor = int(min(width, height) // (2 * size))
        if factor >= 2:  # integer box-reduce first: fast and alias-free
            image = image.reduce(factor)
        image = image.resize(new, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def shades_of_gray(image: np.ndarray, power: float = 6.0) -> np.ndarray:
    """Shades-of-Gray colour constancy on (H, W, 3) uint8: scale channels so their Minkowski p-means agree."""
    pixels = image.astype(np.float32)
    illuminant = np.power(np.mean(np.power(pixels, power), axis=(0, 1)), 1.0 / power)  # (3,)
    illuminant = illuminant / max(np.linalg.norm(illuminant), 1e-6)
    gains = 1.0 / (illuminant * np.sqrt(3.0) + 1e-6)
    return np.clip(pixels * gains, 0, 255).astype(np.uint8)


def gaussian_denoise(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of (H, W, 3) uint8 with ``sigma`` in pixels (spatial axes only)."""
    from scipy.ndimage import gaussian_filter

    return np.clip(gaussian_filter(image.astype(np.float32), sigma=(sigma, sigma, 0)) + 0.5, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Preprocess:
    """Deterministic preprocessing applied once before caching (part of the cache key)."""

    denoise_sigma: float = 0.0  # 0 disables Gaussian denoising
    color_constancy: bool = False  # Shades of Gray
    shades_of_gray_power: float = 6.0

    def key(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def active(self) -> bool:
        return self.denoise_sigma > 0 or self.color_constancy

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if self.denoise_sigma > 0:
            image = gaussian_denoise(image, self.denoise_sigma)
        if self.color_constancy:
            image = shades_of_gray(image, self.shades_of_gray_power)
        return image

    def apply_(self, images: np.ndarray) -> None:
        """In place on (N, H, W, 3) uint8."""
        if self.active:
            for index in range(len(images)):
                images[index] = self(np.asarray(images[index]))


def to_tensor(image: np.ndarray, gain: float = 1.0) -> Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [-1, 1], brightness scaled by ``gain`` (numpy: ~10x cheaper than torch ops per item)."""
    pixels = np.asarray(image, dtype=np.float32) * np.float32(gain / 127.5) - np.float32(1.0)
    if gain > 1.0:
        np.minimum(pixels, 1.0, out=pixels)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


POSES = 8  # the dihedral group of the square: pose p = 4 * flipped + quarter turns


def posed(image: np.ndarray, pose: int) -> np.ndarray:
    """(H, W, 3) image in dihedral pose ``pose`` (0-7): mirrored left-right when ``pose >= 4``, then ``pose % 4`` quarter turns."""
    if pose >= 4:
        image = image[:, ::-1]
    return np.rot90(image, pose % 4) if pose % 4 else image


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation of one (H, W, 3) uint8 image, returned as a (3, H, W) tensor in [-1, 1].

    Flips and 90-degree rotations are the dihedral group: a dermoscopic image has no canonical
    orientation, so all eight are equally real. Brightness is a multiplicative jitter of
    +-``brightness`` (dermoscope lighting varies); it stays small so colour-based labels hold.
    Random draws come from torch's generator, which Lightning seeds per DataLoader worker.
    """

    flips: bool = True
    rotate90: bool = True
    brightness: float = 0.1

    def draw(self, generator: torch.Generator | None = None) -> tuple[int, float]:
        """A random dihedral pose (0-7, ``posed``) and brightness gain."""
        flip, turn, light = torch.rand(3, generator=generator).tolist()
        pose = (4 if self.flips and flip < 0.5 else 0) + (int(turn * 4) if self.rotate90 else 0)
        return pose, 1.0 + (2 * light - 1) * self.brightness

    def posed(self, image: np.ndarray, generator: torch.Generator | None = None) -> tuple[Tensor, int]:
        """The augmented image and the dihedral pose it was given (the latent cache's index)."""
        pose, gain = self.draw(generator)
        return to_tensor(posed(image, pose), gain), pose

    def __call__(self, image: np.ndarray, generator: torch.Generator | None = None) -> Tensor:
        return self.posed(image, generator)[0]
