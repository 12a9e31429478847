"""CLIPRetriever, the paper's retrieval baseline: return the audio of the clip whose image embedding is
nearest (cosine) to the query's embedding. Not generative; it can only return audio it has seen."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from .clip_encoder import ClipQueryEncoder


class ClipRetriever:
    """An index of (image embedding, audio) pairs. `synthesize(queries)` -> [B, N] like the Synthesizer."""

    def __init__(self, encoder: ClipQueryEncoder, image_embeddings: Tensor, audio: Tensor) -> None:
        if image_embeddings.dim() != 2 or audio.dim() != 2 or image_embeddings.shape[0] != audio.shape[0]:
            raise ValueError("need image_embeddings [M, D] and audio [M, N] with the same M")
        if image_embeddings.shape[1] != encoder.embed_dim:
            raise ValueError(f"index embeds to {image_embeddings.shape[1]} dims, CLIP to {encoder.embed_dim}")
        self.encoder = encoder
        self.index = F.normalize(image_embeddings.float(), dim=-1)
        self.audio = audio

    def nearest(self, query_embeddings: Tensor, k: int = 1) -> tuple[Tensor, Tensor]:
        """(cosine similarities [B, k], indices [B, k]) of the nearest index entries."""
        sims = F.normalize(query_embeddings.float(), dim=-1) @ self.index.T
        return sims.topk(min(k, self.index.shape[0]), dim=-1)

    def retrieve(self, queries: Sequence) -> Tensor:
        """Indices [B] of the nearest clip for each query (text strings or images)."""
        if len(queries) and all(isinstance(q, str) for q in queries):
            emb = self.encoder.encode_text(list(queries))
        else:
            emb = self.encoder.encode_image(queries)
        return self.nearest(emb, 1)[1][:, 0]

    def synthesize(self, queries: Sequence, **_: object) -> Tensor:
        return self.audio[self.retrieve(queries)]

    def save(self, path: str | os.PathLike) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        save_file({"image_embeddings": self.index.contiguous(), "audio": self.audio.contiguous()}, str(p))
        return p

    @classmethod
    def load(cls, path: str | os.PathLike, encoder: ClipQueryEncoder) -> ClipRetriever:
        t = load_file(str(path))
        return cls(encoder, t["image_embeddings"], t["audio"])
