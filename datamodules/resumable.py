"""A training loader that resumes mid-epoch: same shuffle, same shard, next unseen batch.

Lightning saves a loader's ``state_dict`` in the checkpoint when it has one and hands it back on
resume. The position saved is the number of batches the training loop has *processed* in the
epoch (not the number the loader has yielded: Lightning prefetches one batch), read through
``position_fn``. The sampler shards across DDP ranks itself, so the trainer runs with
``use_distributed_sampler: false`` and no second shuffle is layered on top.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ResumableSampler(Sampler[int]):
    """Per-epoch seeded shuffle (``seed + epoch``), sharded across ranks, able to start at any index.

    Every rank sees ``len(self)`` indices per epoch (the tail that does not split evenly is
    dropped, as ``DistributedSampler(drop_last=True)``), so ranks stay in step.
    """

    def __init__(self, length: int, shuffle: bool = True, seed: int = 0) -> None:
        self.length, self.shuffle, self.seed = length, shuffle, seed
        self.epoch = 0
        self.start = 0  # index into this rank's shard of the current epoch; used once, then 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.start = epoch, 0

    def _shard(self) -> list[int]:
        rank, world = rank_and_world()
        if self.shuffle:
            order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.length)
        usable = (self.length // world) * world
        return order[rank:usable:world].tolist()

    def __iter__(self) -> Iterator[int]:
        indices = self._shard()[self.start :]
        self.start = 0
        return iter(indices)

    def __len__(self) -> int:
        return self.length // rank_and_world()[1]


class ResumableDataLoader(DataLoader):
    """``DataLoader`` over a resumable sampler (``epoch``, ``start``) with Lightning's ``state_dict`` protocol.

    Args:
        position_fn: batches of the current epoch the training loop has processed (the
            data module reads it from its trainer); None counts nothing (a fresh loader).
    """

    def __init__(self, *args: Any, position_fn: Callable[[], int] | None = None, **kwargs: Any) -> None:
        if kwargs.get("generator") is None:  # its own generator: a new epoch's iterator must not draw
            kwargs["generator"] = torch.Generator().manual_seed(0)  # from the global one (resume parity)
        super().__init__(*args, **kwargs)
        if not all(hasattr(self.sampler, name) for name in ("epoch", "start", "set_epoch")):
            raise TypeError("ResumableDataLoader needs a sampler with epoch, start and set_epoch (ResumableSampler, ClassBalancedSampler)")
        self.position_fn = position_fn

    def state_dict(self) -> dict[str, int]:
        sampler = self.sampler
        processed = int(self.position_fn()) if self.position_fn is not None else 0
        batches = len(self)
        if batches and processed >= batches:  # the epoch is complete: the next one starts fresh
            return {"epoch": sampler.epoch + 1, "start": 0}
        return {"epoch": sampler.epoch, "start": processed * int(self.batch_size or 1)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        sampler = self.sampler
        sampler.epoch, sampler.start = int(state_dict["epoch"]), int(state_dict["start"])
