"""Class-balanced sampling: class counts per temperature, even reuse, determinism, rank shards, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import datamodules.sampling as sampling
from datamodules import SkinDataModule
from datamodules.resumable import ResumableBatchSampler
from datamodules.sampling import ClassBalancedSampler, class_quotas, class_shares

HAM_LIKE = np.repeat(np.arange(7), [670, 111, 110, 51, 33, 14, 11])  # HAM10000's dx mix at a tenth


def epoch_counts(sampler: ClassBalancedSampler, labels: np.ndarray) -> np.ndarray:
    return np.bincount(labels[list(sampler)], minlength=7)


def test_balanced_epoch_gives_every_class_the_same_count() -> None:
    sampler = ClassBalancedSampler(HAM_LIKE, temperature=1.0, seed=0)
    counts = epoch_counts(sampler, HAM_LIKE)
    assert counts.sum() == len(HAM_LIKE) == len(sampler)
    assert counts.max() - counts.min() <= 1, counts  # 1000 draws over 7 classes: 142 or 143 each
    # The 11 images of the rarest class are each drawn 13 or 14 times, never one image 30 times.
    per_image = np.bincount(list(sampler), minlength=len(HAM_LIKE))[HAM_LIKE == 6]
    assert per_image.min() >= 12 and per_image.max() - per_image.min() <= 1


@pytest.mark.parametrize("temperature", [0.0, 0.5])
def test_temperature_interpolates_between_natural_and_balanced(temperature: float) -> None:
    natural = np.bincount(HAM_LIKE)
    counts = epoch_counts(ClassBalancedSampler(HAM_LIKE, temperature=temperature, seed=3), HAM_LIKE)
    expected = natural ** (1 - temperature) / (natural ** (1 - temperature)).sum() * len(HAM_LIKE)
    assert np.abs(counts - expected).max() < 1, (counts, expected)
    if temperature == 0.0:
        assert (counts == natural).all()
        assert sorted(ClassBalancedSampler(HAM_LIKE, 0.0, seed=3)) == list(range(len(HAM_LIKE)))  # every image once


def test_shares_and_quotas() -> None:
    np.testing.assert_allclose(class_shares([90, 10], 0.5), [0.75, 0.25])
    np.testing.assert_allclose(class_shares([90, 0, 10], 1.0), [0.5, 0.0, 0.5])
    assert class_quotas([5, 3, 2], 1.0, 10).tolist() in ([4, 3, 3], [3, 4, 3], [3, 3, 4])
    with pytest.raises(ValueError, match="sampler_temperature"):
        class_shares([1, 2], 1.5)


def test_order_depends_on_seed_and_epoch_only() -> None:
    first, second = ClassBalancedSampler(HAM_LIKE, 1.0, seed=0), ClassBalancedSampler(HAM_LIKE, 1.0, seed=0)
    assert list(first) == list(second)
    epoch0 = list(first)
    first.set_epoch(1)
    assert list(first) != epoch0
    assert list(ClassBalancedSampler(HAM_LIKE, 1.0, seed=1)) != epoch0


def test_ranks_take_disjoint_shards_of_one_epoch_order(monkeypatch: pytest.MonkeyPatch) -> None:
    sampler = ClassBalancedSampler(HAM_LIKE[:999], 1.0, seed=0)
    order = sampler.epoch_order(0)
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(sampling, "rank_and_world", lambda rank=rank: (rank, 2))
        shards.append(list(sampler))
        assert len(sampler) == 499 == len(shards[-1])
    assert shards[0] == order[0:998:2].tolist() and shards[1] == order[1:998:2].tolist()


def test_resumes_at_the_next_unseen_draw() -> None:
    straight = ClassBalancedSampler(HAM_LIKE, 0.5, seed=7)
    straight.set_epoch(2)
    expected = list(straight)
    interrupted = ResumableBatchSampler(ClassBalancedSampler(HAM_LIKE, 0.5, seed=7), batch_size=1, drop_last=True)
    interrupted.sampler.set_epoch(2)
    iterator = iter(interrupted)
    seen = [next(iterator)[0] for _ in range(321)]
    state = interrupted.state_dict()
    assert state == {"epoch": 2, "batches": 321}
    resumed = ResumableBatchSampler(ClassBalancedSampler(HAM_LIKE, 0.5, seed=7), batch_size=1, drop_last=True)
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(2)  # Lightning sets the restored epoch again: the position must survive it
    assert seen + [batch[0] for batch in resumed] == expected
    assert resumed.state_dict() == {"epoch": 3, "batches": 0}  # a finished epoch resumes at the next one


def phantom_module(tmp_path, **kwargs) -> SkinDataModule:
    settings = dict(source="phantom", image_size=8, batch_size=30, num_workers=0, num_train=300, num_val=10, num_test=10,
                    allow_upscale=False, holdout_combos=(), holdout_paraphrases=0, cache_dir=str(tmp_path), progress=False)
    return SkinDataModule(**{**settings, **kwargs})


def test_data_module_balances_the_phantom_training_loader(tmp_path) -> None:
    dm = phantom_module(tmp_path, sampler="balanced")
    dm.setup()
    natural = np.bincount(dm.train_set.labels, minlength=3)
    assert natural.max() > 1.5 * natural.min()  # the phantom's diagnoses are unbalanced (0.5 / 0.3 / 0.2)
    loader = dm.train_dataloader()
    labels = torch.cat([batch["label"] for batch in loader]).numpy()
    assert np.bincount(labels, minlength=3).tolist() == [100, 100, 100]
    # The loader's resume protocol restores a balanced epoch mid-way.
    first = dm.train_dataloader()
    iterator = iter(first)
    seen = [next(iterator)["label"] for _ in range(3)]
    state = first.state_dict()
    resumed = dm.train_dataloader()
    resumed.load_state_dict(state)
    rest = torch.cat(seen + [batch["label"] for batch in resumed]).numpy()
    np.testing.assert_array_equal(rest, labels)
    with pytest.raises(ValueError, match="data.sampler must be"):
        phantom_module(tmp_path, sampler="uniform")
    with pytest.raises(ValueError, match="sampler_temperature"):
        phantom_module(tmp_path, sampler="balanced", sampler_temperature=-0.1)
