"""EMA arithmetic, atomic checkpoint writes, the non-finite loss guard."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from callbacks.checkpoint import AtomicCheckpointIO
from callbacks.ema import EMA
from callbacks.health import FiniteLoss, NonFiniteLossError


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 2)
        self.frozen = nn.Linear(2, 2).requires_grad_(False)


def test_ema_follows_its_formula_and_swaps_back() -> None:
    module = Tiny()
    ema = EMA(decay=0.9, warmup_steps=0)
    ema.on_fit_start(None, module)
    start = module.layer.weight.detach().clone()
    with torch.no_grad():
        module.layer.weight.add_(1.0)
    ema.on_train_batch_end(None, module)
    expected = 0.9 * start + 0.1 * (start + 1.0)
    assert torch.allclose(ema.shadow["layer.weight"], expected)
    assert "frozen.weight" not in ema.shadow  # frozen parts are not averaged
    trained = module.layer.weight.detach().clone()
    with ema.swapped(module):
        assert torch.allclose(module.layer.weight, expected)
    assert torch.equal(module.layer.weight, trained)


def test_ema_warmup_ramps_decay() -> None:
    ema = EMA(decay=0.999, warmup_steps=100)
    assert ema.current_decay() == pytest.approx(0.1)
    ema.num_updates = 1000
    assert ema.current_decay() == 0.999
    whole_run = EMA(decay=0.999)  # ramp kept: the window grows with the run
    whole_run.num_updates = 500
    assert whole_run.current_decay() == pytest.approx(501 / 510)
    whole_run.num_updates = 100_000
    assert whole_run.current_decay() == 0.999


def test_ema_state_round_trip() -> None:
    module = Tiny()
    ema = EMA(decay=0.5, warmup_steps=0)
    ema.on_fit_start(None, module)
    ema.on_train_batch_end(None, module)
    restored = EMA(decay=0.5)
    restored.load_state_dict(ema.state_dict())
    restored.on_fit_start(None, module)
    assert restored.num_updates == 1
    assert torch.equal(restored.shadow["layer.weight"], ema.shadow["layer.weight"])


def test_atomic_save_keeps_old_file_when_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)

    def broken_save(obj, file, *args, **kwargs):
        file.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_non_finite_loss_stops_with_step() -> None:
    trainer = SimpleNamespace(global_step=7, current_epoch=0)
    FiniteLoss().on_train_batch_end(trainer, None, {"loss": torch.tensor(1.0)}, None, 0)
    with pytest.raises(NonFiniteLossError, match="step 7"):
        FiniteLoss().on_train_batch_end(trainer, None, {"loss": torch.tensor(float("nan"))}, None, 0)
