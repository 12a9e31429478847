"""One clip of a manifest: which video, which window of it, its label and split, and where in the source file it
was listed."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

# VGG-Sound's clips: [start, start + 10 s) of a YouTube video.
CLIP_SECONDS = 10.0
SPLITS = ("train", "test")

# A clip id names a file ({clip_id}.mp4) and a WebDataset key: no path separators, not hidden.
_CLIP_ID = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]*")


@dataclass(frozen=True)
class Clip:
    """A clip to fetch and ingest. `start`/`end` None: the whole video (MUSIC)."""

    clip_id: str  # VGG-Sound: {youtube_id}_{start:06d}; MUSIC: the YouTube id; a table: its clip_id or derived
    video_id: str  # the source video (a YouTube id, or what a table's row names): one video, one split
    start: float | None = None
    end: float | None = None
    label: str | None = None
    split: str | None = None  # "train" | "test"; None: the source gives none (ingestion hashes one)
    source: str | None = None  # a table's URL or path; None: a fetch builds the URL from video_id (--url-template)
    listed_split: str | None = None  # the split the source file gave (differs from `split` when hygiene moved it)
    line: int = 0  # 1-based line (CSV, JSONL) or row (Parquet) of the source file; 0 when not from a file

    @property
    def has_window(self) -> bool:
        return self.start is not None

    def to_dict(self) -> dict:
        return asdict(self)


def window_clip_id(video_id: str, start: float) -> str:
    """`{video_id}_{start:06d}`: the name VGG-Sound and its mirrors give the clip starting at `start` seconds."""
    return f"{video_id}_{int(start):06d}"


def check_clip_id(clip_id: str, where: str) -> str:
    if not _CLIP_ID.fullmatch(clip_id):
        raise ValueError(
            f"{where}: clip id {clip_id!r} cannot name a file (use letters, digits, '_', '-', '.'; not starting with '.')"
        )
    return clip_id


def clean_split(value: object, where: str) -> str | None:
    """ "train" / "test" (any case, surrounding spaces), or None for an empty cell."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if not text:
        return None
    if text not in SPLITS:
        raise ValueError(f"{where}: split {text!r} is not one of {SPLITS}")
    return text


def parse_seconds(value: object, name: str, where: str) -> float | None:
    """A non-negative number of seconds, or None for an empty cell."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {name} {value!r} is not a number") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"{where}: {name} {value!r} must be a finite number >= 0")
    return seconds
