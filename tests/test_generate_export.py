"""experiments.generate writes a data set folder; experiments.export loads with plain diffusers."""

from __future__ import annotations

import csv
import json
import stat
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.errors import ConfigCompositionException
from PIL import Image

from datamodules.atomic import umask_file_mode
from experiments.command import command_line
from experiments.compose import checkpoint_config, compose_config, explain_overrides
from experiments.export import export_model
from experiments.generate import generate_images, sampling_settings
from models.conditioners import prompt_conditions
from models.hybrid import HybridDiffusion
from tests.test_hybrid import build, make_batch


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> HybridDiffusion:
    model = build(tmp_path_factory.mktemp("gen_cache"))
    model.conditioner.fit([make_batch(24, seed=1, with_index=True)])
    return model.eval()


def test_generate_writes_images_and_metadata(model: HybridDiffusion, tmp_path: Path) -> None:
    prompts = ["malignant lesion with an irregular border on Fitzpatrick type V skin", "normal skin; rm -rf / <b>"]
    conditions = prompt_conditions([prompts[i % 2] for i in range(5)], model.data_info)
    assert conditions["label"].tolist() == [1, 2, 1, 2, 1] and conditions["skin_tone"][0] == 5
    sampling = sampling_settings(model, guidance_scale=2.0, sampler="dpm++", steps=3)
    rows = generate_images(model, tmp_path / "out", conditions, 5, seed=4, batch_size=2, sampling=sampling)
    files = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert files == [f"{i:05d}.png" for i in range(5)]  # names never come from prompts
    assert Image.open(tmp_path / "out" / files[0]).size == (16, 16)
    with (tmp_path / "out" / "metadata.csv").open() as handle:
        metadata = list(csv.DictReader(handle))
    assert [r["prompt"] for r in metadata] == [prompts[i % 2] for i in range(5)]
    assert {r["sampler"] for r in metadata} == {"dpm_solver++"} and {r["steps"] for r in metadata} == {"3"}
    assert [r["seed"] for r in metadata] == ["4", "4", "5", "5", "6"] and metadata[0]["guidance"] == "2.0"
    with (tmp_path / "out" / "captions.csv").open() as handle:
        captions = list(csv.DictReader(handle))
    assert captions[0] == {"file": "00000.png", "caption": prompts[0], "label": "malignant"}
    assert (tmp_path / "out" / "ham10000_metadata.csv").is_file()
    assert len(rows) == 5


def test_generate_is_reproducible(model: HybridDiffusion, tmp_path: Path) -> None:
    conditions = prompt_conditions(["benign lesion"] * 2, model.data_info)
    generate_images(model, tmp_path / "a", conditions, 2, seed=1)
    generate_images(model, tmp_path / "b", conditions, 2, seed=1)
    assert (tmp_path / "a" / "00001.png").read_bytes() == (tmp_path / "b" / "00001.png").read_bytes()


def test_generate_config_rejects_unknown_keys() -> None:
    cfg = compose_config("generate", command_line(["ckpt=x.ckpt", "out=dir", "prompt=a benign lesion", "sampler.steps=10"], verbatim=("prompt",)))
    assert cfg.sampler.steps == 10 and cfg.prompt == "a benign lesion"
    with pytest.raises(ConfigCompositionException):
        compose_config("generate", ["ckpt=x", "out=y", "num_imgs=3"])
    message = explain_overrides("generate", ["ckpt=x", "out=y", "num_imgs=3"])
    assert "valid keys" in message and "num_images" in message


def test_export_loads_with_plain_diffusers(model: HybridDiffusion, tmp_path: Path) -> None:
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import AutoModel, AutoTokenizer

    out = export_model(model, tmp_path / "export")
    unet = UNet2DConditionModel.from_pretrained(out, subfolder="unet")
    scheduler = DDIMScheduler.from_pretrained(out, subfolder="scheduler")
    assert scheduler.config.beta_schedule == model.noise.config["beta_schedule"]
    assert scheduler.config.prediction_type == model.noise.prediction_type
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 500])
    conditioning = model.conditioner({k: v for k, v in make_batch(2).items() if k != "image"}, 2)
    kwargs = conditioning.unet_kwargs()
    assert set(kwargs) == {"encoder_hidden_states", "encoder_attention_mask", "class_labels"}
    patch = json.loads((out / "dermsynth.json").read_text())["patch_size"]
    assert patch == model.patch_size == 2 and f"pixel_unshuffle(x, {patch})" in (out / "README.md").read_text()
    with torch.no_grad():  # the model card's recipe gives the model's own denoiser output
        exported = F.pixel_shuffle(unet(F.pixel_unshuffle(x, patch), t, **kwargs).sample, patch)
        torch.testing.assert_close(exported, model(x, t, conditioning))
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    encoder = AutoModel.from_pretrained(out / "text_encoder")
    assert encoder.config.hidden_size == 384 and tokenizer("a lesion")["input_ids"]
    assert (out / "fusion" / "fusion.safetensors").is_file() and (out / "README.md").read_text().startswith("# DermSynth")
    modes = {stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*.safetensors")}
    assert modes == {umask_file_mode()}, modes  # safetensors' own writer makes 0600 files
    notice = (out / "NOTICE").read_text()
    assert "research use only, not for diagnosis" in notice and "Training data licence" in notice
    assert "not for diagnosis" in (out / "README.md").read_text() and "licence" in (out / "README.md").read_text()


def test_evaluate_sampling_overrides_become_the_settings_the_model_samples_with(model: HybridDiffusion) -> None:
    from experiments.evaluate import sampling_settings
    from models.generative import SamplingSettings

    before = model.sampling_description()
    settings = sampling_settings(["model.guidance.scale=4.5", "model.sampler.name=dpm++", "model.sampler.steps=7", "eval.seeds=[1]"])
    assert settings == SamplingSettings(sampler="dpm_solver++", steps=7, guidance_scale=4.5)
    assert model.sampling_description(settings) == {"sampler": "dpm_solver++", "steps": 7, "guidance_scale": 4.5}
    assert model.nfe(settings) == 14 and model.sampling_description() == before  # passed in, never set on the model
    assert sampling_settings(["eval.split=test"]) == SamplingSettings()
    with pytest.raises(ValueError, match="model.optimizer.lr: a trained checkpoint's model cannot change"):
        sampling_settings(["model.optimizer.lr=1"])


def test_captioned_grid_has_one_row_per_prompt(model: HybridDiffusion, tmp_path: Path) -> None:
    from experiments.generate import save_captioned_grid

    prompts = ["benign lesion", "normal skin", "malignant lesion with an irregular border"]
    rows = generate_images(model, tmp_path, prompt_conditions([prompts[i % 3] for i in range(6)], model.data_info), 6, seed=0)
    path = save_captioned_grid(rows, tmp_path, columns=2)
    with Image.open(path) as grid:
        width, height = grid.size
    assert path.name == "grid.png" and height > 2.5 * 130 and width > height  # three rows, caption column + two images


def test_evaluate_applies_plain_and_dotted_overrides_to_the_stored_config() -> None:
    cfg = checkpoint_config({"seed": 0, "eval": {"num_generated": 256}}, ["seed=1", "eval.num_generated=8"], "evaluate")
    assert cfg.seed == 1 and cfg.eval.num_generated == 8  # seed=1 used to be dropped silently
