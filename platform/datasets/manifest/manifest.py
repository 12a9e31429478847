"""The manifest: every clip of a dataset as one list, whatever file listed it, written as Parquet so every later
stage (fetching, ingestion) and every resumed run reads the same clips.

`Manifest.assemble` builds it from a parser's clips: exact repeats are dropped, a clip id listed twice with
different contents keeps its first listing (the id is counted in `conflicts`), and split leaks are resolved
(hygiene.py). `lookup(clip_id)` finds a clip by id (`{youtube_id}_{start:06d}`, its unpadded spelling, or a
MUSIC YouTube id)."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields

import pyarrow as pa
import pyarrow.parquet as pq

from clipsynth_platform.runtime.uri import fsspec_filesystem, strip_scheme, write_atomically

from .clip import Clip
from .hygiene import LEAK_RULE, SplitLeak, resolve_leaks

MANIFEST_FILE = "_manifest.parquet"
METADATA_KEY = b"clipsynth.manifest"
MANIFEST_VERSION = 1

ARROW_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("start", pa.float64()),
        pa.field("end", pa.float64()),
        pa.field("label", pa.string()),
        pa.field("split", pa.string()),
        pa.field("source", pa.string()),
        pa.field("listed_split", pa.string()),
        pa.field("line", pa.int64(), nullable=False),
    ]
)
_PADDED_SUFFIX = re.compile(r"(.+)_(\d+)")


@dataclass(frozen=True)
class ManifestReport:
    """What a manifest holds and what its hygiene found (logged, and part of the fetch summary)."""

    format: str
    source_uri: str
    clips: int
    videos: int
    by_split: dict[str, int]
    labels: int
    conflicts: list[str]
    duplicates: int
    leaks: list[dict]
    leak_rule: str = LEAK_RULE

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Manifest:
    format: str  # "vggsound" | "music" | "table"
    clips: list[Clip]
    source_uri: str = ""
    source_sha1: str = ""  # of the source file's bytes
    conflicts: list[str] = field(default_factory=list)  # ids listed twice with different contents (first kept)
    duplicates: int = 0  # exact repeats dropped
    leaks: list[SplitLeak] = field(default_factory=list)
    _by_id: dict[str, Clip] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_id = {c.clip_id: c for c in self.clips}
        if len(self._by_id) != len(self.clips):
            repeated = [k for k, n in Counter(c.clip_id for c in self.clips).items() if n > 1]
            raise ValueError(f"a manifest lists each clip once; repeated: {repeated[:5]}")

    @classmethod
    def assemble(cls, fmt: str, listed: Iterable[Clip], source_uri: str = "", source_sha1: str = "") -> Manifest:
        """The manifest of a parser's clips: repeats dropped, conflicts counted, split leaks resolved."""
        kept: dict[str, Clip] = {}
        conflicts: list[str] = []
        duplicates = 0
        for clip in listed:
            old = kept.get(clip.clip_id)
            if old is None:
                kept[clip.clip_id] = clip
            elif _same_listing(old, clip):
                duplicates += 1
            elif clip.clip_id not in conflicts:
                conflicts.append(clip.clip_id)
        clips, leaks = resolve_leaks(list(kept.values()))
        return cls(fmt, clips, source_uri, source_sha1, conflicts, duplicates, leaks)

    def __len__(self) -> int:
        return len(self.clips)

    def __iter__(self) -> Iterator[Clip]:
        return iter(self.clips)

    def lookup(self, clip_id: str) -> Clip | None:
        """The clip named `clip_id`; `{video}_{start}` also matches its zero-padded form `{video}_{start:06d}`."""
        clip = self._by_id.get(clip_id)
        if clip is None and (m := _PADDED_SUFFIX.fullmatch(clip_id)):
            clip = self._by_id.get(f"{m[1]}_{int(m[2]):06d}")
        return clip

    @property
    def labels(self) -> list[str]:
        return sorted({c.label for c in self.clips if c.label is not None})

    def expected(self) -> dict[str, dict[str, int]]:
        """Clips per split and label ("" for no label, "unsplit" for no split): the coverage a stage should reach."""
        counts: dict[str, Counter] = {}
        for c in self.clips:
            counts.setdefault(c.split or "unsplit", Counter())[c.label or ""] += 1
        return {split: dict(sorted(counter.items())) for split, counter in sorted(counts.items())}

    def digest(self) -> str:
        """sha1 of the clips as listed: two manifests with the same digest hold the same clips."""
        h = hashlib.sha1()
        for c in self.clips:
            h.update(json.dumps(c.to_dict(), sort_keys=True).encode())
        return h.hexdigest()

    def report(self) -> ManifestReport:
        splits = Counter(c.split or "unsplit" for c in self.clips)
        return ManifestReport(
            format=self.format,
            source_uri=self.source_uri,
            clips=len(self.clips),
            videos=len({c.video_id for c in self.clips}),
            by_split=dict(sorted(splits.items())),
            labels=len(self.labels),
            conflicts=list(self.conflicts),
            duplicates=self.duplicates,
            leaks=[leak.to_dict() for leak in self.leaks],
        )

    # ------------------------------------------------------------------------------------------- Parquet

    def to_arrow(self) -> pa.Table:
        table = pa.Table.from_pylist([c.to_dict() for c in self.clips], schema=ARROW_SCHEMA)
        meta = {
            "version": MANIFEST_VERSION,
            "format": self.format,
            "source_uri": self.source_uri,
            "source_sha1": self.source_sha1,
            "conflicts": self.conflicts,
            "duplicates": self.duplicates,
            "leaks": [leak.to_dict() for leak in self.leaks],
            "digest": self.digest(),
        }
        return table.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})

    @classmethod
    def from_arrow(cls, table: pa.Table) -> Manifest:
        meta_bytes = (table.schema.metadata or {}).get(METADATA_KEY)
        if meta_bytes is None:
            raise ValueError("not a clip manifest (its Parquet metadata has no clipsynth.manifest entry)")
        meta = json.loads(meta_bytes)
        clips = [Clip(**row) for row in table.select(ARROW_SCHEMA.names).to_pylist()]
        leaks = [
            SplitLeak(d["video_id"], tuple(d["train_clips"]), tuple(d["test_clips"]), d["kept_in"])
            for d in meta["leaks"]
        ]
        return cls(
            meta["format"], clips, meta["source_uri"], meta["source_sha1"], meta["conflicts"], meta["duplicates"], leaks
        )

    def write(self, uri: str) -> None:
        """Write the manifest as one Parquet file, atomically (a temporary name renamed locally; one PUT on S3)."""
        sink = pa.BufferOutputStream()
        pq.write_table(self.to_arrow(), sink)
        write_atomically(uri, sink.getvalue().to_pybytes())

    @classmethod
    def read(cls, uri: str) -> Manifest:
        fs = fsspec_filesystem(uri)
        with fs.open(strip_scheme(uri), "rb") as f:
            return cls.from_arrow(pq.read_table(f))


def _same_listing(a: Clip, b: Clip) -> bool:
    """Two listings of one clip id that say the same (the line they came from aside)."""
    return (a.video_id, a.start, a.end, a.label, a.listed_split, a.source) == (
        b.video_id,
        b.start,
        b.end,
        b.label,
        b.listed_split,
        b.source,
    )
