"""The few collective operations the evaluation needs under DDP (identity on one process)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 without torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_rows(tensor: Tensor, device: torch.device | str = "cpu") -> Tensor:
    """Concatenate a per-rank (n_r, ...) tensor over ranks (uneven n_r allowed); identity on one process."""
    if rank_and_world()[1] == 1:
        return tensor
    from torchmetrics.utilities.distributed import gather_all_tensors

    on_device = tensor.to(device if dist.get_backend() == "nccl" else "cpu")
    return torch.cat([t.cpu() for t in gather_all_tensors(on_device.contiguous())])


@contextmanager
def rank_zero_first() -> Iterator[None]:
    """Rank 0 runs the block first (filling caches on disk); the other ranks run it after, reading them."""
    rank, world = rank_and_world()
    if world > 1 and rank != 0:
        dist.barrier()
    yield
    if world > 1 and rank == 0:
        dist.barrier()
