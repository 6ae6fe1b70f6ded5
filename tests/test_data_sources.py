"""Every file-based source on tiny fixtures: the batch contract, splits, captions and bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from datamodules import SkinDataModule
from datamodules.captions import parse_caption, template_of, vocabulary_for
from datamodules.sources.ham10000 import HAM_CLASSES
from datamodules.transforms import ImageTooSmallError
from experiments import CONFIG_DIR
from PIL import Image

BATCH_KEYS = {"image", "caption", "label", "attributes", "skin_tone", "ita", "tone_group"}


# ---- tiny data sets in every supported format --------------------------------------------------

HAM_COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]


def noise_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def make_ham(root: Path, lesions: int = 30, size: tuple[int, int] = (40, 30), seed: int = 0) -> Path:
    """HAM10000 layout: JPEGs split over two part folders, 1-3 images per lesion, metadata CSV."""
    rng = np.random.default_rng(seed)
    classes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    rows = []
    for lesion in range(lesions):
        dx = classes[lesion % len(classes)] if lesion < 14 else "nv"
        for k in range(int(rng.integers(1, 4))):
            image_id = f"ISIC_{lesion:04d}{k}"
            folder = root / ("HAM10000_images_part_1" if lesion % 2 else "HAM10000_images_part_2")
            folder.mkdir(parents=True, exist_ok=True)
            noise_image(rng, *size).save(folder / f"{image_id}.jpg")
            rows.append({"lesion_id": f"HAM_{lesion:04d}", "image_id": image_id, "dx": dx,
                         "dx_type": ["histo", "follow_up", "consensus"][lesion % 3],
                         "age": [45.0, np.nan, 70.0][k % 3], "sex": ["male", "female", "unknown"][lesion % 3],
                         "localization": ["back", "face", "unknown", "lower extremity"][lesion % 4]})
    pd.DataFrame(rows, columns=HAM_COLUMNS).to_csv(root / "HAM10000_metadata.csv", index=False)
    return root


def make_dermamnist(root: Path, size: int = 28, counts: tuple[int, int, int] = (20, 8, 8), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), counts):
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % 7).reshape(-1, 1).astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    name = "dermamnist.npz" if size == 28 else f"dermamnist_{size}.npz"
    np.savez(root / name, **arrays)
    return root


def make_folder(root: Path, count: int = 20, size: int = 24, labels: list | None = None, seed: int = 0, suffix: str = ".png") -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        name = f"img_{index:03d}{suffix}"
        noise_image(rng, size, size).save(root / name)
        row = {"file": name, "caption": f"dermoscopic image number {index}"}
        if labels is not None:
            row["label"] = labels[index % len(labels)]
        rows.append(row)
    pd.DataFrame(rows).to_csv(root / "captions.csv", index=False)
    return root



def module(tmp_path: Path, **kwargs) -> SkinDataModule:
    settings = dict(image_size=16, batch_size=4, cache_dir=tmp_path / "cache", progress=False, val_fraction=0.2, test_fraction=0.2,
                    num_workers=0, num_train=None, num_val=None, num_test=None, allow_upscale=False, holdout_combos=(), holdout_paraphrases=0)
    return SkinDataModule(**{**settings, **kwargs})


def check_batch(dm: SkinDataModule, size: int = 16) -> dict:
    dm.setup()
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        assert set(batch) == BATCH_KEYS
        count = batch["image"].shape[0]
        assert batch["image"].shape[1:] == (3, size, size) and batch["image"].dtype == torch.float32
        assert -1 <= batch["image"].min() and batch["image"].max() <= 1
        assert batch["label"].shape == (count,) and batch["label"].dtype == torch.long
        assert ((batch["label"] >= 0) & (batch["label"] < dm.num_classes)).all()
        assert batch["skin_tone"].shape == (count,)
        assert batch["ita"].shape == (count,) and batch["ita"].dtype == torch.float32
        assert batch["tone_group"].shape == (count,) and ((batch["tone_group"] >= 0) & (batch["tone_group"] <= 6)).all()
        known = batch["tone_group"] > 0
        assert torch.isfinite(batch["ita"][known]).all()  # a tone group is only given to a read (or given) ITA
        assert set(batch["attributes"]) == set(dm.attribute_names)
        for name, values in batch["attributes"].items():
            assert values.dtype == torch.long and ((values >= -1) & (values < len(dm.info.attribute_classes[name]))).all()
        assert len(batch["caption"]) == count and all(isinstance(c, str) and c for c in batch["caption"])
    conditions = dm.sample_conditions(5, seed=1)
    assert len(conditions["caption"]) == 5 and conditions["label"].shape == (5,)
    return batch


def test_ham10000_fixture(tmp_path: Path) -> None:
    dm = module(tmp_path, source="ham10000", root=str(make_ham(tmp_path / "ham")))
    check_batch(dm)
    assert dm.class_names == HAM_CLASSES
    assert set(dm.attribute_names) == {"localization", "sex", "age", "dx_type"}
    lesions = [set(s.lesion_ids) for s in (dm.train_set, dm.val_set, dm.test_set)]
    assert not (lesions[0] & lesions[1] or lesions[0] & lesions[2] or lesions[1] & lesions[2])
    frames = [template_of(caption, vocabulary_for(dm.info)) for caption in dm.train_set.captions]
    assert None not in frames and len(set(frames)) > 1  # every caption written by one known frame, several frames used
    assert "unknown" not in " ".join(dm.train_set.captions)  # unknown metadata is left out
    # Same seed, same split; the cache is reused on the second build.
    again = module(tmp_path, source="ham10000", root=str(tmp_path / "ham"))
    again.setup()
    assert again.train_set.image_ids == dm.train_set.image_ids


def test_ham10000_caption_round_trip(tmp_path: Path) -> None:
    dm = module(tmp_path, source="ham10000", root=str(make_ham(tmp_path / "ham")))
    dm.setup()
    info = dm.info
    attributes = {"localization": info.attribute_classes["localization"].index("back"), "sex": 1, "age": 2, "dx_type": 0}
    caption = dm.caption_for(HAM_CLASSES.index("mel"), attributes, 0, seed=3)
    assert "melanoma" in caption and "back" in caption
    parsed = parse_caption(caption, info)
    assert parsed == {"label": HAM_CLASSES.index("mel"), "attributes": attributes}
    assert parse_caption("dermoscopic image of a melanocytic nevus on the back of a 45-year-old man, confirmed by histopathology", info) == {
        "label": HAM_CLASSES.index("nv"),
        "attributes": {"localization": attributes["localization"], "sex": info.attribute_classes["sex"].index("male"),
                       "age": 2, "dx_type": info.attribute_classes["dx_type"].index("histo")},
    }


def test_phantom_caption_round_trip() -> None:
    dm = SkinDataModule(source="phantom", num_workers=0, num_train=8, num_val=4, num_test=4, allow_upscale=False, holdout_combos=(), holdout_paraphrases=0, image_size=8, progress=False)
    dm.setup()
    rng = np.random.default_rng(0)
    for seed in range(40):
        label = int(rng.integers(2))
        attributes = {name: int(rng.integers(len(v))) for name, v in dm.info.attribute_classes.items()}
        attributes["pigmentation"] = int(attributes["colours"] > 0)
        tone = int(rng.integers(1, 7))
        caption = dm.caption_for(label, attributes, tone, seed=seed)
        assert dm.parse_caption(caption) == {"label": label, "attributes": attributes, "skin_tone": tone}, caption
    assert dm.parse_caption("normal skin on Fitzpatrick type II skin") == {"label": 2, "skin_tone": 2}
    assert dm.parse_caption("a lesion") == {}


def test_isic_takes_classes_from_the_csv(tmp_path: Path) -> None:
    root = make_ham(tmp_path / "isic")
    table = pd.read_csv(root / "HAM10000_metadata.csv")
    table.loc[table.dx == "vasc", "dx"] = "scc"
    table.to_csv(root / "metadata.csv", index=False)
    (root / "HAM10000_metadata.csv").unlink()
    dm = module(tmp_path, source="isic", root=str(root))
    check_batch(dm)
    assert "scc" in dm.class_names and "vasc" not in dm.class_names


def test_dermamnist_fixture(tmp_path: Path) -> None:
    root = make_dermamnist(tmp_path / "medmnist")
    dm = module(tmp_path, source="dermamnist", root=str(root))
    check_batch(dm)
    assert len(dm.train_set) == 20 and dm.num_classes == 7 and dm.val_set.lesion_ids is None
    up = module(tmp_path, source="dermamnist", root=str(root), image_size=32)
    with pytest.raises(ImageTooSmallError, match="allow_upscale"):
        up.setup()
    check_batch(module(tmp_path, source="dermamnist", root=str(root), image_size=32, allow_upscale=True, holdout_combos=(), holdout_paraphrases=0), size=32)


def test_folder_with_and_without_labels(tmp_path: Path) -> None:
    dm = module(tmp_path, source="folder", root=str(make_folder(tmp_path / "named", labels=["nv", "mel"])))
    check_batch(dm)
    assert dm.class_names == ("mel", "nv")
    plain = module(tmp_path, source="folder", root=str(make_folder(tmp_path / "plain")))
    check_batch(plain)
    assert plain.class_names == ("unknown",) and plain.train_set.captions[0].startswith("dermoscopic image number")
    fixed = module(tmp_path, source="folder", root=str(make_folder(tmp_path / "ints", labels=[0, 1, 2])), class_names=["a", "b", "c"])
    check_batch(fixed)
    assert fixed.class_names == ("a", "b", "c")


def test_folder_split_column(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "split", count=9)
    table = pd.read_csv(root / "captions.csv")
    table["split"] = ["train"] * 5 + ["val"] * 2 + ["test"] * 2
    table.to_csv(root / "captions.csv", index=False)
    dm = module(tmp_path, source="folder", csv=str(root / "captions.csv"))
    dm.setup()
    assert [len(dm.train_set), len(dm.val_set), len(dm.test_set)] == [5, 2, 2]


# ---- bad input: each gives an error naming the file, row or key -------------------------------


def test_unknown_source_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="ham10000"):
        SkinDataModule(source="nope", num_workers=0, num_train=None, num_val=None, num_test=None, allow_upscale=False, holdout_combos=(), holdout_paraphrases=0)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        module(tmp_path, source="ham10000", root=str(tmp_path / "absent")).setup()
    with pytest.raises(ValueError, match="data.root"):
        module(tmp_path, source="ham10000").setup()


def test_missing_csv_columns(tmp_path: Path) -> None:
    root = make_ham(tmp_path / "ham")
    pd.read_csv(root / "HAM10000_metadata.csv").drop(columns=["lesion_id"]).to_csv(root / "HAM10000_metadata.csv", index=False)
    with pytest.raises(ValueError, match=r"lesion_id.*expected \['image_id', 'lesion_id', 'dx'\]"):
        module(tmp_path, source="ham10000", root=str(root)).setup()
    folder = make_folder(tmp_path / "folder")
    pd.read_csv(folder / "captions.csv").rename(columns={"caption": "text"}).to_csv(folder / "captions.csv", index=False)
    with pytest.raises(ValueError, match=r"\['caption'\]"):
        module(tmp_path, source="folder", root=str(folder)).setup()


def test_unknown_labels(tmp_path: Path) -> None:
    root = make_ham(tmp_path / "ham")
    table = pd.read_csv(root / "HAM10000_metadata.csv")
    table.loc[3, "dx"] = "xyz"
    table.to_csv(root / "HAM10000_metadata.csv", index=False)
    with pytest.raises(ValueError, match=r"row 5 .*'xyz'"):
        module(tmp_path, source="ham10000", root=str(root)).setup()
    folder = make_folder(tmp_path / "folder", labels=["nv", "mel", "what"])
    with pytest.raises(ValueError, match="unknown label 'what'"):
        module(tmp_path, source="folder", root=str(folder), class_names=["nv", "mel"]).setup()
    npz = make_dermamnist(tmp_path / "mnist")
    arrays = dict(np.load(npz / "dermamnist.npz"))
    arrays["val_labels"][2] = 9
    np.savez(npz / "dermamnist.npz", **arrays)
    with pytest.raises(ValueError, match=r"val_labels\[2\] = 9"):
        module(tmp_path, source="dermamnist", root=str(npz)).setup()


def test_missing_npz_keys(tmp_path: Path) -> None:
    root = tmp_path / "mnist"
    root.mkdir()
    np.savez(root / "dermamnist.npz", train_images=np.zeros((2, 28, 28, 3), np.uint8))
    with pytest.raises(ValueError, match="train_labels"):
        module(tmp_path, source="dermamnist", root=str(root)).setup()


def test_corrupt_image_error_and_skip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_folder(tmp_path / "folder", count=20)
    (root / "img_007.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="img_007.png"):
        module(tmp_path, source="folder", root=str(root)).setup()
    with caplog.at_level(logging.WARNING):
        dm = module(tmp_path, source="folder", root=str(root), on_bad_image="skip")
        dm.setup()
    ids = dm.train_set.image_ids + dm.val_set.image_ids + dm.test_set.image_ids
    assert len(ids) == 19 and "img_007.png" not in ids
    assert "skipped 1" in caplog.text and "img_007.png" in caplog.text


def test_empty_split(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "folder", count=3)
    with pytest.raises(ValueError, match="empty"):
        module(tmp_path, source="folder", root=str(root), val_fraction=0.0).setup()


def test_images_smaller_than_requested(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "folder", count=12, size=8)
    with pytest.raises(ImageTooSmallError, match=r"img_\d+\.png is 8x8.*allow_upscale"):
        module(tmp_path, source="folder", root=str(root)).setup()
    check_batch(module(tmp_path, source="folder", root=str(root), allow_upscale=True, holdout_combos=(), holdout_paraphrases=0))


def test_preprocessing_changes_the_cache(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "folder", count=12, size=24, suffix=".jpg")
    plain = module(tmp_path, source="folder", root=str(root), augment=False)
    processed = module(tmp_path, source="folder", root=str(root), augment=False, denoise_sigma=1.0, color_constancy=True)
    plain.setup()
    processed.setup()
    a, b = plain.train_set.table.images[:], processed.train_set.table.images[:]
    assert a.shape == b.shape and a.std() > b.std()  # denoising smooths random noise images


@pytest.mark.parametrize("source", ["phantom", "ham10000", "isic", "dermamnist", "folder"])
def test_data_configs_compose(source: str, tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(overrides=[f"+data={source}", "+paths=default", "+seed=3", f"paths.cache_dir={tmp_path}"])
    assert cfg.data._target_ == "datamodules.SkinDataModule" and cfg.data.source == source
    assert cfg.data.seed == 3 and cfg.data.cache_dir == str(tmp_path)
    if source == "phantom":
        dm = instantiate(cfg.data, num_train=8, num_val=4, num_test=4, image_size=8, num_workers=0, progress=False)
        check_batch(dm, size=8)
