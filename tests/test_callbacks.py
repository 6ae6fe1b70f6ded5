"""EMA arithmetic, atomic checkpoint writes, the non-finite loss guard."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch import nn

from experiments.checkpoint_io import AtomicCheckpointIO
from callbacks.ema import EMA, ema_weights
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


def test_ema_weights_swap_in_eval_mode_and_come_back_even_on_error() -> None:
    module = Tiny()
    ema = EMA(decay=0.5, warmup_steps=0)
    ema.on_fit_start(None, module)
    with torch.no_grad():
        module.layer.weight.add_(1.0)
    trained = module.layer.weight.detach().clone()
    module.train()
    with pytest.raises(RuntimeError, match="inside"):
        with ema_weights(SimpleNamespace(callbacks=[ema]), module):
            assert not module.training and torch.equal(module.layer.weight, ema.shadow["layer.weight"])
            raise RuntimeError("inside")
    assert module.training and torch.equal(module.layer.weight, trained)
    with ema_weights(None, module):  # no trainer, no EMA: eval mode only
        assert not module.training and torch.equal(module.layer.weight, trained)
    # validation swaps through two hooks, without a context manager held open between them
    ema.on_validation_epoch_start(SimpleNamespace(sanity_checking=False), module)
    assert torch.equal(module.layer.weight, ema.shadow["layer.weight"])
    ema.on_validation_epoch_end(SimpleNamespace(sanity_checking=False), module)
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


class _PoisonedRegression(L.LightningModule):
    """A linear fit whose loss is NaN on the batches listed in ``poisoned``."""

    def __init__(self, poisoned: set[int]) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.poisoned = poisoned
        self.weights_seen: list[torch.Tensor] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.weights_seen.append(self.layer.weight.detach().clone())
        loss = self.layer(batch).pow(2).mean()
        return loss * float("nan") if self.global_step in self.poisoned else loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=0.1)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.randn(16, 2), batch_size=2)


def _fit(module: L.LightningModule, mode: str, steps: int) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=steps, callbacks=[FiniteLoss(mode=mode)], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )
    trainer.fit(module)
    return trainer


def test_non_finite_loss_stops_before_the_update() -> None:
    module = _PoisonedRegression(poisoned={3})
    with pytest.raises(NonFiniteLossError, match="step 3"):
        _fit(module, "stop", steps=6)
    assert torch.isfinite(module.layer.weight).all()
    assert torch.equal(module.layer.weight, module.weights_seen[-1])  # the bad batch changed nothing


def test_non_finite_loss_skip_mode_drops_only_the_bad_batches() -> None:
    module = _PoisonedRegression(poisoned={2, 4})
    trainer = _fit(module, "skip", steps=6)
    assert trainer.global_step == 6 and torch.isfinite(module.layer.weight).all()
    seen = module.weights_seen
    assert torch.equal(seen[2], seen[3]) and torch.equal(seen[4], seen[5])  # skipped updates
    assert not torch.equal(seen[1], seen[2])  # good batches still train
    callback = next(c for c in trainer.callbacks if isinstance(c, FiniteLoss))
    assert callback.skipped == 2 and callback.state_dict() == {"skipped": 2}


def test_skip_mode_still_stops_a_diverged_run() -> None:
    module = _PoisonedRegression(poisoned=set(range(100)))
    with pytest.raises(NonFiniteLossError, match="in a row"):
        _fit(module, "skip", steps=40)
    with pytest.raises(ValueError, match="on_nonfinite_loss"):
        FiniteLoss(mode="ignore")
