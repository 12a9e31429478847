"""The spectral distances the vocoder is measured with, against numpy computations and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clipsynth_core.spectral_distance import log_spectral_distance, multi_resolution_stft_distance


def _numpy_power(wave: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    frames = np.stack([wave[i : i + n_fft] * window for i in range(0, len(wave) - n_fft + 1, hop)])
    return np.abs(np.fft.rfft(frames, axis=-1)) ** 2  # [frames, bins]


def test_lsd_matches_a_numpy_computation_and_floors_silence():
    rng = np.random.default_rng(0)
    t = np.arange(16_000) / 16_000
    ref = 0.5 * np.sin(2 * np.pi * 440 * t) * (t < 0.6)  # a tone, then digital silence
    est = 0.3 * np.sin(2 * np.pi * 450 * t) + 0.01 * rng.standard_normal(t.shape)
    p_ref, p_est = _numpy_power(ref, 2048, 512), _numpy_power(est, 2048, 512)
    floor = p_ref.max() * 1e-8  # 80 dB below the reference's loudest bin
    diff = 10 * np.log10(np.maximum(p_est, floor)) - 10 * np.log10(np.maximum(p_ref, floor))
    expected = np.sqrt((diff**2).mean(axis=1)).mean()
    got = log_spectral_distance(torch.from_numpy(est).float(), torch.from_numpy(ref).float())
    assert got.shape == (1,)
    assert float(got[0]) == pytest.approx(expected, rel=1e-4)
    assert math.isfinite(float(got[0]))


def test_lsd_and_mrstft_of_a_gain_are_its_decibels_and_its_log():
    noise = torch.randn(3, 20_000, generator=torch.Generator().manual_seed(1)) * 0.1
    assert torch.allclose(log_spectral_distance(noise, noise), torch.zeros(3), atol=1e-6)
    assert torch.allclose(multi_resolution_stft_distance(noise, noise), torch.zeros(3), atol=1e-6)
    # half the amplitude: -6.02 dB in every bin, and |ln 0.5| in every log magnitude
    half = log_spectral_distance(0.5 * noise, noise)
    assert torch.allclose(half, torch.full((3,), 20 * math.log10(2.0)), rtol=1e-4)
    mr = multi_resolution_stft_distance(0.5 * noise, noise)
    assert torch.allclose(mr, torch.full((3,), math.log(2.0)), rtol=1e-4)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        log_spectral_distance(torch.zeros(4096), torch.zeros(4000))
    with pytest.raises(ValueError, match="N >= 2048"):
        log_spectral_distance(torch.zeros(1000), torch.zeros(1000))
    with pytest.raises(ValueError, match="at least one"):
        multi_resolution_stft_distance(torch.zeros(4096), torch.zeros(4096), resolutions=())
