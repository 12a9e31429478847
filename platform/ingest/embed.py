"""The CLIP stage: frozen CLIP image embeddings of every stored frame, and the label's text embedding.

Runs as a Ray Data actor pool (the model loads once per actor), on a GPU when the job has one. Embeddings are
computed from the stored JPEGs, so anyone can recompute them from a shard.
"""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .records import RECORD_CHUNK, RECORD_CHUNK_FAILED

# Frames per forward pass: bounds the float32 pre-processing buffer (64 x 3 x 224 x 398 x 4 B = 68 MB).
FRAMES_PER_FORWARD = 64


def decode_jpeg(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def embed_frames(encoder, frames: list[np.ndarray]) -> np.ndarray:
    """L2-normalised CLIP embeddings [len(frames), D] of RGB uint8 frames of any sizes."""
    out = np.zeros((len(frames), encoder.embed_dim), dtype=np.float32)
    by_shape: dict[tuple, list[int]] = {}
    for i, f in enumerate(frames):
        by_shape.setdefault(f.shape, []).append(i)
    for idx in by_shape.values():
        for s in range(0, len(idx), FRAMES_PER_FORWARD):
            part = idx[s : s + FRAMES_PER_FORWARD]
            out[part] = encoder.encode_image(np.stack([frames[i] for i in part])).cpu().numpy()
    return out


class ClipEmbedder:
    """Ray Data callable class: fills image_embeddings, embed_dim, text_embedding and clip_model of chunk rows."""

    def __init__(self, clip: dict, text_embeddings: dict[str, list[float]], use_gpu: bool = False, threads: int = 1):
        import torch

        from clipsynth_core import ClipConfig, ClipQueryEncoder

        if not use_gpu:
            torch.set_num_threads(max(1, threads))
        self.encoder = ClipQueryEncoder(ClipConfig(**clip))
        if use_gpu and torch.cuda.is_available():
            self.encoder = self.encoder.to("cuda")
        self.identity = self.encoder.config.identity
        self.text = {k: np.asarray(v, dtype=np.float32) for k, v in text_embeddings.items()}

    def _text_embedding(self, label: str | None) -> np.ndarray | None:
        if label is None:
            return None
        if label not in self.text:
            self.text[label] = self.encoder.encode_text([label]).cpu().numpy()[0]
        return self.text[label]

    def __call__(self, batch: pa.Table) -> pa.Table:
        is_chunk = pc.fill_null(pc.equal(batch["record"], RECORD_CHUNK), False).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(is_chunk)
        if len(rows) == 0:
            return batch
        t0 = time.perf_counter()
        n = batch.num_rows
        image_emb: list = [None] * n
        text_emb: list = [None] * n
        embed_dim: list = [None] * n
        clip_model: list = [None] * n
        records = batch["record"].to_pylist()
        reasons = batch["fail_reason"].to_pylist()
        jpegs = batch["frames_jpeg"].take(pa.array(rows)).to_pylist()
        labels = batch["label"].take(pa.array(rows)).to_pylist()
        try:
            frames = [decode_jpeg(j) for chunk in jpegs for j in chunk]
            emb = embed_frames(self.encoder, frames)
            offset = 0
            for r, chunk, label in zip(rows, jpegs, labels):
                image_emb[r] = emb[offset : offset + len(chunk)].ravel()
                offset += len(chunk)
                text_emb[r] = self._text_embedding(label)
                embed_dim[r] = self.encoder.embed_dim
                clip_model[r] = self.identity
        except Exception as exc:  # the driver fails these videos (stage "embed") instead of losing the batch
            for r in rows:
                records[r] = RECORD_CHUNK_FAILED
                reasons[r] = f"CLIP embedding failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        per_row = json.dumps({"embed_seconds": (time.perf_counter() - t0) / len(rows)})
        info = batch["info_json"].to_pylist()
        for r in rows:
            info[r] = per_row
        schema = batch.schema
        columns = {
            "image_embeddings": image_emb,
            "text_embedding": text_emb,
            "embed_dim": embed_dim,
            "clip_model": clip_model,
            "record": records,
            "fail_reason": reasons,
            "info_json": info,
        }
        for name, values in columns.items():
            # Non-chunk rows ("video" rows) carry no chunk columns: None is what they held.
            i = schema.get_field_index(name)
            batch = batch.set_column(i, schema.field(i), pa.array(values, type=schema.field(i).type))
        return batch
