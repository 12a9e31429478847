"""One HiFi-GAN update (Kong et al., 2020, V1's losses), device- and wrapper-agnostic: Ray Train's loop, the
vocoder benchmark and the tests run this same code.

Per step: the generator makes the waveform of the mel segment; the discriminators (multi-period and
multi-scale) take one least-squares step on (real, generated); then the generator takes one step on
    loss_g = adversarial + lambda_fm * feature matching + lambda_mel * mel L1
with the discriminators frozen (their weights need no gradient there, and under DDP none is all-reduced).

`warmup_steps`: the first steps train the generator on the mel L1 alone, before the discriminators join
(benchmarks/vocoder measures whether a short warm-up helps a short CPU run). The losses come back as detached
device tensors, so a loop syncs with the host only when it logs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ema import unwrap
from .hifigan import HiFiGANConfig, discriminator_loss, feature_matching_loss, generator_adv_loss
from .mel import MelFrontend
from .training import autocast_context, clip_and_step

LOSS_KEYS = ("loss_d", "loss_g", "loss_adv", "loss_fm", "loss_mel")


class HiFiGANStep:
    """One HiFi-GAN update (discriminator, then generator) on (mel segment, waveform segment) pairs.

    The mel loss is the L1 distance of the natural-log mels (the project's filterbank, clamped at 1e-5, not
    the [-1, 1] normalised mels) of the generated and the real waveform, with the weight of the original
    paper (45), which was chosen for ln-mels. `bf16`: the generator and discriminators run under bf16
    autocast (CUDA, or a CPU with native bf16); the mel loss, whose STFT runs in fp32, and the loss sums stay fp32.
    """

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        mel_frontend: MelFrontend,
        config: HiFiGANConfig,
        opt_g: torch.optim.Optimizer,
        opt_d: torch.optim.Optimizer,
        grad_clip: float | None = None,
        *,
        bf16: bool = False,
        warmup_steps: int = 0,
    ) -> None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.g, self.d, self.mel, self.cfg = generator, discriminator, mel_frontend, config
        self.opt_g, self.opt_d, self.grad_clip = opt_g, opt_d, grad_clip
        self.bf16, self.warmup_steps = bf16, warmup_steps

    def _aligned(self, wave: Tensor) -> Tensor:
        # Pad by n_fft - hop so that N = T * hop samples give exactly T frames, matching the input mel.
        c = self.mel.config
        pad = c.n_fft - c.hop_length
        return F.pad(wave, (pad // 2, pad - pad // 2), mode="reflect")

    def mel_of(self, wave: Tensor) -> Tensor:
        """The generator's input: the normalised mel [B, n_mels, T] of T * hop samples."""
        return self.mel(self._aligned(wave))

    def log_mel_of(self, wave: Tensor) -> Tensor:
        """The mel loss's view: the ln-mel [B, n_mels, T] of T * hop samples, frame for frame as `mel_of`."""
        return self.mel.log_mel(self._aligned(wave))

    def adversarial(self, step: int | None) -> bool:
        """Whether the discriminators train at this (1-based) step: after the mel-only warm-up."""
        return step is None or step > self.warmup_steps

    def __call__(self, mel: Tensor, wave: Tensor, step: int | None = None) -> dict[str, Tensor]:
        """mel [B, n_mels, T], wave [B, T * hop]; `step` (1-based) places it against the warm-up."""
        device = wave.device
        with autocast_context(device, self.bf16):
            fake = self.g(mel).float()
        if fake.shape != wave.shape:
            raise ValueError(f"generator gave {tuple(fake.shape)}, the target waveform is {tuple(wave.shape)}")
        zero = torch.zeros((), device=device)
        loss_d, loss_adv, loss_fm = zero, zero, zero
        if self.adversarial(step):
            # Discriminators, on the real and the (detached) generated waveform
            with autocast_context(device, self.bf16):
                real_s, _ = self.d(wave)
                fake_s, _ = self.d(fake.detach())
            loss_d = discriminator_loss([s.float() for s in real_s], [s.float() for s in fake_s])
            loss_d.backward()
            clip_and_step(self.d.parameters(), self.opt_d, self.grad_clip)
            # Generator: through the updated discriminators, frozen, outside DDP (nothing of theirs to reduce)
            loss_adv, loss_fm = self._adversarial_terms(wave, fake)
        loss_mel = F.l1_loss(self.log_mel_of(fake), self.log_mel_of(wave))
        loss_g = loss_adv + self.cfg.lambda_fm * loss_fm + self.cfg.lambda_mel * loss_mel
        loss_g.backward()
        clip_and_step(self.g.parameters(), self.opt_g, self.grad_clip)
        terms = {"loss_d": loss_d, "loss_g": loss_g, "loss_adv": loss_adv, "loss_fm": loss_fm, "loss_mel": loss_mel}
        return {k: v.detach() for k, v in terms.items()}

    def _adversarial_terms(self, wave: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
        """The generator's adversarial and feature-matching losses, the discriminators' weights frozen."""
        d = unwrap(self.d)
        frozen = [p for p in d.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            with autocast_context(wave.device, self.bf16):
                with torch.no_grad():
                    _, real_f = d(wave)
                fake_s, fake_f = d(fake)
        finally:
            for p in frozen:
                p.requires_grad_(True)
        loss_adv = generator_adv_loss([s.float() for s in fake_s])
        loss_fm = feature_matching_loss(
            [[f.float() for f in fs] for fs in real_f], [[f.float() for f in fs] for fs in fake_f]
        )
        return loss_adv, loss_fm
