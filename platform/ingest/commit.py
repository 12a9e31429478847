"""The driver's side of ingestion: bookkeeping rows in, commits out. No chunk row reaches the driver.

The workers stage shard files (write.py) and report, per video, which files hold how many of its rows, then
its outcome. A video is complete once its outcome and all its rows are reported. Files and videos form
groups (a file holds rows of several videos, a video's rows may span files); a group is committed, by one
manifest, once every video in it is complete. Rows of a video that failed after some were staged (a CLIP
batch failed or was lost) are removed from their files first, by a Ray task where the files are.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa

from .config import IngestConfig
from .records import (
    CRASHED_REASON,
    RECORD_CHUNK_FAILED,
    RECORD_VIDEO,
    RECORD_WRITTEN,
    STAGE_DECODE,
    STAGE_EMBED,
    STATUS_FAILED,
    STATUS_OK,
)
from .sources import VideoSource
from .store import OutputStore, VideoOutcome

# Commit failed-only videos once this many are waiting, so a corpus of bad files still makes progress.
MAX_VIDEOS_PER_COMMIT = 1000
LOST_REASON = "lost with its Ray Data block (an error in the job's own code; see the job log)"


@dataclass
class RunStats:
    decode_seconds: dict[str, float] = field(default_factory=dict)
    decoded_videos: int = 0
    embed_seconds: float = 0.0
    embedded_chunks: int = 0
    embedded_frames: int = 0
    write_seconds: float = 0.0
    write_bytes: int = 0
    commits: int = 0
    rows_written: int = 0
    videos_committed: int = 0


@dataclass
class _Video:
    files: dict[str, int] = field(default_factory=dict)  # staged file -> this video's rows in it
    rows: int = 0
    outcome: VideoOutcome | None = None
    embed_failure: str | None = None

    def complete(self) -> bool:
        if self.outcome is None:
            return False
        return self.outcome.status != STATUS_OK or self.embed_failure is not None or self.rows >= self.outcome.chunks


@dataclass
class _File:
    split: str
    videos: set[str] = field(default_factory=set)
    rows: int = 0
    drop: set[str] = field(default_factory=set)  # videos whose rows must leave the file before it is committed


class Committer:
    """Collects bookkeeping rows and commits complete groups of videos and staged files."""

    def __init__(
        self,
        store: OutputStore,
        config: IngestConfig,
        stats: RunStats,
        total: int,
        log: Callable,
        rewrite: Callable[[str, list[str]], dict],
    ) -> None:
        self.store, self.config, self.stats, self.total, self.log = store, config, stats, total, log
        self.rewrite = rewrite  # (staged file, video ids to drop) -> {"file": new path or None, "rows": n}
        self.videos: dict[str, _Video] = {}
        self.files: dict[str, _File] = {}
        self.done: dict[str, VideoOutcome] = {}  # complete, not yet committed
        self.committed: set[str] = set()
        self.t_start = time.perf_counter()

    def add_batch(self, batch: pa.Table) -> None:
        for row in batch.to_pylist():
            vid = row["video_id"]
            if row["record"] == RECORD_WRITTEN:
                self._written(vid, json.loads(row["info_json"]))
                continue
            if vid in self.done or vid in self.committed:
                continue
            video = self.videos.setdefault(vid, _Video())
            if row["record"] == RECORD_CHUNK_FAILED:
                video.embed_failure = video.embed_failure or row["fail_reason"]
            elif row["record"] == RECORD_VIDEO:
                video.outcome = outcome_of(row)
        for vid in [v for v, t in self.videos.items() if v not in self.done and t.complete()]:
            self._complete(vid, self.videos[vid])
        self.maybe_commit()

    def _written(self, vid: str, info: dict) -> None:
        f = self.files.setdefault(info["file"], _File(info["split"]))
        f.rows += info["rows"]
        self.stats.embed_seconds += info["embed_seconds"]
        self.stats.embedded_chunks += info["rows"]
        self.stats.embedded_frames += info["frames"]
        self.stats.write_seconds += info["write_seconds"]
        self.stats.write_bytes += info["bytes"]
        if vid in self.committed:  # rows that arrived after their video was settled as failed
            f.drop.add(vid)
            return
        video = self.videos.setdefault(vid, _Video())
        f.videos.add(vid)
        video.files[info["file"]] = video.files.get(info["file"], 0) + info["rows"]
        video.rows += info["rows"]
        if vid in self.done and self.done[vid].status != STATUS_OK:
            f.drop.add(vid)

    def _complete(self, vid: str, video: _Video) -> None:
        outcome = video.outcome
        assert outcome is not None
        self.stats.decoded_videos += 1
        for k, v in outcome.info.get("timings", {}).items():
            self.stats.decode_seconds[k] = self.stats.decode_seconds.get(k, 0.0) + float(v)
        if outcome.status == STATUS_OK and video.embed_failure is not None:
            outcome.status, outcome.stage, outcome.reason = STATUS_FAILED, STAGE_EMBED, video.embed_failure
        if outcome.status != STATUS_OK:
            outcome.chunks = 0
            for name in video.files:
                self.files[name].drop.add(vid)
        self.done[vid] = outcome

    def lost(self, sources: list[VideoSource]) -> None:
        """Account for videos that never completed: their block errored, or their CLIP rows were lost."""
        for source in sources:
            if source.video_id in self.done or source.video_id in self.committed:
                continue
            video = self.videos.setdefault(source.video_id, _Video())
            stage, reason = STAGE_DECODE, LOST_REASON
            if video.outcome is not None:
                stage, reason = STAGE_EMBED, "chunks lost in the CLIP stage (worker crashed)"
            video.outcome = VideoOutcome(
                source.uri, source.video_id, source.split, source.label, STATUS_FAILED, stage, reason
            )
            video.outcome.info = {}
            self._complete(source.video_id, video)

    def _groups(self) -> list[tuple[list[str], list[str]]]:
        """(videos, files) of every group whose videos are all complete."""
        seen: set[str] = set()
        groups = []
        for start in list(self.done):
            if start in seen:
                continue
            vids, names, todo, ready = set(), set(), [start], True
            while todo:
                vid = todo.pop()
                if vid in vids:
                    continue
                vids.add(vid)
                ready &= vid in self.done
                for name in self.videos[vid].files if vid in self.videos else ():
                    if name not in names:
                        names.add(name)
                        todo.extend(self.files[name].videos)
            seen |= vids
            if ready:
                groups.append((sorted(vids), sorted(names)))
        return groups

    def maybe_commit(self, final: bool = False) -> None:
        groups = self._groups()
        if not groups:
            return
        rows = sum(self.files[n].rows for _, names in groups for n in names)
        videos = sum(len(v) for v, _ in groups)
        if final or rows >= self.config.shard_rows or videos >= MAX_VIDEOS_PER_COMMIT:
            self.commit([v for vids, _ in groups for v in vids], [n for _, names in groups for n in names])

    def commit(self, vids: list[str], names: list[str]) -> None:
        staged = []
        for name in names:
            f = self.files.pop(name)
            if f.drop:  # rows of failed videos: a worker rewrites the file without them
                rewritten = self.rewrite(name, sorted(f.drop))
                if rewritten["file"] is not None:
                    staged.append((f.split, rewritten["file"], rewritten["rows"]))
            else:
                staged.append((f.split, name, f.rows))
        outcomes = [self.done.pop(v) for v in vids]
        for v in vids:
            self.videos.pop(v, None)
            self.committed.add(v)
        result = self.store.commit_staged(outcomes, staged)
        self.stats.commits += 1
        self.stats.rows_written += sum(result.rows.values())
        self.stats.videos_committed += len(outcomes)
        ok = sum(o.status == STATUS_OK for o in outcomes)
        elapsed = time.perf_counter() - self.t_start
        self.log(
            f"commit {result.name}: {len(outcomes)} videos ({ok} ok, {len(outcomes) - ok} failed), "
            f"{sum(result.rows.values())} rows {result.rows} in {len(staged)} file(s) the workers wrote; "
            f"{self.stats.videos_committed}/{self.total} videos, {self.stats.rows_written} rows, "
            f"{self.stats.rows_written / max(elapsed, 1e-9):.2f} chunks/s"
        )
        if self.config.test_hooks and self.config.test_exit_after_commits == self.stats.commits:
            self.log("test hook: interrupting the job after a commit")
            raise KeyboardInterrupt


def outcome_of(row: dict) -> VideoOutcome:
    return VideoOutcome(
        uri=row["source_uri"],
        video_id=row["video_id"],
        split=row["split"],
        label=row["label"],
        status=row["status"],
        stage=row["fail_stage"],
        reason=row["fail_reason"],
        chunks=int(row["video_chunks"] or 0),
        silent_chunks=int(row["silent_chunks"] or 0),
        audio_decoder=row["audio_decoder"],
        video_decoder=row["video_decoder"],
        info=json.loads(row["info_json"] or "{}"),
    )


__all__ = ["CRASHED_REASON", "LOST_REASON", "Committer", "RunStats", "outcome_of"]
