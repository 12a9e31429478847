"""The training data path without a Ray cluster: windows and conditions cut from chunks, vocoder segments,
passes lengthened over small datasets, endless streamed batches, and batches cut from rows cached in a worker."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipsynth_platform.train import DatasetError
from clipsynth_platform.train.data import (
    CachedRows,
    cached_batches,
    diffusion_examples,
    endless_batches,
    repeat_factor,
    should_cache,
    training_batches,
    vocoder_examples,
)


def _chunk_batch() -> dict:
    """Two chunks whose mel values encode (chunk, band, frame), so any window can be located exactly."""
    rows = []
    for c, frames in enumerate((80, 70)):
        mel = np.array([[1000 * c + 100 * b + f for f in range(frames)] for b in range(4)], dtype=np.float32)
        rows.append(
            {
                "chunk_id": f"v:{c}",
                "mel": mel.ravel(),
                "n_mels": 4,
                "mel_frames": frames,
                "image_embeddings": (np.arange(3 * 5, dtype=np.float32) + 100 * c).ravel(),
                "embed_dim": 5,
                "text_embedding": None if c == 1 else np.full(5, -1.0, np.float32),
            }
        )
    return {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}


def _source(window: np.ndarray) -> tuple[int, int]:
    """(chunk, start frame) of a window cut from _chunk_batch's mels."""
    c, start = divmod(int(window[0, 0]), 1000)
    return c, start


@pytest.mark.parametrize("variant", ["image", "text", "hybrid"])
def test_diffusion_examples_cut_windows_and_pick_conditions(variant):
    batch = _chunk_batch()
    out = diffusion_examples(batch, variant=variant, window_frames=8, repeat=200, seed=3)
    kinds = set()
    for window, cond in zip(out["mel"], out["cond"]):
        c, start = _source(window)
        expected = np.array([[1000 * c + 100 * b + start + f for f in range(8)] for b in range(4)])
        np.testing.assert_array_equal(window, expected)
        frames = (80, 70)[c]
        assert 0 <= start <= frames - 8
        images = (np.arange(15, dtype=np.float32) + 100 * c).reshape(3, 5)
        if np.all(cond == -1.0):
            kinds.add("text")
            assert c == 0
        else:
            kinds.add("image")
            assert any(np.array_equal(cond, row) for row in images)
    assert out["mel"].dtype == np.float32 and out["cond"].shape[1] == 5
    if variant == "text":
        assert len(out["mel"]) == 200 and kinds == {"text"}  # the chunk without a label text is dropped
    elif variant == "image":
        assert len(out["mel"]) == 400 and kinds == {"image"}
    else:
        assert len(out["mel"]) == 400 and kinds == {"text", "image"}
        text_share = np.mean([np.all(c == -1.0) for c in out["cond"][:200]])
        assert 0.35 < text_share < 0.65  # chunk 0 has a text embedding: about half of its examples use it


def test_diffusion_examples_reject_short_chunks():
    with pytest.raises(ValueError, match="fewer than the 128-frame window"):
        diffusion_examples(_chunk_batch(), variant="image", window_frames=128)


def test_vocoder_examples_are_slices_of_the_pcm():
    pcm = (np.arange(5000) % 2000 - 1000).astype(np.int16)
    batch = {"audio": np.array([pcm, None, pcm[:100]], dtype=object)}
    out = vocoder_examples(batch, segment_samples=1024, repeat=3, seed=0)["audio"]
    assert out.shape == (6, 1024) and out.dtype == np.float32
    full = pcm.astype(np.float32) / 32768.0
    for seg in out[:3]:
        assert any(np.array_equal(full[s : s + 1024], seg) for s in range(5000 - 1023)), "not a slice of the audio"
    short = out[3:]
    np.testing.assert_array_equal(short[:, :100], np.tile(full[:100], (3, 1)))
    assert not short[:, 100:].any()  # zero padding after short audio


def test_repeat_factor_lengthens_passes_over_small_datasets():
    assert repeat_factor(16, 1, 2048) == 128
    assert repeat_factor(100_000, 1, 2048) == 1
    assert repeat_factor(100_000, 3, 2048) == 3


class _FakeShard:
    def __init__(self, passes: list[list[int]]):
        self.passes = passes
        self.calls = 0

    def iter_torch_batches(self, batch_size, local_shuffle_buffer_size=None, device="auto"):
        sizes = self.passes[min(self.calls, len(self.passes) - 1)]
        self.calls += 1
        start = 0
        for n in sizes:
            yield {"x": torch.arange(start, start + n)}
            start += n


