"""The mel frontend against a direct STFT and a mel filterbank written out here from their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clipsynth_core import MelConfig, MelFrontend


def slaney_hz_to_mel(f: np.ndarray) -> np.ndarray:
    # Slaney's Auditory Toolbox scale: linear below 1 kHz, logarithmic above.
    f = np.asarray(f, dtype=np.float64)
    lin = f / (200.0 / 3.0)
    log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log, lin)


def slaney_mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    lin = m * (200.0 / 3.0)
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
    return np.where(m >= 15.0, log, lin)


def reference_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangular filters on the Slaney mel scale, area-normalised (2 / bandwidth): [n_mels, n_fft//2+1]."""
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    edges = slaney_mel_to_hz(np.linspace(slaney_hz_to_mel(fmin), slaney_hz_to_mel(fmax), n_mels + 2))
    fb = np.zeros((n_mels, len(freqs)))
    for i in range(n_mels):
        lo, mid, hi = edges[i], edges[i + 1], edges[i + 2]
        up = (freqs - lo) / (mid - lo)
        down = (hi - freqs) / (hi - mid)
        fb[i] = np.maximum(0, np.minimum(up, down)) * 2.0 / (hi - lo)
    return fb


def reference_mel(wave: np.ndarray, cfg: MelConfig) -> np.ndarray:
    """Frames without centre padding, periodic Hann window, |rfft|, filterbank, ln, fixed affine map."""
    n = np.arange(cfg.win_length)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / cfg.win_length)
    frames = 1 + (len(wave) - cfg.n_fft) // cfg.hop_length
    spec = np.stack(
        [
            np.abs(np.fft.rfft(wave[i * cfg.hop_length : i * cfg.hop_length + cfg.n_fft] * window))
            for i in range(frames)
        ],
        axis=1,
    )
    mel = reference_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max) @ spec
    lo = math.log(cfg.log_floor)
    x = 2 * (np.log(np.maximum(mel, cfg.log_floor)) - lo) / (cfg.log_max - lo) - 1
    return np.clip(x, -1, 1)


def test_paper_window_gives_64_by_64():
    cfg = MelConfig()
    assert cfg.segment_samples == 66_560  # 4.16 s at 16 kHz
    wave = torch.randn(3, cfg.segment_samples) * 0.1
    mel = MelFrontend(cfg)(wave, 16_000)
    assert mel.shape == (3, 64, 64)
    assert cfg.frames_for_samples(160_000) == 155  # a 10 s chunk


def test_matches_direct_stft_and_filterbank():
    cfg = MelConfig()
    rng = np.random.default_rng(0)
    t = np.arange(cfg.segment_samples) / cfg.sample_rate
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3100 * t) + 0.01 * rng.standard_normal(t.shape)
    ours = MelFrontend(cfg)(torch.from_numpy(wave).float()[None], cfg.sample_rate)[0].double().numpy()
    ref = reference_mel(wave, cfg)
    assert ours.shape == ref.shape == (64, 64)
    np.testing.assert_allclose(ours, ref, atol=2e-4)
    # The tones land in the mel bands that hold their frequencies.
    band_440 = int(np.argmin(np.abs(slaney_mel_to_hz(np.linspace(0, slaney_hz_to_mel(8000), 66))[1:-1] - 440)))
    assert abs(int(ours.mean(axis=1).argmax()) - band_440) <= 1


def test_normalisation_range_and_inverse():
    fe = MelFrontend()
    silence = fe(torch.zeros(1, 66_560))
    assert torch.all(silence == -1.0)
    loud = fe(torch.sin(torch.arange(66_560) * 2 * math.pi * 1000 / 16_000)[None])
    assert loud.max() <= 1.0 and loud.max() > 0.5  # a full-scale sine sits near the top, inside the range
    x = torch.linspace(-0.99, 0.99, 50)
    back = fe.normalize(torch.exp(fe.denormalize(x)))
    torch.testing.assert_close(back, x, atol=1e-5, rtol=0)


def test_resamples_any_input_rate():
    cfg = MelConfig()
    fe = MelFrontend(cfg)
    seconds = cfg.segment_samples / cfg.sample_rate
    for sr in (8_000, 22_050, 44_100, 48_000):
        t = torch.arange(round(seconds * sr)) / sr
        mel = fe(torch.sin(2 * math.pi * 660 * t)[None] * 0.5, sr)
        t16 = torch.arange(cfg.segment_samples) / cfg.sample_rate
        ref = fe(torch.sin(2 * math.pi * 660 * t16)[None] * 0.5)
        frames = min(mel.shape[-1], ref.shape[-1])
        assert abs(mel.shape[-1] - 64) <= 1
        # Same spectral content: the loudest band agrees and the band profiles match closely.
        assert mel[0, :, :frames].mean(-1).argmax() == ref[0].mean(-1).argmax()
        # Bands that hold the tone agree closely; elsewhere there is only window leakage (and, at 8 kHz,
        # nothing above 4 kHz), whose log values differ by design.
        strong = ref[0].mean(-1) > -0.3
        assert strong.sum() >= 2
        diff = (mel[0, strong, 2 : frames - 2] - ref[0, strong, 2 : frames - 2]).abs()
        assert diff.mean() < 0.02, diff.mean()


def test_is_differentiable_and_rejects_short_input():
    fe = MelFrontend()
    wave = (torch.randn(1, 66_560) * 0.1).requires_grad_()
    fe(wave).sum().backward()
    assert wave.grad is not None and torch.isfinite(wave.grad).all() and wave.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="shorter than one STFT frame"):
        fe(torch.zeros(1, 1000))
