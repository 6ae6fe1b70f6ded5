"""Skin tone read from pixels: the Individual Typology Angle (ITA) of the healthy skin, and its tone group.

    ITA = arctan((L* - 50) / b*) * 180 / pi          (Chardon et al. 1991; CIELAB, D65)

computed as ``arctan2`` (the same angle wherever b* > 0, as it is on skin, and defined at b* = 0).
Tone groups (Del Bino & Bernerd 2013, as Kinyanjui et al. 2020 binned ISIC images):
very light > 55, light 41-55, intermediate 28-41, tan 10-28, brown -30-10, dark < -30 (numbered 1-6,
light to dark like Fitzpatrick I-VI; 0 = unknown).

Healthy skin of one image (``healthy_skin``):
1. the dark field stop of the dermoscope: dark pixels (L* under half the image's bright skin level,
   at most 35, always under 10) connected to the image border; highlights (gel bubbles, glare) above L* 97;
2. hair: a morphological black-hat on L* (thin dark lines far below their surroundings);
3. the lesion: the data set's mask where it has one (dilated, since a lesion's rim blends into the
   skin; faint lesions can be as light as the skin around them, so the mask is never second-guessed).
   Otherwise Otsu's threshold on L*: where the two classes differ clearly the darker one is the lesion
   (the lesions here are pigmented; ``experiments.bench tone`` reports how well this agrees with the
   masks on HAM10000), else every remaining pixel is skin.
The ITA is the median of the per-pixel ITAs of the healthy skin (robust to hair and lesion pixels
that slip through, as the patch medians of Kalb et al. 2023 and ``derm-ita``); its spread is their
interquartile range. A reading is *confident* when at least ``MIN_SKIN_FRACTION`` of the image is
healthy skin and the spread is at most ``MAX_SPREAD`` degrees; only confident readings get a tone
group, so captions, conditioning, sampling and per-group figures use only those.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

TONE_GROUPS = ("very light", "light", "intermediate", "tan", "brown", "dark")  # group 1 .. 6
GROUP_EDGES = (55.0, 41.0, 28.0, 10.0, -30.0)  # lower ITA bound of groups 1-5; group 6 is below -30
ESTIMATOR_VERSION = 2  # bump when readings change: it keys the cached estimates

# A lesion edge blends into the skin over a few per cent of the field; masks are drawn on the lesion.
LESION_MARGIN = 0.03  # dilation of the lesion, as a share of the image side
DARK_SHARE = 0.5  # field-stop pixels: darker than this share of the bright skin level (95th percentile of L*) ...
DARK_CEILING = 35.0  # ... but never above this L* (dark skin itself is L* 25-45; the field stop is near black) ...
DARK_FLOOR = 10.0  # ... and always below this one (no skin is this dark, whatever the rest of the image)
HIGHLIGHT = 97.0  # L* above this is glare or a gel bubble, not skin
HAIR_CONTRAST = 10.0  # black-hat response (L* units) above which a pixel is hair or another thin dark line
LESION_GAP = 10.0  # Otsu classes whose mean L* differ by less than this are one skin with texture, not skin + lesion
MIN_SKIN_FRACTION = 0.1  # confident: at least this share of the image is healthy skin ...
MAX_SPREAD = 20.0  # ... and the per-pixel ITAs' interquartile range is at most this many degrees


def ita_from_lab(lightness: np.ndarray, b_star: np.ndarray) -> np.ndarray:
    """ITA in degrees of CIELAB L* and b* (any matching shapes)."""
    return np.degrees(np.arctan2(np.asarray(lightness, np.float64) - 50.0, np.asarray(b_star, np.float64)))


def rgb_to_lab(image: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 sRGB -> (..., 3) float CIELAB (D65), as ``skimage.color.rgb2lab``."""
    from skimage.color import rgb2lab

    return rgb2lab(np.asarray(image, np.uint8))


def tone_group(ita: float | np.ndarray) -> np.ndarray:
    """Tone group 1-6 (very light .. dark) of ITA values; 0 where the ITA is NaN."""
    ita = np.asarray(ita, np.float64)
    group = 1 + (ita[..., None] <= np.asarray(GROUP_EDGES)).sum(-1)  # each edge at or above the ITA moves one group darker
    return np.where(np.isfinite(ita), group, 0).astype(np.int64)


def group_name(group: int) -> str | None:
    return TONE_GROUPS[group - 1] if 1 <= group <= len(TONE_GROUPS) else None


@dataclass(frozen=True)
class ToneReading:
    """One image's reading: ITA (degrees, NaN when no skin was found), spread, share of the image that is
    healthy skin, how the lesion was found (``mask`` | ``otsu`` | ``none``) and whether it is confident."""

    ita: float
    spread: float
    skin_fraction: float
    lesion_from: str
    confident: bool

    @property
    def group(self) -> int:
        return int(tone_group(self.ita)) if self.confident else 0


def _disk(radius: int) -> np.ndarray:
    span = np.arange(-radius, radius + 1)
    return span[:, None] ** 2 + span[None, :] ** 2 <= radius**2


