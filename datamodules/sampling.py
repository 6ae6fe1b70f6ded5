"""Class-balanced sampling of the training split, tempered between natural and uniform class shares.

With temperature ``T`` each class ``c`` of ``n_c`` training images gets the share

    p_c = n_c^(1 - T) / sum_k n_k^(1 - T)

of every epoch's draws: ``T = 0`` keeps the data's own proportions, ``T = 1`` gives every class
the same share, ``T = 0.5`` the square-root compromise common for long-tailed data. (Per image
the weight is ``n_c^(-T)``.) An epoch has as many draws as the split has images, so epochs and
steps mean what they mean without the sampler.

Draws are stratified, not independent: class ``c`` gets exactly its quota (``p_c`` times the
epoch length, rounded by largest remainder), filled by cycling through fresh shuffles of its
images, so within a class every image appears as often as any other, give or take one. The
order is a function of ``(seed, epoch)`` alone; each DDP rank takes every ``world``-th draw of
it. The training loader resumes it mid-epoch like the natural order (``datamodules.resumable``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from datamodules.resumable import rank_and_world


def class_shares(counts: Sequence[int] | np.ndarray, temperature: float) -> np.ndarray:
    """Share of the draws per class (sums to 1); classes without images get 0."""
    if not 0.0 <= temperature <= 1.0:
        raise ValueError(f"data.sampler_temperature must be in [0, 1] (0 natural, 1 balanced), got {temperature}")
    counts = np.asarray(counts, dtype=np.float64)
    mass = np.where(counts > 0, np.power(np.maximum(counts, 1.0), 1.0 - temperature), 0.0)
    return mass / mass.sum()


def class_quotas(counts: Sequence[int] | np.ndarray, temperature: float, total: int) -> np.ndarray:
    """Draws per class in an epoch of ``total`` draws (largest-remainder rounding of the shares)."""
    exact = class_shares(counts, temperature) * total
    quotas = np.floor(exact).astype(np.int64)
    remainder_order = np.argsort(-(exact - quotas), kind="stable")
    quotas[remainder_order[: total - int(quotas.sum())]] += 1
    return quotas


class ClassBalancedSampler(Sampler[int]):
    """Tempered class-balanced, seeded and rank-sharded order of training indices.

    Args:
        labels: (N,) class index of every training image.
        temperature: 0 natural class shares, 1 equal shares (see the module docstring).
        seed: with the epoch, fixes the order of the draws.
        num_samples: draws per epoch over all ranks; default N.
    """

    def __init__(self, labels: Sequence[int] | np.ndarray, temperature: float, seed: int, num_samples: int | None = None) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        if self.labels.ndim != 1 or len(self.labels) == 0:
            raise ValueError("ClassBalancedSampler needs a non-empty 1-D array of labels")
        self.temperature, self.seed = float(temperature), int(seed)
        self.num_samples = int(num_samples) if num_samples is not None else len(self.labels)
        self.members = [np.flatnonzero(self.labels == c) for c in range(int(self.labels.max()) + 1)]
        self.quotas = class_quotas([len(m) for m in self.members], self.temperature, self.num_samples)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """All ``num_samples`` draws of ``epoch`` (every rank's), in order."""
        rng = np.random.default_rng([self.seed, epoch])
        draws = []
        for members, quota in zip(self.members, self.quotas):
            rounds, rest = divmod(int(quota), len(members)) if len(members) else (0, 0)
            draws += [rng.permutation(members) for _ in range(rounds)]
            draws.append(rng.permutation(members)[:rest])
        return rng.permutation(np.concatenate(draws))

    def _shard(self) -> np.ndarray:
        rank, world = rank_and_world()
        usable = (self.num_samples // world) * world  # ranks stay in step: the uneven tail is dropped
        return self.epoch_order(self.epoch)[rank:usable:world]

    def __iter__(self) -> Iterator[int]:
        return iter(self._shard().tolist())

    def __len__(self) -> int:
        return self.num_samples // rank_and_world()[1]
