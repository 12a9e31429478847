"""The two baselines of Table 1 besides the diffusion models: CLIPRetriever (the nearest train-split frame's
audio for each query) and the vocoder's reconstructions of the test mels."""

from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass
from typing import cast

import numpy as np
import torch

from clipsynth_core import ClipRetriever, frames_for_seconds
from clipsynth_platform.datasets.schema import audio_of, image_embeddings_of, mel_of
from clipsynth_platform.datasets.splits import gather_rows, iter_split_batches, iter_split_rows

from .generation import GeneratedSet, SampleSpec
from .references import References


@dataclass(frozen=True)
class RetrievalStats:
    """How the retriever's index was used (logged as metrics and in queries.json)."""

    retriever_index_entries: int
    retriever_distinct_hits: int
    retriever_vocoded_clips: int  # retrieved clips without stored audio, heard through the bundle's vocoder

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _train_frame_index(references: References) -> tuple[list[np.ndarray], list[tuple[int, float]]]:
    """Every train frame's stored CLIP embedding, and its (train row, frame time)."""
    identity = references.context.synth.config.clip.identity
    embeddings: list[np.ndarray] = []
    entries: list[tuple[int, float]] = []
    columns = ["image_embeddings", "embed_dim", "frame_times", "clip_model"]
    for start, rows in iter_split_batches(references.context.config.data, "train", columns, 256):
        for k, row in enumerate(rows):
            if row["clip_model"] != identity:
                raise ValueError(f"train row {start + k} was embedded with {row['clip_model']!r}, not {identity!r}")
            emb = image_embeddings_of(row)
            embeddings.append(emb)
            entries.extend((start + k, float(t)) for t in row["frame_times"][: len(emb)])
    if not entries:
        raise ValueError("the retriever's index is empty: no frames in the train split")
    return embeddings, entries


def _nearest_entries(retriever: ClipRetriever, specs: list[SampleSpec]) -> torch.Tensor:
    kind = specs[0].kind
    if kind == "text":
        return retriever.synthesize([s.text for s in specs])[:, 0]
    if kind == "embedding":
        stored = [cast(np.ndarray, s.embedding) for s in specs]  # the kind says every spec carries one
        return retriever.nearest(torch.from_numpy(np.stack(stored)), 1)[1][:, 0]
    from PIL import Image

    pictures = [Image.open(io.BytesIO(cast(bytes, s.jpeg))).convert("RGB") for s in specs]
    return retriever.synthesize(pictures)[:, 0]


def retrieve(references: References, specs: list[SampleSpec]) -> GeneratedSet:
    """CLIPRetriever over every frame of the train split; returns the retrieved clips' windows."""
    t0 = time.perf_counter()
    ctx = references.context
    embeddings, entries = _train_frame_index(references)
    # The index's "audio" is the entry id, so the M clips stay on disk; the retrieved ones are read below.
    retriever = ClipRetriever(
        ctx.synth.encoder, torch.from_numpy(np.concatenate(embeddings)), torch.arange(len(entries))[:, None]
    )
    hits = _nearest_entries(retriever, specs)
    picked = [entries[int(h)] for h in hits]
    picked_rows = gather_rows(
        ctx.config.data, "train", ["audio", "mel", "n_mels", "mel_frames"], sorted({r for r, _ in picked})
    )
    mel_config = ctx.synth.config.mel
    frames = frames_for_seconds(ctx.config.seconds, mel_config)
    hop, sr = mel_config.hop_length, mel_config.sample_rate
    mels, waves = [], []
    vocoded = 0
    for row_id, t in picked:
        row = picked_rows[row_id]
        mel = mel_of(row)
        if mel.shape[1] < frames:
            raise ValueError(f"train row {row_id} has {mel.shape[1]} mel frames, fewer than {frames}")
        # The window centred on the frame's time, kept inside the chunk.
        centre = round(t * sr / hop)
        start = int(min(max(centre - frames // 2, 0), mel.shape[1] - frames))
        window = mel[:, start : start + frames]
        audio = audio_of(row)
        if audio is not None and len(audio) >= (start + frames) * hop:
            wave = audio[start * hop : (start + frames) * hop]
        else:
            wave = references.vocode([window])[0]
            vocoded += 1
        mels.append(window)
        waves.append(wave)
    stats = RetrievalStats(len(entries), len(set(int(h) for h in hits)), vocoded)
    return GeneratedSet(specs, np.stack(mels), np.stack(waves), seconds=time.perf_counter() - t0, extra=stats.to_dict())


def reconstructions(references: References, count: int) -> GeneratedSet:
    """The vocoder's reconstructions of the first test mels' first windows (artifacts of the recon run)."""
    ctx = references.context
    frames = ctx.synth.config.mel.segment_frames
    rows = list(iter_split_rows(ctx.config.data, "test", ["mel", "n_mels", "mel_frames", "label"]))[:count]
    mels = np.stack([mel_of(r)[:, :frames] for r in rows])
    specs = [SampleSpec(index=i, seed=0, label=r["label"], row=i) for i, r in enumerate(rows)]
    return GeneratedSet(specs, mels, np.stack(references.vocode(list(mels))))
