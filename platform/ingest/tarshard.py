"""WebDataset shards (.tar, .tar.gz): list their video members, and read members back for the decoder.

A member is a video when its extension is one of --extensions; `{key}.json` beside `{key}.mp4` may carry its
"label" and "split". An uncompressed .tar is read member by member at the offsets its listing recorded, so its
members spread over any number of tasks; a .tar.gz can only be read from its start, so one task reads it (see
the README for decompressing mirrors' shards: mp4 does not compress, the .tar is about as large).
"""

from __future__ import annotations

import json
import posixpath
import tarfile
import time
from collections.abc import Iterator

from clipsynth_platform.runtime.uri import fsspec_filesystem, strip_scheme

from .failures import short_error
from .members import Fetched, Listing, Member, Occurrences, TempFiles, metadata_of

METADATA_EXTENSION = ".json"
MAX_METADATA_BYTES = 1 << 20


def _is_hidden(name: str) -> bool:
    return any(part.startswith(".") for part in name.split("/") if part not in ("", "."))


def list_tar(uri: str, compressed: bool, extensions: tuple[str, ...], listing: Listing) -> None:
    """Fill `listing` with the shard's video members (and their metadata); raises on an unreadable archive,
    leaving in `listing` what came before the break."""
    fs = fsspec_filesystem(uri)
    with fs.open(strip_scheme(uri), "rb") as raw, tarfile.open(fileobj=raw, mode="r|gz" if compressed else "r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, ext = posixpath.splitext(info.name)
            if _is_hidden(info.name):
                listing.other_files += 1
            elif ext.lower() in extensions:
                listing.add(info.name, offset=info.offset_data, size=info.size)
            elif ext.lower() == METADATA_EXTENSION and info.size <= MAX_METADATA_BYTES:
                data = tar.extractfile(info)
                try:
                    listing.metadata[key] = metadata_of(json.loads(data.read() if data else b""), info.name)
                except ValueError:  # not JSON, or a split other than train/test: the video stays, unlabelled
                    listing.bad_metadata += 1
            else:
                listing.other_files += 1


def read_tar(uri: str, compressed: bool, members: list[Member], files: TempFiles) -> Iterator[tuple[Member, Fetched]]:
    """Each of `members` in a temporary file (one at a time), or why it could not be read."""
    if compressed:
        yield from _read_stream(uri, members, files)
    else:
        yield from _read_at_offsets(uri, members, files)


def _read_at_offsets(uri: str, members: list[Member], files: TempFiles) -> Iterator[tuple[Member, Fetched]]:
    fs = fsspec_filesystem(uri)
    todo = sorted(members, key=lambda m: m.offset)
    try:
        f = fs.open(strip_scheme(uri), "rb")
    except Exception as exc:
        reason = f"cannot open the shard: {short_error(exc)}"
        yield from ((m, Fetched(failure=reason)) for m in todo)
        return
    with f:
        for m in todo:
            t0 = time.perf_counter()
            try:
                f.seek(m.offset)
                path, n = files.copy(m.name, f, m.size)
            except Exception as exc:
                yield m, Fetched(failure=f"cannot read the member from its shard: {short_error(exc)}")
                continue
            if n < m.size:
                yield m, Fetched(failure=f"member cut short: {n} of {m.size} bytes (the shard changed since listed?)")
                continue
            yield m, Fetched(path, n, time.perf_counter() - t0)


def _read_stream(uri: str, members: list[Member], files: TempFiles) -> Iterator[tuple[Member, Fetched]]:
    """A .tar.gz from its start: the wanted members as they come; reading stops after the last one."""
    want = {(m.name, m.occurrence): m for m in members}
    seen = Occurrences()
    fs = fsspec_filesystem(uri)
    position = 0
    try:
        with fs.open(strip_scheme(uri), "rb") as raw, tarfile.open(fileobj=raw, mode="r|gz") as tar:
            t0 = time.perf_counter()
            for info in tar:
                position += 1
                if not info.isfile():
                    continue
                key = (info.name, seen.next(info.name))
                m = want.get(key)
                if m is None:
                    continue
                data = tar.extractfile(info)
                path, n = files.copy(m.name, data, info.size) if data is not None else (None, 0)
                del want[key]  # only now: a member the archive breaks inside stays wanted, and is failed below
                if n < info.size or path is None:
                    yield m, Fetched(failure=f"member cut short: {n} of {info.size} bytes")
                else:
                    yield m, Fetched(path, n, time.perf_counter() - t0)
                if not want:
                    break
                t0 = time.perf_counter()
    except Exception as exc:
        reason = f"shard unreadable after {position} members: {short_error(exc)}"
        yield from ((m, Fetched(failure=reason)) for m in want.values())
        return
    for m in want.values():
        yield m, Fetched(failure="member not found in the shard (it changed since it was listed?)")
