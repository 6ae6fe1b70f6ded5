"""Every budget composes with every experiment; budget=long is the quick recipe with 4x the steps, uncapped."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from experiments import CONFIG_DIR
from tests.helpers import compose_config, experiment_names

BUDGETS = sorted(p.stem for p in (CONFIG_DIR / "budget").glob("*.yaml"))


def test_every_budget_is_listed() -> None:
    assert BUDGETS == ["full", "long", "quick", "smoke"]


@pytest.mark.parametrize("budget", BUDGETS)
def test_every_experiment_composes_under_every_budget(budget: str) -> None:
    for exp in experiment_names():
        cfg = compose_config(f"exp={exp}", f"budget={budget}")
        assert cfg.budget_name == budget
        assert cfg.trainer.max_steps == cfg.budget_steps[budget] > 0, exp
        OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves (fusion_fit_images per budget, ...)


def test_long_is_the_quick_recipe_with_four_times_the_steps() -> None:
    for exp in experiment_names():
        quick, long = compose_config(f"exp={exp}", "budget=quick"), compose_config(f"exp={exp}", "budget=long")
        assert long.trainer.max_steps == 4 * quick.trainer.max_steps, exp
        assert quick.trainer.max_time is not None and long.trainer.max_time is None
        for key in ("model", "data", "eval.num_generated", "eval.judge", "trainer.limit_val_batches"):
            assert OmegaConf.select(long, key) == OmegaConf.select(quick, key), (exp, key)
