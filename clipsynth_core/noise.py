"""Random numbers drawn on the device the model runs on, so that a step never copies them from the host.

Two kinds:
- `seeded_normal`: Gaussian noise that is a pure function of (an example's seed, a draw counter, the element's
  index), computed with integer hashing and a Box-Muller transform in torch ops. The sampler uses it: a served or
  evaluated sample depends on its own seed only (not on its batch-mates), it is the same on every device (the
  integers are exact everywhere; the transform runs in float64 and is rounded to float32, so CPU and CUDA agree
  to the last bit but for rare double-rounding ties), and it needs no generator state, no per-example kernel
  launches and no host synchronisation.
- `device_generator`: a torch generator on the device, for training's timesteps, noise and condition dropout
  (a stream per rank; reproducibility within one device type is all training needs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x61C88647  # 2^32 - 2^32 / phi: spreads consecutive integers over the 32-bit range


def _mul32(x: Tensor, c: int) -> Tensor:
    """(x * c) mod 2^32 for x in [0, 2^32) held in int64: exact on every device, as c < 2^31 keeps the product
    below 2^63 (no signed overflow)."""
    return (x * c) & _MASK32


def _hash32(x: Tensor) -> Tensor:
    """A 32-bit integer hash with full avalanche: xorshift-multiply rounds with the constants of Wellons' hash
    prospector ([16 21f0aaad 15 735a2d97 15]; both multipliers below 2^31, see `_mul32`)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x21F0AAAD)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x735A2D97)
    return x ^ (x >> 15)


def example_keys(seeds: Sequence[int] | Tensor, device: torch.device | str = "cpu") -> Tensor:
    """Per-example keys [B] (int64, on `device`) from integer seeds: both 32-bit halves of a seed count, so
    seeds that differ anywhere give unrelated noise. Built once per batch (one small copy to the device)."""
    s = torch.as_tensor(seeds, dtype=torch.int64).to(device)
    lo, hi = s & _MASK32, (s >> 32) & _MASK32
    return _hash32(lo ^ _hash32(hi ^ _GOLDEN))


def _uniform_bits(keys: Tensor, counter: int, count: int) -> Tensor:
    """[B, count] 32-bit hashes of (key, counter, index), as int64."""
    stream = _hash32(keys ^ _hash32(torch.full_like(keys, counter & _MASK32) ^ _GOLDEN))  # [B]
    index = _hash32(_mul32(torch.arange(count, device=keys.device, dtype=torch.int64), _GOLDEN))  # [count]
    # one hash round over the B x count elements: the costly part, kept to ten integer ops an element
    return _hash32(index[None, :] ^ stream[:, None])


def seeded_normal(keys: Tensor, counter: int, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal noise [B, *shape] for examples with `keys` (from `example_keys`), at draw `counter`.

    Each pair of elements comes from two 24-bit uniforms through Box-Muller (tails to about 5.9 sigma). The same
    (key, counter) gives the same numbers in any batch and on any device.
    """
    per_example = math.prod(shape)
    pairs = (per_example + 1) // 2
    bits = _uniform_bits(keys, counter, 2 * pairs)
    # the top 24 bits, centred in their bin: u in (0, 1), exact in float32 and float64
    u = ((bits >> 8).to(torch.float64) + 0.5) * 2.0**-24
    u1, u2 = u[:, 0::2], u[:, 1::2]
    radius = torch.sqrt(-2.0 * torch.log(u1))
    angle = (2.0 * math.pi) * u2
    z = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1).reshape(keys.shape[0], -1)
    return z[:, :per_example].to(dtype).reshape(keys.shape[0], *shape)


def device_generator(device: torch.device | str, seed: int) -> torch.Generator | None:
    """A generator on `device` seeded with `seed`; None on the meta device, which has none (its tensors hold no
    values, so there is nothing to draw)."""
    device = torch.device(device)
    if device.type == "meta":
        return None
    return torch.Generator(device=device).manual_seed(int(seed))
