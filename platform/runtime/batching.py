"""Items of mixed sizes in batches of equal size: the one place that groups by length (mels by frames, waves by
samples, requests by sampling settings) and puts the results back in the items' order."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")


def group_indices(keys: Sequence[Hashable]) -> list[list[int]]:
    """Indices grouped by equal key, groups in order of first appearance, indices ascending."""
    groups: dict[Hashable, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    return list(groups.values())


def apply_by_group(items: Sequence[T], key: Callable[[T], Hashable], fn: Callable[[list[T]], Sequence[R]]) -> list[R]:
    """`fn` on each group of items with equal `key` (one batch each), its results back in the items' order."""
    out: dict[int, R] = {}
    for idx in group_indices([key(x) for x in items]):
        results = fn([items[i] for i in idx])
        if len(results) != len(idx):
            raise ValueError(f"a batch of {len(idx)} items gave {len(results)} results")
        out.update(zip(idx, results))
    return [out[i] for i in range(len(items))]


def stack_by_length(arrays: Sequence[np.ndarray], dtype: type | None = None) -> Iterator[np.ndarray]:
    """The arrays stacked in groups of equal last dimension ([n, ...] each), for work whose order does not matter."""
    for idx in group_indices([np.shape(a)[-1] for a in arrays]):
        yield np.stack([np.asarray(arrays[i], dtype=dtype) for i in idx])
