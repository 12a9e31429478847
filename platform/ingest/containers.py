"""The index of a container (WebDataset shard or Parquet file of videos): its members, listed once and kept in the
output (`_inputs/{hash}.json`) so a resumed run neither lists nor reads again what it already knows.

Listing a .tar.gz reads it whole (gzip has no index); a .tar is listed by its headers, a Parquet file by its
footer and id column. Listing runs in Ray tasks (pipeline.py), beside the data; the driver keeps the indexes.
An index is reused while the container's size and ETag (S3) or modification time (local) and the listing
settings stay the same. A container that breaks part-way keeps the members listed before the break, and its
error is reported (summary "inputs", _failures.parquet stage "container").
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from clipsynth_platform.runtime.uri import fsspec_filesystem, strip_scheme

from .failures import short_error
from .inputs import KIND_PARQUET, KIND_TAR_GZ, InputFile
from .members import Listing, Member
from .store import OutputStore
from .tarshard import list_tar
from .videoparquet import list_parquet

INDEX_DIR = "_inputs"


@dataclass(frozen=True)
class ListingSettings:
    """What decides a container's members besides its bytes."""

    extensions: tuple[str, ...]
    parquet_video_column: str
    parquet_id_column: str | None

    def to_dict(self) -> dict:
        return {**asdict(self), "extensions": list(self.extensions)}


@dataclass
class ContainerIndex:
    uri: str
    kind: str
    fingerprint: str  # size and ETag or mtime when listed
    settings: dict
    members: list[Member] = field(default_factory=list)
    error: str | None = None  # why listing stopped early (the members before the break are kept)
    other_files: int = 0
    bad_metadata: int = 0
    repeated_names: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ContainerIndex:
        return cls(**{**d, "members": [Member(**m) for m in d["members"]]})


def fingerprint(uri: str) -> str:
    """Size and version of the file at `uri`: an index is reused only while they stay the same."""
    info = fsspec_filesystem(uri).info(strip_scheme(uri))
    version = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
    return f"{info.get('size')}:{version}"


def index_container(uri: str, kind: str, settings: ListingSettings) -> ContainerIndex:
    """List one container (in a Ray task): never raises; an unreadable container is an index with an error."""
    t0 = time.perf_counter()
    listing = Listing()
    error, fp = None, ""
    try:
        fp = fingerprint(uri)
        if kind == KIND_PARQUET:
            list_parquet(uri, settings.parquet_video_column, settings.parquet_id_column, listing)
        else:
            list_tar(uri, kind == KIND_TAR_GZ, settings.extensions, listing)
    except Exception as exc:
        error = short_error(exc, 300)
    return ContainerIndex(
        uri=uri,
        kind=kind,
        fingerprint=fp,
        settings=settings.to_dict(),
        members=listing.with_metadata(),
        error=error,
        other_files=listing.other_files,
        bad_metadata=listing.bad_metadata,
        repeated_names=listing.occurrences.repeated,
        seconds=round(time.perf_counter() - t0, 3),
    )


def index_path(uri: str) -> str:
    return f"{INDEX_DIR}/{hashlib.sha1(uri.encode()).hexdigest()[:16]}.json"


def cached_index(
    store: OutputStore, item: InputFile, settings: ListingSettings, retry_broken: bool
) -> ContainerIndex | None:
    """The index an earlier run left for `item`, when it still describes the container (and, with
    `retry_broken`, when it read the container whole)."""
    data = store.read_json(index_path(item.uri))
    if data is None:
        return None
    index = ContainerIndex.from_dict(data)
    if index.uri != item.uri or index.settings != settings.to_dict() or (retry_broken and index.error):
        return None
    try:
        current = fingerprint(item.uri)
    except Exception:
        return None  # gone or unreadable now: list again, which records why
    return index if current == index.fingerprint else None


def save_index(store: OutputStore, index: ContainerIndex) -> None:
    store.write_json(index_path(index.uri), index.to_dict())


def index_inputs(
    store: OutputStore,
    containers: list[InputFile],
    settings: ListingSettings,
    list_all: Callable[[list[InputFile]], list[ContainerIndex]],
    retry_broken: bool = False,
    enough: Callable[[dict[str, ContainerIndex]], bool] | None = None,
    log: Callable[[str], None] = lambda m: None,
) -> dict[str, ContainerIndex]:
    """The index of every container: reused from the output, else listed by `list_all` (Ray tasks) and saved.

    With `enough` (a --limit), containers are listed one at a time, in order, until it holds."""
    indexes: dict[str, ContainerIndex] = {}
    todo = []
    for item in containers:
        cached = cached_index(store, item, settings, retry_broken)
        if cached is not None:
            indexes[item.uri] = cached
        else:
            todo.append(item)
    if todo:
        log(f"listing {len(todo)} container(s) ({len(containers) - len(todo)} listed by an earlier run)")
    batches = [[item] for item in todo] if enough is not None else [todo] if todo else []
    for batch in batches:
        if enough is not None and enough(indexes):
            break
        for index in list_all(batch):
            save_index(store, index)
            indexes[index.uri] = index
            broken = f"; unreadable after them: {index.error}" if index.error else ""
            log(f"listed {index.uri}: {len(index.members)} videos in {index.seconds:.1f} s{broken}")
    return indexes
