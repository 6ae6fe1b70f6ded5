"""The ITA reading of every image of a split (``datamodules.tone``), computed once and cached beside the images.

The readings are a function of the cached pixels (their content hash), the lesion masks where the data
set ships them (file names, sizes and modification times) and the estimator's version, so a changed
estimator or new masks never reuse stale readings. A mask is squared exactly like its image (short
side resized, centre crop); an unreadable mask, or one of another size than its image, is left out
with a warning and that image is read without it.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from datamodules.atomic import write_bytes_atomic
from datamodules.cache import SelectedRows, U8Images, cache_key
from datamodules.sources.base import SourceRequest
from datamodules.tone import ESTIMATOR_VERSION, ToneTable, read_tone
from datamodules.transforms import load_square

log = logging.getLogger(__name__)


def _mask_key(masks: list[Path | None] | None) -> str:
    digest = hashlib.sha1()
    for path in masks or []:
        if path is None:
            digest.update(b"-\n")
        else:
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def load_mask(path: Path, size: int, image_path: Path | None = None) -> np.ndarray | None:
    """(size, size) bool lesion mask (white = lesion) squared like its image, or None (with a warning) when unusable."""
    try:
        with Image.open(path) as mask:
            mask_size = mask.size
        if image_path is not None:
            with Image.open(image_path) as image:
                if image.size != mask_size:
                    log.warning("lesion mask %s is %s, its image %s is %s: not used", path, mask_size, image_path, image.size)
                    return None
        return load_square(path, size, allow_upscale=True)[..., 0] > 127
    except (OSError, ValueError, SyntaxError) as error:
        log.warning("lesion mask %s is unreadable (%s): not used", path, error)
        return None


def split_tones(request: SourceRequest, source: str, split: str, images: U8Images | SelectedRows,
                masks: list[Path | None] | None = None, image_paths: list[Path] | None = None) -> ToneTable:
    """Readings of every image of a split (``masks`` and ``image_paths`` per row where the data set has masks)."""
    size = int(images.shape[1])
    key = {"source": source, "split": split, "size": size, "pixels": images.content, "rows": len(images),
           "masks": _mask_key(masks), "version": ESTIMATOR_VERSION}
    path = Path(request.cache_dir).expanduser() / "tone" / f"{source}-{split}-{size}px-{cache_key(key)}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return ToneTable(**{name: stored[name] for name in stored.files})
    readings = []
    rows = tqdm(range(len(images)), desc=f"{source} {split}: skin tone", disable=not request.progress or len(images) < 500, leave=False)
    for row in rows:
        mask_path = masks[row] if masks is not None else None
        mask = load_mask(mask_path, size, image_paths[row] if image_paths else None) if mask_path is not None else None
        readings.append(read_tone(np.asarray(images[row]), mask))
    table = ToneTable.from_readings(readings)
    buffer = io.BytesIO()
    np.savez(buffer, **table.arrays())
    write_bytes_atomic(path, buffer.getvalue())
    used = int((table.lesion_from == "mask").sum())
    log.info("%s %s: skin tone of %d images (%d confident; lesion from a mask in %d of %d with one)", source, split, len(table),
             int(table.confident.sum()), used, sum(m is not None for m in masks or []))
    return table
