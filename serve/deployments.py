"""The model deployments: CLIP query encoder, diffusion sampler (dynamic batching), vocoder.

Each loads only its own part of the synthesizer bundle (clipsynth_platform.serving), so a GPU fraction given to
one holds only that part's weights. Model work runs in a worker thread, so a replica keeps accepting requests
(and filling its next batch) while the current batch computes.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import ray
import torch
from ray import serve

from clipsynth_core.modality_gap import GapReducer
from clipsynth_core.precision import resolve_precision
from clipsynth_core.query_blend import encode_queries
from clipsynth_platform import serving
from clipsynth_platform.runtime.devices import resolve_device
from clipsynth_platform.runtime.logs import configure_logging, get_logger
from clipsynth_platform.tracking.registry import resolve_bundle

from .config import MODEL_URI_ENV, DeploymentSettings, ServeConfig, redact_uri

logger = get_logger("serve")


def _prepare(config: ServeConfig, settings: DeploymentSettings, part: str) -> tuple[str, Path, torch.device]:
    """Model URI -> local bundle directory, and this replica's device and thread count."""
    configure_logging()  # this replica's `[serve] ...` lines on its stdout, which Serve keeps in its log files
    uri = config.resolved_model_uri()
    if not uri:
        raise RuntimeError(f"no model to serve: set {MODEL_URI_ENV} or pass the builder argument model_uri=...")
    if config.mlflow_tracking_uri:
        import mlflow

        mlflow.set_tracking_uri(config.mlflow_tracking_uri)
    bundle_dir = resolve_bundle(uri)
    # What Ray gave this replica, not what ServeConfig says: serve_config.yaml and RayService set
    # ray_actor_options (GPU fractions, CPUs) per deployment without touching the app's ServeConfig.
    assigned = ray.get_runtime_context().get_assigned_resources()
    device = resolve_device(config.device, ray.get_gpu_ids())
    if device.type == "cpu":
        # One intra-op thread per CPU this replica reserved: replicas on one node must not oversubscribe it.
        torch.set_num_threads(max(1, math.ceil(assigned.get("CPU", settings.num_cpus))))
    logger.info("%s: serving %s (bundle %s) on %s", part, redact_uri(uri), bundle_dir, device)
    return redact_uri(uri), bundle_dir, device


