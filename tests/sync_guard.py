"""A test harness that proves a step never synchronises with the host, without a GPU.

Run the step with its model and data on the `meta` device (it runs forward, backward and the optimisers, and
holds no values) inside `HostSyncGuard`, a TorchDispatchMode that sees every op the step dispatches and refuses
what would make a GPU wait for the host or the host wait for the GPU:

- a copy between the host and the device (`.to(device)` / `.cpu()` / `copy_` of a CPU tensor, and a tensor built
  on the device from host data: `torch.tensor(values, device=...)`, which dispatches no copy and is watched
  separately);
- a CPU tensor mixed into an op on device tensors (a 0-dim CPU tensor too: CUDA accepts those and reads them on
  the host);
- a value read back from the device (`.item()`, `float()`, `bool()`, `torch.equal`) or an op whose output size
  depends on the values (`nonzero`, boolean indexing, `masked_select`, `unique`, `repeat_interleave` without an
  output size): each waits for the GPU;
- a random draw on the device from a CPU generator (CUDA refuses it; meta would silently ignore it).

Ops on CPU tensors alone are allowed (the host's own bookkeeping, such as a non-fused optimiser's step counter)
and are counted in `host_ops`.

Use:

    from sync_guard import HostSyncGuard, META

    with HostSyncGuard() as guard:          # raises HostSyncError at the first offending op, with the op,
        step(batch)                         # the devices involved and where in the project's code it came from
    guard.device_ops                        # how many ops ran on the device (a guard that saw nothing proves nothing)

    with HostSyncGuard(raise_at_once=False) as guard:
        request()
    guard.violations                        # every offence, as `Violation(kind, op, detail, where)`, to count or
                                            # compare (e.g. per-request copies that must not grow with the steps)
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

META = torch.device("meta")

REPO = Path(__file__).resolve().parents[1]

# Ops that read a value back or size their output by the values: each makes the host wait for the device.
_SYNCING_OPS = {
    "aten._local_scalar_dense",
    "aten.equal",
    "aten.is_nonzero",
    "aten.nonzero",
    "aten.masked_select",
    "aten._unique",
    "aten._unique2",
    "aten.unique_dim",
    "aten.unique_consecutive",
    "aten.repeat_interleave",
}
_COPY_OPS = {"aten._to_copy", "aten.copy_", "aten._copy_from", "aten._copy_from_and_resize", "aten.copy"}


class HostSyncError(AssertionError):
    """An op of the guarded code moves data between the host and the device, or waits for one of them."""


@dataclass(frozen=True)
class Violation:
    kind: str  # "copy", "cpu operand", "readback", "cpu generator", "host data"
    op: str
    detail: str
    where: str  # the innermost frames of the project's own code that issued the op

    def __str__(self) -> str:
        return f"{self.kind}: {self.op} ({self.detail})\n{self.where}"


def _where() -> str:
    """The project's frames on the stack (innermost last), without this harness and torch."""
    frames = [
        f"  {Path(f.filename).relative_to(REPO)}:{f.lineno} in {f.name}: {(f.line or '').strip()}"
        for f in traceback.extract_stack()
        if f.filename.startswith(str(REPO)) and not f.filename.endswith("sync_guard.py")
    ]
    return "\n".join(frames[-4:]) or "  (no frame of the project's code)"


def _op_name(func: Any) -> str:
    return str(getattr(func, "overloadpacket", func))


class HostSyncGuard(TorchDispatchMode):
    """See the module docstring. `raise_at_once=False` records every violation instead of raising at the first."""

    def __init__(self, raise_at_once: bool = True) -> None:
        super().__init__()
        self.raise_at_once = raise_at_once
        self.violations: list[Violation] = []
        self.device_ops = 0
        self.host_ops = 0
        self._patched: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------ recording
    def _offend(self, kind: str, op: str, detail: str) -> None:
        violation = Violation(kind, op, detail, _where())
        self.violations.append(violation)
        if self.raise_at_once:
            raise HostSyncError(str(violation))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _op_name(func)
        tensors = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        devices = {t.device.type for t in tensors}
        out_device = kwargs.get("device")
        if out_device is not None:
            devices.add(torch.device(out_device).type)
        on_device = devices - {"cpu"}

        if name in _COPY_OPS and len(devices) > 1:
            self._offend("copy", name, " -> ".join(_copy_direction(name, args, kwargs)))
        elif "cpu" in devices and on_device:
            shapes = [f"{t.device.type}{list(t.shape)}" for t in tensors]
            self._offend("cpu operand", name, f"operands {', '.join(shapes)}")
        if on_device and (name in _SYNCING_OPS or _indexes_with_a_mask(name, args)):
            self._offend("readback", name, "the host waits for the device's values")
        generator = kwargs.get("generator")
        if isinstance(generator, torch.Generator) and on_device and generator.device.type not in on_device:
            self._offend("cpu generator", name, f"a {generator.device.type} generator draws on {sorted(on_device)}")

        if on_device:
            self.device_ops += 1
        else:
            self.host_ops += 1
        return func(*args, **kwargs)

    # ------------------------------------------------- tensors built from host data (no copy is dispatched)
    def __enter__(self) -> HostSyncGuard:
        guard = self

        def watch(name: str, original: Any) -> Any:
            def built(data: Any, *args: Any, **kwargs: Any) -> Any:
                device = kwargs.get("device")
                if device is not None and torch.device(device).type != "cpu":
                    on_host = not isinstance(data, torch.Tensor) or data.device.type == "cpu"
                    if on_host:
                        guard._offend("host data", f"torch.{name}", f"host values copied to {device}")
                return original(data, *args, **kwargs)

            return built

        for name in ("tensor", "as_tensor"):
            self._patched[name] = getattr(torch, name)
            setattr(torch, name, watch(name, self._patched[name]))
        super().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        for name, original in self._patched.items():
            setattr(torch, name, original)
        self._patched.clear()


def _copy_direction(name: str, args: tuple, kwargs: dict) -> list[str]:
    if name == "aten._to_copy":
        target = kwargs.get("device") or args[0].device
        return [args[0].device.type, torch.device(target).type]
    if name in ("aten.copy_", "aten._copy_from", "aten._copy_from_and_resize"):
        # copy_(dst, src); _copy_from(src, dst)
        dst, src = (args[0], args[1]) if name == "aten.copy_" else (args[1], args[0])
        return [src.device.type, dst.device.type]
    return [t.device.type for t in args if isinstance(t, torch.Tensor)]


def _indexes_with_a_mask(name: str, args: tuple) -> bool:
    """x[mask] with a boolean mask: the output size is the mask's count, read from the device."""
    if name not in ("aten.index", "aten.index_put", "aten.index_put_"):
        return False
    indices = args[1] if len(args) > 1 else []
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or [])
