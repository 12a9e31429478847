"""One training step of each model, device- and wrapper-agnostic, so that a plain loop, Ray Train with DDP,
tests and benchmarks all run the same code."""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .diffusion import GaussianDiffusion
from .hifigan import (
    HiFiGANConfig,
    discriminator_loss,
    feature_matching_loss,
    generator_adv_loss,
)
from .mel import MelFrontend


@dataclass(frozen=True)
class OptimConfig:
    """improved-diffusion's defaults: AdamW, lr 1e-4, no weight decay, EMA 0.9999; plus gradient clipping."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    ema_decay: float = 0.9999
    grad_clip: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


def autocast_context(device: torch.device | str, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when enabled; a no-op elsewhere (CPU bf16 is slow and gains nothing here)."""
    device = torch.device(device)
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def diffusion_losses(
    model: nn.Module,
    diffusion: GaussianDiffusion,
    mel: Tensor,
    cond: Tensor,
    *,
    cond_drop_prob: float = 0.0,
    generator: torch.Generator | None = None,
    bf16: bool = False,
) -> dict[str, Tensor]:
    """Batch-mean hybrid loss terms for mels [B, 1, n_mels, T] and conditions [B, D].

    With cond_drop_prob > 0 a random subset of examples is trained with the null condition
    (classifier-free guidance).
    """
    b = mel.shape[0]
    device = mel.device
    t = torch.randint(0, diffusion.num_timesteps, (b,), generator=generator, device="cpu").to(device)
    noise = torch.randn(mel.shape, generator=generator, device="cpu").to(device)
    drop = None
    if cond_drop_prob > 0:
        drop = (torch.rand(b, generator=generator, device="cpu") < cond_drop_prob).to(device)
    with autocast_context(device, bf16):
        terms = diffusion.training_losses(lambda x, tt: model(x, tt, cond, drop), mel.float(), t, noise)
    return {k: v.float().mean() for k, v in terms.items()}


def clip_and_step(params, optimizer: torch.optim.Optimizer, max_norm: float | None) -> Tensor:
    """Clip gradients (when max_norm) and step; returns the gradient norm before clipping."""
    params = [p for p in params if p.grad is not None]
    if max_norm:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        norm = (
            torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params]))
            if params
            else torch.zeros(())
        )
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


class HiFiGANStep:
    """One HiFi-GAN update (discriminator, then generator) on (mel segment, waveform segment) pairs.

    The mel loss compares the project's normalised mels of the generated and the real waveform, with the L1
    weight of the original paper (45).
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
    ) -> None:
        self.g, self.d, self.mel, self.cfg = generator, discriminator, mel_frontend, config
        self.opt_g, self.opt_d, self.grad_clip = opt_g, opt_d, grad_clip

    def mel_of(self, wave: Tensor) -> Tensor:
        # Pad by n_fft - hop so that N = T * hop samples give exactly T frames, matching the input mel.
        c = self.mel.config
        pad = c.n_fft - c.hop_length
        return self.mel(F.pad(wave, (pad // 2, pad - pad // 2), mode="reflect"))

    def __call__(self, mel: Tensor, wave: Tensor) -> dict[str, float]:
        fake = self.g(mel)
        if fake.shape != wave.shape:
            raise ValueError(f"generator gave {tuple(fake.shape)}, the target waveform is {tuple(wave.shape)}")
        # Discriminator
        real_s, _ = self.d(wave)
        fake_s, _ = self.d(fake.detach())
        loss_d = discriminator_loss(real_s, fake_s)
        loss_d.backward()
        clip_and_step(self.d.parameters(), self.opt_d, self.grad_clip)
        # Generator
        real_s, real_f = self.d(wave)
        fake_s, fake_f = self.d(fake)
        loss_adv = generator_adv_loss(fake_s)
        loss_fm = feature_matching_loss(real_f, fake_f)
        loss_mel = F.l1_loss(self.mel_of(fake), self.mel_of(wave))
        loss_g = loss_adv + self.cfg.lambda_fm * loss_fm + self.cfg.lambda_mel * loss_mel
        self.opt_d.zero_grad(set_to_none=True)  # the generator pass left gradients in D
        loss_g.backward()
        clip_and_step(self.g.parameters(), self.opt_g, self.grad_clip)
        self.opt_d.zero_grad(set_to_none=True)
        return {
            k: float(v.detach())
            for k, v in {
                "loss_d": loss_d,
                "loss_g": loss_g,
                "loss_adv": loss_adv,
                "loss_fm": loss_fm,
                "loss_mel": loss_mel,
            }.items()
        }
