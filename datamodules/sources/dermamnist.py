"""DermaMNIST (MedMNIST v2): HAM10000 images at 28/64/128/224 px in one ``.npz`` with official splits.

Files are read from ``root`` (``dermamnist.npz`` for 28 px, ``dermamnist_<size>.npz`` for the
larger MedMNIST+ versions; ``root`` may also be the ``.npz`` itself). The smallest file at least as
large as ``image_size`` is used. Keys: ``{train,val,test}_images`` (N, H, W, 3) uint8 and
``{train,val,test}_labels`` (N, 1). Labels follow the HAM10000 codes in alphabetical order.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.cache import cached_images
from datamodules.info import DataInfo
from datamodules.phrasing import split_frames
from datamodules.sources.base import SPLITS, SourceRequest, SourceTable, SplitTable, check_nonempty, subsample
from datamodules.sources.decode import content_fingerprint
from datamodules.sources.ham10000 import HAM_CLASSES
from datamodules.sources.metadata_captions import FRAMES, metadata_caption
from datamodules.sources.tone_split import split_tones
from datamodules.transforms import ImageTooSmallError, square


def npz_size(path: Path) -> int:
    match = re.search(r"_(\d+)\.npz$", path.name)
    return int(match.group(1)) if match else 28


def find_npz(root: Path, size: int, allow_upscale: bool) -> Path:
    if root.is_file():
        return root
    files = sorted(root.glob("dermamnist*.npz"), key=npz_size)
    if not files:
        raise FileNotFoundError(f"dermamnist: no dermamnist*.npz in {root} (MedMNIST files: dermamnist.npz, dermamnist_64.npz, ...)")
    for path in files:
        if npz_size(path) >= size:
            return path
    if not allow_upscale:
        raise ImageTooSmallError(f"dermamnist: the largest file {files[-1]} holds {npz_size(files[-1])} px images, smaller than "
                                 f"image_size={size}; use a smaller data.image_size or set data.allow_upscale=true")
    return files[-1]


def load(request: SourceRequest) -> SourceTable:
    if request.root is None:
        raise ValueError("data source 'dermamnist' needs the folder (or .npz file) of the MedMNIST files: set data.root=PATH")
    root = Path(request.root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"dermamnist: {root} does not exist")
    path = find_npz(root, request.image_size, request.allow_upscale)
    data = np.load(path)
    expected = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")]
    missing = [k for k in expected if k not in data.files]
    if missing:
        raise ValueError(f"dermamnist: {path} lacks key(s) {missing}; expected {expected}, found {sorted(data.files)}")
    info = DataInfo(source="dermamnist", image_size=request.image_size, class_names=HAM_CLASSES, tone_groups=True)
    training_frames, _ = split_frames(len(FRAMES), request.holdout_paraphrases)
    splits: dict[str, SplitTable] = {}
    for code, split in enumerate(SPLITS):
        labels = np.asarray(data[f"{split}_labels"]).reshape(-1).astype(np.int64)
        bad = np.flatnonzero((labels < 0) | (labels >= len(HAM_CLASSES)))
        if bad.size:
            raise ValueError(f"dermamnist: {path} {split}_labels[{bad[0]}] = {labels[bad[0]]} is not a class index 0-{len(HAM_CLASSES) - 1}")
        rows = subsample(np.arange(len(labels)), request.cap(split), request.split_seed + code)
        if len(rows) == 0:
            raise ValueError(f"dermamnist: the {split} split of {path} is empty")
        size = request.image_size

        def build(out: np.ndarray, split: str = split, rows: np.ndarray = rows) -> None:
            source = data[f"{split}_images"]
            for index, row in enumerate(rows):
                image = np.asarray(source[row])
                image = np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image
                out[index] = request.preprocess(image if image.shape[0] == size else square(Image.fromarray(image), size))

        key = {"source": "dermamnist", "split": split, "size": size, "file": content_fingerprint([path]),
               "rows": hashlib.sha1(rows.tobytes()).hexdigest(), "preprocess": request.preprocess_key()}
        images, _ = cached_images(request.cache_dir, key, (len(rows), size, size, 3), build)
        labels = labels[rows]
        tones = split_tones(request, "dermamnist", split, images)
        inputs = [{"seed": request.split_seed * 1_000_003 + code * 100_003 + int(r), "tone_group": int(g)} for r, g in zip(rows, tones.group)]
        splits[split] = SplitTable(
            images=images, labels=labels, attributes={}, skin_tone=np.zeros(len(rows), np.int64),
            captions=[metadata_caption(info, int(label), {}, 0, frames=training_frames, **kwargs) for label, kwargs in zip(labels, inputs)],
            image_ids=[f"{path.stem}-{split}-{r}" for r in rows], lesion_ids=None, caption_inputs=inputs,
            ita=tones.ita, tone_group=tones.group,
        )
    check_nonempty("dermamnist", splits)
    return SourceTable(info=info, splits=splits)
