"""Label indexes: what ingestion joins to each video it lists. The files (VGG-Sound's vggsound.csv, MUSIC's JSON
video lists, `path,label[,split]` CSVs and any table the manifest reads) are parsed by the one manifest parser,
clipsynth_platform.datasets.manifest; this module only keys its clips the way ingestion looks them up.

- VGG-Sound: a video file is named `{youtube_id}_{start_seconds:06d}.{ext}` (the unpadded spelling matches too);
  the manifest's split (its own, with split leaks resolved) is used as is.
- MUSIC: a video file is named `{youtube_id}.{ext}`, possibly inside per-class folders. No split: it is hashed
  per video.
- CSV / tables: rows naming a `path` (relative to the input root, or absolute, or a full URI) match by path;
  rows naming an id or an http(s) URL match by file stem (the clip id a fetch names its file by), as VGG-Sound's.
- A fetch's `_manifest.parquet`: as the format it was read from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clipsynth_platform.datasets.manifest import Manifest, load_manifest, parse_manifest
from clipsynth_platform.datasets.manifest import detect_format as detect_manifest_format
from clipsynth_platform.runtime.uri import strip_scheme

from .config import LABEL_FORMATS

SPLIT_VALUES = ("train", "test")
# The ingestion flag's "csv" is the manifest's "table" (whose headerless rows are path,label[,split]).
_MANIFEST_FORMAT = {"auto": "auto", "vggsound": "vggsound", "music": "music", "csv": "table"}
_INDEX_FORMAT = {"vggsound": "vggsound", "music": "music", "table": "csv"}


@dataclass(frozen=True)
class LabelEntry:
    label: str | None
    split: str | None = None  # the dataset's own split, when its index has one


@dataclass
class LabelIndex:
    """Entries keyed by clip id (matched by file stem: VGG-Sound, MUSIC, id tables) or by path (path tables);
    `lookup` finds a video's entry. `manifest` is the list they came from (lookup by clip id: manifest.lookup)."""

    format: str
    entries: dict[str, LabelEntry]
    match_by: str  # "stem" or "path"
    sha1: str = ""  # of the index file's bytes: part of the row settings a resumed run must share
    conflicts: list[str] = field(default_factory=list)  # keys listed twice with different labels (first kept)
    manifest: Manifest | None = None

    @property
    def labels(self) -> list[str]:
        return sorted({e.label for e in self.entries.values() if e.label is not None})

    def lookup(self, uri: str, relative_path: str) -> LabelEntry | None:
        if self.match_by == "stem":
            name = relative_path.rsplit("/", 1)[-1]
            stem = name.rsplit(".", 1)[0] if "." in name else name
            entry = self.entries.get(stem)
            if entry is None and self.manifest is not None:  # `{id}_{start}` unpadded, and the like
                clip = self.manifest.lookup(stem)
                entry = self.entries.get(clip.clip_id) if clip is not None else None
            return entry
        for key in (relative_path, uri, relative_path.rsplit("/", 1)[-1]):
            if key in self.entries:
                return self.entries[key]
        return None


def _path_key(path: str, root: str) -> str:
    """A path as ingestion lists it: relative to the input root when under it; an s3:// URI stays whole."""
    key = path
    if path.startswith(("s3://", "/", "file://")):
        bare = strip_scheme(path)
        key = bare[len(root) :] if root and bare.startswith(root) else (path if path.startswith("s3://") else bare)
    return key[2:] if key.startswith("./") else key


def index_of(manifest: Manifest, input_root: str = "") -> LabelIndex:
    """The label index of a manifest: by path when every clip names a file (a path table), else by clip id (a
    table of URLs names the files a fetch wrote: `{clip_id}.mp4`)."""
    by_path = manifest.format == "table" and all(
        c.source is not None and not c.source.startswith(("http://", "https://")) for c in manifest.clips
    )
    root = strip_scheme(input_root).rstrip("/") + "/" if input_root else ""
    entries: dict[str, LabelEntry] = {}
    for clip in manifest.clips:
        key = _path_key(clip.source, root) if by_path and clip.source is not None else clip.clip_id
        entries.setdefault(key, LabelEntry(clip.label, clip.split))
    return LabelIndex(
        _INDEX_FORMAT[manifest.format],
        entries,
        "path" if by_path else "stem",
        sha1=manifest.source_sha1,
        conflicts=list(manifest.conflicts),
        manifest=manifest,
    )


def parse_vggsound_csv(text: str) -> LabelIndex:
    return index_of(parse_manifest(text.encode(), "vggsound"))


def parse_music_json(text: str) -> LabelIndex:
    return index_of(parse_manifest(text.encode(), "music"))


def parse_path_label_csv(text: str, input_root: str = "") -> LabelIndex:
    return index_of(parse_manifest(text.encode(), "table", "labels.csv"), input_root)


def detect_format(uri: str, text: str) -> str:
    """ "music" for JSON; "vggsound" for 4-column CSV rows whose 2nd field is a number; else "csv"."""
    fmt = detect_manifest_format(uri, text.encode())
    return _INDEX_FORMAT.get(fmt, fmt)


def load_label_index(uri: str, fmt: str = "auto", input_root: str = "") -> LabelIndex:
    """Read and parse a label index from a local path or s3:// URI."""
    if fmt not in LABEL_FORMATS:
        raise ValueError(f"unknown label index format {fmt!r}; use one of {LABEL_FORMATS}")
    try:
        manifest = load_manifest(uri, _MANIFEST_FORMAT[fmt])
    except FileNotFoundError:
        raise FileNotFoundError(f"label index {uri} does not exist") from None
    except ValueError as exc:
        raise ValueError(f"label index {uri}: {exc}") from None
    if not manifest.clips:
        raise ValueError(f"label index {uri} ({_INDEX_FORMAT[manifest.format]}) has no entries")
    return index_of(manifest, input_root)
