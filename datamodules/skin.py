"""``SkinDataModule``: one LightningDataModule for every generator and every data source.

    dm = SkinDataModule(source="phantom", num_workers=0, num_train=10000, num_val=500, num_test=500, allow_upscale=False,
                         holdout_combos=(), holdout_paraphrases=0)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    # batch["image"] (B, 3, H, W) in [-1, 1]; batch["caption"] list[str]; batch["label"] (B,) long;
    # batch["attributes"][name] (B,) long, -1 unknown; batch["skin_tone"] (B,) long, 1-6, 0 unknown;
    # batch["ita"] (B,) float degrees, NaN unknown; batch["tone_group"] (B,) long ITA group 1-6, 0 unknown

Images come from the source's uint8 cache (rendered or decoded once, memory-mapped); items only
convert, augment (training split) and attach the ground truth, so loading is cheap enough for
any CPU training step.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from datamodules import captions as caption_templates
from datamodules.cache import default_cache_dir
from datamodules.holdout import Holdout, draw_conditions, fingerprint_with, matches, resolve_combos
from datamodules.info import DataInfo
from datamodules.resumable import ResumableBatchSampler, ShuffledShard, rank_and_world
from datamodules.sampling import ClassBalancedSampler, class_shares
from datamodules.sources import SourceRequest, SourceTable, get_source
from datamodules.sources.base import SplitTable, stratified_fraction
from datamodules.transforms import Augment, Preprocess, to_tensor

log = logging.getLogger(__name__)
# torchdata's StatefulDataLoader calls a torch API deprecated after its release; the note is not ours to act on.
warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)


class SkinDataset(Dataset):
    """One split; each item is the batch contract for one image (the default collate stacks them).

    Attributes:
        image_ids: one id per image (file stem, or ``phantom-<seed>-<split>-<index>``), for auditing.
        lesion_ids: lesion per image where the source has lesions (HAM10000), else None.
        labels: (N,) int64 diagnosis indices.
    """

    def __init__(
        self, table: SplitTable, augment: Augment | None = None, with_reference: bool = False, with_index: bool = False,
        with_pose: bool = False,
    ):
        self.table = table
        self.augment = augment
        self.with_reference = with_reference
        self.with_index = with_index
        self.with_pose = with_pose
        self.image_ids = table.image_ids
        self.lesion_ids = table.lesion_ids
        self.labels = table.labels
        self.captions = table.captions
        self.attributes = table.attributes
        self.skin_tone = table.skin_tone
        self.ita = table.ita
        self.tone_group = table.tone_group
        self._same_label = {int(k): np.flatnonzero(table.labels == k) for k in np.unique(table.labels)} if with_reference else {}

    def __len__(self) -> int:
        return len(self.table)

    def image(self, index: int) -> Tensor:
        image = self.table.images[index]  # (H, W, 3) uint8 view of the memory map
        return self.augment(image) if self.augment is not None else to_tensor(image)

    def posed_image(self, index: int) -> tuple[Tensor, int]:
        """The (augmented) image and its dihedral pose (``transforms.posed``; 0 without augmentation)."""
        image = self.table.images[index]
        return self.augment.posed(image) if self.augment is not None else (to_tensor(image), 0)

    def __getitem__(self, index: int) -> dict[str, Any]:
        # Python ints, not 0-d tensors: the default collate turns a batch of ints into one long
        # tensor in a single call, which keeps the per-item cost a few microseconds.
        image, pose = self.posed_image(index)
        item = {
            "image": image,
            "caption": self.captions[index],
            "label": int(self.labels[index]),
            "attributes": {name: int(values[index]) for name, values in self.attributes.items()},
            "skin_tone": int(self.skin_tone[index]),
            "ita": float(self.ita[index]),
            "tone_group": int(self.tone_group[index]),
        }
        if self.with_reference:
            item["reference"] = self.image(self.reference_index(index))
        if self.with_index or self.with_pose:
            item["index"] = int(index)
        if self.with_pose:
            item["pose"] = pose
        return item

    def reference_index(self, index: int) -> int:
        """A different image of the same label (the image itself only when its label has no other)."""
        pool = self._same_label[int(self.labels[index])]
        if len(pool) < 2:
            return index
        pick = int(pool[torch.randint(len(pool) - 1, ()).item()])
        return pick if pick != index else int(pool[-1])


def collate_batch(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack items into the batch contract; every integer field shares one (K, B) tensor.

    Same result as the default collate, but a worker hands the main process two tensors per
    batch instead of one per field, which nearly doubles loader throughput with workers.
    """
    names = list(items[0]["attributes"])
    ints = torch.tensor([[item["label"], item["skin_tone"], item["tone_group"], *(item["attributes"][n] for n in names)]
                         for item in items]).T.contiguous()
    batch = {
        "image": torch.stack([item["image"] for item in items]),  # (B, 3, H, W)
        "caption": [item["caption"] for item in items],
        "label": ints[0],
        "attributes": {name: ints[3 + k] for k, name in enumerate(names)},
        "skin_tone": ints[1],
        "ita": torch.tensor([item["ita"] for item in items], dtype=torch.float32),
        "tone_group": ints[2],
    }
    if "reference" in items[0]:
        batch["reference"] = torch.stack([item["reference"] for item in items])
    for key in ("index", "pose"):
        if key in items[0]:
            batch[key] = torch.tensor([item[key] for item in items])
    return batch


