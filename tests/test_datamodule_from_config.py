"""SkinDataModule.from_config: the data module a run builds, from Python, with clear errors."""

from __future__ import annotations

import pytest

from datamodules import SkinDataModule


def test_builds_the_shipped_data_config_with_overrides() -> None:
    datamodule = SkinDataModule.from_config("phantom", num_train=48, num_val=16, num_test=16, image_size=16, num_workers=0)
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].shape == (32, 3, 16, 16)  # the quick budget's batch size, the override's image size
    assert len(datamodule.val_set) == 16


def test_unknown_names_keys_and_missing_root_fail_in_one_line() -> None:
    with pytest.raises(ValueError, match=r"unknown data keys \['nmu_train'\]; valid: .*num_train"):
        SkinDataModule.from_config("phantom", nmu_train=3)
    with pytest.raises(ValueError, match="no data config 'ham1000'; choose one of .*ham10000"):
        SkinDataModule.from_config("ham1000")
    with pytest.raises(ValueError, match=r"give root=\.\.\."):
        SkinDataModule.from_config("ham10000")
