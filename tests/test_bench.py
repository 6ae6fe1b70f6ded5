"""``python -m experiments.bench``: every suite at tiny sizes, the runner's merging, and the speed knobs.

The figures of tiny runs mean nothing; the tests check that each suite measures what it says
(keys, sane ratios, the cache and NFE evidence) and that the knobs leave the model's output alone.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from experiments import bench
from experiments.bench_suites.common import build_datamodule, compose_run_config
from experiments.bench_suites.flops import matmul_rates, step_flops
from experiments.bench_suites.memory import run_child
from models.checkpoint import build_generator
from models.performance import apply_performance, compile_targets
from models.unets import build_unet
from tests.helpers import untrained_checkpoint

TINY = {"budget": "smoke", "image_size": "8"}


def positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_channels_last_keeps_outputs_and_state_dict_keys() -> None:
    unet = build_unet(image_size=8, block_out_channels=(8, 16), attention_levels=(False, True), norm_num_groups=8, patch_size=1).eval()
    sample, timestep = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 500])
    keys = list(unet.state_dict())
    with torch.no_grad():
        before = unet(sample, timestep).sample
        assert apply_performance(unet, channels_last=True) is unet
        after = unet(sample, timestep).sample
    conv = unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert list(unet.state_dict()) == keys
    assert torch.allclose(before, after, atol=1e-5)


def test_compile_targets_the_networks_in_place() -> None:
    cfg = compose_run_config("ddpm", "smoke", ["data.image_size=8"])
    model = build_generator(cfg.model, build_datamodule(cfg.data).info)
    keys = list(model.state_dict())
    assert compile_targets(model) == [model.unet]  # Lightning calls training_step, so the UNet is what to compile
    apply_performance(model, compile=True)  # lazy: nothing compiles until the first call
    assert list(model.state_dict()) == keys  # no "_orig_mod." prefix, checkpoints and EMA stay valid


def test_flop_counter_counts_a_linear_layer_by_hand() -> None:
    x, layer = torch.randn(8, 16, requires_grad=True), torch.nn.Linear(16, 32, bias=False)
    # forward 2*B*n*m; backward the same twice (gradients of the input and of the weight)
    assert step_flops(lambda: layer(x).sum()) == 3 * 2 * 8 * 16 * 32
    rates = matmul_rates(64, 2, torch.device("cpu"))
    assert "torch.mm" in rates and all(positive(rate) for rate in rates.values())


def test_train_suite(tmp_path: Path) -> None:
    options = {**TINY, "batch_size": "4", "steps": "2", "warmup": "1", "knob_steps": "1", "fit_images": "8", "out": str(tmp_path / "b.json"),
               "matmul_size": "256", "routes_steps": "1", "routes_num_train": "8"}
    results = bench.run(["train"], options)
    flops = results["train.flops"]
    assert 0 < results["train.fraction_of_matmul_peak"] == flops["fraction"] < 1
    assert flops["matmul_peak_gflops"] == max(flops["matmul_gflops"].values()) and positive(flops["gflop_per_step"])
    routes = results["train.routes"]
    assert set(routes) == {"pixel_32px", "pixel", "latent"} and routes["pixel_32px"]["over_pixel_32px"] == 1.0
    assert (routes["pixel"]["image_size"], routes["pixel"]["patch_size"], routes["pixel"]["unet_input"]) == (64, 4, [48, 16, 16])
    assert (routes["latent"]["image_size"], routes["latent"]["patch_size"], routes["latent"]["unet_input"]) == (64, 1, [4, 16, 16])
    assert all(positive(r["step_s"]) and positive(r["gflop_per_step"]) and 0 < r["fraction_of_matmul_peak"] < 1 for r in routes.values())
    assert results["train.step_s_64px"] == {"pixel": routes["pixel"]["step_s"], "latent": routes["latent"]["step_s"]}
    for key in ("train.lightning_over_bare", "train.hybrid_over_ddpm", "train.cache_speedup", "train.images_per_s"):
        assert positive(results[key]), key
    assert results["train.cache_speedup"] > 1  # running MiniLM every step costs more than a lookup
    # the evidence the toggle worked: no encoder call with the cache, batch + empty captions without
    assert results["train.encoder_captions_per_step"] == {"cached": 0.0, "uncached": 8.0}
    assert set(results["train.knobs"]) == {"channels_last", "bf16_autocast", "bf16_channels_last", "fused_adamw", "foreach_adamw"}
    settings = results["train.settings"]
    assert settings["batch_size"] == 4 and settings["image_size"] == 8
    assert settings["unet"]["ddpm"] == settings["unet"]["hybrid"]
    assert settings["timed_steps"] == {"bare": 2, "ddpm": 2, "hybrid": 2, "hybrid_uncached": 2}
    assert json.loads((tmp_path / "b.json").read_text())["train.images_per_s"] == results["train.images_per_s"]


def test_sample_suite_with_guided_checkpoint(tmp_path: Path) -> None:
    ckpt = untrained_checkpoint(tmp_path / "class.ckpt", "ddpm_class")  # guidance 3: two evaluations per step
    options = {"ckpt": str(ckpt), "num_images": "4", "fd_images": "8", "ddpm_steps": "4", "ddim_steps": "2", "dpm_steps": "2,1",
               "overrides": "eval.judge.epochs=1", "out": str(tmp_path / "b.json")}
    results = bench.run(["sample"], options)
    assert results["sample.nfe"] == {"ddpm-4": 8, "ddim-2": 4, "dpm_solver++-2": 4, "dpm_solver++-1": 2}
    assert set(results["sample.s_per_image"]) == set(results["sample.nfe"])
    assert all(positive(v) for v in results["sample.s_per_image"].values())
    assert set(results["sample.fd"]) == {"ddpm-4", "dpm_solver++-2"}
    assert positive(results["sample.dpm20_fd_over_ddpm1000"]) and positive(results["sample.fd_floor_at_n"])
    assert results["sample.nfe_ratio"] == 2.0
    assert results["sample.settings"]["guided"] and results["sample.settings"]["feature_extractor"].startswith("domain:")


def test_sample_suite_without_checkpoint_times_only(tmp_path: Path) -> None:
    options = {**TINY, "num_images": "2", "ddpm_steps": "3", "ddim_steps": "2", "dpm_steps": "2", "out": str(tmp_path / "b.json")}
    results = bench.run(["sample"], options)
    assert results["sample.nfe"] == {"ddpm-3": 3, "ddim-2": 2, "dpm_solver++-2": 2}  # unconditional: one per step
    assert results["sample.dpm20_fd_over_ddpm1000"] is None and results["sample.settings"]["note"]


def test_eval_suite_warm_run_does_no_real_set_work(tmp_path: Path) -> None:
    results = bench.run(["eval"], {**TINY, "num_images": "16", "judge_epochs": "1", "out": str(tmp_path / "b.json")})
    assert results["eval.real_set_work"]["cold"]["judge_trainings"] == 1
    assert results["eval.real_set_work"]["cold"]["real_feature_passes"] >= 1
    assert results["eval.real_set_work"]["warm"] == {"judge_trainings": 0, "real_feature_passes": 0}
    assert results["eval.warm_new_cache_files"] == []
    # Wall times of sub-second tiny runs say nothing on a shared machine: the counts above are the check,
    # the times belong to the measured bench.json.
    assert positive(results["eval.warm_s"]) and positive(results["eval.cold_s"]) and positive(results["eval.cached_over_uncached"])
    assert results["targets"]["eval.warm_real_set_passes"]["met"] is True


def test_memory_peak_is_the_childs(tmp_path: Path) -> None:
    code, peak_kib, _ = run_child([sys.executable, "-c", "block = bytearray(300 * 2**20)"], tmp_path / "log", timeout=60)
    assert code == 0 and peak_kib >= 300 * 1024


@pytest.mark.slow
def test_memory_suite_smoke_run(tmp_path: Path) -> None:
    results = bench.run(["memory"], {"budget": "smoke", "steps": "2", "num_generated": "4", "out": str(tmp_path / "b.json")})
    assert 0.2 < results["memory.quick_hybrid_peak_rss_gib"] < 64
    assert "trainer.max_steps=2" in results["memory.settings"]["command"]


def test_run_merges_fills_required_keys_and_reports_targets(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    out.write_text(json.dumps({"train.images_per_s": 12.5, "data.stale_key": 1}))
    options = {"loader_workers": "0", "batches": "1", "num_train": "64", "step_images_per_s": "10", "out": str(out)}
    results = bench.run(["data"], options)
    assert results["train.images_per_s"] == 12.5  # another suite's figures survive
    assert "data.stale_key" not in results  # a rerun replaces its own suite's keys
    assert all(key in results for key in bench.REQUIRED_KEYS)
    assert results["memory.quick_hybrid_peak_rss_gib"] is None and results["eval.cached_over_uncached"] is None
    assert positive(results["data.cache_over_decode"]) and positive(results["data.loader_over_step_demand"])
    target = results["targets"]["data.loader_over_step_demand"]
    assert target["met"] is (results["data.loader_over_step_demand"] >= 5) and target["default_settings"] is False
    assert results["targets"]["train.hybrid_over_ddpm"]["met"] is None
    table = bench.summary_table(results, ["data"])
    assert "data.loader_over_step_demand" in table and "train." not in table


def test_options_are_checked_and_scoped() -> None:
    assert bench.resolve_options("sample", {"num_images": "4", "eval.num_images": "9", "sample.fd_images": "8"}) == {"num_images": "4", "fd_images": "8"}
    assert bench.resolve_options("eval", {"num_images": "4", "eval.num_images": "9"}) == {"num_images": "9"}
    for bad in ({"num_imagez": "4"}, {"train.steps": "1"}, {"sample.bogus": "1"}):
        with pytest.raises(SystemExit, match="unknown option"):
            bench.run(["sample"], bad)
    with pytest.raises(SystemExit, match="valid"):
        bench.run(["nope"], {})


def test_judge_suite_compares_recipes_on_the_validation_split(tmp_path: Path) -> None:
    recipes = "frozen:arch=test_resnet,epochs=1,lr=1e-12;trained:arch=test_resnet,epochs=6;lite0:arch=efficientnet_lite0,pretrained=true,input_size=32,epochs=1"
    results = bench.run(["judge"], {**TINY, "recipes": recipes, "out": str(tmp_path / "b.json")})
    scored = results["judge.recipes"]
    assert set(scored) == {"frozen", "trained", "lite0"} and results["judge.settings"]["split"] == "val"
    for recipe in scored.values():
        assert set(recipe["val_accuracy"]) >= {"diagnosis", "skin_tone"} and recipe["train_s"] > 0
        accuracy, low, high = recipe["val_accuracy"]["diagnosis"]
        assert low <= accuracy <= high and 0 < recipe["majority"]["diagnosis"] <= 1
    best = max(scored, key=lambda name: scored[name]["mean_visual_balanced"])
    assert results["judge.chosen"] == best and scored["lite0"]["settings"]["pretrained"] is True
    assert scored["trained"]["mean_visual"] > scored["frozen"]["mean_visual"]  # a judge that learns beats one that cannot
    num_val = results["judge.settings"]["num_val"]
    ceiling = results["judge.ceiling"]
    assert ceiling["num_images"] + scored[best]["num_images"] == num_val and ceiling["num_images"] == num_val - num_val // 2


def test_judge_choice_is_by_balanced_accuracy_on_one_half_and_its_ceiling_on_the_other() -> None:
    from sklearn.metrics import balanced_accuracy_score

    from experiments.bench_suites.judge import balanced_accuracy, choose, halves

    target = torch.tensor([0] * 8 + [1] * 2 + [-1])
    majority_leaning, balanced = torch.zeros(11, dtype=torch.long), torch.tensor([0] * 6 + [1] * 2 + [1] * 2 + [0])
    assert balanced_accuracy(majority_leaning, target) == pytest.approx(balanced_accuracy_score(target[:10], majority_leaning[:10]))
    assert balanced_accuracy(balanced, target) == pytest.approx(balanced_accuracy_score(target[:10], balanced[:10]))
    recipes = {  # plain accuracy favours the judge that always answers the majority class
        "majority": {"mean_visual": 0.8, "mean_visual_balanced": balanced_accuracy(majority_leaning, target)},
        "balanced": {"mean_visual": 0.8, "mean_visual_balanced": balanced_accuracy(balanced, target)},
    }
    recipes["majority"]["mean_visual"] = 0.8 + 1e-3
    assert choose(recipes) == "balanced"
    selection, ceiling = halves(101)
    assert not set(selection) & set(ceiling) and sorted(selection + ceiling) == list(range(101))
