"""Combined queries (clipsynth_core.query_blend): parsing, and blends that stay on the unit sphere."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clipsynth_core.query_blend import QueryPart, blend, is_combined, parse_query, split_parts


def test_parse_plain_combined_and_weighted_queries():
    assert parse_query("a cello") == [QueryPart("a cello", 1.0)]
    assert parse_query("piano + guitar") == [QueryPart("piano", 1.0), QueryPart("guitar", 1.0)]
    assert parse_query("piano*0.7 + guitar * .3") == [QueryPart("piano", 0.7), QueryPart("guitar", 0.3)]
    assert parse_query("x*2+y") == [QueryPart("x", 2.0), QueryPart("y", 1.0)]


def test_a_plus_in_a_name_is_text_not_a_join():
    assert parse_query("C++") == [QueryPart("C++", 1.0)]
    assert parse_query("a C+ programmer") == [QueryPart("a C+ programmer", 1.0)]
    assert parse_query("C++ + piano*0.5") == [QueryPart("C++", 1.0), QueryPart("piano", 0.5)]
    assert split_parts("a+b + c") == ["a", "b", "c"]
    assert not is_combined("C++") and is_combined("C++ + piano") and is_combined("a+b")


@pytest.mark.parametrize(
    "query, message",
    [
        ("piano + ", "empty part"),
        ("*0.5 + guitar", "no text"),
        ("a*0 + b*0", "all zero"),
        ("+".join("abcdefghi"), "at most"),
    ],
)
def test_bad_combined_queries_say_what_is_wrong(query, message):
    with pytest.raises(ValueError, match=message):
        parse_query(query)


def test_equal_blend_of_two_unit_vectors_is_their_bisector_on_the_sphere():
    g = torch.Generator().manual_seed(0)
    a, b = F.normalize(torch.randn(2, 32, generator=g), dim=-1)
    m = blend(torch.stack([a, b]), [1.0, 1.0])
    assert float(m.norm()) == pytest.approx(1.0, abs=1e-6)
    assert float(m @ a) == pytest.approx(float(m @ b), abs=1e-6)
    # the angle to each is half the angle between them (the great-circle midpoint)
    half = math.acos(float(a @ b)) / 2
    assert math.acos(min(1.0, float(m @ a))) == pytest.approx(half, abs=1e-5)


def test_weighted_blend_leans_to_the_heavier_part_and_matches_the_normalised_sum():
    g = torch.Generator().manual_seed(1)
    parts = F.normalize(torch.randn(3, 16, generator=g), dim=-1)
    w = torch.tensor([0.7, 0.3, 0.0])
    m = blend(parts, w)
    expected = (0.7 * parts[0] + 0.3 * parts[1]) / (0.7 * parts[0] + 0.3 * parts[1]).norm()
    torch.testing.assert_close(m, expected)
    assert float(m @ parts[0]) > float(m @ parts[1])
    torch.testing.assert_close(blend(parts[:1], [5.0]), parts[0])  # one part: itself


def test_blend_refuses_opposite_parts_and_bad_weights():
    a = F.normalize(torch.randn(8), dim=-1)
    with pytest.raises(ValueError, match="cancel"):
        blend(torch.stack([a, -a]), [1.0, 1.0])
    with pytest.raises(ValueError, match="non-negative"):
        blend(torch.stack([a, a]), [1.0, -1.0])
    with pytest.raises(ValueError, match="one non-negative weight per"):
        blend(torch.stack([a, a]), [1.0])
