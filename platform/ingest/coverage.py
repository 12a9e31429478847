"""The coverage report: clips the label index expects, per split and class, against what the inputs held ("found")
and what ingestion kept ("ok"). Written into _summary.json ("coverage") and, with tracking, to MLflow.

A split is the index's ("train", "test"), or "any" for an index without splits (MUSIC), whose clips are split
by hash at ingestion. An index may list a clip under more than one key (vggsound.csv's rows are matched as
`{id}_{start:06d}` and as `{id}_{start}`): such aliases count once. Found and ok count distinct clip ids (VideoSource.clip_id): a clip
held by several inputs (a file and a shard member) counts once, and the report says how many such repeats.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .labels import LabelEntry, LabelIndex
from .records import STATUS_OK
from .sources import FROM_INDEX, VideoSource, source_video_of

ANY_SPLIT = "any"
_UNPADDED_START = re.compile(r"^(.*)_(\d{1,5})$")


@dataclass
class CoverageCell:
    expected: int = 0
    found: int = 0
    ok: int = 0

    def to_dict(self) -> dict:
        share = round(self.ok / self.expected, 4) if self.expected else None
        return {"expected": self.expected, "found": self.found, "ok": self.ok, "ok_share": share}


@dataclass
class CoverageReport:
    index: str
    total: CoverageCell = field(default_factory=CoverageCell)
    by_split: dict[str, CoverageCell] = field(default_factory=dict)
    by_class: dict[str, CoverageCell] = field(default_factory=dict)
    by_split_class: dict[str, dict[str, CoverageCell]] = field(default_factory=dict)
    inputs_not_in_index: int = 0  # inputs the index has no entry for (labelled by their own metadata, or not)
    repeated_inputs: int = 0  # inputs whose clip another input already holds

    def add(self, split: str, label: str, what: str) -> None:
        cells = (
            self.total,
            self.by_split.setdefault(split, CoverageCell()),
            self.by_class.setdefault(label, CoverageCell()),
            self.by_split_class.setdefault(split, {}).setdefault(label, CoverageCell()),
        )
        for cell in cells:
            setattr(cell, what, getattr(cell, what) + 1)

    @property
    def classes_without_clips(self) -> list[str]:
        """Classes the index lists that ingestion kept no clip of."""
        return sorted(label for label, c in self.by_class.items() if c.expected and not c.ok)

    def rows(self) -> list[dict]:
        """One row per (split, class): the table logged as coverage.csv."""
        return [
            {"split": split, "label": label, **cell.to_dict()}
            for split, cells in sorted(self.by_split_class.items())
            for label, cell in sorted(cells.items())
        ]

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            **self.total.to_dict(),
            "inputs_not_in_index": self.inputs_not_in_index,
            "repeated_inputs": self.repeated_inputs,
            "classes_without_clips": self.classes_without_clips,
            "by_split": {k: v.to_dict() for k, v in sorted(self.by_split.items())},
            "by_class": {k: v.to_dict() for k, v in sorted(self.by_class.items())},
            "by_split_class": {
                s: {k: v.to_dict() for k, v in sorted(c.items())} for s, c in sorted(self.by_split_class.items())
            },
        }


def distinct_clips(labels: LabelIndex) -> dict[str, LabelEntry]:
    """The index's clips, each once: a key that is another key's unpadded start (`x_10` beside `x_000010`, with
    the same entry) is an alias."""
    clips = {}
    for key, entry in labels.entries.items():
        m = _UNPADDED_START.match(key)
        if m and labels.entries.get(f"{m.group(1)}_{int(m.group(2)):06d}") == entry:
            continue
        clips[key] = entry
    return clips


def coverage_report(
    labels: LabelIndex, index_uri: str, sources: Iterable[VideoSource], status_by_uri: Mapping[str, str]
) -> CoverageReport:
    """Expected (the index), found (inputs the index labels) and ok (their clips kept), per split and class."""
    report = CoverageReport(index_uri)
    for entry in distinct_clips(labels).values():
        if entry.label is not None:  # an unlabelled listing is never "found" either (it has no class)
            report.add(entry.split or ANY_SPLIT, entry.label, "expected")
    found: dict[tuple[str, str, str], bool] = {}  # (split, label, clip id) -> kept by any input that holds it
    for s in sources:
        if s.label_from != FROM_INDEX or s.label is None:
            report.inputs_not_in_index += 1
            continue
        key = (s.split if s.split_from == FROM_INDEX else ANY_SPLIT, s.label, s.clip_id)
        report.repeated_inputs += key in found
        found[key] = found.get(key, False) or status_by_uri.get(s.uri) == STATUS_OK
    for (split, label, _), ok in found.items():
        report.add(split, label, "found")
        if ok:
            report.add(split, label, "ok")
    return report


def split_leaks(sources: Iterable[VideoSource], status_by_uri: Mapping[str, str], examples: int = 10) -> dict:
    """Source videos whose kept clips lie in both splits (a label index that splits one video's clips, or splits
    some and leaves the rest to the hash, leaks it from train into test): how many, their clips, and a few of
    them. Clips left to the hash alone never leak: they are hashed by their source video (sources.py)."""
    splits: dict[str, set[str]] = {}
    clips: dict[str, int] = {}
    for s in sources:
        if status_by_uri.get(s.uri) == STATUS_OK:
            video = source_video_of(s.clip_id)
            splits.setdefault(video, set()).add(s.split)
            clips[video] = clips.get(video, 0) + 1
    leaked = sorted(v for v, sp in splits.items() if len(sp) > 1)
    return {
        "videos_in_both_splits": len(leaked),
        "their_clips": sum(clips[v] for v in leaked),
        "examples": leaked[:examples],
    }


def index_split_leaks(labels: LabelIndex | None, examples: int = 20) -> dict:
    """The videos the label index listed in both splits. The manifest keeps all clips of each in one split
    (test), so they never straddle the splits here; the summary names them, since the index's own split changed."""
    leaks = labels.manifest.leaks if labels is not None and labels.manifest is not None else []
    return {"videos": len(leaks), "examples": [leak.to_dict() for leak in leaks[:examples]]}
