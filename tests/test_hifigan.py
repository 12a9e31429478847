"""HiFi-GAN for 64-band, hop-1024 mels: exact output length, discriminators, losses, and a few updates."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clipsynth_core import HiFiGANDiscriminator, HiFiGANGenerator, HiFiGANStep, MelFrontend, hifigan_config
from clipsynth_core.hifigan import discriminator_loss, feature_matching_loss, generator_adv_loss


@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_upsampling_factors_multiply_to_the_hop(preset):
    cfg = hifigan_config(preset)
    assert math.prod(cfg.upsample_rates) == 1024 == cfg.hop_length


def test_presets_take_overrides_and_reject_unknown_names():
    tiny = hifigan_config("tiny", disc_channels=8)
    # the override wins over the preset's 32; the preset's other fields stay
    assert tiny.disc_channels == 8 and tiny.upsample_initial_channel == 32 and tiny.msd_scales == 2
    with pytest.raises(
        ValueError, match=r"unknown HiFi-GAN preset 'huge'; choose from \['cpu', 'paper', 'small', 'tiny'\]"
    ):
        hifigan_config("huge")


@pytest.mark.parametrize("frames", [1, 16, 64, 129])
def test_output_length_is_frames_times_1024(frames):
    g = HiFiGANGenerator(hifigan_config("tiny"))
    wave = g(torch.randn(2, 64, frames))
    assert wave.shape == (2, frames * 1024)
    assert wave.abs().max() <= 1.0


def test_discriminators_and_losses():
    cfg = hifigan_config("tiny")
    d = HiFiGANDiscriminator(cfg)
    real = torch.randn(2, 8192) * 0.1
    scores, feats = d(real)
    assert len(scores) == len(cfg.mpd_periods) + cfg.msd_scales == len(feats)
    # Least squares: perfect scores (1 on real, 0 on fake) give zero loss; swapped ones give 2 per sub-disc.
    ones = [torch.ones(2, 3) for _ in scores]
    zeros = [torch.zeros(2, 3) for _ in scores]
    assert float(discriminator_loss(ones, zeros)) == 0.0
    assert float(discriminator_loss(zeros, ones)) == pytest.approx(2.0 * len(scores))
    assert float(generator_adv_loss(ones)) == 0.0
    f = [[torch.ones(2, 4)], [torch.zeros(3)]]
    g = [[torch.zeros(2, 4)], [torch.ones(3) * 2]]
    assert float(feature_matching_loss(f, g)) == pytest.approx(1.0 + 2.0)


@pytest.mark.slow  # 41 s on 2 shared cores: out of make test-fast
def test_training_steps_reduce_mel_l1():
    torch.manual_seed(0)
    cfg = hifigan_config("tiny")
    gen, disc, fe = HiFiGANGenerator(cfg), HiFiGANDiscriminator(cfg), MelFrontend()
    step = HiFiGANStep(
        gen,
        disc,
        fe,
        cfg,
        torch.optim.AdamW(gen.parameters(), 2e-3, betas=(0.8, 0.99)),
        torch.optim.AdamW(disc.parameters(), 2e-3, betas=(0.8, 0.99)),
    )
    t = torch.arange(8 * 1024) / 16_000
    # One clip: a batch of copies of it gives the same mean losses and gradients at twice the cost.
    wave = (0.4 * torch.sin(2 * math.pi * 330 * t))[None]
    mel = step.mel_of(wave)
    assert mel.shape == (1, 64, 8)
    losses = [{k: float(v) for k, v in step(mel, wave).items()} for _ in range(15)]
    assert all(math.isfinite(v) for m in losses for v in m.values())
    first = sum(m["loss_mel"] for m in losses[:3]) / 3
    last = sum(m["loss_mel"] for m in losses[-3:]) / 3
    assert last < 0.85 * first, (first, last)


def _numpy_ln_mel(wave: np.ndarray, basis: np.ndarray, n_fft: int = 2048, hop: int = 1024) -> np.ndarray:
    """ln-mel by hand: reflect-pad (n_fft - hop) / 2 per side, periodic Hann frames, |rfft|, filterbank, ln."""
    pad = (n_fft - hop) // 2
    x = np.pad(wave.astype(np.float64), (pad, n_fft - hop - pad), mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.stack([x[i : i + n_fft] * window for i in range(0, len(x) - n_fft + 1, hop)])
    magnitude = np.abs(np.fft.rfft(frames, axis=-1))  # [T, freqs]
    return np.log(np.maximum(magnitude @ basis.T, 1e-5))  # [T, mels]


@pytest.mark.slow  # 11 s on 2 shared cores: out of make test-fast
def test_generator_loss_terms_match_a_hand_computation():
    torch.manual_seed(3)
    cfg = hifigan_config("tiny")
    gen, disc, fe = HiFiGANGenerator(cfg), HiFiGANDiscriminator(cfg), MelFrontend()
    step = HiFiGANStep(
        gen, disc, fe, cfg, torch.optim.SGD(gen.parameters(), 0.0), torch.optim.SGD(disc.parameters(), 0.0)
    )
    t = torch.arange(8 * 1024) / 16_000
    wave = (0.4 * torch.sin(2 * math.pi * 440 * t) + 0.05 * torch.randn(t.shape))[None]
    mel = step.mel_of(wave)
    with torch.no_grad():
        fake = gen(mel)  # what the step generates: the optimisers have lr 0, so nothing moves in between
    losses = {k: float(v) for k, v in step(mel, wave).items()}
    basis = fe.mel_basis.double().numpy()
    expected = np.abs(_numpy_ln_mel(fake[0].numpy(), basis) - _numpy_ln_mel(wave[0].numpy(), basis)).mean()
    assert losses["loss_mel"] == pytest.approx(expected, rel=1e-4)
    # The total is Kong et al.'s weighting of the three terms.
    assert losses["loss_g"] == pytest.approx(
        losses["loss_adv"] + 2.0 * losses["loss_fm"] + 45.0 * losses["loss_mel"], rel=1e-5
    )
    # On the [-1, 1] normalised mel the same L1 would be (ln 40 - ln 1e-5) / 2 = 7.6 times smaller.
    normalised = float((step.mel_of(fake) - mel).abs().mean())
    assert losses["loss_mel"] / normalised == pytest.approx((math.log(40) - math.log(1e-5)) / 2, rel=0.05)
