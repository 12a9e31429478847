"""The job's inputs, one `VideoSource` per video: a video file, or a member of a shard or Parquet file. Each gets a
stable id, a label and a split: the label index's (joined by clip id, in `label_of`), else the member's own
metadata, else no label and a split hashed from the video id (no leakage)."""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

from .containers import ContainerIndex
from .inputs import KIND_VIDEO, InputFile
from .labels import LabelEntry, LabelIndex
from .members import Member

# VGG-Sound's clip ids: `{youtube id}_{start second:06d}`; clips of one YouTube video share the id.
_TIMED_CLIP = re.compile(r"^(.+)_(\d{6})$")

# Where a source's label came from (`VideoSource.label_from`) and so its split (`split_from`, or "hash").
FROM_INDEX = "index"
FROM_MEMBER = "member"  # the shard's {key}.json or the Parquet row's label/split columns
FROM_HASH = "hash"


@dataclass(frozen=True)
class VideoSource:
    uri: str  # local absolute path, s3://bucket/key, or {container uri}#{member} for a member
    relative_path: str  # below its input root, "/"-separated; a member's is {container's}/{member name}
    video_id: str
    split: str
    label: str | None
    kind: str = KIND_VIDEO  # inputs.KIND_*: how its bytes are read
    container: str | None = None  # the shard or Parquet file that holds it
    member: Member | None = None
    label_from: str | None = None  # FROM_INDEX, FROM_MEMBER or None (unlabelled)
    split_from: str = FROM_HASH

    @property
    def clip_id(self) -> str:
        """The clip this video holds, by the datasets' naming: the file or member name without its extension
        (`{ytid}_{start:06d}` in VGG-Sound, `{ytid}` in MUSIC), or a Parquet row's id."""
        name = posixpath.basename(self.member.name if self.member is not None else self.relative_path)
        return name.rsplit(".", 1)[0] if "." in name else name

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> VideoSource:
        member = d.get("member")
        return cls(**{**d, "member": Member(**member) if isinstance(member, dict) else member})


def source_video_of(clip_id: str) -> str:
    """The video a clip was cut from: the YouTube id of a `{ytid}_{start:06d}` clip, else the clip itself."""
    m = _TIMED_CLIP.match(clip_id)
    return m.group(1) if m else clip_id


def video_id_of(uri: str) -> str:
    """The schema's stable id: sha1 of the video's URI, 16 hex characters."""
    return hashlib.sha1(uri.encode("utf-8")).hexdigest()[:16]


def hashed_split(video_id: str, test_fraction: float) -> str:
    """ "test" for a deterministic `test_fraction` of video ids (uniform over the sha1), else "train"."""
    h = int(hashlib.sha1(f"clipsynth-split:{video_id}".encode()).hexdigest()[:8], 16) / 2**32
    return "test" if h < test_fraction else "train"


def label_of(
    labels: LabelIndex | None, uri: str, relative_path: str, member: Member | None
) -> tuple[LabelEntry | None, str | None]:
    """The one place a video meets its label: the index's entry for its clip id (the file or member stem, or its
    path, as LabelIndex.lookup matches), else the member's own metadata. (entry, FROM_INDEX | FROM_MEMBER) or
    (None, None)."""
    entry = labels.lookup(uri, relative_path) if labels is not None else None
    if entry is not None:
        return entry, FROM_INDEX
    if member is not None and member.label:
        return LabelEntry(member.label, member.split), FROM_MEMBER
    return None, None


def video_splits(labels: LabelIndex | None) -> dict[str, str]:
    """The index's split of each source video ({ytid} of {ytid}_{start:06d}). The manifest has resolved split
    leaks (all clips of one video in one split), so each video has one."""
    if labels is None:
        return {}
    return {source_video_of(key): e.split for key, e in labels.entries.items() if e.split}


def _source(
    uri: str, rel: str, test_fraction: float, labels: LabelIndex | None, by_video: Mapping[str, str], **where
) -> VideoSource:
    vid = video_id_of(uri)
    entry, origin = label_of(labels, uri, rel, where.get("member"))
    label = entry.label if entry is not None else None
    source = VideoSource(uri, rel, vid, "", label, label_from=origin, **where)
    if origin is not None and entry is not None and entry.split:
        return replace(source, split=entry.split, split_from=origin)
    clip = source.clip_id
    key = source_video_of(clip) if source_video_of(clip) != clip else vid
    if key in by_video:  # a clip the index does not list, of a video it does: that video's split
        return replace(source, split=by_video[key], split_from=FROM_INDEX)
    # Hashed by the video a clip was cut from, so that clips of one YouTube video never straddle the splits.
    return replace(source, split=hashed_split(key, test_fraction))


def plan_sources(
    inputs: Sequence[InputFile],
    indexes: Mapping[str, ContainerIndex],
    test_fraction: float,
    labels: LabelIndex | None = None,
    limit: int | None = None,
) -> list[VideoSource]:
    """Every input video (files, and the members of each container's index) with its id, split and label."""
    sources: list[VideoSource] = []
    by_video = video_splits(labels)
    for item in inputs:
        if limit is not None and len(sources) >= limit:
            break
        if item.kind == KIND_VIDEO:
            sources.append(_source(item.uri, item.relative_path, test_fraction, labels, by_video))
            continue
        index = indexes.get(item.uri)
        for m in index.members if index is not None else ():
            rel = f"{item.relative_path}/{m.name}"
            sources.append(
                _source(
                    m.uri_in(item.uri),
                    rel,
                    test_fraction,
                    labels,
                    by_video,
                    kind=item.kind,
                    container=item.uri,
                    member=m,
                )
            )
    return sources[:limit] if limit is not None else sources
