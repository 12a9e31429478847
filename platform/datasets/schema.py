"""The one Parquet schema of the platform: what ingestion writes and what training and evaluation read.

One row per 10-second chunk of a source video (the trailing chunk is kept only if it holds a full 4.16 s
window). Arrays are stored flattened, row-major, as float32 lists, with their shape in sibling columns, so
any Parquet reader can load them without custom extension types.

| column             | type                | meaning                                                           |
| ------------------ | ------------------- | ----------------------------------------------------------------- |
| chunk_id           | string              | "{video_id}:{chunk_index:04d}", unique and stable across runs      |
| video_id           | string              | stable id of the source video (sha1 of its URI, 16 hex chars)      |
| source_uri         | string              | the video's URI (local path or s3://...)                          |
| chunk_index        | int32               | 0-based index of the chunk in its video                           |
| start_seconds      | float64             | chunk start in the source                                         |
| duration_seconds   | float64             | chunk length (10 s, or less for a kept trailing chunk)            |
| split              | string              | "train" or "test" (by source video: no leakage)                   |
| label              | string, nullable    | class label from the label index, when there is one               |
| mel                | list<float32>       | normalised log-mel (clipsynth_core.MelFrontend), [n_mels, frames]  |
| n_mels, mel_frames | int32               | its shape                                                         |
| frames_jpeg        | list<binary>        | JPEG frames sized for CLIP (shorter side = image size)            |
| frame_times        | list<float32>       | their timestamps in seconds, relative to the chunk start          |
| image_embeddings   | list<float32>       | CLIP image embeddings of the frames, [num_frames, embed_dim], L2=1 |
| embed_dim          | int32               | CLIP embedding width                                              |
| text_embedding     | list<float32>, null | CLIP text embedding of the label in the query template            |
| clip_model         | string              | CLIP identity, "{model}/{pretrained}"                              |
| audio_decoder      | string              | which decoder served the audio (e.g. "torchcodec", "decord")      |
| video_decoder      | string              | which decoder served the frames                                   |
| audio              | list<int16>, null   | the chunk's 16 kHz mono waveform as 16-bit PCM (HiFi-GAN training, |
|                    |                     | FAD references); null when ingestion ran with --no-audio           |
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = "1"

CHUNK_SCHEMA = pa.schema(
    [
        pa.field("chunk_id", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("chunk_index", pa.int32(), nullable=False),
        pa.field("start_seconds", pa.float64(), nullable=False),
        pa.field("duration_seconds", pa.float64(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=True),
        pa.field("mel", pa.list_(pa.float32()), nullable=False),
        pa.field("n_mels", pa.int32(), nullable=False),
        pa.field("mel_frames", pa.int32(), nullable=False),
        pa.field("frames_jpeg", pa.list_(pa.binary()), nullable=False),
        pa.field("frame_times", pa.list_(pa.float32()), nullable=False),
        pa.field("image_embeddings", pa.list_(pa.float32()), nullable=False),
        pa.field("embed_dim", pa.int32(), nullable=False),
        pa.field("text_embedding", pa.list_(pa.float32()), nullable=True),
        pa.field("clip_model", pa.string(), nullable=False),
        pa.field("audio_decoder", pa.string(), nullable=False),
        pa.field("video_decoder", pa.string(), nullable=False),
        pa.field("audio", pa.list_(pa.int16()), nullable=True),
    ],
    metadata={"clipsynth.schema_version": SCHEMA_VERSION},
)

FAILURE_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
    ]
)

SPLITS = ("train", "test")


def mel_of(row: dict) -> np.ndarray:
    """The row's mel as float32 [n_mels, mel_frames]."""
    return np.asarray(row["mel"], dtype=np.float32).reshape(int(row["n_mels"]), int(row["mel_frames"]))


def image_embeddings_of(row: dict) -> np.ndarray:
    """The row's frame embeddings as float32 [num_frames, embed_dim]."""
    return np.asarray(row["image_embeddings"], dtype=np.float32).reshape(-1, int(row["embed_dim"]))


def text_embedding_of(row: dict) -> np.ndarray | None:
    v = row.get("text_embedding")
    return None if v is None else np.asarray(v, dtype=np.float32)


def audio_of(row: dict) -> np.ndarray | None:
    """The row's waveform as float32 in [-1, 1) at 16 kHz, or None when the shard has no audio."""
    v = row.get("audio")
    return None if v is None else np.asarray(v, dtype=np.int16).astype(np.float32) / 32768.0


def pcm16(wave: np.ndarray) -> np.ndarray:
    """float waveform in [-1, 1] -> int16 PCM (clipped), the storage form of the `audio` column."""
    return np.clip(np.round(np.asarray(wave, dtype=np.float32) * 32767.0), -32768, 32767).astype(np.int16)


def validate_table(table: pa.Table) -> None:
    """Raise ValueError if `table` does not follow CHUNK_SCHEMA (names, types, and array shapes)."""
    missing = [f.name for f in CHUNK_SCHEMA if f.name not in table.column_names]
    if missing:
        raise ValueError(f"shard lacks columns {missing}")
    for f in CHUNK_SCHEMA:
        if not table.schema.field(f.name).type.equals(f.type):
            raise ValueError(f"column {f.name} has type {table.schema.field(f.name).type}, expected {f.type}")
    for row in table.select(["mel", "n_mels", "mel_frames", "image_embeddings", "embed_dim"]).to_pylist():
        if len(row["mel"]) != row["n_mels"] * row["mel_frames"]:
            raise ValueError("mel length does not match n_mels x mel_frames")
        if len(row["image_embeddings"]) % row["embed_dim"]:
            raise ValueError("image_embeddings length is not a multiple of embed_dim")


# Layout of a preprocessed dataset at URI `root`:
#   root/train/*.parquet, root/test/*.parquet   chunk rows (CHUNK_SCHEMA), one directory per split
#   root/_summary.json                          accounting and throughput of the run that wrote it
#   root/_failures.parquet                      FAILURE_SCHEMA rows: inputs that could not be used, and why
SUMMARY_FILE = "_summary.json"
FAILURES_FILE = "_failures.parquet"


def split_dir(root: str, split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    return f"{str(root).rstrip('/')}/{split}"
