"""MUSIC and MUSIC21's JSON video lists: `{"videos": {label: [youtube_id, ...]}}` (or the inner mapping alone).
Solo lists key one instrument ("accordion"); duet lists key two joined by a space ("acoustic_guitar violin"),
kept as the label. Whole videos: no window, no split (ingestion assigns one per video)."""

from __future__ import annotations

import json
from collections.abc import Iterator

from .clip import Clip, check_clip_id
from .manifest import Manifest


def _line_of(text: str, youtube_id: str, after: int) -> tuple[int, int]:
    """The 1-based line where `"youtube_id"` appears first at or after character `after` (for messages)."""
    at = text.find(f'"{youtube_id}"', after)
    if at < 0:
        return 0, after
    return text.count("\n", 0, at) + 1, at + 1


def _clips(text: str) -> Iterator[Clip]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"MUSIC label index is not valid JSON: {exc}") from None
    videos = data.get("videos", data) if isinstance(data, dict) else None
    if not isinstance(videos, dict) or not all(isinstance(v, list) for v in videos.values()):
        raise ValueError('MUSIC label index must look like {"videos": {"<label>": ["<youtube_id>", ...], ...}}')
    cursor = 0
    for label, ids in videos.items():
        for youtube_id in ids:
            if not isinstance(youtube_id, str) or not youtube_id.strip():
                raise ValueError(f"MUSIC label index: class {label!r} lists a non-string or empty id {youtube_id!r}")
            youtube_id = youtube_id.strip()
            line, cursor = _line_of(text, youtube_id, cursor)
            check_clip_id(youtube_id, f"MUSIC json line {line}")
            yield Clip(clip_id=youtube_id, video_id=youtube_id, label=str(label).strip(), line=line)


def parse_music_json(text: str, source_uri: str = "", source_sha1: str = "") -> Manifest:
    return Manifest.assemble("music", _clips(text), source_uri, source_sha1)
