"""The words a label is phrased in: its name in a caption or a query, and the caption phrasings the offline CLIP
trains on and the modality-gap fit pairs with frames. "a photo of playing {name}" (the evaluation's query) is
deliberately not one of them, so a zero-shot score also measures a phrasing never seen."""

from __future__ import annotations

CAPTION_PHRASES = (
    "{name}",
    "a {name}",
    "the {name}",
    "a photo of a {name}",
    "a photo of the {name}",
    "a drawing of a {name}",
    "a picture of the {name}",
    "someone playing the {name}",
    "playing {name}",
    "music played on a {name}",
)


def class_name(label: str) -> str:
    """'acoustic_guitar' -> 'acoustic guitar' (the words a caption or a query uses)."""
    return label.replace("_", " ")


def captions(label: str) -> list[str]:
    """Every phrasing of one class."""
    return [p.format(name=class_name(label)) for p in CAPTION_PHRASES]
