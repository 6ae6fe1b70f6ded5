"""Image files that decoded silently wrong: 16-bit PNGs, PNGs with fewer rows than promised, decompression bombs."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.transforms import TruncatedImageError, load_square
from tests.test_data_sources import make_folder, module


def _sixteen_bit_gradient(path: Path) -> np.ndarray:
    values = np.tile(np.linspace(0, 65535, 32), (32, 1)).astype(np.uint16)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    return np.round(values / 257.0)


def _promise_more_rows(path: Path, rows: int) -> None:
    data = bytearray(path.read_bytes())
    struct.pack_into(">I", data, 20, rows)  # IHDR height
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


def test_a_16_bit_png_keeps_its_values(tmp_path: Path) -> None:
    expected = _sixteen_bit_gradient(tmp_path / "g.png")
    decoded = load_square(tmp_path / "g.png", 32)
    assert decoded.shape == (32, 32, 3) and np.abs(decoded[..., 0].astype(float) - expected).max() <= 1  # not all white


def test_a_16_bit_png_in_a_folder_data_set(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "set", count=10, size=32)
    _sixteen_bit_gradient(root / "img_000.png")
    dm = module(tmp_path, source="folder", root=str(root), image_size=16)
    dm.setup()
    images = np.concatenate([np.asarray(s.table.images[:]) for s in (dm.train_set, dm.val_set, dm.test_set)])
    assert not (images == 255).all(axis=(1, 2, 3)).any()  # no image decoded to pure white


def test_a_png_with_fewer_rows_than_its_header_fails_or_is_skipped(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "set", count=10, size=32)
    _promise_more_rows(root / "img_003.png", 64)
    with pytest.raises(ValueError, match="img_003.png holds .* of the .* bytes of pixel rows its header promises"):
        module(tmp_path, source="folder", root=str(root)).setup()
    skipping = module(tmp_path, source="folder", root=str(root), on_bad_image="skip")
    skipping.setup()
    assert len(skipping.train_set) + len(skipping.val_set) + len(skipping.test_set) == 9
    with pytest.raises(TruncatedImageError):
        load_square(root / "img_003.png", 16)


def test_a_decompression_bomb_names_its_file_and_can_be_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_folder(tmp_path / "set", count=10, size=24)
    Image.fromarray(np.zeros((80, 80, 3), dtype=np.uint8)).save(root / "img_005.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 80 x 80 is over twice the limit: Pillow's bomb error
    with pytest.raises(ValueError, match="img_005.png has more pixels than Pillow's safety limit"):
        module(tmp_path, source="folder", root=str(root)).setup()
    skipping = module(tmp_path, source="folder", root=str(root), on_bad_image="skip")
    skipping.setup()
    assert len(skipping.train_set) + len(skipping.val_set) + len(skipping.test_set) == 9


def test_a_csv_field_over_the_csv_limit_names_file_and_row(tmp_path: Path) -> None:
    import csv

    root = make_folder(tmp_path / "set", count=10, size=24)
    lines = (root / "captions.csv").read_text().splitlines()
    lines[3] = f'img_002.png,"{"x" * (csv.field_size_limit() + 10)}"'
    (root / "captions.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"captions.csv row 4: field larger than field limit"):
        module(tmp_path, source="folder", root=str(root)).setup()


def test_one_diagnosis_fails_before_training_a_label_model_and_a_text_model_is_evaluated(tmp_path: Path) -> None:
    from experiments.run import run
    from tests.helpers import compose_config, smoke_overrides

    one = make_folder(tmp_path / "one", count=60, size=24, labels=["nv"])
    with pytest.raises(ValueError, match=r"exp=ddpm_class conditions on the diagnosis, but the training split holds only \['nv'\]"):
        run(compose_config(*smoke_overrides(tmp_path / "label", "ddpm_class", "data=folder", f"data.root={one}")))
    assert not (tmp_path / "label" / "config.yaml").exists()
    unlabelled = make_folder(tmp_path / "plain", count=60, size=24)
    metrics = run(compose_config(*smoke_overrides(tmp_path / "text", "hybrid", "data=folder", f"data.root={unlabelled}")))
    assert (tmp_path / "text" / "metrics.json").is_file() and metrics["cond_accuracy"]["diagnosis"] is None


def _interlaced_png(path: Path, width: int, height: int, rows_held: float) -> None:
    """An 8-bit RGB Adam7 PNG whose pixel data holds ``rows_held`` of what its header promises (Pillow writes no Adam7)."""
    from datamodules.transforms import ADAM7

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    size = sum(-(-(height - y0) // dy) * (1 + 3 * -(-(width - x0) // dx)) for x0, y0, dx, dy in ADAM7)
    pixels = bytes(int(size * rows_held))  # filter 0, black pixels: only the length matters
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(pixels)) + chunk(b"IEND", b""))


def test_an_interlaced_png_short_of_its_passes_is_refused(tmp_path: Path) -> None:
    _interlaced_png(tmp_path / "whole.png", 16, 16, 1.0)
    assert load_square(tmp_path / "whole.png", 16).shape == (16, 16, 3)
    _interlaced_png(tmp_path / "short.png", 16, 16, 0.5)
    with pytest.raises(TruncatedImageError, match="short.png holds"):
        load_square(tmp_path / "short.png", 16)


def test_evaluate_and_generate_read_images_as_the_data_sets_do(tmp_path: Path) -> None:
    from experiments.evaluate import load_folder
    from experiments.generate import load_reference

    folder = tmp_path / "fake"
    folder.mkdir()
    expected = _sixteen_bit_gradient(folder / "a.png")
    names, images = load_folder(folder)
    pixels = (images[0, 0].numpy() + 1) * 127.5
    assert names == ["a.png"] and np.abs(pixels - expected).max() <= 1  # was all white (255)
    assert np.abs((load_reference(folder / "a.png", 32)[0, 0].numpy() + 1) * 127.5 - expected).max() <= 1
    (folder / "a.png").unlink()
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(folder / "b.png")
    _promise_more_rows(folder / "b.png", 64)
    with pytest.raises(ValueError, match="b.png holds .* bytes of pixel rows"):
        load_folder(folder)
