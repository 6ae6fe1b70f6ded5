"""Held-out prompts: combinations out of the training split, caption frames out of training captions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from datamodules import SkinDataModule
from datamodules.captions import frames_of, parse_caption, template_of, vocabulary_for
from datamodules.holdout import matches
from tests.helpers import compose_config
from tests.test_data_sources import make_folder, make_ham, module

COMBO = {"diagnosis": "malignant", "skin_tone": 6, "hair": True}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("holdout_cache")  # one rendering of the phantom for the whole file


def phantom(cache: Path, **kwargs) -> SkinDataModule:
    settings = dict(source="phantom", image_size=8, num_workers=0, num_train=600, num_val=300, num_test=300, allow_upscale=False, holdout_combos=(), holdout_paraphrases=0,
                    cache_dir=str(cache), progress=False)
    dm = SkinDataModule(**{**settings, **kwargs})
    dm.setup()
    return dm


def is_combo(conditions: dict, row: int) -> bool:
    return (int(conditions["label"][row]) == 1 and int(conditions["skin_tone"][row]) == 6
            and int(conditions["attributes"]["hair"][row]) == 1)


def test_held_out_combination_leaves_the_training_split_only(cache: Path) -> None:
    plain, held = phantom(cache), phantom(cache, holdout_combos=[COMBO])
    combos = held.holdout.combos
    assert combos == ({"label": 1, "skin_tone": 6, "hair": 1},)
    assert matches(plain.train_set.table, combos).sum() > 0  # the combination occurs in the data
    assert matches(held.train_set.table, combos).sum() == 0  # no training row matches it
    assert len(held.train_set) == len(plain.train_set) - matches(plain.train_set.table, combos).sum()
    assert held.val_set.image_ids == plain.val_set.image_ids and held.test_set.image_ids == plain.test_set.image_ids
    # The remaining training rows are the same images with the same pixels and captions.
    kept = held.train_set.image_ids
    index = {image_id: i for i, image_id in enumerate(plain.train_set.image_ids)}
    assert torch.equal(held.val_set.image(0), plain.val_set.image(0))
    for row in (0, len(kept) // 2, len(kept) - 1):
        original = index[kept[row]]
        np.testing.assert_array_equal(held.train_set.table.images[row], plain.train_set.table.images[original])
        assert held.train_set.captions[row] == plain.train_set.captions[original]
    batch = next(iter(held.train_dataloader()))
    assert batch["image"].shape[0] == held.batch_size


def test_combo_conditions_all_match_and_come_from_val_or_test(cache: Path) -> None:
    dm = phantom(cache, holdout_combos=[COMBO])
    for split in ("val", "test"):
        conditions = dm.sample_conditions(64, seed=1, split=split, holdout="combo")
        assert all(is_combo(conditions, row) for row in range(64))
        assert set(conditions["caption"]) <= set(dm.table.splits[split].captions)  # their own (training-frame) captions
    with pytest.raises(ValueError, match="not in the training split"):
        dm.sample_conditions(4, seed=0, holdout="combo")
    with pytest.raises(ValueError, match="data.holdout_combos"):
        phantom(cache).sample_conditions(4, seed=0, split="val", holdout="combo")


def test_balanced_conditions_prompt_every_diagnosis_equally_often(cache: Path) -> None:
    dm = phantom(cache)
    natural = dm.sample_conditions(300, seed=2, split="val")
    balanced = dm.sample_conditions(301, seed=2, split="val", holdout="balanced")
    counts = torch.bincount(balanced["label"], minlength=3)
    assert counts.sum() == 301 and counts.max() - counts.min() <= 1  # 100 or 101 each
    natural_counts = torch.bincount(natural["label"], minlength=3)
    assert natural_counts.max() - natural_counts.min() > 20  # the phantom's natural mix is not balanced
    table = dm.table.splits["val"]
    rows = {caption: i for i, caption in enumerate(table.captions)}
    for caption, label in zip(balanced["caption"][:50], balanced["label"][:50]):
        assert int(table.labels[rows[caption]]) == int(label)  # each prompt is a real row's own caption
    again = dm.sample_conditions(301, seed=2, split="val", holdout="balanced")
    assert again["caption"] == balanced["caption"]


def test_no_training_caption_uses_a_held_out_frame(cache: Path) -> None:
    dm = phantom(cache, holdout_paraphrases=2)
    vocabulary = vocabulary_for(dm.info)
    training, held_out = frames_of(dm.info, 2)
    assert len(held_out) == 2
    for dataset in (dm.train_set, dm.val_set, dm.test_set):  # stored captions: training frames only
        used = {template_of(caption, vocabulary) for caption in dataset.captions}
        assert used <= set(training) and len(used) == len(training)
    prompts = dm.sample_conditions(200, seed=3, holdout="paraphrase")
    assert {template_of(caption, vocabulary) for caption in prompts["caption"]} == set(held_out)
    for row in range(200):  # the held-out phrasing still describes the row it was drawn for
        parsed = parse_caption(prompts["caption"][row], dm.info)
        assert parsed["label"] == int(prompts["label"][row]) and parsed["skin_tone"] == int(prompts["skin_tone"][row])
    same_rows = dm.sample_conditions(200, seed=3)  # the same draw of rows, with their training captions
    assert torch.equal(same_rows["label"], prompts["label"]) and same_rows["caption"] != prompts["caption"]
    with pytest.raises(ValueError, match="data.holdout_paraphrases"):
        phantom(cache).sample_conditions(4, seed=0, holdout="paraphrase")
    with pytest.raises(ValueError, match="holdout must be"):
        dm.sample_conditions(4, seed=0, holdout="prompts")


def test_ham10000_paraphrases_and_combos(tmp_path: Path) -> None:
    root = str(make_ham(tmp_path / "ham", lesions=60))
    dm = module(tmp_path, source="ham10000", root=root, holdout_paraphrases=1, holdout_combos=[{"diagnosis": "nv", "sex": "female"}])
    dm.setup()
    vocabulary = vocabulary_for(dm.info)
    assert {template_of(c, vocabulary) for c in dm.train_set.captions} <= set(frames_of(dm.info, 1)[0])
    assert not matches(dm.train_set.table, dm.holdout.combos).any()
    prompts = dm.sample_conditions(50, seed=0, split="val", holdout="paraphrase")
    assert {template_of(c, vocabulary) for c in prompts["caption"]} == {6}
    with pytest.raises(ValueError, match="from its files"):
        module(tmp_path, source="folder", root=str(make_folder(tmp_path / "folder")), holdout_paraphrases=1).setup()


def test_fingerprint_changes_with_holdout_settings(cache: Path) -> None:
    fingerprints = {
        "none": phantom(cache).info.fingerprint,
        "combo": phantom(cache, holdout_combos=[COMBO]).info.fingerprint,
        "other combo": phantom(cache, holdout_combos=[{"diagnosis": "benign", "border": "irregular"}]).info.fingerprint,
        "paraphrase": phantom(cache, holdout_paraphrases=1).info.fingerprint,
        "paraphrases": phantom(cache, holdout_paraphrases=2).info.fingerprint,
        "sampler": phantom(cache, sampler="balanced").info.fingerprint,
    }
    assert fingerprints["sampler"] == fingerprints["none"]  # the sampler does not change the data
    del fingerprints["sampler"]
    assert len(set(fingerprints.values())) == len(fingerprints), fingerprints
    same = phantom(cache, holdout_combos=[{"hair": "present", "diagnosis": "malignant", "skin_tone": "VI"}])
    assert same.info.fingerprint == fingerprints["combo"]  # the same combination written another way


@pytest.mark.parametrize("combo, message", [
    ({"diagnosis": "melanoma"}, "diagnosis='melanoma' is not one of"),
    ({"hair": "yes"}, "or true / false"),
    ({"diameter": True}, "diameter=True"),
    ({"skin_tone": 7}, "Fitzpatrick type 1-6"),
    ({"colour": 2}, "unknown field 'colour'"),
])
def test_bad_combinations_are_named(cache: Path, combo: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        phantom(cache, holdout_combos=[combo])


def test_shipped_configs_carry_the_holdout_keys() -> None:
    cfg = compose_config("data.holdout_combos=[{diagnosis: malignant, skin_tone: 6, hair: true}]", "data.holdout_paraphrases=2",
                         "data.num_train=40", "data.num_val=40", "data.num_test=40", "data.image_size=8")
    dm = instantiate(cfg.data, progress=False, num_workers=0)
    dm.setup()
    assert dm.holdout.combos == ({"label": 1, "skin_tone": 6, "hair": 1},) and dm.holdout.paraphrases == 2
