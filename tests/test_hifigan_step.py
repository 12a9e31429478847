"""The HiFi-GAN update (core HiFiGANStep): every loss term against a computation by hand, the mel-only warm-up,
discriminators frozen in the generator's update, and a short training whose mel L1 on held-out audio falls (the
step's freedom from host syncs: tests/test_sync_free.py)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from clipsynth_core import (
    HiFiGANDiscriminator,
    HiFiGANGenerator,
    HiFiGANStep,
    HiFiGANVocoder,
    MelFrontend,
    hifigan_config,
)


def _step(seed: int = 0, lr: float = 0.0, warmup_steps: int = 0, preset: str = "tiny") -> HiFiGANStep:
    torch.manual_seed(seed)
    cfg = hifigan_config(preset)
    gen, disc = HiFiGANGenerator(cfg), HiFiGANDiscriminator(cfg)
    return HiFiGANStep(
        gen,
        disc,
        MelFrontend(),
        cfg,
        torch.optim.SGD(gen.parameters(), lr),
        torch.optim.SGD(disc.parameters(), lr),
        warmup_steps=warmup_steps,
    )


def _clip(freq: float = 440.0, frames: int = 8, seed: int = 0) -> torch.Tensor:
    t = torch.arange(frames * 1024) / 16_000
    noise = torch.randn(t.shape, generator=torch.Generator().manual_seed(seed))
    return (0.4 * torch.sin(2 * math.pi * freq * t) + 0.05 * noise)[None]


def test_adversarial_terms_match_a_hand_computation():
    step = _step(seed=5)  # lr 0: the discriminators the terms were computed with are the ones below
    step.d.eval()  # and no power iteration of the spectral norm between their passes
    wave = _clip()
    mel = step.mel_of(wave)
    with torch.no_grad():
        fake = step.g(mel)
        real_s, real_f = step.d(wave)
        fake_s, fake_f = step.d(fake)
    losses = {k: float(v) for k, v in step(mel, wave, 1).items()}
    real_s, fake_s = [s.double().numpy() for s in real_s], [s.double().numpy() for s in fake_s]
    # least squares (Mao et al.), summed over the 4 sub-discriminators of the tiny preset (2 periods, 2 scales)
    assert len(real_s) == 4
    assert losses["loss_d"] == pytest.approx(
        sum(np.mean((1 - r) ** 2) + np.mean(f**2) for r, f in zip(real_s, fake_s)), rel=1e-5
    )
    assert losses["loss_adv"] == pytest.approx(sum(np.mean((1 - f) ** 2) for f in fake_s), rel=1e-5)
    # feature matching: the mean absolute difference of every layer's feature map, summed
    fm = sum(
        np.mean(np.abs(r.double().numpy() - f.double().numpy()))
        for rs, fs in zip(real_f, fake_f)
        for r, f in zip(rs, fs)
    )
    assert sum(len(fs) for fs in fake_f) == 2 * 6 + 2 * 8  # 5 convs + output per period disc, 7 + output per scale
    assert losses["loss_fm"] == pytest.approx(fm, rel=1e-5)
    assert losses["loss_g"] == pytest.approx(
        losses["loss_adv"] + 2.0 * losses["loss_fm"] + 45.0 * losses["loss_mel"], rel=1e-5
    )


def test_warmup_trains_the_generator_on_the_mel_loss_alone():
    step = _step(seed=1, lr=1e-2, warmup_steps=2)
    wave = _clip()
    mel = step.mel_of(wave)
    d0 = [p.detach().clone() for p in step.d.parameters()]
    g0 = [p.detach().clone() for p in step.g.parameters()]
    for n in (1, 2):
        losses = step(mel, wave, n)
        assert float(losses["loss_d"]) == float(losses["loss_adv"]) == float(losses["loss_fm"]) == 0.0
        assert float(losses["loss_g"]) == pytest.approx(45.0 * float(losses["loss_mel"]), rel=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(d0, step.d.parameters()))  # the discriminators waited
    assert not all(torch.equal(a, b) for a, b in zip(g0, step.g.parameters()))
    losses = step(mel, wave, 3)  # the discriminators join
    assert float(losses["loss_d"]) > 0 and float(losses["loss_fm"]) > 0
    assert not all(torch.equal(a, b) for a, b in zip(d0, step.d.parameters()))
    with pytest.raises(ValueError, match="warmup_steps must be >= 0"):
        _step(warmup_steps=-1)


def test_discriminators_are_frozen_in_the_generator_update_and_its_gradient_is_unchanged():
    step = _step(seed=2)
    step.d.eval()  # the same spectral norm in both passes
    wave = _clip(seed=3)
    mel = step.mel_of(wave)
    fake = step.g(mel)
    loss_adv, loss_fm = step._adversarial_terms(wave, fake)
    (loss_adv + 2.0 * loss_fm).backward()
    assert all(p.grad is None for p in step.d.parameters())  # no discriminator gradient was computed
    assert all(p.requires_grad for p in step.d.parameters())  # and they train again in the next update
    frozen = [p.grad.clone() for p in step.g.parameters()]
    # The generator's gradient through discriminators that do compute their own gradients is the same.
    step.g.zero_grad(set_to_none=True)
    fake = step.g(mel)
    _, real_f = step.d(wave)
    fake_s, fake_f = step.d(fake)
    from clipsynth_core.hifigan import feature_matching_loss, generator_adv_loss

    (generator_adv_loss(fake_s) + 2.0 * feature_matching_loss(real_f, fake_f)).backward()
    for a, p in zip(frozen, step.g.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-5, atol=1e-7)


def _note(f0: float, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A plucked-string-like note: harmonics with random amplitudes, each decaying faster than the last."""
    t = np.arange(int(seconds * 16_000)) / 16_000
    wave = sum(
        rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) * np.exp(-k * t / 1.5)
        for k in range(1, 9)
        if k * f0 < 7_500
    )
    return (0.5 * wave / np.abs(wave).max()).astype(np.float32)


