"""HiFi-GAN for 64-band, hop-1024 mels: exact output length, discriminators, losses, and a few updates."""

from __future__ import annotations

import math

import pytest
import torch

from clipsynth_core import HiFiGANDiscriminator, HiFiGANGenerator, HiFiGANStep, MelFrontend, hifigan_config
from clipsynth_core.hifigan import discriminator_loss, feature_matching_loss, generator_adv_loss


@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_upsampling_factors_multiply_to_the_hop(preset):
    cfg = hifigan_config(preset)
    assert math.prod(cfg.upsample_rates) == 1024 == cfg.hop_length


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
    wave = (0.4 * torch.sin(2 * math.pi * 330 * t))[None].repeat(2, 1)
    mel = step.mel_of(wave)
    assert mel.shape == (2, 64, 8)
    losses = [step(mel, wave) for _ in range(15)]
    assert all(math.isfinite(v) for m in losses for v in m.values())
    first = sum(m["loss_mel"] for m in losses[:3]) / 3
    last = sum(m["loss_mel"] for m in losses[-3:]) / 3
    assert last < 0.85 * first, (first, last)
