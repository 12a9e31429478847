"""Mel -> the waveform clip it was analysed from, with the trained HiFi-GAN or with Griffin-Lim.

A mel of T frames (no centre padding) covers (T - 1) * hop + n_fft samples: 64 frames are 66,560 samples,
4.16 s at 16 kHz. Both vocoders here return exactly that clip, aligned so that the project's mel of the
returned audio has the same T frames in the same places:
- `HiFiGANVocoder`: the generator makes T * hop samples whose frame t is centred at t * hop + hop / 2 (its
  training convention); the mel is extended by edge frames and the output cut so frame t lands at
  t * hop + n_fft / 2, where the analysis puts it.
- `GriffinLimVocoder`: the mel magnitude through the pseudo-inverse of the filterbank (clamped at 0), then
  phase by Griffin-Lim (torchaudio). No training, audibly phasey, but it keeps the spectral envelope, which is
  what tells the instruments apart; the offline demo serves with it while its HiFi-GAN is still young.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import Tensor, nn

from .hifigan import HiFiGANGenerator
from .mel import MelConfig, MelFrontend

VOCODERS = ("hifigan", "griffin-lim")


class HiFiGANVocoder(nn.Module):
    """The HiFi-GAN generator, returning whole clips: mel [B, n_mels, T] -> waveform [B, (T - 1) * hop + n_fft]."""

    name = "hifigan"

    def __init__(self, generator: HiFiGANGenerator, mel: MelConfig | None = None) -> None:
        super().__init__()
        self.generator = generator
        self.mel = mel or MelConfig()
        if generator.config.hop_length != self.mel.hop_length:
            raise ValueError(
                f"the HiFi-GAN upsamples by {generator.config.hop_length}, the mel hop is {self.mel.hop_length}"
            )
        half = (self.mel.n_fft - self.mel.hop_length) / 2  # samples between the two frame-centre conventions
        self.edge_frames = math.ceil(half / self.mel.hop_length)
        self.offset = int(self.edge_frames * self.mel.hop_length - half)

    def forward(self, mel: Tensor) -> Tensor:
        k = self.edge_frames
        padded = F.pad(mel, (k, k), mode="replicate") if k else mel
        wave = self.generator(padded)
        return wave[..., self.offset : self.offset + self.mel.samples_for_frames(mel.shape[-1])]


class GriffinLimVocoder(nn.Module):
    """Griffin-Lim from the normalised log-mel: mel [B, n_mels, T] -> waveform [B, (T - 1) * hop + n_fft]."""

    name = "griffin-lim"
    inverse_basis: Tensor  # buffers
    window: Tensor

    def __init__(self, mel: MelConfig | None = None, n_iter: int = 32) -> None:
        super().__init__()
        self.frontend = MelFrontend(mel or MelConfig())
        self.n_iter = n_iter
        self.register_buffer("inverse_basis", torch.linalg.pinv(self.frontend.mel_basis), persistent=False)
        self.register_buffer("window", torch.hann_window(self.frontend.config.win_length), persistent=False)

    @torch.no_grad()
    def forward(self, mel: Tensor) -> Tensor:
        c = self.frontend.config
        magnitude_mel = torch.exp(self.frontend.denormalize(mel.detach().float()))
        linear = torch.clamp(self.inverse_basis @ magnitude_mel, min=0.0)
        # torch.istft centres frame t at t * hop and trims n_fft / 2 at both ends; the project's mel (no centre
        # padding) centres it at t * hop + n_fft / 2. Edge frames, repeated, give the ends of the clip a
        # spectrum of their own; the cut below puts every frame where the analysis expects it.
        k = math.ceil(c.n_fft / 2 / c.hop_length)
        wave = AF.griffinlim(
            F.pad(linear, (k, k), mode="replicate"),
            window=self.window,
            n_fft=c.n_fft,
            hop_length=c.hop_length,
            win_length=c.win_length,
            power=1.0,
            n_iter=self.n_iter,
            momentum=0.99,
            length=None,
            rand_init=False,
        )
        start, length = k * c.hop_length - c.n_fft // 2, c.samples_for_frames(mel.shape[-1])
        wave = wave[..., start : start + length]
        wave = F.pad(wave, (0, length - wave.shape[-1]))
        # The pseudo-inverse can overshoot full scale on pure tones: scale such a clip down instead of clipping
        # it (a uniform gain keeps the spectral envelope; clipping would not).
        peak = wave.abs().amax(dim=-1, keepdim=True)
        return wave * torch.clamp(0.98 / peak.clamp(min=1e-8), max=1.0)


def build_vocoder(kind: str, generator: HiFiGANGenerator | None = None, mel: MelConfig | None = None) -> nn.Module:
    """The clip vocoder of a kind in VOCODERS (Griffin-Lim needs no generator)."""
    if kind == "hifigan":
        if generator is None:
            raise ValueError("the HiFi-GAN vocoder needs its generator")
        return HiFiGANVocoder(generator, mel)
    if kind == "griffin-lim":
        return GriffinLimVocoder(mel)
    raise ValueError(f"unknown vocoder {kind!r}; choose from {VOCODERS}")