@pytest.mark.slow
def test_a_short_training_lowers_the_mel_l1_of_held_out_audio():
    """The CPU recipe's shape (a mel-L1 warm-up, then the paper's three losses; the tiny preset, 8-frame segments)
    on notes of other pitches than the held-out ones: the reconstruction's ln-mel L1 on the held-out notes falls
    well below the untrained generator's."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train = [_note(f0, 2.0, rng) for f0 in rng.uniform(110, 880, 24)]
    held_out = torch.from_numpy(np.stack([_note(f0, 66_560 / 16_000, rng) for f0 in (147.0, 262.0, 523.0)]))
    cfg = hifigan_config("tiny")
    gen, disc, fe = HiFiGANGenerator(cfg), HiFiGANDiscriminator(cfg), MelFrontend()
    # 120 mel-only steps (about 0.09 CPU seconds each here) and 2 with the discriminators (about 2 s each): ~17 CPU s
    adam = {"lr": 3e-3, "betas": (0.8, 0.99), "weight_decay": 0.01}
    warmup, steps = 120, 122
    step = HiFiGANStep(
        gen,
        disc,
        fe,
        cfg,
        torch.optim.AdamW(gen.parameters(), **adam),
        torch.optim.AdamW(disc.parameters(), **adam),
        warmup_steps=warmup,
    )
    vocoder = HiFiGANVocoder(gen)
    held_out_mel = fe(held_out)

    def held_out_l1() -> float:
        with torch.no_grad():
            return float((fe.log_mel(vocoder(held_out_mel)) - fe.log_mel(held_out)).abs().mean())

    before = held_out_l1()
    t0 = time.perf_counter()
    segment, batch = 8 * 1024, 8
    for n in range(1, steps + 1):
        rows, starts = rng.integers(0, len(train), batch), rng.integers(0, len(train[0]) - segment, batch)
        wave = torch.from_numpy(np.stack([train[i][s : s + segment] for i, s in zip(rows, starts)]))
        losses = step(step.mel_of(wave), wave, n)
    assert float(losses["loss_d"]) > 0  # the discriminators joined after the warm-up
    after = held_out_l1()
    assert after < 0.7 * before, (before, after, time.perf_counter() - t0)  # 2.56 -> 1.53 after the warm-up here
