"""The sampler's seeded noise (clipsynth_core.noise): its integers are exactly a reference hash computed with
Python's own integers (so every device computes the same ones: int64 arithmetic below 2^63 is exact), its
Gaussians match a Box-Muller transform computed with Python's math, they are standard normal and independent
across seeds, draws and elements, and an example's noise does not depend on its batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from clipsynth_core.noise import _hash32, _uniform_bits, device_generator, example_keys, seeded_normal

M = 2**32


def ref_hash(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x21F0AAAD) % M
    x ^= x >> 15
    x = (x * 0x735A2D97) % M
    return x ^ (x >> 15)


def ref_bits(seed: int, counter: int, index: int) -> int:
    key = ref_hash((seed % M) ^ ref_hash(((seed >> 32) % M) ^ 0x61C88647))
    stream = ref_hash(key ^ ref_hash(counter ^ 0x61C88647))
    return ref_hash(ref_hash((index * 0x61C88647) % M) ^ stream)


def test_the_integers_are_the_reference_hash():
    values = [0, 1, 2, 12345, 2**31 - 1, 2**31, M - 2, M - 1]
    values += [int(v) for v in np.random.default_rng(0).integers(0, M, 200)]
    assert _hash32(torch.tensor(values)).tolist() == [ref_hash(v) for v in values]
    seeds = [0, 7, 2**31 - 1, 2**40 + 3]
    bits = _uniform_bits(example_keys(seeds), 5, 16)
    assert bits.tolist() == [[ref_bits(s, 5, i) for i in range(16)] for s in seeds]


def test_the_gaussians_are_box_muller_of_those_integers():
    z = seeded_normal(example_keys([42]), 3, (8,))[0]
    expected = []
    for pair in range(4):
        u1 = ((ref_bits(42, 3, 2 * pair) >> 8) + 0.5) * 2.0**-24
        u2 = ((ref_bits(42, 3, 2 * pair + 1) >> 8) + 0.5) * 2.0**-24
        r = math.sqrt(-2.0 * math.log(u1))
        expected += [r * math.cos(2 * math.pi * u2), r * math.sin(2 * math.pi * u2)]
    torch.testing.assert_close(z, torch.tensor(expected, dtype=torch.float32), rtol=1e-6, atol=1e-7)


def test_standard_normal_and_independent():
    keys = example_keys(list(range(100)))
    z = seeded_normal(keys, 0, (2000,)).double()  # 200,000 values
    flat = z.flatten().numpy()
    assert abs(flat.mean()) < 0.01 and abs(flat.var() - 1) < 0.01
    assert abs(stats.skew(flat)) < 0.02 and abs(stats.kurtosis(flat)) < 0.05
    assert stats.kstest(flat, "norm").pvalue > 1e-3
    n = z.numel()
    bound = 5 / math.sqrt(n)  # five standard errors of a correlation

    def corr(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])

    assert abs(corr(z[:-1], z[1:])) < 5 / math.sqrt(z[1:].numel())  # neighbouring seeds
    assert abs(corr(z[:, :-1], z[:, 1:])) < 5 / math.sqrt(z[:, 1:].numel())  # neighbouring elements
    assert abs(corr(z, seeded_normal(keys, 1, (2000,)).double())) < bound  # the next draw


def test_an_examples_noise_is_its_own():
    keys = example_keys([3, 4, 5])
    batch = seeded_normal(keys, 9, (1, 4, 4))
    assert batch.shape == (3, 1, 4, 4) and batch.dtype == torch.float32
    assert torch.equal(seeded_normal(example_keys([4]), 9, (1, 4, 4))[0], batch[1])
    assert not torch.equal(batch[0], batch[1])
    assert seeded_normal(keys, 9, (5,), torch.float64).dtype == torch.float64
    assert seeded_normal(keys, 9, (7,)).shape == (3, 7)  # an odd count: the last pair's second value dropped


def test_device_generators():
    g = device_generator("cpu", 5)
    assert g is not None and g.device.type == "cpu"
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=torch.Generator().manual_seed(5)))
    assert device_generator("meta", 5) is None


@pytest.mark.parametrize("seed", [0, 2**31 - 1])
def test_keys_of_seeds_that_differ_in_any_bit_differ(seed):
    others = [seed ^ (1 << b) for b in range(62)]
    keys = example_keys([seed, *others]).tolist()
    assert len(set(keys)) == len(keys)
