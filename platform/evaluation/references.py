"""Reference statistics of the test split, each cached (stats_cache.py) under a key of everything that changes
it: the test audio (or the vocoder's audio of the test mels) through the FAD embedder, and the test mels'
windows through a mel feature extractor (Inception FID, mel classifier)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from clipsynth_core.metrics import GaussianStats, StatsAccumulator, frechet_distance_stats
from clipsynth_platform.datasets.schema import audio_of, mel_of
from clipsynth_platform.datasets.splits import iter_split_batches
from clipsynth_platform.runtime.batching import apply_by_group, stack_by_length
from clipsynth_platform.runtime.logs import LogFn, progress

from .backbones import Backbones
from .context import EvalContext
from .mel_classifier import ClassifierAudioEmbedder, MelFeatureExtractor

# Version of how reference statistics are computed here (which clips, how they are batched and accumulated).
REFERENCE_VERSION = "reference/2"
MEL_COLUMNS = ["mel", "n_mels", "mel_frames"]


def _stored_audio(row: dict) -> np.ndarray:
    audio = audio_of(row)
    if audio is None:
        raise ValueError(f"test row {row.get('chunk_id', '?')} stores no audio for the audio reference")
    return audio


class References:
    """The test split's statistics for one context and set of backbones; also the bundle's vocoder and the FAD
    embedder applied to any waveforms (generated ones are embedded the same way)."""

    def __init__(self, context: EvalContext, backbones: Backbones, log: LogFn | None = None) -> None:
        self.context = context
        self.backbones = backbones
        self.log = log or progress("evaluate")

    def key_parts(self, metric: str, reference: str, backbone: Any) -> dict[str, Any]:
        """Everything that changes a reference's statistics (and nothing that does not, such as the device):
        the data and its content, the backbone's weights (in its identity) and code version, what the
        reference is, and how many clips it takes."""
        ctx = self.context
        parts = {
            "metric": metric,
            "data": ctx.data,
            "split": "test",
            "fingerprint": f"{ctx.config.fingerprint}:{ctx.fingerprint}",
            "backbone": backbone.identity,
            "backbone_version": getattr(backbone, "version", "unversioned"),
            "reference": reference,
            "reference_version": REFERENCE_VERSION,
            "max_reference_clips": ctx.config.max_reference_clips,
        }
        if hasattr(backbone, "window_frames"):
            parts["window_frames"] = backbone.window_frames
        if reference == "vocoded_mels":
            parts["vocoder"] = ctx.vocoder_id
        return parts

    def _test_batches(self, columns: list[str]) -> Iterator[list[dict]]:
        limit = self.context.config.max_reference_clips
        seen = 0
        for _, rows in iter_split_batches(self.context.config.data, "test", columns, batch_rows=32):
            if limit:
                rows = rows[: max(0, limit - seen)]
            if not rows:
                return
            seen += len(rows)
            yield rows

    @torch.no_grad()
    def vocode(self, mels: list[np.ndarray]) -> list[np.ndarray]:
        """Waveforms of normalised mels [n_mels, T] (any mix of lengths), in input order."""
        return apply_by_group(mels, lambda m: m.shape[-1], self._vocode_batch)

    def _vocode_batch(self, mels: list[np.ndarray]) -> list[np.ndarray]:
        batch = torch.from_numpy(np.stack([np.asarray(m, dtype=np.float32) for m in mels]))
        return list(self.context.synth.vocode(batch).cpu().numpy())

    def embed_waves(self, waves: list[np.ndarray]) -> np.ndarray:
        embedder = self.backbones.embedder
        return np.concatenate([embedder.embed(torch.from_numpy(g)) for g in stack_by_length(waves)])

    def _audio_stats(self, reference: str) -> GaussianStats:
        acc = StatsAccumulator()
        clips = 0
        columns = ["audio"] if reference == "audio" else MEL_COLUMNS
        for rows in self._test_batches(columns):
            waves: list[np.ndarray]
            if reference == "audio":
                waves = [_stored_audio(r) for r in rows]
            else:
                waves = self.vocode([mel_of(r) for r in rows])
            acc.update(self.embed_waves(waves))
            clips += len(rows)
            self.log(f"reference {reference}: {clips} test clips embedded")
        return acc.stats()

    def audio_reference(self, reference: str) -> tuple[GaussianStats, bool]:
        """The FAD embedder's statistics of the test audio ("audio") or of the vocoded test mels
        ("vocoded_mels"), and whether they came from the cache."""
        embedder = self.backbones.embedder
        parts = self.key_parts(self.backbones.fad_metric, reference, embedder)
        if isinstance(embedder, ClassifierAudioEmbedder):
            parts["sample_rate"] = embedder.sample_rate
        return self.context.cache.get_or_compute(parts, lambda: self._audio_stats(reference))

    def _mel_stats(self, extractor: MelFeatureExtractor) -> GaussianStats:
        acc = StatsAccumulator()
        for rows in self._test_batches(MEL_COLUMNS):
            for group in stack_by_length([mel_of(r) for r in rows], dtype=np.float32):
                acc.update(extractor.features(group))
        return acc.stats()

    def mel_reference(self, extractor: MelFeatureExtractor | None = None) -> tuple[GaussianStats, bool]:
        """The test mels' windows through `extractor` (default: the mel classifier)."""
        chosen = extractor or self.backbones.extractor
        if chosen is None:
            raise ValueError("no mel feature extractor for the mel reference (--mel-classifier none)")
        metric = getattr(chosen, "metric_name", "fd_melclf")
        parts = self.key_parts(metric, "mels", chosen)
        return self.context.cache.get_or_compute(parts, lambda: self._mel_stats(chosen))

    def recon_fad(self, audio_ref: GaussianStats) -> float:
        """The vocoder's reconstructions of the test mels against the test audio's statistics."""
        recon, _ = self.audio_reference("vocoded_mels")
        return frechet_distance_stats(recon, audio_ref)
