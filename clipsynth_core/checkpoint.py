"""Training state (model, EMA, optimiser, step) saved to and restored from a directory, without pickle.

Layout of a state directory:
    model.safetensors      the trained weights
    ema.safetensors        the EMA weights (optional)
    optimizer.pt           optimiser state: tensors and plain Python values only (loaded weights_only=True)
    state.json             step and any extra JSON-serialisable values
Extra named modules (for example a HiFi-GAN discriminator) go in `<name>.safetensors`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .ema import EMA, unwrap


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; clone makes each tensor its own.
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def save_module(module: nn.Module, path: str | os.PathLike) -> None:
    save_file(_contiguous(unwrap(module).state_dict()), str(path))


def load_module(module: nn.Module, path: str | os.PathLike, strict: bool = True) -> nn.Module:
    unwrap(module).load_state_dict(load_file(str(path)), strict=strict)
    return module


def save_training_state(
    directory: str | os.PathLike,
    *,
    model: nn.Module,
    step: int,
    ema: EMA | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    modules: dict[str, nn.Module] | None = None,
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    extra: dict | None = None,
) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_module(model, d / "model.safetensors")
    if ema is not None:
        save_file(_contiguous(ema.state_dict()), str(d / "ema.safetensors"))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), d / "optimizer.pt")
    for name, m in (modules or {}).items():
        save_module(m, d / f"{name}.safetensors")
    for name, opt in (optimizers or {}).items():
        torch.save(opt.state_dict(), d / f"{name}.optimizer.pt")
    (d / "state.json").write_text(json.dumps({"step": int(step), **(extra or {})}, indent=2))
    return d


def load_training_state(
    directory: str | os.PathLike,
    *,
    model: nn.Module,
    ema: EMA | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    modules: dict[str, nn.Module] | None = None,
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    map_location: str | torch.device = "cpu",
) -> dict:
    """Restore in place; returns the contents of state.json (with "step")."""
    d = Path(directory)
    if not (d / "state.json").exists():
        raise FileNotFoundError(f"no training state in {d} (state.json missing)")
    load_module(model, d / "model.safetensors")
    if ema is not None and (d / "ema.safetensors").exists():
        ema.load_state_dict(load_file(str(d / "ema.safetensors")))
    if optimizer is not None and (d / "optimizer.pt").exists():
        optimizer.load_state_dict(torch.load(d / "optimizer.pt", map_location=map_location, weights_only=True))
    for name, m in (modules or {}).items():
        load_module(m, d / f"{name}.safetensors")
    for name, opt in (optimizers or {}).items():
        opt.load_state_dict(torch.load(d / f"{name}.optimizer.pt", map_location=map_location, weights_only=True))
    return json.loads((d / "state.json").read_text())


def state_digest(module: nn.Module | dict[str, torch.Tensor]) -> str:
    """sha256 of a module's state (names, dtypes, shapes and bytes): equal iff the weights are bit-identical."""
    state = module if isinstance(module, dict) else unwrap(module).state_dict()
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
