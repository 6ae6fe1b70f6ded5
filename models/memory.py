"""Training memory of a generator, estimated before a long job: weights, gradients, optimiser state, activations.

Activations are measured, not modelled. ``saved_activation_peak`` runs the losses of one training
step (``GenerativeModule.training_losses``) under ``torch.autograd.graph.saved_tensors_hooks`` and
counts the bytes of every tensor autograd keeps for the backward pass: each storage once, the
parameters left out (they are counted as weights), freed when autograd drops it. The peak of what
is alive at once is the memory that grows with the batch. The hooks see every op on any device, so
the same figure comes out on a CPU and on a GPU; on CUDA ``torch.cuda.max_memory_allocated`` of the
same step is reported beside it, which adds what the hooks cannot see: forward temporaries, the
backward pass's transient gradient buffers and allocator rounding.

Two probes, at batch 1 and batch 2, split the activations into a part per image and a fixed part
(autocast's low-precision weight copies, conditioning computed once), so the figure for the
configured batch is ``fixed + batch * per_image``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

MIB = 2**20


def _storage_key(tensor: Tensor) -> tuple[str, int]:
    storage = tensor.untyped_storage()
    return str(tensor.device), storage.data_ptr()


class _SavedTensorMeter:
    """Live bytes of the tensors autograd saves for backward, and their peak."""

    def __init__(self, excluded: set[tuple[str, int]]) -> None:
        self.excluded = excluded
        self.references: dict[tuple[str, int], int] = {}
        self.live = 0
        self.peak = 0

    def pack(self, tensor: Tensor) -> Any:
        key = _storage_key(tensor)
        if key in self.excluded or key[1] == 0:  # parameters, and empty tensors without storage
            return tensor
        if key not in self.references:
            self.live += tensor.untyped_storage().nbytes()
            self.peak = max(self.peak, self.live)
        self.references[key] = self.references.get(key, 0) + 1
        return _Saved(tensor, functools.partial(self._release, key, tensor.untyped_storage().nbytes()))

    @staticmethod
    def unpack(saved: Any) -> Tensor:
        return saved.tensor if isinstance(saved, _Saved) else saved

    def _release(self, key: tuple[str, int], nbytes: int) -> None:
        self.references[key] -= 1
        if self.references[key] == 0:
            del self.references[key]
            self.live -= nbytes


class _Saved:
    """A saved tensor that tells the meter when autograd lets go of it (the graph is freed)."""

    __slots__ = ("tensor", "release")

    def __init__(self, tensor: Tensor, release: Callable[[], None]) -> None:
        self.tensor, self.release = tensor, release

    def __del__(self) -> None:
        self.release()


def module_tensors(module: nn.Module) -> list[Tensor]:
    """Every parameter and buffer of ``module``, including networks kept out of its registry.

    Frozen helpers (the text encoder, the fusion CNN) are attached with ``object.__setattr__`` so
    they stay out of the state dict; they still occupy the device, so they are found here.
    """
    tensors: dict[tuple[str, int], Tensor] = {}
    seen: set[int] = set()
    stack = [module]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for tensor in [*current.parameters(recurse=False), *current.buffers(recurse=False)]:
            tensors.setdefault(_storage_key(tensor), tensor)
        stack.extend(current.children())
        stack.extend(value for name, value in vars(current).items() if isinstance(value, nn.Module) and name not in current._modules)
    return list(tensors.values())


def saved_activation_peak(losses: Callable[[], Iterable[Tensor]], module: nn.Module) -> int:
    """Peak bytes of tensors saved for backward while running ``losses()`` and back-propagating each loss.

    The losses are drawn one at a time, so a step with two backward passes (the GAN's
    discriminator, then generator) is measured as it runs: what the first pass keeps alive for
    the second counts in both.
    """
    meter = _SavedTensorMeter({_storage_key(t) for t in module_tensors(module)})
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        for loss in losses():
            loss.backward()
    return meter.peak


def optimizer_states_per_parameter(factory: Callable[[list[nn.Parameter]], torch.optim.Optimizer]) -> float:
    """Elements of optimiser state per parameter element (AdamW: 2), measured on a throw-away tensor."""
    probe = nn.Parameter(torch.zeros(64))
    optimizer = factory([probe])
    probe.grad = torch.ones_like(probe)
    optimizer.step()
    elements = sum(v.numel() for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v) and v.shape == probe.shape)
    return elements / probe.numel()


@dataclass(frozen=True)
class MemoryEstimate:
    """Per-device training memory for one batch size, in bytes (``summary`` in MiB / GiB)."""

    batch_size: int
    image_size: int
    precision: str
    weights: int  # every parameter and buffer on the device, frozen networks included
    trainable_parameters: int  # count
    gradients: int
    optimizer_state: int
    ema: int  # the EMA callback's copy of the trainable weights
    activations_per_image: int
    activations_fixed: int
    measured_device_peak: int | None  # CUDA only: max_memory_allocated of the batch-2 probe step, above the weights
    probe_seconds: float

    @property
    def activations(self) -> int:
        return self.activations_fixed + self.batch_size * self.activations_per_image

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer_state + self.ema + self.activations

    def to_dict(self) -> dict[str, Any]:
        """MiB figures (and the settings) for config.yaml's provenance and logs."""
        figures = {k: v for k, v in asdict(self).items() if k not in ("batch_size", "image_size", "precision", "trainable_parameters", "probe_seconds")}
        figures.update(activations=self.activations, total=self.total)
        return {
            "batch_size": self.batch_size, "image_size": self.image_size, "precision": self.precision,
            "trainable_parameters": self.trainable_parameters, "probe_seconds": round(self.probe_seconds, 2),
            **{f"{k}_mib": None if v is None else round(v / MIB, 2) for k, v in figures.items()},
        }

    def summary(self) -> str:
        measured = "" if self.measured_device_peak is None else (
            f"; the CUDA allocator's peak in the batch-2 probe step, beyond what was allocated before it "
            f"(activations, gradients, temporaries): {self.measured_device_peak / MIB:.0f} MiB"
        )
        return (
            f"Training memory estimate per device ({self.image_size} px, batch {self.batch_size}, {self.precision}): "
            f"{self.total / 2**30:.2f} GiB = weights {self.weights / MIB:.0f} MiB + gradients {self.gradients / MIB:.0f} MiB "
            f"+ optimiser state {self.optimizer_state / MIB:.0f} MiB + EMA {self.ema / MIB:.0f} MiB + activations saved for "
            f"backward {self.activations / MIB:.0f} MiB ({self.activations_per_image / MIB:.1f} MiB per image + "
            f"{self.activations_fixed / MIB:.0f} MiB fixed; a step's temporaries add 10-50 % on top, README: On a GPU){measured}. "
            "Measured by a batch-1 and a batch-2 training step (memory_estimate=false skips it)"
        )


def weight_figures(module: nn.Module, optimizer_states: float, ema: bool) -> tuple[int, int, int, int, int]:
    """``(weights, trainable count, gradients, optimiser state, EMA)``: bytes beside the count."""
    weights = sum(t.numel() * t.element_size() for t in module_tensors(module))
    trainable = [p for p in module.parameters() if p.requires_grad]
    count = sum(p.numel() for p in trainable)
    trainable_bytes = sum(p.numel() * p.element_size() for p in trainable)
    return weights, count, trainable_bytes, int(optimizer_states * trainable_bytes), trainable_bytes if ema else 0


def probe_step(losses: Callable[[], Iterator[Tensor]], module: nn.Module, device: torch.device) -> tuple[int, int | None]:
    """Saved-activation peak of one step and, on CUDA, the allocator's peak above what was allocated before."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    peak = saved_activation_peak(losses, module)
    for parameter in module.parameters():
        parameter.grad = None
    if not cuda:
        return peak, None
    torch.cuda.synchronize(device)
    return peak, torch.cuda.max_memory_allocated(device) - before
