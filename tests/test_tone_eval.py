"""Tone-following in the evaluation protocol: a generator that draws the prompted skin tone against one that ignores it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from skimage.color import lab2rgb
from torch import Tensor
from torch.utils.data import Dataset

from datamodules.info import DataInfo
from datamodules.tone import TONE_GROUPS
from evaluation.protocol import evaluate_generator
from evaluation.schema import write_metrics_json
from experiments.report import build_report
from models.generative import GenerativeModule
from tests.test_eval_protocol import tiny_eval_cfg

GROUP_ITA = np.array([70.0, 48.0, 34.0, 19.0, -10.0, -50.0])  # one ITA inside each group, very light .. dark
LESIONS = torch.tensor([[-0.7, -0.8, -0.8], [-0.5, -0.9, -0.4]])  # dark brown, dark purple


def skin_colour(group: int) -> Tensor:
    """(3,) colour in [-1, 1] whose ITA is the group's (b* 12, a* 12)."""
    b_star = 12.0
    lightness = 50 + b_star * np.tan(np.radians(GROUP_ITA[group - 1]))
    rgb = lab2rgb(np.array([[[lightness, 12.0, b_star]]]))[0, 0]
    return torch.tensor(rgb * 2 - 1, dtype=torch.float32)


def draw(label: int, group: int, size: int, generator: torch.Generator) -> Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    inside = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.25) ** 2).float()
    image = skin_colour(group).view(3, 1, 1) * (1 - inside) + LESIONS[label].view(3, 1, 1) * inside
    return (image + 0.02 * torch.randn(3, size, size, generator=generator)).clamp(-1, 1)


class TonedSet(Dataset):
    def __init__(self, num: int, size: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.labels, self.groups = rng.integers(0, 2, num), rng.choice(np.arange(1, 7), num, p=[0.4, 0.2, 0.15, 0.1, 0.1, 0.05])
        self.size, self.seed = size, seed
        self.image_ids, self.lesion_ids = [f"toned_{seed}_{i}" for i in range(num)], None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        label, group = int(self.labels[index]), int(self.groups[index])
        return {"image": draw(label, group, self.size, torch.Generator().manual_seed(self.seed * 10_000 + index)),
                "caption": f"lesion {label} on {TONE_GROUPS[group - 1]} skin", "label": label, "attributes": {}, "skin_tone": 0,
                "ita": float(GROUP_ITA[group - 1]), "tone_group": group}


class TonedData:
    """Just enough of SkinDataModule: ITA tone groups, no Fitzpatrick types; prompts of the split's mix or tone-balanced."""

    def __init__(self, size: int = 16) -> None:
        self.info = DataInfo("toned", size, ("nevus", "melanoma"), tone_groups=True, fingerprint=f"toned{size}")
        self.train_set, self.val_set, self.test_set = TonedSet(384, size, 1), TonedSet(160, size, 2), TonedSet(160, size, 3)

    def setup(self, stage: str | None = None) -> None:
        pass

    def sample_conditions(self, n: int, seed: int, *, split: str = "train", holdout: str | None = None) -> dict[str, Any]:
        dataset = getattr(self, f"{split}_set")
        rng = np.random.default_rng(seed)
        if holdout == "tone":
            rows = np.concatenate([rng.choice(np.flatnonzero(dataset.groups == g), size=n // 6 + 1) for g in range(1, 7)])[:n]
        elif holdout is None:
            rows = rng.integers(0, len(dataset), n)
        else:
            raise ValueError(f"no {holdout} prompts here")
        items = [dataset[int(r)] for r in rows]
        return {"caption": [i["caption"] for i in items], "label": torch.tensor([i["label"] for i in items]), "attributes": {},
                "skin_tone": torch.zeros(n, dtype=torch.long), "ita": torch.tensor([i["ita"] for i in items]),
                "tone_group": torch.tensor([i["tone_group"] for i in items])}


class TonedGenerator(GenerativeModule):
    """Draws the prompted diagnosis on the prompted tone (``follows``) or on very light skin whatever it was asked."""

    conditioning = "label"

    def __init__(self, data_info: DataInfo, follows: bool) -> None:
        super().__init__(data_info)
        self.follows = follows
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    @torch.no_grad()
    def generate(self, conditions, num_images, *, generator=None, progress=False, sampling=None) -> Tensor:
        generator = generator or torch.Generator().manual_seed(0)
        groups = conditions["tone_group"] if self.follows else torch.ones(num_images, dtype=torch.long)
        return torch.stack([draw(int(conditions["label"][i]), max(1, int(groups[i])), self.image_size, generator) for i in range(num_images)])


@pytest.fixture(scope="module")
def toned() -> TonedData:
    return TonedData()


def test_tone_following_tells_a_tone_following_generator_from_a_tone_blind_one(toned: TonedData, tmp_path: Path) -> None:
    cfg = tiny_eval_cfg(tmp_path / "cache", heldout={"num_generated": 0}, balanced={"num_generated": 0},
                        tone={"num_generated": 60, "min_fid_images": 20}, memorization={"enabled": False})
    follower = evaluate_generator(TonedGenerator(toned.info, follows=True), toned, cfg, tmp_path / "follows", extra={"seed": 0})
    blind = evaluate_generator(TonedGenerator(toned.info, follows=False), toned, cfg, tmp_path / "blind", extra={"seed": 0})
    for name, metrics in (("follows", follower), ("blind", blind)):
        write_metrics_json(tmp_path / "runs" / name / "metrics.json", {**metrics, "exp": name})  # the schema holds
        block = metrics["per_skin_tone"]
        assert block["scale"] == "ita" and list(block["groups"]) == list(TONE_GROUPS)
        assert block["generated_tone_source"] == "condition" and block["tone_following"]["n"] == 60
    good, bad = follower["per_skin_tone"]["tone_following"], blind["per_skin_tone"]["tone_following"]
    assert good["accuracy"] >= 0.95 and good["ita_mae"] < 3
    assert bad["accuracy"] < 0.3 and bad["ita_mae"] > 20
    assert good["per_group"]["dark"]["accuracy"] == 1.0 and bad["per_group"]["dark"]["accuracy"] == 0.0
    assert bad["per_group"]["very light"]["accuracy"] == 1.0  # what it always draws
    groups = follower["per_skin_tone"]["groups"]
    assert groups["very light"]["fid"] is not None and groups["dark"]["fid"] is None and groups["dark"]["nulls"]["fid"]
    assert groups["tan"]["tone_following"]["n"] == 11 and groups["dark"]["tone_following"]["n"] == 5
    for name in ("tone_distribution.png", "by_tone.png"):
        assert (tmp_path / "follows" / "eval" / name).is_file()
    assert follower["intervals"]["tone_following"] == good["accuracy_interval"]
    report = build_report(tmp_path / "runs").read_text()
    assert "## Per skin tone" in report and "| follows seed 0 | dark (ita) | " in report
    assert f"{good['accuracy']:.3f}" in report and f"{bad['accuracy']:.3f}" in report  # the main table's column
