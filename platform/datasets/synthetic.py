"""A synthetic preprocessed dataset, written in the real shard schema, for tests, benchmarks and smoke runs.

Each label gets a tone of its own pitch; its mel is computed by the core's MelFrontend from that audio, and
its frame embeddings are the label's CLIP text embedding plus noise, so the condition carries the label and a
model can learn the mapping. No video decoding is involved: use the ingestion job for that.
"""

from __future__ import annotations

import hashlib
import json
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from clipsynth_core import ClipQueryEncoder, MelFrontend

from .schema import CHUNK_SCHEMA, SUMMARY_FILE, pcm16, split_dir

DEFAULT_LABELS = ("violin", "cello", "flute", "trumpet")


def tone(freq: float, seconds: float, sample_rate: int = 16_000, seed: int = 0) -> np.ndarray:
    """A harmonic tone with a little noise, amplitude below 0.5."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wave = sum(np.sin(2 * math.pi * freq * k * t) / k for k in (1, 2, 3)) * 0.25
    return (wave + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)


def write_synthetic_dataset(
    root: str,
    encoder: ClipQueryEncoder,
    labels: tuple[str, ...] = DEFAULT_LABELS,
    videos_per_label: int = 2,
    chunks_per_video: int = 2,
    chunk_seconds: float = 10.0,
    frames_per_chunk: int = 4,
    noise: float = 0.05,
    test_every: int = 0,
    seed: int = 0,
    with_audio: bool = True,
) -> dict:
    """Write root/{train,test}/part-00000.parquet and root/_summary.json; returns the summary.

    Video v of each label goes to the test split when test_every > 0 and v % test_every == test_every - 1.
    """
    mel_fn = MelFrontend()
    rng = np.random.default_rng(seed)
    text = encoder.encode_text(list(labels)).numpy()
    rows: dict[str, list[dict]] = {"train": [], "test": []}
    for li, label in enumerate(labels):
        freq = 220.0 * 2 ** (li * 5 / 12)
        for v in range(videos_per_label):
            uri = f"synthetic://{label}/{v}.mp4"
            vid = hashlib.sha1(uri.encode()).hexdigest()[:16]
            split = "test" if test_every and v % test_every == test_every - 1 else "train"
            for c in range(chunks_per_video):
                audio = tone(freq, chunk_seconds, seed=seed + 1000 * li + 10 * v + c)
                mel = mel_fn(torch.from_numpy(audio)[None])[0].numpy()
                emb = text[li][None] + noise * rng.standard_normal((frames_per_chunk, text.shape[1]))
                emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
                rows[split].append(
                    {
                        "chunk_id": f"{vid}:{c:04d}",
                        "video_id": vid,
                        "source_uri": uri,
                        "chunk_index": c,
                        "start_seconds": c * chunk_seconds,
                        "duration_seconds": chunk_seconds,
                        "split": split,
                        "label": label,
                        "mel": mel.astype(np.float32).ravel().tolist(),
                        "n_mels": mel.shape[0],
                        "mel_frames": mel.shape[1],
                        "frames_jpeg": [b""] * frames_per_chunk,
                        "frame_times": [float(i) for i in range(frames_per_chunk)],
                        "image_embeddings": emb.astype(np.float32).ravel().tolist(),
                        "embed_dim": text.shape[1],
                        "text_embedding": text[li].astype(np.float32).tolist(),
                        "clip_model": encoder.config.identity,
                        "audio_decoder": "synthetic",
                        "video_decoder": "synthetic",
                        "audio": pcm16(audio).tolist() if with_audio else None,
                    }
                )
    for split, split_rows in rows.items():
        os.makedirs(split_dir(root, split), exist_ok=True)
        if split_rows:
            pq.write_table(
                pa.Table.from_pylist(split_rows, schema=CHUNK_SCHEMA), f"{split_dir(root, split)}/part-00000.parquet"
            )
    n_videos = len(labels) * videos_per_label
    summary = {
        "videos_in": n_videos,
        "videos_ok": n_videos,
        "videos_failed": 0,
        "chunks_written": sum(len(r) for r in rows.values()),
        "chunks_by_split": {k: len(v) for k, v in rows.items()},
        "synthetic": True,
    }
    with open(os.path.join(root, SUMMARY_FILE), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
