"""What a training loop's checkpoints hold, declared once per loop: a resumed worker loads exactly the objects
its checkpoints save, and every rank's digests in a checkpoint are of those same modules."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from clipsynth_core import EMA, load_training_state, save_training_state, state_digest


@dataclass(frozen=True)
class TrainingState:
    """The model and its optimiser, the EMA when the loop keeps one, and further named modules and optimisers
    (HiFi-GAN's discriminator). Give the modules unwrapped: saving and digests see through DDP, which wraps
    the same module objects."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    ema: EMA | None = None
    modules: dict[str, nn.Module] = field(default_factory=dict)
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)

    def load(self, directory: Path, device: torch.device) -> dict:
        """Fill every object from a checkpoint directory; returns its saved state (step and extras)."""
        return load_training_state(
            directory,
            model=self.model,
            ema=self.ema,
            optimizer=self.optimizer,
            modules=self.modules,
            optimizers=self.optimizers,
            map_location=device,
        )

    def save(self, directory: Path, step: int, extra: dict) -> None:
        """Write every object, the step and `extra` (into state.json) to a checkpoint directory."""
        save_training_state(
            directory,
            model=self.model,
            step=step,
            ema=self.ema,
            optimizer=self.optimizer,
            modules=self.modules,
            optimizers=self.optimizers,
            extra=extra,
        )

    def digests(self) -> dict[str, str]:
        """sha256 of each module's weights: model_digest, ema_digest (the EMA's model), <name>_digest."""
        out = {"model_digest": state_digest(self.model)}
        if self.ema is not None:
            out["ema_digest"] = state_digest(self.ema.model)
        out.update({f"{name}_digest": state_digest(module) for name, module in self.modules.items()})
        return out
