"""VGG-Sound's vggsound.csv: headerless `youtube_id,start_seconds,label,split` rows. A label may hold commas
inside quotes; one YouTube id may appear with several start seconds, each its own clip `{youtube_id}_{start:06d}`
covering [start, start + 10 s)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

from .clip import CLIP_SECONDS, Clip, check_clip_id, clean_split, parse_seconds, window_clip_id
from .manifest import Manifest

# A header some copies of the file carry (the published one has none): skipped when it is the first row.
_HEADER_FIRST_CELLS = {"youtube_id", "ytid", "# youtube id", "id", "video_id"}


def _clips(text: str) -> Iterator[Clip]:
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not "".join(row).strip():
            continue
        where = f"vggsound csv line {lineno}"
        if lineno == 1 and row[0].strip().lower() in _HEADER_FIRST_CELLS:
            continue
        if len(row) != 4:
            raise ValueError(f"{where}: expected youtube_id,start_seconds,label,split, got {row}")
        youtube_id, start_text, label, split = (c.strip() for c in row)
        if not youtube_id or not label:
            raise ValueError(f"{where}: empty youtube_id or label")
        start = parse_seconds(start_text, "start_seconds", where)
        if start is None:
            raise ValueError(f"{where}: start_seconds {start_text!r} is not a number")
        start = float(int(start))  # whole seconds: the clip's name holds them
        listed = clean_split(split, where)
        yield Clip(
            clip_id=check_clip_id(window_clip_id(youtube_id, start), where),
            video_id=youtube_id,
            start=start,
            end=start + CLIP_SECONDS,
            label=label,
            split=listed,
            listed_split=listed,
            line=lineno,
        )


def parse_vggsound_csv(text: str, source_uri: str = "", source_sha1: str = "") -> Manifest:
    return Manifest.assemble("vggsound", _clips(text), source_uri, source_sha1)
