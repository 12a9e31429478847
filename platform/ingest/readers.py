"""Read units: what one decode task reads, and reading it.

- video files: `videos_per_task` files per unit; the decoder child reads each file itself (decode.local_copy);
- an uncompressed .tar: `videos_per_task` members per unit, each read at its offset (any number of tasks);
- a .tar.gz: the whole shard's pending members in one unit (it can only be read from its start);
- a Parquet file: one unit per row group (a row group's video column is read at once).

Members reach the decoder as temporary files, one at a time (members.TempFiles).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .inputs import KIND_PARQUET, KIND_TAR, KIND_TAR_GZ, KIND_VIDEO
from .members import Fetched, Member, TempFiles
from .sources import VideoSource
from .tarshard import read_tar
from .videoparquet import read_parquet_rows


@dataclass(frozen=True)
class ReadUnit:
    kind: str
    container: str | None
    sources: tuple[VideoSource, ...]

    def to_json(self) -> str:
        return json.dumps(
            {"kind": self.kind, "container": self.container, "sources": [s.to_dict() for s in self.sources]}
        )

    @classmethod
    def from_json(cls, text: str) -> ReadUnit:
        d = json.loads(text)
        return cls(d["kind"], d["container"], tuple(VideoSource.from_dict(s) for s in d["sources"]))


def _chunks(items: list[VideoSource], size: int) -> list[tuple[VideoSource, ...]]:
    return [tuple(items[i : i + size]) for i in range(0, len(items), size)]


def plan_units(sources: Sequence[VideoSource], videos_per_task: int) -> list[ReadUnit]:
    """The decode tasks' inputs: each .tar.gz first (the longest tasks start first), then the rest in listing
    order."""
    groups: dict[tuple[str, str | None], list[VideoSource]] = {}  # in order of first appearance
    for s in sources:
        key = (KIND_VIDEO, None) if s.kind == KIND_VIDEO or s.container is None else (s.kind, s.container)
        groups.setdefault(key, []).append(s)
    first: list[ReadUnit] = []
    rest: list[ReadUnit] = []
    for (kind, container), members in groups.items():
        if kind == KIND_VIDEO:
            rest += [ReadUnit(kind, None, c) for c in _chunks(members, videos_per_task)]
        elif kind == KIND_TAR_GZ:
            first.append(ReadUnit(kind, container, tuple(members)))
        elif kind == KIND_TAR:
            ordered = sorted(members, key=lambda s: _member(s).offset)
            rest += [ReadUnit(kind, container, c) for c in _chunks(ordered, videos_per_task)]
        else:
            by_group: dict[int, list[VideoSource]] = {}
            for s in members:
                by_group.setdefault(_member(s).row_group, []).append(s)
            rest += [ReadUnit(kind, container, tuple(g)) for _, g in sorted(by_group.items())]
    return first + rest


def _member(source: VideoSource) -> Member:
    assert source.member is not None, source.uri
    return source.member


def open_unit(unit: ReadUnit, parquet_video_column: str) -> Iterator[tuple[VideoSource, Fetched | None]]:
    """Each source of the unit with its member's temporary file (or why it could not be read); None for a video
    file, which the decoder reads itself. A temporary file lives until the next item is asked for."""
    if unit.kind == KIND_VIDEO:
        yield from ((s, None) for s in unit.sources)
        return
    assert unit.container is not None
    source_of = {(_member(s).name, _member(s).occurrence): s for s in unit.sources}
    members = [_member(s) for s in unit.sources]
    with TempFiles() as files:
        if unit.kind == KIND_PARQUET:
            fetched = read_parquet_rows(unit.container, parquet_video_column, members, files)
        else:
            fetched = read_tar(unit.container, unit.kind == KIND_TAR_GZ, members, files)
        for m, got in fetched:
            yield source_of[(m.name, m.occurrence)], got
