"""Combined queries: "piano + guitar", "piano*0.7 + guitar*0.3" -> one condition on CLIP's unit sphere.

The parts are encoded separately (each through the template and, when asked, the gap reduction), then blended
as the normalised weighted sum sum_i w_i e_i / |sum_i w_i e_i| (weights scaled to sum to 1): the point of the
sphere nearest the weighted mean, which for two parts is on their great circle, between them, at equal angles
when the weights are equal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

MAX_PARTS = 8
_WEIGHT = re.compile(r"^(?P<text>.*?)\s*\*\s*(?P<weight>[0-9]*\.?[0-9]+)\s*$")


@dataclass(frozen=True)
class QueryPart:
    text: str
    weight: float


def split_parts(query: str) -> list[str]:
    """The parts of a combined query, split at each '+' that joins two parts.

    A '+' is text, not a join, when it is part of a run ('C++') or ends a word ('C+', 'C+ piano'): names such
    as "C++" stay one query. Every other '+' joins ('a + b', 'a+b', 'a*0.7 + b'), also a dangling one
    ('piano + ', which then has an empty part)."""
    parts, start, i = [], 0, 0
    while i < len(query):
        if query[i] != "+":
            i += 1
            continue
        end = i
        while end < len(query) and query[end] == "+":
            end += 1
        ends_a_word = i > 0 and not query[i - 1].isspace() and (end == len(query) or query[end].isspace())
        if end - i == 1 and not ends_a_word:
            parts.append(query[start:i].strip())
            start = end
        i = end
    parts.append(query[start:].strip())
    return parts


def parse_query(query: str) -> list[QueryPart]:
    """'a*0.7 + b*0.3' -> [QueryPart('a', 0.7), QueryPart('b', 0.3)]; a query without a join is one part,
    weight 1 (see split_parts for which '+' joins).

    Weights are given as '*w' after a part (non-negative, not all zero); parts without one weigh 1.
    """
    parts = split_parts(query)
    if len(parts) == 1:
        return [QueryPart(query.strip(), 1.0)]
    if any(not p for p in parts):
        raise ValueError(f"empty part in combined query {query!r}")
    if len(parts) > MAX_PARTS:
        raise ValueError(f"a combined query has at most {MAX_PARTS} parts, got {len(parts)}")
    out = []
    for p in parts:
        m = _WEIGHT.match(p)
        text, weight = (m["text"].strip(), float(m["weight"])) if m else (p, 1.0)
        if not text:
            raise ValueError(f"part {p!r} of {query!r} has a weight but no text")
        out.append(QueryPart(text, weight))
    if sum(q.weight for q in out) <= 0:
        raise ValueError(f"the weights of {query!r} are all zero")
    return out


def blend(embeddings: Tensor, weights: Tensor | list[float]) -> Tensor:
    """Unit vectors [K, D] and K non-negative weights -> one unit vector [D]."""
    w = torch.as_tensor(weights, dtype=embeddings.dtype, device=embeddings.device)
    if w.shape != (embeddings.shape[0],) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError("need one non-negative weight per embedding, not all zero")
    mixed = ((w / w.sum())[:, None] * F.normalize(embeddings, dim=-1)).sum(0)
    if float(mixed.norm()) < 1e-6:
        raise ValueError("the weighted parts cancel out (opposite embeddings): no direction to blend to")
    return F.normalize(mixed, dim=-1)


def is_combined(query: str) -> bool:
    return len(split_parts(query)) > 1


def encode_queries(encoder, queries: list[str], reduce=None, method: str = "none") -> Tensor:
    """Text queries, combined or not -> [B, D] unit conditions.

    Every part of every query is encoded in one batch through the encoder's template; `reduce(text, method)`
    (a GapReducer) carries each part towards the frame embeddings before the parts are blended, so that a
    blend is a point between two conditions the model knows.
    """
    parsed = [parse_query(q) for q in queries]
    flat = [p.text for parts in parsed for p in parts]
    emb = encoder.encode_text(flat)
    if method != "none":
        if reduce is None:
            raise ValueError(f"gap reduction {method!r} asked for, but this model has no gap statistics")
        emb = reduce(emb, method)
    out, i = [], 0
    for parts in parsed:
        k = len(parts)
        out.append(emb[i] if k == 1 else blend(emb[i : i + k], [p.weight for p in parts]))
        i += k
    return torch.stack(out) if out else emb
