"""Spectral distances between a waveform and the real audio it should reproduce (a vocoder's reconstruction).

Both are phase-blind, finer than the project's 64-band mel, computed in float64 per clip (returned in the
input's dtype) and then averaged over clips by the caller:
- `log_spectral_distance` (LSD, in dB): per STFT frame, the root mean square over frequency bins of the
  difference of the two power spectra in dB, averaged over frames. Powers are floored at `floor_db` below the
  real clip's loudest bin, so digital silence in the reference does not weigh as an infinite distance.
- `multi_resolution_stft_distance`: the mean over STFT resolutions (window/hop 512/128, 1024/256, 2048/512 by
  default) of the mean absolute difference of the natural-log magnitudes (each clamped at 1e-5), the log term
  of the multi-resolution STFT loss of Parallel WaveGAN (Yamamoto et al., 2020).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

MRSTFT_RESOLUTIONS: tuple[tuple[int, int], ...] = ((512, 128), (1024, 256), (2048, 512))


def _magnitude(wave: Tensor, n_fft: int, hop: int) -> Tensor:
    """|STFT| [B, bins, frames] with a periodic Hann window of n_fft samples, no centre padding."""
    window = torch.hann_window(n_fft, dtype=torch.float64, device=wave.device)
    spec = torch.stft(wave.double(), n_fft, hop, n_fft, window, center=False, return_complex=True)
    return spec.abs()


def _pair(estimate: Tensor, reference: Tensor, n_fft: int) -> tuple[Tensor, Tensor]:
    if estimate.shape != reference.shape:
        raise ValueError(f"estimate {tuple(estimate.shape)} and reference {tuple(reference.shape)} differ in shape")
    if estimate.dim() == 1:
        estimate, reference = estimate[None], reference[None]
    if estimate.dim() != 2 or estimate.shape[-1] < n_fft:
        raise ValueError(f"need waveforms [B, N] with N >= {n_fft} samples, got {tuple(estimate.shape)}")
    return estimate, reference


def log_spectral_distance(
    estimate: Tensor, reference: Tensor, *, n_fft: int = 2048, hop: int = 512, floor_db: float = 80.0
) -> Tensor:
    """LSD in dB per clip [B] (see the module docstring); waveforms [B, N] or [N]."""
    estimate, reference = _pair(estimate, reference, n_fft)
    p_est = _magnitude(estimate, n_fft, hop).square()
    p_ref = _magnitude(reference, n_fft, hop).square()
    floor = p_ref.amax(dim=(1, 2), keepdim=True).clamp(min=1e-20) * 10.0 ** (-floor_db / 10.0)
    diff_db = 10.0 * (torch.log10(torch.maximum(p_est, floor)) - torch.log10(torch.maximum(p_ref, floor)))
    return diff_db.square().mean(dim=1).sqrt().mean(dim=1).to(estimate.dtype)


def multi_resolution_stft_distance(
    estimate: Tensor, reference: Tensor, resolutions: Sequence[tuple[int, int]] = MRSTFT_RESOLUTIONS
) -> Tensor:
    """Mean log-magnitude L1 over STFT resolutions, per clip [B]; waveforms [B, N] or [N]."""
    if not resolutions:
        raise ValueError("need at least one (n_fft, hop) resolution")
    terms = []
    for n_fft, hop in resolutions:
        est, ref = _pair(estimate, reference, n_fft)
        log_est = torch.log(_magnitude(est, n_fft, hop).clamp(min=1e-5))
        log_ref = torch.log(_magnitude(ref, n_fft, hop).clamp(min=1e-5))
        terms.append((log_est - log_ref).abs().mean(dim=(1, 2)))
    return torch.stack(terms).mean(dim=0).to(estimate.dtype)
