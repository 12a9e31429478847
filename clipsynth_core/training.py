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


@dataclass(frozen=True)
class DiffusionDraws:
    """The randomness of a diffusion training step, drawn on the batch's device from `generator` (a device
    generator, `clipsynth_core.noise.device_generator`): timesteps, noise, and which examples get the null
    condition (None when condition dropout is off). Drawn for the whole batch, then sliced per micro-batch, so
    accumulating gradients over micro-batches changes nothing but the summation order."""

    t: Tensor
    noise: Tensor
    drop: Tensor | None

    @classmethod
    def draw(
        cls,
        diffusion: GaussianDiffusion,
        mel: Tensor,
        cond_drop_prob: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> DiffusionDraws:
        b, device = mel.shape[0], mel.device
        t = torch.randint(0, diffusion.num_timesteps, (b,), generator=generator, device=device)
        noise = torch.randn(mel.shape, generator=generator, device=device)
        drop = torch.rand(b, generator=generator, device=device) < cond_drop_prob if cond_drop_prob > 0 else None
        return cls(t, noise, drop)

    def __getitem__(self, rows: slice) -> DiffusionDraws:
        return DiffusionDraws(self.t[rows], self.noise[rows], None if self.drop is None else self.drop[rows])


def hybrid_loss(
    model: nn.Module, diffusion: GaussianDiffusion, mel: Tensor, cond: Tensor, draws: DiffusionDraws, bf16: bool
) -> dict[str, Tensor]:
    """Batch-mean hybrid loss terms {"loss", "mse", "vb"} for mels [B, 1, n_mels, T] and conditions [B, D]."""
    with autocast_context(mel.device, bf16):
        terms = diffusion.training_losses(
            lambda x, tt: model(x, tt, cond, draws.drop), mel.float(), draws.t, draws.noise
        )
    return {k: v.float().mean() for k, v in terms.items()}


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
    """Batch-mean hybrid loss terms for mels [B, 1, n_mels, T] and conditions [B, D], with fresh draws.

    With cond_drop_prob > 0 a random subset of examples is trained with the null condition
    (classifier-free guidance). `generator` must live on mel's device (or be None).
    """
    return hybrid_loss(
        model, diffusion, mel, cond, DiffusionDraws.draw(diffusion, mel, cond_drop_prob, generator), bf16
    )


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
    """Clip gradients (when max_norm) and step; returns the gradient norm before clipping (on the device: no
    host sync, clip_grad_norm_ scales by a device tensor)."""
    params = [p for p in params if p.grad is not None]
    if max_norm:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        # the foreach kernel: one call over every gradient instead of one norm per tensor
        norm = torch.nn.utils.get_total_norm([p.grad.detach() for p in params]) if params else torch.zeros(())
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


ADAMW_KERNELS = ("auto", "fused", "foreach", "loop")


def adamw(
    params,
    device: torch.device | str,
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    kernel: str = "auto",
) -> torch.optim.AdamW:
    """AdamW with the kernel that suits the device: "fused" (one kernel for every parameter, and the step count
    kept on the device: no host work per step) on CUDA and on the CPU, where benchmarks/core/optimizer.py
    measured it fastest; torch's own choice elsewhere (the meta device has no fused kernel)."""
    if kernel not in ADAMW_KERNELS:
        raise ValueError(f"AdamW kernel must be one of {ADAMW_KERNELS}, got {kernel!r}")
    if kernel == "auto":
        kernel = "fused" if torch.device(device).type in ("cuda", "cpu") else "default"
    options = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}.get(kernel, {})
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, **options)


def _no_sync(model: nn.Module, accumulate: bool) -> contextlib.AbstractContextManager:
    """DDP's no_sync (gradients stay local) for a micro-batch whose gradients are still accumulating; the last
    one's backward all-reduces the sum. A model that is not DDP-wrapped has nothing to skip."""
    no_sync = getattr(model, "no_sync", None)
    return no_sync() if accumulate and no_sync is not None else contextlib.nullcontext()


class DiffusionStep:
    """One optimiser step of the diffusion model, as improved-diffusion's TrainLoop.run_step does it: the step's
    draws, then per micro-batch the hybrid loss and its backward (DDP all-reduces only at the last), then
    optional clipping, AdamW, EMA.

    `model` may be DDP-wrapped and/or compiled. Everything stays on the model's device: draws from a device
    generator, loss terms and the gradient norm returned as detached device tensors, so a loop syncs with the
    host only when it logs (tests/test_sync_free.py proves it on the meta device).
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
        microbatch: int = 0,
    ) -> None:
        if microbatch < 0:
            raise ValueError(f"microbatch must be >= 0 (0: the whole batch at once), got {microbatch}")
        self.model, self.diffusion, self.optimizer, self.ema = model, diffusion, optimizer, ema
        self.grad_clip, self.cond_drop_prob, self.bf16, self.generator = grad_clip, cond_drop_prob, bf16, generator
        self.microbatch = microbatch

    def __call__(self, mel: Tensor, cond: Tensor, step: int | None = None) -> dict[str, Tensor]:
        """mel [B, 1, n_mels, T], cond [B, D]; `step` (1-based) drives the EMA warmup."""
        batch = mel.shape[0]
        micro = self.microbatch or batch
        if batch % micro:
            raise ValueError(f"a batch of {batch} does not split into micro-batches of {micro}")
        draws = DiffusionDraws.draw(self.diffusion, mel, self.cond_drop_prob, self.generator)
        totals: dict[str, Tensor] = {}
        for start in range(0, batch, micro):
            rows = slice(start, start + micro)
            with _no_sync(self.model, accumulate=start + micro < batch):
                terms = hybrid_loss(self.model, self.diffusion, mel[rows], cond[rows], draws[rows], self.bf16)
                # each micro-batch's mean weighs micro / batch: the gradients sum to the whole batch's mean
                (terms["loss"] * (micro / batch)).backward()
            for k, v in terms.items():
                totals[k] = totals[k] + v.detach() * (micro / batch) if k in totals else v.detach() * (micro / batch)
        grad_norm = clip_and_step(self.model.parameters(), self.optimizer, self.grad_clip)
        if self.ema is not None:
            self.ema.update(self.model, step)
        return {**totals, "grad_norm": grad_norm.detach()}
