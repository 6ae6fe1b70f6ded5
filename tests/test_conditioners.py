"""Conditioners and the one DiffusionModule: the typed conditioning, guidance rows, and a new conditioner plugged in."""

from __future__ import annotations

from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from datamodules.info import DataInfo
from models.conditioners import NUM_SKIN_TONES, Conditioner, Conditioning, prompt_conditions
from models.generative import SamplingSettings
from tests.helpers import compose_config
from tests.test_baselines_common import INFO, TinyData, assert_images, conditions_of, make_batch, tiny_trainer

TINY = [
    "model.unet.block_out_channels=[8,16]", "model.unet.attention_levels=[false,true]", "model.unet.attention_head_dim=4",
    "model.unet.norm_num_groups=4", "model.sampler.name=ddim", "model.sampler.steps=3",
]


class SkinTone(Conditioner):  # the README's example, verbatim
    kind = "label"
    reconstruction_input = "its own skin tone"

    def __init__(self, data_info: DataInfo, time_embed_dim: int) -> None:
        super().__init__()
        self.table = nn.Embedding(NUM_SKIN_TONES + 1, time_embed_dim)  # row 0: unknown or dropped

    def unet_inputs(self) -> dict[str, Any]:
        return {"class_embed_type": "identity"}  # the vector is added to the timestep embedding

    def forward(self, conditions: dict[str, Any], count: int, *, training: bool = False) -> Conditioning:
        return Conditioning(class_labels=self.table(torch.as_tensor(conditions["skin_tone"]).to(self.table.weight.device)))

    def null(self, count: int) -> Conditioning:
        return Conditioning(class_labels=self.table(torch.zeros(count, dtype=torch.long, device=self.table.weight.device)))


def test_a_new_conditioner_plugs_in_with_one_class_and_a_yaml_overlay() -> None:
    overlay = ["model.conditioner={_target_: tests.test_conditioners.SkinTone, _partial_: true}", "model.guidance={scale: 2.0, drop_prob: 0.1}"]
    cfg = compose_config("exp=ddpm", "budget=smoke", *TINY, *overlay)
    model = instantiate(cfg.model, _partial_=True)(data_info=INFO)
    assert isinstance(model.conditioner, SkinTone) and model.conditioning == "label"
    before = model.conditioner.table.weight.detach().clone()
    trainer = tiny_trainer(fast_dev_run=2)
    trainer.fit(model, datamodule=TinyData())
    assert trainer.global_step == 2 and not torch.equal(before, model.conditioner.table.weight)  # it trains
    conditions = conditions_of(make_batch(4))
    images = model.eval().generate(conditions, 4, generator=torch.Generator().manual_seed(0))
    assert_images(images, 4)
    assert model.nfe() == 6 and model.nfe(SamplingSettings(guidance_scale=1.0)) == 3  # guided: two rows per step


def test_conditioning_rows_pad_tokens_and_keep_the_mask() -> None:
    short = Conditioning(torch.zeros(2, 3), torch.ones(2, 2, 4), torch.ones(2, 2, dtype=torch.bool))
    long = Conditioning(torch.ones(2, 3), torch.full((2, 5, 4), 2.0), torch.ones(2, 5, dtype=torch.bool))
    both = short.cat(long)  # [cond; uncond] of guided sampling
    assert both.encoder_hidden_states.shape == (4, 5, 4) and both.class_labels.shape == (4, 3)
    assert both.encoder_attention_mask[:2].sum(1).tolist() == [2, 2] and both.encoder_attention_mask[2:].all()
    assert (both.encoder_hidden_states[:2, 2:] == 0).all()  # padding is zero and masked
    mixed = short.where(torch.tensor([False, True]), long)  # conditioning dropout: row 1 takes the other
    assert mixed.class_labels[:, 0].tolist() == [0.0, 1.0]
    assert mixed.encoder_attention_mask.sum(1).tolist() == [2, 5]
    assert set(Conditioning(class_labels=torch.zeros(1, 2)).unet_kwargs()) == {"class_labels"}


def test_prompt_conditions_read_what_a_free_prompt_names() -> None:
    info = DataInfo("phantom", 16, ("benign", "malignant", "normal"), {"border": ("regular", "irregular")}, True)
    conditions = prompt_conditions(["malignant lesion with an irregular border on Fitzpatrick type V skin", "a photo"], info)
    assert conditions["label"].tolist() == [1, -1] and conditions["skin_tone"].tolist() == [5, 0]
    assert conditions["attributes"]["border"].tolist() == [1, -1]
