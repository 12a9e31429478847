"""The job's inputs: list the videos under a local directory or an s3:// prefix, give each a stable id, a
label (when the index has one) and a split (the index's, else a hash of the video id: no leakage)."""

from __future__ import annotations

import hashlib
import os
import posixpath
from dataclasses import asdict, dataclass

from clipsynth_platform.runtime.uri import fsspec_filesystem, is_s3, strip_scheme

from .labels import LabelIndex


@dataclass(frozen=True)
class VideoSource:
    uri: str  # local absolute path or s3://bucket/key
    relative_path: str  # below the input root, "/"-separated
    video_id: str
    split: str
    label: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def video_id_of(uri: str) -> str:
    """The schema's stable id: sha1 of the video's URI, 16 hex characters."""
    return hashlib.sha1(uri.encode("utf-8")).hexdigest()[:16]


def hashed_split(video_id: str, test_fraction: float) -> str:
    """ "test" for a deterministic `test_fraction` of video ids (uniform over the sha1), else "train"."""
    h = int(hashlib.sha1(f"clipsynth-split:{video_id}".encode()).hexdigest()[:8], 16) / 2**32
    return "test" if h < test_fraction else "train"


def list_video_uris(root: str, extensions: tuple[str, ...], exclude: str | None = None) -> list[tuple[str, str]]:
    """(uri, relative_path) of every file below `root` with one of `extensions`, sorted by relative path.

    Hidden files and folders (".name") are skipped; so is `exclude` (the job's output when it lies inside
    the input).
    """
    fs = fsspec_filesystem(root)
    base = strip_scheme(root).rstrip("/")
    if not fs.exists(base):
        raise FileNotFoundError(f"input {root} does not exist")
    if not fs.isdir(base):
        raise NotADirectoryError(f"input {root} is not a directory or prefix")
    skip = strip_scheme(exclude).rstrip("/") + "/" if exclude else None
    found = []
    for path in fs.find(base):
        path = str(path)
        rel = path[len(base) :].lstrip("/")
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        if skip and (path + "/").startswith(skip):
            continue
        if posixpath.splitext(rel)[1].lower() not in extensions:
            continue
        uri = f"s3://{path}" if is_s3(root) else os.path.abspath(path)
        found.append((uri, rel))
    return sorted(found, key=lambda t: t[1])


def plan_sources(
    root: str,
    extensions: tuple[str, ...],
    test_fraction: float,
    labels: LabelIndex | None = None,
    exclude: str | None = None,
    limit: int | None = None,
) -> list[VideoSource]:
    """Every input video with its id, split and label."""
    sources = []
    for uri, rel in list_video_uris(root, extensions, exclude):
        vid = video_id_of(uri)
        entry = labels.lookup(uri, rel) if labels is not None else None
        split = entry.split if entry is not None and entry.split else hashed_split(vid, test_fraction)
        sources.append(VideoSource(uri, rel, vid, split, entry.label if entry is not None else None))
        if limit is not None and len(sources) >= limit:
            break
    return sources
