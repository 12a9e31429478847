"""Label indexes: VGG-Sound's vggsound.csv, MUSIC's JSON video lists, and plain `path,label[,split]` CSVs.

- VGG-Sound: `youtube_id,start_seconds,label,split` rows without a header; a video file is named
  `{youtube_id}_{start_seconds:06d}.{ext}`. The index's split ("train"/"test") is used as is.
- MUSIC: `{"videos": {"accordion": ["youtube_id", ...], ...}}` (MUSIC21_solo_videos.json style); a video file
  is named `{youtube_id}.{ext}`, possibly inside per-class folders. No split: it is hashed per video.
- CSV: `path,label[,split]`, an optional header row; `path` is relative to the input root, or absolute, or a
  full URI.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import posixpath
from dataclasses import dataclass, field

from clipsynth_platform.runtime.uri import fsspec_filesystem, strip_scheme

from .config import LABEL_FORMATS

SPLIT_VALUES = ("train", "test")


@dataclass(frozen=True)
class LabelEntry:
    label: str
    split: str | None = None  # the dataset's own split, when its index has one


@dataclass
class LabelIndex:
    """Entries keyed by file stem (VGG-Sound, MUSIC) or by path (CSV); `lookup` finds a video's entry."""

    format: str
    entries: dict[str, LabelEntry]
    match_by: str  # "stem" or "path"
    sha1: str = ""  # of the index file's bytes: part of the row settings a resumed run must share
    conflicts: list[str] = field(default_factory=list)  # keys listed twice with different labels (first kept)

    @property
    def labels(self) -> list[str]:
        return sorted({e.label for e in self.entries.values()})

    def lookup(self, uri: str, relative_path: str) -> LabelEntry | None:
        if self.match_by == "stem":
            name = posixpath.basename(relative_path)
            return self.entries.get(name.rsplit(".", 1)[0] if "." in name else name)
        for key in (relative_path, uri, posixpath.basename(relative_path)):
            if key in self.entries:
                return self.entries[key]
        return None


def _add(entries: dict[str, LabelEntry], conflicts: list[str], key: str, entry: LabelEntry) -> None:
    old = entries.get(key)
    if old is None:
        entries[key] = entry
    elif old != entry:
        conflicts.append(key)


def _clean_split(value: str, where: str) -> str | None:
    value = value.strip().lower()
    if not value:
        return None
    if value not in SPLIT_VALUES:
        raise ValueError(f"{where}: split {value!r} is not one of {SPLIT_VALUES}")
    return value


def parse_vggsound_csv(text: str) -> LabelIndex:
    """vggsound.csv rows -> entries keyed by `{youtube_id}_{start:06d}` (and the unpadded form)."""
    entries: dict[str, LabelEntry] = {}
    conflicts: list[str] = []
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 4:
            raise ValueError(f"vggsound csv line {lineno}: expected youtube_id,start_seconds,label,split, got {row}")
        youtube_id, start, label, split = (c.strip() for c in row)
        try:
            start_seconds = int(float(start))
        except ValueError:
            raise ValueError(f"vggsound csv line {lineno}: start_seconds {start!r} is not a number") from None
        if not youtube_id or not label:
            raise ValueError(f"vggsound csv line {lineno}: empty youtube_id or label")
        entry = LabelEntry(label, _clean_split(split, f"vggsound csv line {lineno}"))
        _add(entries, conflicts, f"{youtube_id}_{start_seconds:06d}", entry)
        if f"{start_seconds}" != f"{start_seconds:06d}":
            _add(entries, conflicts, f"{youtube_id}_{start_seconds}", entry)
    return LabelIndex("vggsound", entries, "stem", conflicts=conflicts)


def parse_music_json(text: str) -> LabelIndex:
    """{"videos": {label: [youtube_id, ...]}} (or the inner mapping alone) -> entries keyed by youtube_id."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"MUSIC label index is not valid JSON: {exc}") from None
    videos = data.get("videos", data) if isinstance(data, dict) else None
    if not isinstance(videos, dict) or not all(isinstance(v, list) for v in videos.values()):
        raise ValueError('MUSIC label index must look like {"videos": {"<label>": ["<youtube_id>", ...], ...}}')
    entries: dict[str, LabelEntry] = {}
    conflicts: list[str] = []
    for label, ids in videos.items():
        for youtube_id in ids:
            if not isinstance(youtube_id, str) or not youtube_id.strip():
                raise ValueError(f"MUSIC label index: class {label!r} lists a non-string or empty id {youtube_id!r}")
            _add(entries, conflicts, youtube_id.strip(), LabelEntry(str(label)))
    return LabelIndex("music", entries, "stem", conflicts=conflicts)


_PATH_HEADERS = {"path", "uri", "file", "filename"}


def parse_path_label_csv(text: str, input_root: str = "") -> LabelIndex:
    """`path,label[,split]` rows (optional header) -> entries keyed by path relative to `input_root`."""
    entries: dict[str, LabelEntry] = {}
    conflicts: list[str] = []
    root = strip_scheme(input_root).rstrip("/") + "/" if input_root else ""
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not "".join(row).strip():
            continue
        if (
            lineno == 1
            and row[0].strip().lower() in _PATH_HEADERS
            and len(row) > 1
            and row[1].strip().lower() == "label"
        ):
            continue
        if len(row) not in (2, 3):
            raise ValueError(f"label csv line {lineno}: expected path,label[,split], got {row}")
        path, label = row[0].strip(), row[1].strip()
        if not path or not label:
            raise ValueError(f"label csv line {lineno}: empty path or label")
        split = _clean_split(row[2], f"label csv line {lineno}") if len(row) == 3 else None
        key = path
        if path.startswith("s3://") or path.startswith("/") or path.startswith("file://"):
            bare = strip_scheme(path)
            key = bare[len(root) :] if root and bare.startswith(root) else (path if path.startswith("s3://") else bare)
        _add(entries, conflicts, key[2:] if key.startswith("./") else key, LabelEntry(label, split))
    return LabelIndex("csv", entries, "path", conflicts=conflicts)


def detect_format(uri: str, text: str) -> str:
    """ "music" for JSON; "vggsound" for 4-column CSV rows whose 2nd field is a number; else "csv"."""
    if uri.lower().endswith(".json") or text.lstrip().startswith("{"):
        return "music"
    for row in csv.reader(io.StringIO(text)):
        if not row or not "".join(row).strip():
            continue
        if len(row) == 4:
            try:
                float(row[1])
                return "vggsound"
            except ValueError:
                pass
        return "csv"
    return "csv"


def load_label_index(uri: str, fmt: str = "auto", input_root: str = "") -> LabelIndex:
    """Read and parse a label index from a local path or s3:// URI."""
    if fmt not in LABEL_FORMATS:
        raise ValueError(f"unknown label index format {fmt!r}; use one of {LABEL_FORMATS}")
    fs = fsspec_filesystem(uri)
    path = strip_scheme(uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"label index {uri} does not exist")
    with fs.open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"label index {uri} is not UTF-8 text") from None
    if fmt == "auto":
        fmt = detect_format(uri, text)
    if fmt == "vggsound":
        index = parse_vggsound_csv(text)
    elif fmt == "music":
        index = parse_music_json(text)
    else:
        index = parse_path_label_csv(text, input_root)
    if not index.entries:
        raise ValueError(f"label index {uri} ({fmt}) has no entries")
    index.sha1 = hashlib.sha1(raw).hexdigest()
    return index
