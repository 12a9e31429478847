"""Serving-side model pieces, usable with or without Ray: a bundle's parts loaded separately, and batched
sampling / vocoding where every request stays independent of its batch-mates.

The Ray Serve app (`serve/`) runs the query encoder, the diffusion sampler and the vocoder as separate
deployments, so each loads only its own part of the bundle:
    load_query_encoder(bundle_dir)  -> ClipQueryEncoder          (the CLIP text/image tower)
    load_mel_sampler(bundle_dir)    -> Synthesizer without CLIP or HiFi-GAN weights (U-Net + diffusion)
    load_vocoder(bundle_dir)        -> the serving vocoder (HiFi-GAN or Griffin-Lim, as the bundle says)
A batch of requests with different step counts, lengths or samplers is split into groups that can share one
sampling loop (`group_key`); inside a group each example's noise is a function of its own seed (the core's
`seeded_normal`, drawn on the device), so a request's audio depends on its own parameters only, and is the
same on a CPU or a GPU replica.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import cast

import numpy as np
import torch
from torch import Tensor, nn

from clipsynth_core import (
    ClipConfig,
    ClipQueryEncoder,
    HiFiGANGenerator,
    Synthesizer,
    SynthesizerConfig,
    frames_for_seconds,
)
from clipsynth_core.diffusion import SAMPLERS
from clipsynth_core.synthesizer import load_bundle_encoder, load_bundle_unet, load_bundle_vocoder, read_bundle_config

from .runtime.batching import apply_by_group, group_indices


def load_bundle_config(bundle_dir: str | os.PathLike) -> SynthesizerConfig:
    config = read_bundle_config(bundle_dir)
    config.check()
    return config


def load_query_encoder(
    bundle_dir: str | os.PathLike,
    config: SynthesizerConfig | None = None,
    device: torch.device | str = "cpu",
    clip_pretrained: str | None = None,
) -> ClipQueryEncoder:
    """The bundle's CLIP, as `Synthesizer.load` builds it: random CLIPs from clip.safetensors, pretrained ones
    by name/tag (or from `clip_pretrained`, a local weights file, when given)."""
    config = config or load_bundle_config(bundle_dir)
    clip = config.clip
    if clip_pretrained:
        clip = ClipConfig(**{**asdict(clip), "pretrained": clip_pretrained})
    encoder = load_bundle_encoder(bundle_dir, clip)
    if encoder.embed_dim != config.unet.cond_dim:
        raise ValueError(f"CLIP embeds to {encoder.embed_dim} dims, the U-Net expects {config.unet.cond_dim}")
    return encoder.to(device)


def load_vocoder(
    bundle_dir: str | os.PathLike, config: SynthesizerConfig | None = None, device: torch.device | str = "cpu"
) -> nn.Module:
    """The bundle's serving vocoder: normalised mels [B, n_mels, T] -> whole clips [B, (T - 1) * hop + n_fft]."""
    config = config or load_bundle_config(bundle_dir)
    return load_bundle_vocoder(bundle_dir, config).to(device).eval()


class _AbsentPart(nn.Module):
    """Stands in for a part of the synthesizer that this process does not load (the sampler needs neither
    CLIP nor HiFi-GAN weights); using it is an error rather than a silent random model."""

    def __init__(self, what: str, embed_dim: int = 0) -> None:
        super().__init__()
        self.what = what
        self._embed_dim = embed_dim

    @property
    def embed_dim(self) -> int:
        return self._embed_dim

    def forward(self, *args, **kwargs):
        raise RuntimeError(f"this process does not load the {self.what}; call the deployment that does")

    encode_text = forward
    encode_image = forward


def load_mel_sampler(
    bundle_dir: str | os.PathLike,
    config: SynthesizerConfig | None = None,
    device: torch.device | str = "cpu",
    compile_unet: bool = False,
    precision: str = "fp32",
) -> Synthesizer:
    """A Synthesizer holding only the U-Net (and the diffusion process): `sample_mels` and `identity` work,
    `encode` and `vocode` raise. It runs the core's own sampling code, so results match `Synthesizer.load`.

    `compile_unet`: sample through torch.compile'd U-Net (each new batch shape compiles once, the first request
    of that shape waits for it; worth it on a GPU replica that serves many requests). `precision`: the U-Net's
    forward passes in "fp32", "bf16" or "auto" (bf16 on CUDA), the sampler's arithmetic in float32."""
    config = config or load_bundle_config(bundle_dir)
    sampler = Synthesizer(
        config,
        unet=load_bundle_unet(bundle_dir, config),
        # stand-ins that raise when used: the sampler never encodes nor vocodes
        encoder=cast(ClipQueryEncoder, _AbsentPart("CLIP query encoder", embed_dim=config.unet.cond_dim)),
        hifigan=cast(HiFiGANGenerator, _AbsentPart("HiFi-GAN vocoder")),
        vocoder=_AbsentPart("vocoder"),
        device=device,
    )
    sampler.sample_in(precision)
    return sampler.compile_unet(dynamic=True) if compile_unet else sampler


