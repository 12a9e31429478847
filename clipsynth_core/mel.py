"""The one mel function of the project: data, vocoder, metrics and serving all call `MelFrontend`.

Paper settings (Dong et al., 2023, sec. 3): 16 kHz mono, STFT filter length 2048, hop 1024, window 2048,
64 mel bands, so that 4.16 s of audio (66,560 samples) gives exactly 64 frames (no centre padding):
    frames = (66560 - 2048) // 1024 + 1 = 64.

Values: the mel magnitude (Slaney-normalised filterbank, as HiFi-GAN and librosa use) is compressed with
the natural log after clamping at `log_floor`, then mapped by a fixed affine map to [-1, 1]:
    x = clip(2 * (ln(max(mel, floor)) - ln(floor)) / (ln_max - ln(floor)) - 1, -1, 1)
The constants are fixed (not fitted to a dataset), so every part of the platform agrees on them and
`denormalize` inverts the map exactly inside the range.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torchaudio.functional as AF
from torch import nn


@dataclass(frozen=True)
class MelConfig:
    sample_rate: int = 16_000
    n_fft: int = 2048
    win_length: int = 2048
    hop_length: int = 1024
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float = 8_000.0
    # Magnitude below the floor is silence: ln(1e-5) = -11.51 maps to -1.
    log_floor: float = 1e-5
    # ln(40) = 3.69 maps to +1. A full-scale sine peaks near ln(25) with this filterbank, white noise at
    # full scale near ln(12), so real audio stays inside the range with headroom.
    log_max: float = math.log(40.0)
    # The paper's training window: 4.16 s -> 64 frames.
    segment_frames: int = 64

    @property
    def segment_samples(self) -> int:
        """Samples in a window of `segment_frames` frames (66,560 for the paper's 4.16 s)."""
        return self.samples_for_frames(self.segment_frames)

    def samples_for_frames(self, frames: int) -> int:
        return (frames - 1) * self.hop_length + self.n_fft

    def frames_for_samples(self, samples: int) -> int:
        if samples < self.n_fft:
            return 0
        return (samples - self.n_fft) // self.hop_length + 1

    def to_dict(self) -> dict:
        return asdict(self)


class MelFrontend(nn.Module):
    """wave [B, N] (or [N]) at `sample_rate` -> normalised log-mel [B, n_mels, frames] in [-1, 1].

    Differentiable (the HiFi-GAN mel loss uses it) and batched; resamples from any input rate.
    """

    window: torch.Tensor  # buffers, typed for the checker (nn.Module's __getattr__ says Tensor | Module)
    mel_basis: torch.Tensor

    def __init__(self, config: MelConfig | None = None) -> None:
        super().__init__()
        self.config = config or MelConfig()
        c = self.config
        if c.win_length > c.n_fft:
            raise ValueError(f"win_length {c.win_length} exceeds n_fft {c.n_fft}")
        self.register_buffer("window", torch.hann_window(c.win_length, periodic=True), persistent=False)
        fb = AF.melscale_fbanks(
            n_freqs=c.n_fft // 2 + 1,
            f_min=c.f_min,
            f_max=c.f_max,
            n_mels=c.n_mels,
            sample_rate=c.sample_rate,
            norm="slaney",
            mel_scale="slaney",
        )  # [freqs, mels]
        self.register_buffer("mel_basis", fb.T.contiguous(), persistent=False)  # [mels, freqs]

    def magnitude_mel(self, wave: torch.Tensor, sample_rate: int | None = None) -> torch.Tensor:
        """Linear mel magnitude [B, n_mels, frames] (before log and normalisation)."""
        c = self.config
        if wave.dim() == 1:
            wave = wave.unsqueeze(0)
        if wave.dim() != 2:
            raise ValueError(f"expected a waveform [B, N] or [N], got shape {tuple(wave.shape)}")
        if sample_rate is not None and sample_rate != c.sample_rate:
            wave = AF.resample(wave, orig_freq=int(sample_rate), new_freq=c.sample_rate)
        if wave.shape[-1] < c.n_fft:
            raise ValueError(f"waveform of {wave.shape[-1]} samples is shorter than one STFT frame ({c.n_fft} samples)")
        # The STFT runs in fp32 even under autocast: low-precision FFTs are inaccurate and often unsupported.
        wave = wave.float()
        spec = torch.stft(
            wave,
            n_fft=c.n_fft,
            hop_length=c.hop_length,
            win_length=c.win_length,
            window=self.window.to(wave.device),
            center=False,
            return_complex=True,
        )
        # sqrt(re^2 + im^2 + eps) keeps the gradient finite at exact zeros (digital silence).
        mag = torch.sqrt(spec.real.square() + spec.imag.square() + 1e-12)
        return torch.matmul(self.mel_basis.to(mag.device), mag)

    def log_mel(self, wave: torch.Tensor, sample_rate: int | None = None) -> torch.Tensor:
        """Natural-log mel magnitude, clamped at `log_floor` only (HiFi-GAN's dynamic range compression): the
        scale of its mel L1 loss, whose weight of 45 Kong et al. chose for ln-mels, not for [-1, 1]."""
        return torch.log(torch.clamp(self.magnitude_mel(wave, sample_rate), min=self.config.log_floor))

    def normalize(self, mel_magnitude: torch.Tensor) -> torch.Tensor:
        c = self.config
        lo = math.log(c.log_floor)
        log_mel = torch.log(torch.clamp(mel_magnitude, min=c.log_floor))
        return torch.clamp(2.0 * (log_mel - lo) / (c.log_max - lo) - 1.0, -1.0, 1.0)

    def denormalize(self, mel: torch.Tensor) -> torch.Tensor:
        """Normalised mel in [-1, 1] -> natural-log mel magnitude."""
        c = self.config
        lo = math.log(c.log_floor)
        return (mel.clamp(-1.0, 1.0) + 1.0) * 0.5 * (c.log_max - lo) + lo

    def forward(self, wave: torch.Tensor, sample_rate: int | None = None) -> torch.Tensor:
        return self.normalize(self.magnitude_mel(wave, sample_rate))


def random_segment(
    mel: torch.Tensor, frames: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, int]:
    """A random window of `frames` frames from mel [..., n_mels, T]; returns (window, start frame)."""
    total = mel.shape[-1]
    if total < frames:
        raise ValueError(f"mel of {total} frames is shorter than the {frames}-frame window")
    start = int(torch.randint(0, total - frames + 1, (1,), generator=generator).item())
    return mel[..., start : start + frames], start
