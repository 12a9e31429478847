"""What --input names, listed: video files, WebDataset shards (.tar, .tar.gz) and Parquet files of video bytes,
each given as a file, a local directory or an s3:// prefix (directories and prefixes are searched recursively).

A video file is one input; a shard or Parquet file is a container of inputs, listed by containers.py.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

from clipsynth_platform.runtime.uri import fsspec_filesystem, is_s3, strip_scheme

KIND_VIDEO = "video"
KIND_TAR = "tar"
KIND_TAR_GZ = "tar.gz"
KIND_PARQUET = "parquet"
CONTAINER_KINDS = (KIND_TAR, KIND_TAR_GZ, KIND_PARQUET)


@dataclass(frozen=True)
class InputFile:
    uri: str  # local absolute path or s3://bucket/key
    relative_path: str  # below the root it was found in ("/"-separated); the file name for a file input
    kind: str  # KIND_*


def kind_of(name: str, extensions: tuple[str, ...]) -> str | None:
    """The input kind a file name says, or None for a file the job does not read."""
    lower = name.lower()
    if lower.endswith((".tar.gz", ".tgz")):
        return KIND_TAR_GZ
    if lower.endswith(".tar"):
        return KIND_TAR
    if lower.endswith(".parquet"):
        return KIND_PARQUET
    return KIND_VIDEO if posixpath.splitext(lower)[1] in extensions else None


def _listed_in_folder(relative: str, kind: str | None) -> bool:
    """Hidden files and folders (".name") are skipped; so are Parquet files named "_name" (the Hadoop/pyarrow
    convention for metadata beside data: _metadata, a fetch's _fetch_ledger.parquet). Videos named "_..." stay:
    YouTube ids may begin with "_"."""
    if kind is None or any(part.startswith(".") for part in relative.split("/")):
        return False
    return not (kind == KIND_PARQUET and posixpath.basename(relative).startswith("_"))


def list_inputs(roots: Sequence[str], extensions: tuple[str, ...], exclude: str | None = None) -> list[InputFile]:
    """Every input under `roots`, in the order given, each root's files sorted by relative path; `exclude` (the
    job's output, when it lies inside an input) is skipped. A file listed twice is kept once."""
    skip = strip_scheme(exclude).rstrip("/") + "/" if exclude else None
    found: list[InputFile] = []
    seen: set[str] = set()
    for root in roots:
        for item in _list_root(root, extensions, skip):
            if item.uri not in seen:
                seen.add(item.uri)
                found.append(item)
    return found


def _list_root(root: str, extensions: tuple[str, ...], skip: str | None) -> list[InputFile]:
    fs = fsspec_filesystem(root)
    base = strip_scheme(root).rstrip("/")
    if not fs.exists(base):
        raise FileNotFoundError(f"input {root} does not exist")

    def uri_of(path: str) -> str:
        return f"s3://{path}" if is_s3(root) else os.path.abspath(path)

    if not fs.isdir(base):
        name = posixpath.basename(base)
        kind = kind_of(name, extensions)
        if kind is None:
            raise ValueError(
                f"input {root} is not a video ({' '.join(extensions)}), a .tar / .tar.gz shard or a .parquet file"
            )
        return [InputFile(uri_of(base), name, kind)]
    found = []
    for path in fs.find(base):
        path = str(path)
        if skip and (path + "/").startswith(skip):
            continue
        rel = path[len(base) :].lstrip("/")
        kind = kind_of(rel, extensions)
        if kind is not None and _listed_in_folder(rel, kind):
            found.append(InputFile(uri_of(path), rel, kind))
    return sorted(found, key=lambda f: f.relative_path)