SAMPLER_KEYS = ("label", "tone")


def check_settings(
    source: str, on_bad_image: str, sampler: str, sampler_temperature: float, sizes: tuple[int | None, ...], train_fraction: float,
    sampler_key: str = "label",
) -> None:
    """Clear errors for bad data settings at construction, not at the first epoch."""
    stratified_fraction(np.zeros(1), train_fraction, 0)  # validates the fraction
    if on_bad_image not in ("error", "skip"):
        raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
    if sampler not in ("natural", "balanced"):
        raise ValueError(f"data.sampler must be 'natural' or 'balanced', got {sampler!r}")
    if sampler_key not in SAMPLER_KEYS:
        raise ValueError(f"data.sampler_key must be one of {', '.join(SAMPLER_KEYS)}, got {sampler_key!r}")
    class_shares([1], sampler_temperature)  # validates the temperature
    if source == "phantom" and None in sizes:
        raise ValueError("the phantom renders a fixed number of images per split: set data.num_train, data.num_val and data.num_test")


class SkinDataModule(L.LightningDataModule):
    """Skin images of one ``source`` at ``image_size`` (see DESIGN.md section 4 and ``experiments/configs/data``).

    Args:
        source: ``phantom`` | ``ham10000`` | ``isic`` | ``dermamnist`` | ``folder``.
        image_size: side of the square images in pixels.
        num_workers: loader processes (0 loads in the training process).
        root / csv: data folder and metadata/caption CSV of file-based sources.
        seed: the run's seed: the training shuffle.
        split_seed: the data set itself, independent of ``seed`` so that every training seed sees
            the same data: the phantom's rendering, real sources' train/val/test split, per-split
            subsets and caption phrasings.
        num_train / num_val / num_test: phantom split sizes; for other sources caps per split
            (a seeded subset), None for the whole split.
        train_fraction: keep this class-stratified share of the training split (seeded by
            ``split_seed``, nested across fractions; ``sources.base.stratified_fraction``), the
            scarce-data setting; val and test are untouched. It changes the data fingerprint.
        val_fraction / test_fraction: split shares where the source has no official split.
        cache_dir: where decoded images live; default ``$DERMSYNTH_CACHE`` or ``~/.cache/dermsynth``.
        with_reference: training items also carry ``reference``, another image of the same label.
        with_index: training items also carry ``index``, their position in the training split (the
            hybrid's table references and retrieval prior leave the target out by it).
        with_pose: training items also carry ``pose``, the dihedral pose (0-7) the augmentation gave
            the image, and ``index`` (the latent route's cached latents are looked up by both).
        sampler: ``natural`` (each training image once per epoch) or ``balanced`` (shares of the
            ``sampler_key`` groups tempered by ``sampler_temperature``: 0 natural, 1 equal; ``datamodules.sampling``).
        sampler_key: what ``balanced`` balances: ``label`` (diagnosis) or ``tone`` (the Fitzpatrick type where
            the data records one, else the ITA tone group; images of unknown tone are one more group).
        holdout_combos: attribute combinations removed from the training split, e.g.
            ``[{diagnosis: malignant, skin_tone: 6, hair: true}]`` (``datamodules.holdout``).
        holdout_paraphrases: caption frames (the source's last ones) that caption no stored image.
        augment / augment_flips / augment_rot90 / augment_brightness: training-split augmentation.
        denoise_sigma / color_constancy: preprocessing applied once before caching.
        class_names: fixes the class vocabulary of ``isic`` and ``folder`` (unknown labels then fail).
        on_bad_image: ``error`` (default) or ``skip`` unreadable images, logging their names.
        allow_upscale: accept images smaller than ``image_size`` (else an error names them).
    """

    @classmethod
    def from_config(cls, name: str, *, budget: str = "quick", **overrides: Any) -> "SkinDataModule":
        """The data module ``data=<name>`` builds in a run, without a command line: for notebooks.

        ``SkinDataModule.from_config("ham10000", root="/data/ham10000", image_size=64)``: the shipped
        ``experiments/configs/data/<name>.yaml`` composed with the run config (``budget`` gives the image
        size and batch size, as in a run), then ``overrides`` on the data keys; an unknown key fails
        naming the valid ones. Set up and ready for ``train_dataloader()``.
        """
        from hydra import compose, initialize_config_dir
        from hydra.utils import instantiate
        from omegaconf import OmegaConf, open_dict

        config_dir = Path(__file__).resolve().parents[1] / "experiments" / "configs"  # the YAML the commands use
        options = sorted(p.stem for p in (config_dir / "data").glob("*.yaml"))
        if name not in options:
            raise ValueError(f"SkinDataModule.from_config: no data config {name!r}; choose one of {', '.join(options)}")
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            data = compose("config", overrides=[f"data={name}", f"budget={budget}"]).data
        unknown = sorted(set(overrides) - set(data))
        if unknown:
            raise ValueError(f"SkinDataModule.from_config({name!r}): unknown data keys {unknown}; valid: {', '.join(sorted(data))}")
        with open_dict(data):
            data.merge_with(overrides)
        missing = sorted(key for key in data if OmegaConf.is_missing(data, key))
        if missing:
            raise ValueError(f"SkinDataModule.from_config({name!r}): give {', '.join(f'{k}=...' for k in missing)}")
        datamodule = instantiate(data)
        datamodule.prepare_data()
        datamodule.setup()
        return datamodule

    def __init__(
        self,
        source: str,
        num_workers: int,
        num_train: int | None,
        num_val: int | None,
        num_test: int | None,
        allow_upscale: bool,
        holdout_combos: Sequence[dict[str, Any]],
        holdout_paraphrases: int,
        image_size: int = 32,
        batch_size: int = 32,
        seed: int = 0,
        split_seed: int = 0,
        root: str | None = None,
        csv: str | None = None,
        train_fraction: float = 1.0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        cache_dir: str | None = None,
        with_reference: bool = False,
        with_index: bool = False,
        with_pose: bool = False,
        sampler: str = "natural",
        sampler_temperature: float = 1.0,
        sampler_key: str = "label",
        augment: bool = True,
        augment_flips: bool = True,
        augment_rot90: bool = True,
        augment_brightness: float = 0.1,
        denoise_sigma: float = 0.0,
        color_constancy: bool = False,
        class_names: list[str] | None = None,
        on_bad_image: str = "error",
        pin_memory: bool = False,
        persistent_workers: bool = True,
        progress: bool = True,
    ):
        super().__init__()
        check_settings(source, on_bad_image, sampler, sampler_temperature, (num_train, num_val, num_test), train_fraction, sampler_key)
        self.source, self.batch_size, self.num_workers, self.seed = source, batch_size, num_workers, seed
        self.with_reference, self.with_index, self.train_fraction = with_reference, with_index, float(train_fraction)
        self.with_pose = bool(with_pose)
        self.balanced, self.sampler_temperature, self.sampler_key = sampler == "balanced", float(sampler_temperature), sampler_key
        self._holdout_combos = [dict(combo) for combo in holdout_combos or ()]
        self.holdout = Holdout(paraphrases=int(holdout_paraphrases))  # combos resolved against the vocabulary in setup
        self.pin_memory, self.persistent_workers = pin_memory, persistent_workers
        self.augmentation = Augment(augment_flips, augment_rot90, augment_brightness) if augment else None
        self.request = SourceRequest(
            image_size=int(image_size), seed=int(seed), split_seed=int(split_seed), holdout_paraphrases=int(holdout_paraphrases),
            cache_dir=Path(cache_dir).expanduser() if cache_dir else default_cache_dir(),
            root=Path(root) if root else None, csv=Path(csv) if csv else None,
            num_train=num_train, num_val=num_val, num_test=num_test,
            val_fraction=float(val_fraction), test_fraction=float(test_fraction),
            class_names=tuple(class_names) if class_names else None, on_bad_image=on_bad_image,
            allow_upscale=bool(allow_upscale), preprocess=Preprocess(float(denoise_sigma), bool(color_constancy)), progress=progress,
        )
        self._load = get_source(source)  # fails at once, listing the valid sources
        self.table: SourceTable | None = None
        self.train_set: SkinDataset | None = None
        self.val_set: SkinDataset | None = None
        self.test_set: SkinDataset | None = None
        self._info: DataInfo | None = None

    def prepare_data(self) -> None:
        """Build the caches (rank 0 of each node under DDP); ``setup`` on the other ranks then only maps them."""
        self.setup()

    def setup(self, stage: str | None = None) -> None:
        if self.table is not None:
            return
        table = self._load(self.request)
        self.holdout = Holdout(resolve_combos(self._holdout_combos, table.info), self.holdout.paraphrases)
        if self.holdout.paraphrases and any(split.caption_inputs is None for split in table.splits.values()):
            raise ValueError(f"data.holdout_paraphrases: source {self.source!r} takes its captions from its files, not from caption frames")
        if self.holdout.combos:
            held_out = matches(table.splits["train"], self.holdout.combos)
            log.info("data.holdout_combos: %d of %d training images held out", int(held_out.sum()), len(held_out))
            table.splits["train"] = table.splits["train"].select(np.flatnonzero(~held_out))
        if self.train_fraction < 1.0:  # the fingerprint follows: it hashes the training split's image ids
            rows = stratified_fraction(table.splits["train"].labels, self.train_fraction, self.request.split_seed)
            table.splits["train"] = table.splits["train"].select(rows)
        self.table = table
        self._info = replace(table.info, fingerprint=fingerprint_with(table.fingerprint(), self.holdout))
        self.train_set = SkinDataset(table.splits["train"], self.augmentation, self.with_reference, self.with_index, self.with_pose)
        self.val_set = SkinDataset(table.splits["val"])
        self.test_set = SkinDataset(table.splits["test"])

    @property
    def info(self) -> DataInfo:
        if self._info is None:
            self.setup()
        return self._info

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.info.class_names

    @property
    def attribute_names(self) -> tuple[str, ...]:
        return self.info.attribute_names

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    def sample_conditions(self, num: int, seed: int, *, split: str = "train", holdout: str | None = None) -> dict[str, Any]:
        """``num`` conditions (caption, label, attributes, skin_tone, ita, tone_group) drawn with replacement from ``split``'s rows.

        Args:
            split: whose metadata supplies the label / attribute / tone mix (``train``, ``val``, ``test``).
            holdout: None, the training prompt distribution (each row's own caption); ``"paraphrase"``,
                the same rows captioned only in held-out frames; ``"combo"``, rows of the held-out
                combinations only (``split`` val or test), with their own captions; ``"balanced"``, every
                diagnosis of the split equally often, each row with its own caption; ``"tone"``, every skin
                tone of the split (``DataInfo.tone_field``) equally often, rows of known tone only.
        """
        self.setup()
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        table = self.table.splits[split]
        return draw_conditions(table, self.info, num, seed, split=split, kind=holdout, holdout=self.holdout)

    def caption_for(self, label: int, attributes: dict[str, int], skin_tone: int = 0, seed: int = 0, tone_group: int = 0) -> str:
        """A caption for chosen values (any combination; unknown = -1 / tone 0 is left out), in a training frame.

        ``tone_group``: an ITA tone group 1-6 (very light .. dark), named where the data has no Fitzpatrick types.
        """
        training_frames, _ = caption_templates.frames_of(self.info, self.holdout.paraphrases)
        return caption_templates.caption_for(self.info, label, attributes, skin_tone, seed, frames=training_frames, tone_group=tone_group)

    def sampler_groups(self) -> np.ndarray:
        """(N,) group of every training image that ``sampler=balanced`` balances (``sampler_key``)."""
        self.setup()
        table = self.table.splits["train"]
        if self.sampler_key == "label":
            return table.labels
        if self.info.tone_field is None or not table.tones(self.info).any():
            raise ValueError(f"data.sampler_key=tone: no training image of source {self.source!r} has a known skin tone")
        return table.tones(self.info)

    def parse_caption(self, text: str) -> dict[str, Any]:
        return caption_templates.parse_caption(text, self.info)

    def _loader(self, dataset: SkinDataset, train: bool) -> DataLoader:
        common = dict(
            num_workers=self.num_workers, pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0, collate_fn=collate_batch,
        )
        if train:  # a seeded order that shards across DDP ranks itself; Lightning saves and restores the position
            if self.balanced:
                order = ClassBalancedSampler(self.sampler_groups(), self.sampler_temperature, seed=self.seed)
            else:
                order = ShuffledShard(len(dataset), shuffle=True, seed=self.seed)
            batches = ResumableBatchSampler(order, self.batch_size, drop_last=len(dataset) >= self.batch_size)
            # its own generator: a new epoch's iterator must not draw from the global one (resume parity)
            return StatefulDataLoader(dataset, batch_sampler=batches, generator=torch.Generator().manual_seed(self.seed), **common)
        rank, world = rank_and_world()
        sampler = DistributedSampler(dataset, world, rank, shuffle=False) if world > 1 else None
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, **common)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.test_set, train=False)
