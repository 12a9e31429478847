"""A generic table of clips: CSV, TSV, JSONL or Parquet with named columns (`url` or `id`, `start`, `end`,
`label`, `split`; also `clip_id`, and a few common spellings, see COLUMNS). Other columns are ignored.

A row names its video by `id` (a YouTube id, or any id a --url-template turns into a URL) or by `url`/`path`.
Its clip id is the `clip_id` column, else `{video}_{start:06d}` when it has a start (VGG-Sound's naming), else the
video's id. A video named only by URL or path gets the file name's stem as its id (a YouTube watch URL: its `v=`),
with a short hash of the URL added where two different URLs would share one.

A start without an end is a 10 s clip (VGG-Sound's length); no start: the whole video. Headerless CSV rows are
read as `path,label[,split]`: the label files the ingestion job has always taken."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import posixpath
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse

import pyarrow.parquet as pq

from .clip import CLIP_SECONDS, Clip, check_clip_id, clean_split, parse_seconds, window_clip_id
from .manifest import Manifest

# canonical name -> the column names that mean it (lower case)
COLUMNS = {
    "clip_id": ("clip_id",),
    "id": ("id", "youtube_id", "ytid", "video_id"),
    "source": ("url", "path", "uri", "file", "filename"),
    "start": ("start", "start_seconds", "start_time"),
    "end": ("end", "end_seconds", "end_time"),
    "label": ("label", "class"),
    "split": ("split",),
}
_CANONICAL = {alias: name for name, aliases in COLUMNS.items() for alias in aliases}
_NAMING = {"clip_id", "id", "source"}  # a header names at least one of these
POSITIONAL = ("source", "label", "split")  # headerless rows: path,label[,split]


@dataclass(frozen=True)
class _Row:
    """One row's cells by canonical name, and where it was."""

    cells: dict[str, Any]
    where: str
    line: int
    positional: bool = False


def _canonical(columns: list[str], where: str) -> dict[int, str]:
    """Column index -> canonical name, for the recognised columns; a name given twice is an error."""
    names: dict[int, str] = {}
    for i, column in enumerate(columns):
        name = _CANONICAL.get(str(column).strip().lower())
        if name is None:
            continue
        if name in names.values():
            raise ValueError(f"{where}: two columns mean {name!r} ({columns})")
        names[i] = name
    return names


def _is_header(row: list[str]) -> bool:
    return any(_CANONICAL.get(c.strip().lower()) in _NAMING for c in row)


def _delimited_rows(text: str, delimiter: str) -> Iterator[_Row]:
    columns: dict[int, str] | None = None
    for lineno, row in enumerate(csv.reader(io.StringIO(text), delimiter=delimiter), start=1):
        if not row or not "".join(row).strip():
            continue
        where = f"table line {lineno}"
        if columns is None and _is_header(row):
            columns = _canonical(row, where)
            continue
        if columns is None:
            columns = {}  # no header: path,label[,split] rows
        if not columns:
            if len(row) not in (2, 3):
                raise ValueError(
                    f"{where}: expected path,label[,split] (or a header row naming the columns: url or id, start, "
                    f"end, label, split), got {row}"
                )
            yield _Row(dict(zip(POSITIONAL, row)), where, lineno, positional=True)
            continue
        yield _Row({name: row[i] if i < len(row) else None for i, name in columns.items()}, where, lineno)


def _jsonl_rows(text: str) -> Iterator[_Row]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"table line {lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
        keys = list(record)
        yield _Row({name: record[keys[i]] for i, name in _canonical(keys, where).items()}, where, lineno)


def _parquet_rows(data: bytes) -> Iterator[_Row]:
    table = pq.read_table(io.BytesIO(data))
    names = _canonical(table.column_names, "table")
    selected = table.select([table.column_names[i] for i in names])
    for index, record in enumerate(selected.to_pylist(), start=1):
        yield _Row({names[i]: record[table.column_names[i]] for i in names}, f"table row {index}", index)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def video_id_from_source(source: str) -> str:
    """A file-name-safe id for a video named by URL or path: a YouTube watch URL's `v=`, else the file's stem."""
    parsed = urlparse(source)
    query_v = parse_qs(parsed.query).get("v")
    stem = query_v[0] if query_v else posixpath.basename(parsed.path.rstrip("/")).rsplit(".", 1)[0]
    stem = re.sub(r"[^A-Za-z0-9_\-]", "_", stem).lstrip("_") or hashlib.sha1(source.encode()).hexdigest()[:16]
    return stem


def _clips(rows: Iterator[_Row]) -> Iterator[Clip]:
    drafts = []
    for row in rows:
        cells, where = row.cells, row.where
        clip_id, video, source = _text(cells.get("clip_id")), _text(cells.get("id")), _text(cells.get("source"))
        label = _text(cells.get("label"))
        if row.positional and not (source and label):
            raise ValueError(f"{where}: empty path or label")
        if not (clip_id or video or source):
            raise ValueError(f"{where}: no url, path or id (columns: {', '.join(COLUMNS)})")
        start = parse_seconds(cells.get("start"), "start", where)
        end = parse_seconds(cells.get("end"), "end", where)
        if end is not None and start is None:
            raise ValueError(f"{where}: an end ({end}) without a start")
        if start is not None:
            end = start + CLIP_SECONDS if end is None else end
            if end <= start:
                raise ValueError(f"{where}: end {end} is not after start {start}")
        split = clean_split(cells.get("split"), where)
        drafts.append((clip_id, video, source, start, end, label, split, where, row.line))
    # Videos named only by URL or path: the stem, unless two different URLs share it.
    sources_of_stem: dict[str, set[str]] = defaultdict(set)
    for _, video, source, *_ in drafts:
        if video is None and source is not None:
            sources_of_stem[video_id_from_source(source)].add(source)
    for clip_id, video, source, start, end, label, split, where, line in drafts:
        if video is None and source is not None:
            video = video_id_from_source(source)
            if len(sources_of_stem[video]) > 1:
                video = f"{video}-{hashlib.sha1(source.encode()).hexdigest()[:8]}"
        video = video or clip_id
        assert video is not None
        if clip_id is None:
            if start is not None and start != int(start):
                raise ValueError(f"{where}: start {start} is not a whole second: give a clip_id column")
            clip_id = window_clip_id(video, start) if start is not None else video
        yield Clip(
            clip_id=check_clip_id(clip_id, where),
            video_id=video,
            start=start,
            end=end,
            label=label,
            split=split,
            source=source,
            listed_split=split,
            line=line,
        )


def parse_table(data: bytes, name: str = "", source_uri: str = "", source_sha1: str = "") -> Manifest:
    """A table's clips; `name` (a file name or URI) picks the reader by its extension: .parquet, .jsonl/.ndjson,
    .tsv, else CSV (tab-separated when the first line has tabs and no commas)."""
    lower = name.lower()
    if lower.endswith(".parquet"):
        rows = _parquet_rows(data)
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ValueError(f"{name or 'the table'} is not UTF-8 text") from None
        if lower.endswith((".jsonl", ".ndjson")):
            rows = _jsonl_rows(text)
        else:
            first = text.lstrip().split("\n", 1)[0]
            tabs = lower.endswith(".tsv") or ("\t" in first and "," not in first)
            rows = _delimited_rows(text, "\t" if tabs else ",")
    return Manifest.assemble("table", _clips(rows), source_uri, source_sha1)
