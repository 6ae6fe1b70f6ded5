"""Training batches that resume mid-epoch: same shuffle, same shard, next unseen batch.

The training loader is torchdata's ``StatefulDataLoader``. Lightning saves a loader's
``state_dict`` in the checkpoint when it has one and hands it back on resume; the loader in turn
saves the state of its batch sampler, :class:`ResumableBatchSampler`, at the batch it last handed
out (with worker processes too: torchdata pairs each batch with the sampler state at its dispatch).
The sampler shards across DDP ranks itself, so the trainer runs with
``use_distributed_sampler: false`` and no second shuffle is layered on top.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ShuffledShard(Sampler[int]):
    """Per-epoch seeded shuffle (``seed + epoch``) of ``range(length)``, this rank's shard.

    Every rank sees ``len(self)`` indices per epoch (the tail that does not split evenly is
    dropped, as ``DistributedSampler(drop_last=True)``), so ranks stay in step. Lightning calls
    ``set_epoch`` at the start of every epoch.
    """

    def __init__(self, length: int, shuffle: bool = True, seed: int = 0) -> None:
        self.length, self.shuffle, self.seed = length, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        rank, world = rank_and_world()
        if self.shuffle:
            order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.length)
        usable = (self.length // world) * world
        return iter(order[rank:usable:world].tolist())

    def __len__(self) -> int:
        return self.length // rank_and_world()[1]


class ResumableBatchSampler(Sampler[list[int]]):
    """Batches of a :class:`ShuffledShard` with a ``state_dict``: (epoch, batches handed out).

    A state saved after an epoch's last batch names the next epoch, so a loader restored there
    starts that epoch's shuffle instead of an exhausted one (worker processes prefetch as soon as
    the restored loader is iterated, before Lightning's ``set_epoch``).
    """

    def __init__(self, sampler: ShuffledShard, batch_size: int, drop_last: bool) -> None:
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last
        self.batches = 0
        self._resume: tuple[int, int] | None = None

    def __len__(self) -> int:
        count = len(self.sampler)
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        # A generator: the order is drawn at the first batch, after any set_epoch or load_state_dict.
        epoch = self.sampler.epoch
        resume_epoch, skip = self._resume or (epoch, 0)
        self._resume = None
        indices = list(self.sampler)
        self.batches = skip if resume_epoch == epoch else 0
        for start in range(self.batches * self.batch_size, self.batch_size * len(self), self.batch_size):
            self.batches += 1
            yield indices[start : start + self.batch_size]

    def state_dict(self) -> dict[str, int]:
        if self.batches >= len(self):
            return {"epoch": self.sampler.epoch + 1, "batches": 0}
        return {"epoch": self.sampler.epoch, "batches": self.batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        epoch, batches = int(state_dict["epoch"]), int(state_dict["batches"])
        self.sampler.set_epoch(epoch)
        self._resume = (epoch, batches)
