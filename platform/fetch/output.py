"""Where fetched clips go: `{clip_id}.mp4` files, or WebDataset tar shards of `{clip_id}.mp4` + `{clip_id}.json`.

Every write is atomic (runtime.uri.copy_atomically): a clip's file, or a shard, appears whole or not at all,
locally and on S3. Shards are assembled on the driver in a local temporary tar and copied out when full (or
when the run ends), so a clip is ok in the ledger only once the shard holding it exists."""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import tempfile
import time
from dataclasses import dataclass, field

from clipsynth_platform.runtime.uri import copy_atomically, fsspec_filesystem, is_s3, join, strip_scheme

SHARD_PATTERN = re.compile(r"shard-(\d{6})\.tar")


def clip_file_name(clip_id: str) -> str:
    return f"{clip_id}.mp4"


def list_output(output: str) -> dict[str, int]:
    """File name -> size of what the output folder holds (its top level); empty when it does not exist."""
    fs = fsspec_filesystem(output)
    base = strip_scheme(output).rstrip("/")
    if not is_s3(output) and not os.path.isdir(base):
        return {}
    try:
        entries = fs.ls(base, detail=True)
    except FileNotFoundError:
        return {}
    return {e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0) for e in entries if e["type"] == "file"}


def next_shard_index(names: dict[str, int] | list[str]) -> int:
    indices = [int(m[1]) for n in names if (m := SHARD_PATTERN.fullmatch(n))]
    return max(indices, default=-1) + 1


@dataclass
class ShardWriter:
    """Adds clips to the open shard; `add` returns the shard's name and its clip ids when it committed one."""

    output: str
    clips_per_shard: int
    index: int
    _tar: tarfile.TarFile | None = None
    _path: str | None = None
    _clip_ids: list[str] = field(default_factory=list)

    def _open(self) -> None:
        fd, self._path = tempfile.mkstemp(prefix="clipsynth-shard-", suffix=".tar")
        os.close(fd)
        self._tar = tarfile.open(self._path, "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115 - open across calls
        self._clip_ids = []

    def _member(self, name: str, data: bytes) -> None:
        assert self._tar is not None
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
        self._tar.addfile(info, io.BytesIO(data))

    def add(self, clip_id: str, video: bytes, sidecar: dict) -> tuple[str, list[str]] | None:
        if self._tar is None:
            self._open()
        self._member(clip_file_name(clip_id), video)
        self._member(f"{clip_id}.json", json.dumps(sidecar, sort_keys=True).encode())
        self._clip_ids.append(clip_id)
        if len(self._clip_ids) >= self.clips_per_shard:
            return self.commit()
        return None

    @property
    def pending(self) -> list[str]:
        return list(self._clip_ids)

    def commit(self) -> tuple[str, list[str]] | None:
        """Copy the open shard into the output (atomically); None when it holds no clip."""
        if self._tar is None:
            return None
        assert self._path is not None
        self._tar.close()
        name = f"shard-{self.index:06d}.tar"
        try:
            if self._clip_ids:
                copy_atomically(self._path, join(self.output, name))
                self.index += 1
        finally:
            os.unlink(self._path)
        committed, self._tar, self._path, self._clip_ids = self._clip_ids, None, None, []
        return (name, committed) if committed else None
