"""data.split_seed: the split of real sources follows it, never the run's seed; the fingerprint follows the data."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from experiments import CONFIG_DIR
from tests.test_data_sources import make_folder, make_ham, module


def test_split_follows_split_seed_not_the_run_seed(tmp_path: Path) -> None:
    root = str(make_ham(tmp_path / "ham", lesions=60))
    built = {}
    for seed, split_seed in ((0, 0), (5, 0), (0, 1)):
        dm = module(tmp_path, source="ham10000", root=root, seed=seed, split_seed=split_seed)
        dm.setup()
        built[seed, split_seed] = (dm.train_set.image_ids, dm.test_set.image_ids, dm.train_set.captions, dm.info.fingerprint)
    assert built[0, 0] == built[5, 0]  # another training seed: the same images, captions and fingerprint
    assert built[0, 0][0] != built[0, 1][0] and built[0, 0][1] != built[0, 1][1]
    assert built[0, 0][3] != built[0, 1][3]


def test_folder_split_follows_split_seed(tmp_path: Path) -> None:
    root = str(make_folder(tmp_path / "folder", count=30, labels=["a", "b"]))
    ids = {}
    for seed, split_seed in ((0, 0), (4, 0), (0, 2)):
        dm = module(tmp_path, source="folder", root=root, seed=seed, split_seed=split_seed)
        dm.setup()
        ids[seed, split_seed] = dm.val_set.image_ids
    assert ids[0, 0] == ids[4, 0] and ids[0, 0] != ids[0, 2]


@pytest.mark.parametrize("source", ["ham10000", "isic", "dermamnist", "folder"])
def test_real_data_configs_default_split_seed_is_not_the_run_seed(source: str) -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(overrides=[f"+data={source}", "+paths=default", "+seed=7"])
    assert cfg.data.seed == 7 and cfg.data.split_seed == 0


def test_a_copy_of_the_data_set_keeps_its_fingerprint_and_an_edited_image_changes_it(tmp_path: Path) -> None:
    import os
    import shutil

    from PIL import Image

    original = make_ham(tmp_path / "ham", lesions=30)
    copy = tmp_path / "copied"
    shutil.copytree(original, copy)  # byte-identical files with new modification times
    for file in copy.rglob("*.jpg"):
        os.utime(file, (1_000_000, 1_000_000))

    def fingerprint(root: Path) -> str:
        dm = module(tmp_path, source="ham10000", root=str(root))
        dm.setup()
        return dm.info.fingerprint

    first = fingerprint(original)
    assert fingerprint(copy) == first
    assert len(list((tmp_path / "cache" / "images").glob("*.npy"))) == 6  # the decode cache follows file stats

    edited = sorted(copy.rglob("*.jpg"))[0]
    Image.new("RGB", Image.open(edited).size, (250, 10, 10)).save(edited)
    assert fingerprint(copy) != first
