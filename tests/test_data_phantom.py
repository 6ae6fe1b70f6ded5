"""The embedded phantom: deterministic pixels, consistent ground truth, attributes visible in the image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules import SkinDataModule
from datamodules.sources.phantom import ATTRIBUTE_CLASSES, CLASS_NAMES, draw, ground_truth
from datamodules.sources.phantom_render import SKIN_PALETTE, render, uci_palette


def small(**kwargs) -> SkinDataModule:
    settings = dict(source="phantom", image_size=16, batch_size=8, num_workers=0, num_train=24, num_val=8, num_test=8, allow_upscale=False, holdout_combos=(), holdout_paraphrases=0, progress=False)
    return SkinDataModule(**{**settings, **kwargs})


def test_same_seed_and_index_give_same_pixels(tmp_path) -> None:
    first = small(cache_dir=tmp_path / "a")
    second = small(cache_dir=tmp_path / "b", num_train=12)  # another split size: a separate render
    first.setup()
    second.setup()
    np.testing.assert_array_equal(first.train_set.table.images[:12], second.train_set.table.images[:12])
    assert first.train_set.captions[:12] == second.train_set.captions[:12]
    np.testing.assert_array_equal(first.val_set.table.images[:], second.val_set.table.images[:])  # val does not shift with num_train
    shuffled = small(cache_dir=tmp_path / "d", seed=1)  # another training seed: the same data set
    shuffled.setup()
    np.testing.assert_array_equal(first.train_set.table.images[:], shuffled.train_set.table.images[:])
    other = small(cache_dir=tmp_path / "c", split_seed=1)
    other.setup()
    assert not np.array_equal(first.train_set.table.images[:], other.train_set.table.images[:])


def test_render_is_a_pure_function_of_seed_and_index() -> None:
    images = []
    for _ in range(2):
        label, attributes, tone, spec, rng = draw(3, "train", 7)
        images.append(render(spec, tone, bool(attributes["hair"]), 24, rng))
    np.testing.assert_array_equal(images[0], images[1])
    assert images[0].shape == (24, 24, 3) and images[0].dtype == np.uint8


def test_ground_truth_is_consistent() -> None:
    truth = ground_truth(0, "train", 1500)
    labels = np.array(truth["labels"])
    attributes = {k: np.array(v) for k, v in truth["attributes"].items()}
    tones = np.array(truth["skin_tone"])
    assert set(labels) == {0, 1, 2} and set(tones) == set(range(1, 7))
    normal = labels == CLASS_NAMES.index("normal")
    for name, values in attributes.items():
        if name == "hair":
            assert set(values) == {0, 1}
            continue
        assert (values[normal] == -1).all(), f"{name} must be unknown on normal skin"
        assert set(values[~normal]) == set(range(len(ATTRIBUTE_CLASSES[name]))), f"every {name} value occurs"
    # Pigmentation is variegated exactly when there is more than one colour; colour names match the count.
    lesion = ~normal
    assert (attributes["pigmentation"][lesion] == (attributes["colours"][lesion] > 0)).all()
    assert all(len(c) == n + 1 for c, n, ok in zip(truth["colour_sets"], attributes["colours"], lesion) if ok)
    # Malignant lesions are more often irregular, asymmetric, large and variegated, not always.
    benign, malignant = labels == 0, labels == 1
    for name, positive in (("border", 1), ("asymmetry", 1), ("diameter", 2), ("pigmentation", 1)):
        rate_benign = (attributes[name][benign] == positive).mean()
        rate_malignant = (attributes[name][malignant] == positive).mean()
        assert rate_benign + 0.15 < rate_malignant < 0.95, name


def dark_fraction(image: np.ndarray) -> float:
    """Share of the central disc clearly darker than the image's skin (its brightest quartile)."""
    gray = image.astype(float).mean(-1)
    size = gray.shape[0]
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    disc = np.hypot(x, y) < size * 0.42
    skin = np.percentile(gray[disc], 80)
    return float((gray[disc] < 0.7 * skin).mean())


def test_attributes_are_visible_in_pixels() -> None:
    """Lesion area grows with the diameter bin and normal skin has none; hair adds dark thin strands."""
    area = {d: [] for d in range(-1, 3)}
    for index in range(160):
        label, attributes, tone, spec, rng = draw(0, "test", index)
        if attributes["hair"]:
            continue
        area[attributes["diameter"]].append(dark_fraction(render(spec, tone, False, 32, rng)))
    means = [np.mean(area[d]) for d in (-1, 0, 1, 2)]
    assert means[0] < 0.05 and means[0] < means[1] < means[2] < means[3], means


def test_batch_contract_and_reference(tmp_path) -> None:
    dm = small(cache_dir=tmp_path, with_reference=True)
    dm.setup()
    dm.setup()  # idempotent
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, 16, 16) and batch["image"].dtype == torch.float32
    assert -1 <= batch["image"].min() and batch["image"].max() <= 1
    assert batch["reference"].shape == batch["image"].shape
    assert batch["label"].dtype == torch.long and batch["skin_tone"].min() >= 1
    assert set(batch["attributes"]) == set(ATTRIBUTE_CLASSES) == set(dm.attribute_names)
    assert len(batch["caption"]) == 8 and all(isinstance(c, str) and c for c in batch["caption"])
    dataset = dm.train_set
    for index in range(len(dataset)):
        other = dataset.reference_index(index)
        assert dataset.labels[other] == dataset.labels[index]
        assert other != index or (dataset.labels == dataset.labels[index]).sum() == 1
    assert dm.info.num_classes == 3 and dm.info.skin_tones and dm.info.fingerprint
    assert "index" not in batch  # only on request


def test_training_items_carry_their_split_index(tmp_path) -> None:
    dm = small(cache_dir=tmp_path, with_index=True, augment=False)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["index"].dtype == torch.long and batch["index"].shape == (8,)
    for row, index in enumerate(batch["index"].tolist()):  # the index names the very image of its row
        torch.testing.assert_close(batch["image"][row], dm.train_set[index]["image"])
        assert batch["caption"][row] == dm.train_set.captions[index]
    assert "index" not in next(iter(dm.val_dataloader()))


def test_uci_palette_matches_the_built_in_one(shared_data) -> None:
    path = shared_data / "uci-skin" / "Skin_NonSkin.txt"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    palette = uci_palette(str(path))
    np.testing.assert_allclose(palette[:5], SKIN_PALETTE[:5], atol=0.01)
    np.testing.assert_allclose(palette[5] * 0.8, SKIN_PALETTE[5], atol=0.01)  # type VI darkened by 20 %


def test_packed_collate_equals_default_collate(tmp_path) -> None:
    from torch.utils.data import default_collate

    from datamodules.skin import collate_batch

    dm = small(cache_dir=tmp_path, augment=False, with_reference=True)
    dm.setup()
    items = [dm.train_set[i] for i in range(6)]
    packed, default = collate_batch(items), default_collate(items)
    torch.testing.assert_close(packed["image"], default["image"])
    for key in ("label", "skin_tone"):
        assert packed[key].is_contiguous() and torch.equal(packed[key], default[key])
    assert all(torch.equal(packed["attributes"][k], default["attributes"][k]) for k in default["attributes"])
    assert packed["caption"] == default["caption"] and packed["reference"].shape == default["reference"].shape
