"""data.train_fraction: a seeded, stratified, nested share of the training split that the data fingerprint sees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datamodules import SkinDataModule
from datamodules.sources.base import stratified_fraction
from evaluation.data import split_hash


def _module(cache: Path, **kwargs) -> SkinDataModule:
    settings = dict(source="phantom", image_size=16, batch_size=8, num_workers=0, num_train=120, num_val=16, num_test=16,
                    allow_upscale=False, holdout_combos=(), holdout_paraphrases=0, progress=False, cache_dir=str(cache))
    module = SkinDataModule(**{**settings, **kwargs})
    module.setup()
    return module


def test_stratified_fraction_keeps_every_class_and_nests() -> None:
    labels = np.array([0] * 50 + [1] * 30 + [2] * 3)
    tenth, quarter = stratified_fraction(labels, 0.1, seed=0), stratified_fraction(labels, 0.25, seed=0)
    assert np.bincount(labels[tenth]).tolist() == [5, 3, 1]  # round(0.1 n_c), at least one of the rare class
    assert np.bincount(labels[quarter]).tolist() == [12, 8, 1]  # round(12.5) = 12 (banker's rounding), round(7.5) = 8
    assert set(tenth) <= set(quarter) and list(tenth) == sorted(tenth)
    assert np.array_equal(stratified_fraction(labels, 0.1, seed=0), tenth)
    assert not np.array_equal(stratified_fraction(labels, 0.1, seed=1), tenth)
    assert np.array_equal(stratified_fraction(labels, 1.0, seed=0), np.arange(len(labels)))
    with pytest.raises(ValueError, match=r"data.train_fraction must be in \(0, 1\]"):
        stratified_fraction(labels, 0.0, seed=0)


def test_train_fraction_changes_the_training_split_and_fingerprint_only(tmp_path: Path) -> None:
    whole, quarter = _module(tmp_path), _module(tmp_path, train_fraction=0.25)
    assert len(quarter.train_set) == pytest.approx(0.25 * len(whole.train_set), abs=3)
    assert set(quarter.train_set.image_ids) <= set(whole.train_set.image_ids)
    assert quarter.info.fingerprint != whole.info.fingerprint
    assert _module(tmp_path, train_fraction=0.25).info.fingerprint == quarter.info.fingerprint  # a fixed subset
    for split in ("val_set", "test_set"):
        assert split_hash(getattr(quarter, split)) == split_hash(getattr(whole, split))
    assert _module(tmp_path, train_fraction=1.0).info.fingerprint == whole.info.fingerprint  # the default changes nothing
    with pytest.raises(ValueError, match="train_fraction"):
        _module(tmp_path, train_fraction=1.5)
