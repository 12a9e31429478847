"""Grouping by length: one batch per size, results back in the items' order."""

from __future__ import annotations

import numpy as np
import pytest

from clipsynth_platform.runtime.batching import apply_by_group, group_indices, stack_by_length


def test_group_indices_keeps_order_of_first_appearance():
    assert group_indices([3, 5, 3, 2, 5]) == [[0, 2], [1, 4], [3]]
    assert group_indices([]) == []


def test_apply_by_group_batches_equal_lengths_and_restores_order():
    rng = np.random.default_rng(0)
    items = [rng.normal(size=n) for n in (3, 5, 3, 2, 5, 3)]
    calls: list[int] = []

    def batch_sums(group: list[np.ndarray]) -> list[float]:
        stacked = np.stack(group)  # raises if the group mixed lengths
        calls.append(len(group))
        return list(stacked.sum(axis=1))

    got = apply_by_group(items, len, batch_sums)
    np.testing.assert_allclose(got, [x.sum() for x in items])
    assert calls == [3, 2, 1]  # lengths 3, 5, 2: one call each


def test_apply_by_group_refuses_a_batch_that_loses_results():
    with pytest.raises(ValueError, match="a batch of 2 items gave 1 results"):
        apply_by_group(["a", "b"], len, lambda group: group[:1])


def test_stack_by_length_groups_by_the_last_dimension():
    mels = [np.ones((4, 6)), np.zeros((4, 8)), np.full((4, 6), 2.0)]
    groups = list(stack_by_length(mels, dtype=np.float32))
    assert [g.shape for g in groups] == [(2, 4, 6), (1, 4, 8)]
    assert all(g.dtype == np.float32 for g in groups)
    np.testing.assert_array_equal(groups[0][1], mels[2])
