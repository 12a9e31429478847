"""One training step of each model, device- and wrapper-agnostic, so that a plain loop, Ray Train with DDP,
tests and benchmarks all run the same code."""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .diffusion import GaussianDiffusion
from .ema import EMA


@dataclass(frozen=True)
class OptimConfig:
    """improved-diffusion's defaults: AdamW, lr 1e-4, no weight decay, EMA 0.9999, no gradient clipping."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    ema_decay: float = 0.9999
    grad_clip: float | None = None  # a max global norm; None: off, as improved-diffusion

    def to_dict(self) -> dict:
        return asdict(self)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX512-BF16): oneDNN then runs bf16 convolutions about
    1.5x faster than fp32 here; elsewhere CPU bf16 is emulated and slower."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


BF16_SETTINGS = ("auto", "on", "off")


def resolve_bf16(setting: str, device: torch.device | str) -> bool:
    """ "on" | "off" | "auto" (on for CUDA, and for CPUs with native bf16) -> whether to autocast to bf16."""
    if setting not in BF16_SETTINGS:
        raise ValueError(f"bf16 must be on, off or auto, got {setting!r}")
    if setting != "auto":
        return setting == "on"
    return torch.device(device).type == "cuda" or (torch.device(device).type == "cpu" and cpu_has_bf16())


def autocast_context(device: torch.device | str, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on the device's type (CUDA or CPU) when enabled; a no-op otherwise."""
    device = torch.device(device)
    if enabled and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
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


LR_SCHEDULES = ("constant", "cosine")


def scheduled_lr(schedule: str, base: float, progress: float) -> float:
    """The learning rate at `progress` (0..1, the share of the run's budget spent): constant, as
    improved-diffusion, or cosine decay to 0 at the end of the budget (progress past 1 stays at 0)."""
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    raise ValueError(f"unknown lr schedule {schedule!r}; choose one of {LR_SCHEDULES}")


def clip_and_step(params, optimizer: torch.optim.Optimizer, max_norm: float | None) -> Tensor:
    """Clip gradients (when max_norm) and step; returns the gradient norm before clipping."""
    params = [p for p in params if p.grad is not None]
    if max_norm:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        # the foreach kernel: one call over every gradient instead of one norm per tensor
        norm = torch.nn.utils.get_total_norm([p.grad.detach() for p in params]) if params else torch.zeros(())
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


class DiffusionStep:
    """One optimiser step of the diffusion model: hybrid loss, backward, optional clipping, AdamW, EMA.

    `model` may be DDP-wrapped (gradients are then averaged over ranks in backward). Returns the loss terms
    and the gradient norm as detached device tensors, so a loop syncs with the host only when it logs.
    """

    def __init__(
        self,
        model: nn.Module,
        diffusion: GaussianDiffusion,
        optimizer: torch.optim.Optimizer,
        ema: EMA | None = None,
        *,
        grad_clip: float | None = None,
        cond_drop_prob: float = 0.0,
        bf16: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        self.model, self.diffusion, self.optimizer, self.ema = model, diffusion, optimizer, ema
        self.grad_clip, self.cond_drop_prob, self.bf16, self.generator = grad_clip, cond_drop_prob, bf16, generator

    def __call__(self, mel: Tensor, cond: Tensor, step: int | None = None) -> dict[str, Tensor]:
        """mel [B, 1, n_mels, T], cond [B, D]; `step` (1-based) drives the EMA warmup."""
        terms = diffusion_losses(
            self.model,
            self.diffusion,
            mel,
            cond,
            cond_drop_prob=self.cond_drop_prob,
            generator=self.generator,
            bf16=self.bf16,
        )
        terms["loss"].backward()
        grad_norm = clip_and_step(self.model.parameters(), self.optimizer, self.grad_clip)
        if self.ema is not None:
            self.ema.update(self.model, step)
        return {**{k: v.detach() for k, v in terms.items()}, "grad_norm": grad_norm.detach().to(mel.device)}
