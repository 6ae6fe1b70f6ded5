"""The real HAM10000 copy in ../shared/data (skipped on a user's clone, where it is absent)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from datamodules import SkinDataModule
from datamodules.sources.base import stratified_group_split
from datamodules.sources.ham10000 import HAM_CLASSES


@pytest.fixture
def ham_root(shared_data):
    root = shared_data / "ham10000"
    if not (root / "HAM10000_metadata.csv").is_file():
        pytest.skip(f"{root}/HAM10000_metadata.csv is absent")
    return root


def test_full_split_is_lesion_grouped_and_stratified(ham_root) -> None:
    table = pd.read_csv(ham_root / "HAM10000_metadata.csv")
    labels = table["dx"].map({c: i for i, c in enumerate(HAM_CLASSES)}).to_numpy()
    split = stratified_group_split(labels, table["lesion_id"].to_numpy(str), (0.1, 0.1), seed=0)
    lesions = [set(table["lesion_id"][split == k]) for k in range(3)]
    assert not (lesions[0] & lesions[1] or lesions[0] & lesions[2] or lesions[1] & lesions[2]), "a lesion in two splits"
    assert abs((split == 1).mean() - 0.1) < 0.01 and abs((split == 2).mean() - 0.1) < 0.01
    for label in range(len(HAM_CLASSES)):  # each diagnosis keeps its share in every split
        shares = [(labels[split == k] == label).mean() for k in range(3)]
        assert max(shares) - min(shares) < 0.02, (HAM_CLASSES[label], shares)
    again = stratified_group_split(labels, table["lesion_id"].to_numpy(str), (0.1, 0.1), seed=0)
    np.testing.assert_array_equal(split, again)
    assert not np.array_equal(split, stratified_group_split(labels, table["lesion_id"].to_numpy(str), (0.1, 0.1), seed=1))


def test_real_subset_loads_without_leakage(ham_root, tmp_path) -> None:
    dm = SkinDataModule(source="ham10000", root=str(ham_root), image_size=32, batch_size=8, num_workers=0, num_train=96, num_val=32,
                        num_test=32, allow_upscale=False, holdout_combos=(), holdout_paraphrases=0, cache_dir=str(tmp_path), progress=False)
    dm.setup()
    sets = (dm.train_set, dm.val_set, dm.test_set)
    assert [len(s) for s in sets] == [96, 32, 32]
    lesions = [set(s.lesion_ids) for s in sets]
    assert not (lesions[0] & lesions[1] or lesions[0] & lesions[2] or lesions[1] & lesions[2])
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, 32, 32)
    images = dm.train_set.table.images[:]
    assert images.std() > 20 and images.mean(axis=(0, 1, 2))[0] > images.mean(axis=(0, 1, 2))[2]  # skin: red above blue
    assert any("confirmed by" in c or "histopatholog" in c for c in dm.train_set.captions)
