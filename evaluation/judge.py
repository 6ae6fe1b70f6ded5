"""The domain judge: a classifier trained on the real training split, cached on disk.

It serves twice: its heads judge conditioning accuracy, and its penultimate features are the
``domain:<judge>`` feature space of ``fd_domain`` (and of FID on request). It is trained once per
data set and split (key: ``DataInfo.fingerprint``, the training split's hash and the judge
settings) with a fixed seed, so every run on the same data shares it and its figures compare. Its
recipe is chosen on the validation split (``python -m experiments.bench judge``), and its sanity
figures (accuracy on real validation images, on pure noise, on heavily noised real images, beside
chance) say how far its verdicts can be trusted; the evaluation adds its ceiling on the evaluation
split itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from safetensors.torch import load_file, save
from torch import Tensor

from datamodules.atomic import atomic_path
from datamodules.info import DataInfo
from evaluation.data import collect, split_hash, subset_indices, unaugmented
from models.classifier import SkinClassifier, batch_targets, fit_frozen_heads, head_accuracy, head_sizes, train_classifier

log = logging.getLogger(__name__)
# Every setting that changes the judge's weights (its cache key).
JUDGE_SETTINGS = ("arch", "pretrained", "input_size", "epochs", "batch_size", "lr", "seed", "max_train_images", "frozen")


@dataclass
class Judge:
    """A trained ``SkinClassifier`` with its cache key and sanity figures (on the validation split)."""

    model: SkinClassifier
    key: str
    sanity: dict[str, Any]
    trained_here: bool = False  # trained by this process (False: loaded from the cache)

    @property
    def name(self) -> str:
        """``<arch>-<key>``: names the judge in metrics.json (and the ``domain:`` feature space)."""
        return f"{self.model.hparams.arch}-{self.key[:8]}"

    @property
    def heads(self) -> dict[str, int]:
        return self.model.heads

    def logits(self, images: Tensor, batch_size: int = 256) -> dict[str, Tensor]:
        return self.model.predict_logits(images, batch_size)

    def features(self, images: Tensor, batch_size: int = 256) -> Tensor:
        return self.model.predict_features(images, batch_size)


def judge_key(info: DataInfo, train_set: Any, judge_cfg: Any) -> str:
    """Cache key: the data (fingerprint, size, split) and every setting that changes the weights."""
    settings = {k: judge_cfg.get(k) for k in JUDGE_SETTINGS}
    text = json.dumps({"data": info.key_dict(), "split": split_hash(train_set), **settings}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def load_or_train_judge(
    datamodule: Any, judge_cfg: Any, cache_dir: str | Path, progress: bool = False, device: str | torch.device = "cpu"
) -> Judge:
    """The judge for ``datamodule``'s data: from ``cache_dir/judges/<key>`` or trained and stored there.

    ``device``: where it trains (a CUDA device trains on the GPU) and reads images.
    """
    key = judge_key(datamodule.info, datamodule.train_set, judge_cfg)
    folder = Path(cache_dir) / "judges" / key
    if (folder / "judge.json").is_file():
        meta = json.loads((folder / "judge.json").read_text())
        model = _build(meta["heads"], judge_cfg)
        model.load_state_dict(load_file(folder / "model.safetensors"))
        return Judge(model.eval().to(device), key, meta["sanity"])
    model = train_judge(datamodule, judge_cfg, progress, device).to(device)
    validation = collect(datamodule.val_set, judge_cfg.get("num_sanity_images"), seed=judge_cfg["seed"])
    sanity = sanity_figures(model, validation, judge_cfg["seed"], judge_cfg["sanity_noise_std"])
    judge = Judge(model.eval(), key, sanity, trained_here=True)
    _store(folder, model, {"name": judge.name, "heads": model.heads, "sanity": sanity, "settings": dict(judge_cfg)})
    log.info("Judge %s sanity on the validation split: %s", judge.name, json.dumps(sanity))
    return judge


def _build(heads: dict[str, int], judge_cfg: Any) -> SkinClassifier:
    return SkinClassifier(heads, arch=judge_cfg["arch"], pretrained=judge_cfg["pretrained"], input_size=judge_cfg["input_size"], augment=False)


def train_judge(datamodule: Any, judge_cfg: Any, progress: bool = False, device: str | torch.device = "cpu") -> SkinClassifier:
    """Train a judge recipe (``eval.judge``) on the training split (or its seeded subset), on the GPU when ``device`` is one.

    Returned on the CPU. At the full budget (resnet18, 30 epochs of 10,000 images up to 256 px) a CPU
    would take hours of the run's set-up.
    """
    train_set = datamodule.train_set
    limit = judge_cfg.get("max_train_images")
    if limit is not None and limit < len(train_set):
        train_set = torch.utils.data.Subset(train_set, subset_indices(len(train_set), limit, judge_cfg["seed"]))
    log.info("Training the domain judge (%s%s) on %d real training images", judge_cfg["arch"],
             ", frozen backbone, linear heads" if judge_cfg.get("frozen") else "", len(train_set))
    if judge_cfg.get("frozen"):
        L.seed_everything(judge_cfg["seed"], workers=True, verbose=False)
        model = SkinClassifier(head_sizes(datamodule.info), arch=judge_cfg["arch"], pretrained=judge_cfg["pretrained"],
                               input_size=judge_cfg["input_size"], augment=False)
        return fit_frozen_heads(model, unaugmented(train_set) if not isinstance(train_set, torch.utils.data.Subset) else train_set,
                                judge_cfg["seed"], progress=progress)
    return train_classifier(
        head_sizes(datamodule.info), train_set, judge_cfg["epochs"], judge_cfg["batch_size"], judge_cfg["seed"],
        arch=judge_cfg["arch"], lr=judge_cfg["lr"], augment=True, progress=progress,
        pretrained=judge_cfg["pretrained"], input_size=judge_cfg["input_size"],
        accelerator="gpu" if torch.device(device).type == "cuda" else "cpu",
    )


def _store(folder: Path, model: SkinClassifier, meta: dict[str, Any]) -> None:
    # Written to a temporary folder and renamed, so a concurrent reader never sees half a judge.
    try:
        with atomic_path(folder, directory=True) as temp:
            (temp / "model.safetensors").write_bytes(save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}))
            (temp / "judge.json").write_text(json.dumps(meta, indent=1, default=str))
    except OSError:  # another process stored the same judge first
        pass


def sanity_figures(model: SkinClassifier, test: dict[str, Any], seed: int, noise_std: float) -> dict[str, Any]:
    """Mean accuracy over heads on real validation images, pure noise, and noised real images, beside chance.

    Pure noise and noised images keep the real images' targets: a trustworthy judge scores near
    chance on noise (it cannot see a lesion), so a generator of noise cannot earn conditioning accuracy.
    """
    targets = batch_targets(test, model.heads)
    generator = torch.Generator().manual_seed(seed)
    images = test["image"]
    noise = torch.randn(images.shape, generator=generator).clamp(-1, 1)
    noised = (images + noise_std * torch.randn(images.shape, generator=generator)).clamp(-1, 1)
    figures = {}
    for name, batch in (("val", images), ("pure_noise", noise), (f"noised_std{noise_std:g}", noised)):
        per_head = head_accuracy(model.predict_logits(batch), targets)
        figures[f"{name}_accuracy"] = _mean(per_head)
        figures[f"{name}_per_head"] = per_head
    chance = {}
    for name, target in targets.items():
        known = target[target >= 0]
        chance[name] = float(torch.bincount(known).max() / known.numel()) if known.numel() else None
    figures["chance_accuracy"] = _mean(chance)
    figures["chance_per_head"] = chance
    figures["num_images"] = int(images.shape[0])
    return figures


def _mean(values: dict[str, float | None]) -> float | None:
    known = [v for v in values.values() if v is not None]
    return sum(known) / len(known) if known else None