@serve.deployment(name="ClipEncoder")
class ClipEncoder:
    """Text queries (batched) and images -> L2-normalised CLIP embeddings (float32 [D])."""

    def __init__(self, config: ServeConfig) -> None:
        self.model_uri, bundle_dir, device = _prepare(config, config.encoder, "ClipEncoder")
        self.encoder = serving.load_query_encoder(
            bundle_dir, device=device, clip_pretrained=config.clip_pretrained or None
        )
        self.gap = GapReducer.load(bundle_dir)  # None: the bundle has no gap statistics
        self.clip_pretrained = config.clip_pretrained
        self._encode_texts.set_max_batch_size(config.encoder_max_batch_size)
        self._encode_texts.set_batch_wait_timeout_s(config.encoder_batch_wait_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _encode_texts(self, items: list[tuple[str, str]]) -> list[np.ndarray]:
        return await asyncio.to_thread(self._encode_items, items)

    def _encode_items(self, items: list[tuple[str, str]]) -> list[np.ndarray]:
        """(query, gap reduction) pairs -> conditions; combined queries blend (clipsynth_core.query_blend)."""
        out: list[np.ndarray] = [np.zeros(0)] * len(items)
        for method in sorted({m for _, m in items}):
            idx = [i for i, (_, m) in enumerate(items) if m == method]
            emb = encode_queries(self.encoder, [items[i][0] for i in idx], self.gap, method).cpu().numpy()
            for j, i in enumerate(idx):
                out[i] = emb[j]
        return out

    async def encode_text(self, query: str, gap: str = "none") -> np.ndarray:
        return await self._encode_texts((query, gap))

    async def encode_image(self, image: np.ndarray) -> np.ndarray:
        """One uint8 image [H, W, 3]."""
        emb = await asyncio.to_thread(self.encoder.encode_image, np.asarray(image, dtype=np.uint8)[None])
        return emb[0].cpu().numpy()

    def info(self) -> dict:
        gap = self.gap.describe() if self.gap is not None else {"methods": ["none"]}
        return {
            "clip": self.encoder.config.identity,
            "clip_random": self.encoder.config.is_random,
            "clip_substituted": bool(self.clip_pretrained),  # the service's weights, not the bundle's
            "embed_dim": self.encoder.embed_dim,
            "gap": gap,
            # The classes of the training data, as the gap statistics recorded them (empty when unknown).
            "labels": list(self.gap.info.get("labels", [])) if self.gap is not None else [],
        }


@serve.deployment(name="DiffusionSampler")
class DiffusionSampler:
    """Condition vector + sampling spec -> normalised mel, with @serve.batch dynamic batching.

    A batch mixes requests freely: it is split by (steps, length, sampler, guided or not) and each example
    draws its noise from its own seed, so its mel does not depend on its batch-mates.
    """

    def __init__(self, config: ServeConfig) -> None:
        self.model_uri, self.bundle_dir, device = _prepare(config, config.sampler, "DiffusionSampler")
        self.synthesizer = serving.load_mel_sampler(
            self.bundle_dir, device=device, compile_unet=config.compile_sampler, precision=config.sampler_precision
        )
        self.precision = resolve_precision(config.sampler_precision, device)
        self.compiled = config.compile_sampler
        self._sample_batch.set_max_batch_size(config.sampler_max_batch_size)
        self._sample_batch.set_batch_wait_timeout_s(config.sampler_batch_wait_s)
        self.batches = 0
        self.requests = 0
        self.largest_batch = 0

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.05)
    async def _sample_batch(self, requests: list[dict]) -> list[dict]:
        specs = [
            serving.SamplingRequest(r["steps"], r["seconds"], r["sampler"], r["seed"], r["guidance"]) for r in requests
        ]
        conds = np.stack([np.asarray(r["cond"], dtype=np.float32) for r in requests])
        outs = await asyncio.to_thread(serving.sample_batch, self.synthesizer, conds, specs)
        self.batches += 1
        self.requests += len(requests)
        self.largest_batch = max(self.largest_batch, len(requests))
        return [{"mel": o.mel, "group_size": o.group_size, "batch_size": o.batch_size} for o in outs]

    async def sample(self, request: dict) -> dict:
        """request: cond (float32 [D]), steps, seconds, sampler, seed, guidance (validated by the ingress)."""
        return await self._sample_batch(request)

    def info(self) -> dict:
        return {
            **serving.model_info(self.synthesizer, self.model_uri, self.bundle_dir),
            "precision": self.precision,  # of the U-Net's passes
            "compiled": self.compiled,
            "batches": self.batches,
            "requests": self.requests,
            "largest_batch": self.largest_batch,
        }


@serve.deployment(name="Vocoder")
class Vocoder:
    """Normalised mel [n_mels, frames] -> the clip, float32 [(frames - 1) * hop + n_fft] (HiFi-GAN or Griffin-Lim,
    as the bundle says), batched by length."""

    def __init__(self, config: ServeConfig) -> None:
        self.model_uri, bundle_dir, device = _prepare(config, config.vocoder, "Vocoder")
        self.config = serving.load_bundle_config(bundle_dir)
        self.vocoder = serving.load_vocoder(bundle_dir, self.config, device=device)
        self._vocode_batch.set_max_batch_size(config.vocoder_max_batch_size)
        self._vocode_batch.set_batch_wait_timeout_s(config.vocoder_batch_wait_s)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _vocode_batch(self, mels: list[np.ndarray]) -> list[np.ndarray]:
        return await asyncio.to_thread(serving.vocode_batch, self.vocoder, mels)

    async def vocode(self, mel: np.ndarray) -> np.ndarray:
        return await self._vocode_batch(mel)

    def info(self) -> dict:
        hifigan = self.config.serving_vocoder == "hifigan"
        return {
            "hop_length": self.config.mel.hop_length,
            "vocoder": self.config.serving_vocoder,
            # the served HiFi-GAN's training steps, when its bundle records them (None for Griffin-Lim)
            "vocoder_trained_steps": self.config.metadata.get("vocoder_step") if hifigan else None,
        }
