"""The hybrid's text encoder: offline default, shapes, and the embedding cache (memory and disk)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.text_encoder import TextEncoder, bundled_minilm_path

CAPTIONS = ["dermoscopic image of a malignant lesion with an irregular border", "normal skin, Fitzpatrick type II", ""]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("text_cache")


def test_default_encoder_is_bundled_and_offline() -> None:
    path = bundled_minilm_path()
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()


def test_shapes_and_pooling(cache_dir: Path) -> None:
    encoder = TextEncoder(cache_dir=str(cache_dir))
    out = encoder(CAPTIONS)
    longest = int(out.mask.sum(1).max())
    assert out.tokens.shape == (3, longest, 384) and out.mask.shape == (3, longest) and out.pooled.shape == (3, 384)
    assert torch.allclose(out.pooled.norm(dim=1), torch.ones(3), atol=1e-3)  # sentence-transformers normalises
    assert not out.tokens[~out.mask].any()  # padding is zero, and masked out for cross-attention
    assert list(encoder.state_dict()) == []  # frozen weights stay out of checkpoints
    assert not any(p.requires_grad for p in encoder.network.parameters())
    similar = torch.nn.functional.cosine_similarity(out.pooled[0], encoder(["a malignant lesion, irregular border"]).pooled[0], dim=0)
    unrelated = torch.nn.functional.cosine_similarity(out.pooled[0], out.pooled[1], dim=0)
    assert similar > unrelated  # a real sentence encoder, not random vectors


def test_cache_never_reruns_the_encoder_for_a_seen_caption(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    encoder = TextEncoder(cache_dir=str(cache_dir / "memory"))
    calls: list[int] = []
    network = encoder.network
    original = network.forward
    monkeypatch.setattr(network, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    first = encoder(CAPTIONS)
    assert len(calls) == 1 and encoder.encoder_calls == 3
    again = encoder(CAPTIONS[::-1] + CAPTIONS)  # all seen: no network call at all
    assert len(calls) == 1 and encoder.encoder_calls == 3
    torch.testing.assert_close(again.pooled[:3], first.pooled.flip(0), rtol=0, atol=1e-3)  # fp16 storage
    encoder([CAPTIONS[0], "a new caption"])  # only the unseen caption runs
    assert len(calls) == 2 and encoder.encoder_calls == 4


def test_disk_cache_is_reloaded_by_a_new_encoder(cache_dir: Path) -> None:
    directory = cache_dir / "disk"
    first = TextEncoder(cache_dir=str(directory))
    before = first(CAPTIONS)
    first.flush()
    assert list(directory.rglob("*.safetensors"))
    second = TextEncoder(cache_dir=str(directory))
    after = second(CAPTIONS)
    assert second.encoder_calls == 0
    assert torch.equal(after.tokens, before.tokens) and torch.equal(after.pooled, before.pooled)
    other_key = TextEncoder(cache_dir=str(directory), max_length=8)  # another key: computed afresh, truncated
    assert other_key(CAPTIONS).tokens.shape[1] == 8 and other_key.encoder_calls == 3


def test_trainable_encoder_has_gradients_and_no_cache(cache_dir: Path) -> None:
    encoder = TextEncoder(cache_dir=str(cache_dir), trainable=True, lr=1e-5)
    assert encoder.cache is None and any(p.requires_grad for p in encoder.parameters())
    out = encoder(CAPTIONS[:2])
    out.pooled.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())
    assert any(k.startswith("encoder.") for k in encoder.state_dict())  # trained weights are saved