def field_stop(lightness: np.ndarray) -> np.ndarray:
    """(H, W) bool: the dark vignette of the lens (dark pixels connected to the border) and glare."""
    bright = float(np.percentile(lightness, 95))
    dark = lightness < max(DARK_FLOOR, min(DARK_CEILING, DARK_SHARE * bright))
    components, _ = ndimage.label(dark)
    edge = np.unique(np.concatenate([components[0], components[-1], components[:, 0], components[:, -1]]))
    return np.isin(components, edge[edge > 0]) | (lightness > HIGHLIGHT)


def hair(lightness: np.ndarray) -> np.ndarray:
    """(H, W) bool: thin dark structures (hair, ruler ink): black-hat of L* above ``HAIR_CONTRAST``."""
    radius = max(1, round(min(lightness.shape) / 50))
    closed = ndimage.grey_closing(lightness, footprint=_disk(radius))
    return closed - lightness > HAIR_CONTRAST


def otsu_lesion(lightness: np.ndarray, candidates: np.ndarray) -> np.ndarray | None:
    """The darker Otsu class of L* over ``candidates`` when the classes differ by ``LESION_GAP``, else None."""
    from skimage.filters import threshold_otsu

    values = lightness[candidates]
    if values.size < 8 or np.ptp(values) == 0:
        return None
    threshold = threshold_otsu(values)
    dark, light = values[values <= threshold], values[values > threshold]
    if dark.size == 0 or light.size == 0 or light.mean() - dark.mean() < LESION_GAP:
        return None
    return candidates & (lightness <= threshold)


def healthy_skin(lab: np.ndarray, lesion_mask: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """(H, W) bool healthy-skin pixels of one CIELAB image and how its lesion was found (module docstring)."""
    lightness = lab[..., 0]
    usable = ~field_stop(lightness) & ~hair(lightness)
    if lesion_mask is not None:
        lesion, lesion_from = lesion_mask, "mask"
    else:
        lesion = otsu_lesion(lightness, usable)
        lesion_from = "otsu" if lesion is not None else "none"
    if lesion is not None:
        radius = max(1, round(LESION_MARGIN * min(lightness.shape)))
        usable &= ~ndimage.binary_dilation(lesion, structure=_disk(radius))
    return usable, lesion_from


def read_tone(image: np.ndarray, lesion_mask: np.ndarray | None = None) -> ToneReading:
    """The ITA reading of one (H, W, 3) uint8 image; ``lesion_mask`` (H, W) bool marks the lesion where known."""
    lab = rgb_to_lab(image)
    skin, lesion_from = healthy_skin(lab, None if lesion_mask is None else np.asarray(lesion_mask, bool))
    fraction = float(skin.mean())
    if not skin.any():
        return ToneReading(float("nan"), float("nan"), 0.0, lesion_from, False)
    angles = ita_from_lab(lab[..., 0][skin], lab[..., 2][skin])
    low, median, high = np.percentile(angles, [25, 50, 75])
    spread = float(high - low)
    return ToneReading(float(median), spread, fraction, lesion_from, fraction >= MIN_SKIN_FRACTION and spread <= MAX_SPREAD)


@dataclass
class ToneTable:
    """Readings of N images as arrays: ``ita`` (N,) degrees (NaN: no skin found), ``spread``, ``skin_fraction``,
    ``confident`` (N,) bool, ``lesion_from`` (N,) str, and ``group`` (N,) int64 (1-6, 0 where not confident)."""

    ita: np.ndarray
    spread: np.ndarray
    skin_fraction: np.ndarray
    confident: np.ndarray
    lesion_from: np.ndarray

    @property
    def group(self) -> np.ndarray:
        return np.where(self.confident, tone_group(self.ita), 0).astype(np.int64)

    def __len__(self) -> int:
        return len(self.ita)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"ita": self.ita, "spread": self.spread, "skin_fraction": self.skin_fraction, "confident": self.confident,
                "lesion_from": self.lesion_from}

    @classmethod
    def from_readings(cls, readings: list[ToneReading]) -> ToneTable:
        return cls(
            ita=np.array([r.ita for r in readings], np.float64), spread=np.array([r.spread for r in readings], np.float64),
            skin_fraction=np.array([r.skin_fraction for r in readings], np.float64),
            confident=np.array([r.confident for r in readings], bool), lesion_from=np.array([r.lesion_from for r in readings], "U4"),
        )


def read_tones(images: np.ndarray, lesion_masks: list[np.ndarray | None] | None = None) -> ToneTable:
    """Readings of (N, H, W, 3) uint8 images (any array-like indexable by row); masks per row or None."""
    readings = [read_tone(np.asarray(images[i]), None if lesion_masks is None else lesion_masks[i]) for i in range(len(images))]
    return ToneTable.from_readings(readings)


def tensor_images_to_uint8(images) -> np.ndarray:
    """(N, 3, H, W) float images in [-1, 1] (torch or numpy) -> (N, H, W, 3) uint8, rounded as ``to_tensor`` inverts."""
    array = np.asarray(images.detach().cpu().float() if hasattr(images, "detach") else images, np.float32)
    return np.clip(np.round((array.transpose(0, 2, 3, 1) + 1.0) * 127.5), 0, 255).astype(np.uint8)
