"""Data in: ``SkinDataModule`` over every source, captions, preprocessing and the uint8 image cache."""

from datamodules.info import DataInfo
from datamodules.skin import SkinDataModule, SkinDataset

__all__ = ["DataInfo", "SkinDataModule", "SkinDataset"]
