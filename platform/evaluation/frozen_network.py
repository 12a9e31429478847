"""What every metric's backbone (VGGish for FAD, the Inception FID, the mel classifier) is: a frozen network on
one device, run over its inputs in batches, named by an identity (tables group by it)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from clipsynth_platform.runtime.devices import resolve_device


def float_tensor(x: Tensor | np.ndarray) -> Tensor:
    """A float32 tensor of a tensor, an array or nested lists (waveforms, mels)."""
    return torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x, dtype=torch.float32)


class FrozenNetwork:
    """A network in eval mode on `device`. `identity` names it and its weights; `random` marks random weights
    (the metrics it gives carry no meaning, and are tagged so)."""

    def __init__(
        self,
        model: nn.Module,
        identity: str,
        device: str | torch.device | None,
        batch_size: int,
        random: bool,
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.identity = identity
        self.batch_size = batch_size
        self.random = random

    def in_batches(self, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """`fn` over `x` in slices of `batch_size` moved to the device; the outputs concatenated on the CPU."""
        return torch.cat(
            [fn(x[i : i + self.batch_size].to(self.device)).cpu() for i in range(0, len(x), self.batch_size)]
        )
