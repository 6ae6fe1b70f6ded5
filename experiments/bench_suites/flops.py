"""Floating-point work of a training step against the machine's limit.

``step_flops`` counts a step's floating-point operations with ``torch.utils.flop_counter.FlopCounterMode``
(matrix products, convolutions and attention, forward and backward; the optimiser's and the
normalisations' element-wise work is not counted, so the rate is that of the work a matmul unit
can do). ``matmul_rates`` times a large single-precision matrix product in this process, with this
process's threads, by each product kernel torch carries (its BLAS and oneDNN): the faster is what
the CPU delivers on the best-case kernel. Their ratio says how far a step is from the machine's
limit; the element-wise work left uncounted (normalisation, activations, the optimiser) is part of the gap.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.mkldnn import to_mkldnn

from experiments.bench_suites.common import synchronize


def step_flops(step: Callable[[], torch.Tensor]) -> int:
    """Floating-point operations of ``step()`` (returns the loss) and its backward pass."""
    with FlopCounterMode(display=False) as counter:
        step().backward()
    return int(counter.get_total_flops())


def best_rate(product: Callable[[], object], operations: float, repeats: int, where: torch.device) -> float:
    """Operations per second of the fastest of ``repeats`` calls (after one warm-up call)."""
    product()  # warm-up: thread pool, allocator, weight layout
    best = float("inf")
    for _ in range(repeats):
        synchronize(where)
        start = time.perf_counter()
        product()
        synchronize(where)
        best = min(best, time.perf_counter() - start)
    return operations / best


def matmul_rates(size: int, repeats: int, where: torch.device) -> dict[str, float]:
    """FLOP/s of a (size x size) @ (size x size) fp32 product (2 size^3 operations) by each kernel torch has here.

    ``torch.mm`` goes to the build's BLAS (MKL on x86); on a CPU torch also carries oneDNN, whose
    matmul is what its convolutions use. They can differ by 2x (MKL runs a slower code path on
    AMD processors), so both are timed and the machine's peak is the faster.
    """
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(where)
    b = torch.randn(size, size, generator=generator).to(where)
    operations = 2.0 * size**3
    rates = {"torch.mm": best_rate(lambda: torch.mm(a, b), operations, repeats, where)}
    if where.type == "cpu" and torch.backends.mkldnn.is_available():
        linear = torch.nn.Linear(size, size, bias=False)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # to_mkldnn scripts a module with a deprecated decorator
            linear.weight.copy_(b.t())
            onednn, a_onednn = to_mkldnn(linear), a.to_mkldnn()
            rates["oneDNN"] = best_rate(lambda: onednn(a_onednn), operations, repeats, where)
    return rates
