"""Exponential moving average of model weights (improved-diffusion keeps one at rate 0.9999)."""

from __future__ import annotations

import copy
from typing import cast

import torch
from torch import nn


class EMA:
    """Shadow copy of a model's parameters and buffers: p_ema <- decay * p_ema + (1 - decay) * p.

    With `warmup`, the decay at update `step` is min(decay, (1 + step) / (10 + step)), so that a short run's
    average is not dominated by the random initialisation (0.999 ** 300 still weighs it at 74%). The decay
    comes from the step passed in, so a resumed run continues exactly where it stopped.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = False) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError("EMA decay must lie in [0, 1]")
        self.decay = decay
        self.warmup = warmup
        self.model = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)

    def decay_at(self, step: int | None) -> float:
        if not self.warmup or step is None:
            return self.decay
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        """Fold the model's current weights in; `step` (1 for the first update) sets the warmup decay."""
        decay = self.decay_at(step)
        src = unwrap(model).state_dict()
        # One fused lerp per (dtype, device) group: a per-tensor loop costs more than the tiny U-Net's
        # optimiser step on a CPU (hundreds of small tensors).
        groups: dict[tuple[torch.dtype, torch.device], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for name, shadow in self.model.state_dict().items():
            value = src[name].detach()
            if shadow.dtype.is_floating_point:
                shadows, values = groups.setdefault((shadow.dtype, shadow.device), ([], []))
                shadows.append(shadow)
                values.append(value.to(shadow.dtype))
            else:
                shadow.copy_(value)
        for shadows, values in groups.values():
            torch._foreach_lerp_(shadows, values, 1.0 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = cast(nn.Module, model._orig_mod)
        else:
            return model
