"""Exponential moving average of model weights (improved-diffusion keeps one at rate 0.9999)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Shadow copy of a model's parameters and buffers: p_ema <- decay * p_ema + (1 - decay) * p."""

    def __init__(self, model: nn.Module, decay: float = 0.9999) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError("EMA decay must lie in [0, 1]")
        self.decay = decay
        self.model = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        src = unwrap(model).state_dict()
        for name, shadow in self.model.state_dict().items():
            value = src[name].detach()
            if shadow.dtype.is_floating_point:
                shadow.lerp_(value.to(shadow.dtype), 1.0 - self.decay)
            else:
                shadow.copy_(value)

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
            model = model._orig_mod
        else:
            return model
