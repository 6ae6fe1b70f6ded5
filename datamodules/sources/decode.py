"""Image files -> cached uint8 squares, shared by the file-based sources (ham10000, isic, folder).

The cache key is a content fingerprint of the split: file names, byte sizes and modification
times (what ``make`` and ``rsync`` trust; reading every byte of a 2.6 GB HAM10000 copy at each
start would cost more than it protects), plus the image size and the preprocessing.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import UnidentifiedImageError
from tqdm.auto import tqdm

from datamodules.cache import U8Images, cached_images
from datamodules.sources.base import SourceRequest
from datamodules.transforms import ImageTooSmallError, load_square

log = logging.getLogger(__name__)
# Bumped when decoding changes what a file yields (2: 16-bit files scaled, short PNGs refused), so no cache keeps
# images the old decoder got wrong; files that decoded right give the same pixels and data fingerprint as before.
DECODER = 2
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def index_images(root: Path) -> dict[str, Path]:
    """Every image file below ``root`` by file stem (HAM10000 ships its JPEGs in several folders)."""
    found: dict[str, Path] = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
                found.setdefault(Path(name).stem, Path(folder) / name)
    return found


def content_fingerprint(paths: list[Path]) -> str:
    digest = hashlib.sha1()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def decode_split(request: SourceRequest, source: str, split: str, paths: list[Path]) -> tuple[U8Images, list[int]]:
    """Decode ``paths`` into the cache at ``request.image_size``; return the images and the kept row indices.

    Unreadable files raise ``ValueError`` naming the file, or with ``on_bad_image=skip`` are
    dropped and counted in the log. Images smaller than the requested size raise unless
    ``allow_upscale`` (never skipped: the whole data set is probably at the wrong size).
    """
    size = request.image_size
    key = {"source": source, "split": split, "size": size, "files": content_fingerprint(paths),
           "preprocess": request.preprocess_key(), "allow_upscale": request.allow_upscale, "decoder": DECODER}

    def decode(path: Path) -> np.ndarray | str:
        try:
            return request.preprocess(load_square(path, size, request.allow_upscale))
        except ImageTooSmallError:
            raise
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
            return f"{path}: {type(error).__name__}: {error}"

    def build(out: np.ndarray) -> dict:
        bad: list[str] = []
        keep: list[int] = []
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
            results = pool.map(decode, paths, chunksize=32)
            for index, result in enumerate(tqdm(results, total=len(paths), desc=f"{source} {split} -> {size}px",
                                                disable=not request.progress or len(paths) < 200, leave=False)):
                if isinstance(result, str):
                    if request.on_bad_image != "skip":
                        raise ValueError(f"unreadable image {result} (set data.on_bad_image=skip to drop such files)")
                    bad.append(result)
                else:
                    out[index] = result
                    keep.append(index)
        if bad:
            log.warning("%s %s: skipped %d unreadable image(s): %s", source, split, len(bad), "; ".join(bad[:20]))
        return {"keep": keep, "skipped": bad}

    images, extra = cached_images(request.cache_dir, key, (len(paths), size, size, 3), build)
    keep = list(extra.get("keep", range(len(paths))))
    if extra.get("skipped"):
        log.warning("%s %s: %d image(s) were skipped as unreadable when cached", source, split, len(extra["skipped"]))
    return images, keep
