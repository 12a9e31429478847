"""The inputs a container holds: one `Member` per video in a WebDataset shard or row of a Parquet file, and where
to find its bytes again. Written into the container's index (containers.py) and into each `VideoSource`."""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from typing import IO, Any

# Bytes copied at a time when a member is written to its temporary file.
COPY_BLOCK = 1 << 20


@dataclass(frozen=True)
class Member:
    """One video inside a container.

    `name`: the tar member's path, or the Parquet row's clip id; `occurrence` tells apart members listed under
    one name (tar appends, repeated ids), so that every member has its own URI.
    """

    name: str
    occurrence: int = 0
    offset: int = -1  # tar: where the member's data starts in the uncompressed archive
    size: int = -1  # tar: its bytes
    row_group: int = -1  # Parquet: the row group and the row's index in it
    row: int = -1
    label: str | None = None  # from the member's own metadata ({key}.json beside it, or the row's columns)
    split: str | None = None

    def uri_in(self, container_uri: str) -> str:
        """The member's URI, `{container}#{name}` (`~{k}` added for the k-th repeat of a name)."""
        return f"{container_uri}#{self.name}" + (f"~{self.occurrence}" if self.occurrence else "")

    def to_dict(self) -> dict:
        return asdict(self)


class Occurrences:
    """Counts names as a container is listed, so a repeated name gets its occurrence number."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}

    def next(self, name: str) -> int:
        k = self.count.get(name, 0)
        self.count[name] = k + 1
        return k

    @property
    def repeated(self) -> int:
        return sum(n - 1 for n in self.count.values() if n > 1)


def metadata_of(value: object, where: str) -> tuple[str | None, str | None]:
    """(label, split) of a member's metadata dict, when it holds them as strings; a split must be train/test."""
    if not isinstance(value, dict):
        return None, None
    label = value.get("label")
    split = value.get("split")
    label = label.strip() if isinstance(label, str) and label.strip() else None
    split = split.strip().lower() if isinstance(split, str) and split.strip() else None
    if split is not None and split not in ("train", "test"):
        raise ValueError(f"{where}: split {split!r} is not train or test")
    return label, split


class TempFiles:
    """A temporary directory for members on their way to the decoder; each member overwrites the one before, so
    one member's bytes at a time are on disk, whatever the container's size."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="clipsynth-member-")

    def __enter__(self) -> TempFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def path_for(self, name: str) -> str:
        """The member's file, named with its extension (FFmpeg probes content, but some demuxers want it)."""
        base = os.path.basename(name)
        return os.path.join(self.dir, "member" + (os.path.splitext(base)[1][:16] if "." in base else ""))

    def copy(self, name: str, source: IO[bytes], size: int | None = None) -> tuple[str, int]:
        """Copy `size` bytes (all when None) of `source` to the member's file: (path, bytes copied)."""
        path, written = self.path_for(name), 0
        with open(path, "wb") as out:
            while size is None or written < size:
                block = source.read(COPY_BLOCK if size is None else min(COPY_BLOCK, size - written))
                if not block:
                    break
                out.write(block)
                written += len(block)
        return path, written


@dataclass
class Fetched:
    """A member made readable for the decoder: its temporary file, or why it could not be read."""

    path: str | None = None
    bytes: int = 0
    seconds: float = 0.0
    failure: str | None = None  # the reason (stage "read")


@dataclass
class Listing:
    """What listing a container found, filled as it reads, so that an archive broken half-way keeps the members
    listed before the break."""

    members: list[Member] = field(default_factory=list)
    metadata: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)  # key -> (label, split)
    other_files: int = 0  # members that are neither videos nor their metadata
    bad_metadata: int = 0  # metadata that could not be read (not JSON, a split other than train/test)
    occurrences: Occurrences = field(default_factory=Occurrences)

    def add(self, name: str, **where: Any) -> None:
        self.members.append(Member(name, self.occurrences.next(name), **where))

    def with_metadata(self) -> list[Member]:
        """The members, each with the label and split of the metadata beside it (same key), if any."""
        out = []
        for m in self.members:
            label, split = self.metadata.get(posixpath.splitext(m.name)[0], (m.label, m.split))
            out.append(replace(m, label=label, split=split))
        return out