@dataclass(frozen=True)
class SamplingRequest:
    """One request's sampling parameters, already validated and with defaults filled in."""

    steps: int
    seconds: float
    sampler: str
    seed: int
    guidance: float = 0.0

    def group_key(self, synthesizer: Synthesizer) -> tuple:
        """Requests with equal keys run in one sampling loop. Guided and unguided requests are kept apart:
        guidance doubles the U-Net passes and would change an unguided example's arithmetic."""
        return (
            int(self.steps),
            frames_for_seconds(self.seconds, synthesizer.config.mel),
            self.sampler,
            self.guidance != 0,
        )


@dataclass(frozen=True)
class SampleOutput:
    mel: np.ndarray  # [n_mels, frames], normalised to [-1, 1]
    group_size: int  # examples that shared this request's sampling loop
    batch_size: int  # requests in the whole batch handed to `sample_batch`


def sample_batch(
    synthesizer: Synthesizer, conds: Tensor | np.ndarray, specs: Sequence[SamplingRequest]
) -> list[SampleOutput]:
    """Mels for a batch of independent requests: conds[i] ([B, D]) sampled with specs[i]."""
    conds = torch.as_tensor(np.asarray(conds), dtype=torch.float32)
    if conds.dim() != 2 or conds.shape[0] != len(specs):
        raise ValueError(f"{len(specs)} specs for conditions of shape {tuple(conds.shape)}")
    for s in specs:
        if s.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {s.sampler!r}; use one of {SAMPLERS}")
    out: list[SampleOutput | None] = [None] * len(specs)
    for idx in group_indices([s.group_key(synthesizer) for s in specs]):
        first = specs[idx[0]]
        mels = synthesizer.sample_mels(
            conds[idx],
            steps=first.steps,
            seed=[int(specs[i].seed) for i in idx],
            guidance=[float(specs[i].guidance) for i in idx],
            seconds=first.seconds,
            sampler=first.sampler,
        )
        mel_array = mels.float().cpu().numpy()
        for j, i in enumerate(idx):
            out[i] = SampleOutput(mel=mel_array[j], group_size=len(idx), batch_size=len(specs))
    return out  # type: ignore[return-value]


@torch.no_grad()
def vocode_batch(vocoder: nn.Module, mels: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Waveforms (float32 [(frames - 1) * hop + n_fft]) for mels of possibly different lengths, equal lengths
    batched."""
    device = next(iter([*vocoder.parameters(), *vocoder.buffers()])).device

    def vocode(group: list[np.ndarray]) -> list[np.ndarray]:
        x = torch.as_tensor(np.stack([np.asarray(m, dtype=np.float32) for m in group]), device=device)
        if x.dim() != 3:
            raise ValueError(f"mels must be [n_mels, frames], got {tuple(x.shape[1:])}")
        return list(vocoder(x).float().clamp(-1.0, 1.0).cpu().numpy())

    return apply_by_group(mels, np.shape, vocode)


def model_info(synthesizer: Synthesizer, model_uri: str, bundle_dir: str | os.PathLike) -> dict:
    """What a client or the ingress needs to know about the served model (JSON-serialisable)."""
    config = synthesizer.config
    return {
        "model_uri": model_uri,
        "bundle_dir": str(bundle_dir),
        "identity": synthesizer.identity,
        "trained_steps": int(config.diffusion.num_steps),
        "guidance_allowed": config.diffusion.cond_drop_prob > 0,
        "sample_rate": int(config.mel.sample_rate),
        "hop_length": int(config.mel.hop_length),
        "n_mels": int(config.mel.n_mels),
        "bundle_sampling": asdict(config.sampling),
    }