def test_endless_batches_fill_every_batch_across_passes():
    gen = endless_batches(_FakeShard([[3, 3, 1]]), batch_size=4)
    got = [next(gen)["x"].tolist() for _ in range(7)]
    stream = [i for _ in range(4) for i in range(7)]  # 7 examples per pass, concatenated
    assert got == [stream[4 * k : 4 * k + 4] for k in range(7)]
    with pytest.raises(DatasetError, match="yielded no examples"):
        next(endless_batches(_FakeShard([[]]), batch_size=4))


class _RowShard:
    """A dataset shard of raw rows (what a cached run reads), counting how often it is iterated."""

    def __init__(self, batch: dict):
        self.batch, self.passes = batch, 0

    def iter_batches(self, batch_size, batch_format="numpy"):
        self.passes += 1
        n = len(next(iter(self.batch.values())))
        for start in range(0, n, batch_size):
            yield {k: v[start : start + batch_size] for k, v in self.batch.items()}


def _diffusion_maker(variant: str):
    return lambda rows, seed: diffusion_examples(rows, variant=variant, window_frames=8, seed=seed)


def test_cached_batches_cut_windows_from_rows_drawn_uniformly():
    shard = _RowShard(_chunk_batch())
    rows = CachedRows.from_shard(shard, rows_per_batch=1)  # two reads of one row each
    assert len(rows) == 2 and shard.passes == 1
    gen = cached_batches(rows, _diffusion_maker("image"), batch_size=5, seed=11)
    chunks = []
    for _ in range(80):
        batch = next(gen)
        assert batch["mel"].shape == (5, 4, 8) and batch["cond"].shape == (5, 5)
        assert batch["mel"].dtype == torch.float32
        for window, cond in zip(batch["mel"].numpy(), batch["cond"].numpy()):
            c, start = _source(window)
            expected = np.array([[1000 * c + 100 * b + start + f for f in range(8)] for b in range(4)])
            np.testing.assert_array_equal(window, expected)  # a real window of the row it names
            images = (np.arange(15, dtype=np.float32) + 100 * c).reshape(3, 5)
            assert any(np.array_equal(cond, row) for row in images)  # one of that row's own frames
            chunks.append(c)
    # 400 draws of 2 rows, each with probability 1/2: the count of row 0 is Binomial(400, 1/2) (sd 10)
    assert 150 < chunks.count(0) < 250
    assert shard.passes == 1  # the rows were read once, however many batches were cut
    again = cached_batches(CachedRows.from_shard(_RowShard(_chunk_batch())), _diffusion_maker("image"), 5, seed=11)
    np.testing.assert_array_equal(
        next(again)["mel"], next(cached_batches(rows, _diffusion_maker("image"), 5, 11))["mel"]
    )


def test_cached_batches_redraw_rows_a_transform_drops():
    gen = cached_batches(CachedRows(_chunk_batch()), _diffusion_maker("text"), batch_size=6, seed=0)
    for _ in range(10):
        batch = next(gen)
        assert batch["mel"].shape[0] == 6  # full, although chunk 1 (no label text) makes no example
        assert torch.all(batch["cond"] == -1.0) and all(_source(w.numpy())[0] == 0 for w in batch["mel"])
    unlabeled = {**_chunk_batch(), "text_embedding": np.array([None, None], dtype=object)}
    with pytest.raises(DatasetError, match="made no example"):
        next(cached_batches(CachedRows(unlabeled), _diffusion_maker("text"), batch_size=2, seed=0))
    with pytest.raises(DatasetError, match="holds no rows"):
        CachedRows.from_shard(_RowShard({"mel": np.zeros(0)}))


def test_training_batches_stream_or_cache():
    streamed = training_batches(
        _FakeShard([[4]]), cached=False, make_examples=None, batch_size=4, shuffle_buffer=0, seed=0
    )
    assert next(streamed)["x"].tolist() == [0, 1, 2, 3]  # the streamed examples, untouched
    shard = _RowShard(_chunk_batch())
    cached = training_batches(
        shard, cached=True, make_examples=_diffusion_maker("image"), batch_size=3, shuffle_buffer=0, seed=0
    )
    assert next(cached)["mel"].shape == (3, 4, 8) and shard.passes == 1


def test_should_cache_follows_the_mode_and_the_share():
    assert should_cache("on", 5e9, 1024) and not should_cache("off", 1, 1024)
    assert should_cache("auto", 1024e6, 1024) and not should_cache("auto", 1024e6 + 1, 1024)
    assert not should_cache("auto", 1, 0)
    with pytest.raises(ValueError, match="auto, on or off"):
        should_cache("always", 1, 1)
