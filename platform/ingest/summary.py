"""The run's summary (_summary.json) and failures table (_failures.parquet), from every manifest: each listed
video accounted for (videos_in = ok + failed), with hygiene rejections, the containers read, the coverage
report against the label index, and throughput."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass

from clipsynth_platform.datasets.schema import SCHEMA_VERSION

from .commit import LOST_REASON, RunStats
from .config import IngestConfig
from .containers import ContainerIndex
from .coverage import coverage_report, index_split_leaks, split_leaks
from .inputs import KIND_VIDEO, InputFile
from .labels import LabelIndex
from .records import CRASHED_REASON, STAGE_CONTAINER, STATUS_OK
from .sources import VideoSource
from .store import OutputStore

DECODE_TIMING_KEYS = ("read", "probe", "audio", "video", "mel", "jpeg")


@dataclass
class RunInputs:
    """What one run listed: the input files, the containers' indexes and the videos they hold."""

    files: list[InputFile]
    indexes: dict[str, ContainerIndex]
    sources: list[VideoSource]


def _rate(amount: float, seconds: float) -> float | None:
    return round(amount / seconds, 3) if seconds > 0 else None


def container_failures(indexes: dict[str, ContainerIndex]) -> list[dict]:
    """Containers that could not be read whole: one failures-table row each (their listed members have their own)."""
    return [
        {
            "uri": i.uri,
            "stage": STAGE_CONTAINER,
            "reason": f"unreadable after {len(i.members)} videos: {i.error}" if i.members else f"unreadable: {i.error}",
        }
        for i in indexes.values()
        if i.error
    ]


def inputs_report(inputs: RunInputs) -> dict:
    by_kind = Counter(s.kind for s in inputs.sources)
    return {
        "files": sum(f.kind == KIND_VIDEO for f in inputs.files),
        "containers": dict(Counter(i.kind for i in inputs.indexes.values())),
        "videos_by_kind": dict(sorted(by_kind.items())),
        "containers_unreadable": len(container_failures(inputs.indexes)),
        "container_other_files": sum(i.other_files for i in inputs.indexes.values()),
        "container_bad_metadata": sum(i.bad_metadata for i in inputs.indexes.values()),
        "container_repeated_names": sum(i.repeated_names for i in inputs.indexes.values()),
        "listing_seconds": round(sum(i.seconds for i in inputs.indexes.values()), 3),
    }


def hygiene_report(config: IngestConfig, ok: list[dict], failed: list[dict]) -> dict:
    """Clips rejected by the data-hygiene rules, and the audio levels of the clips kept."""
    rejected = Counter(e["info"].get("hygiene") for e in failed if e["info"].get("hygiene"))
    levels = [e["info"]["audio_rms_dbfs"] for e in ok if e["info"].get("audio_rms_dbfs") is not None]
    return {
        "rejected": {k: rejected.get(k, 0) for k in ("too_short", "silent")},
        "min_clip_seconds": config.min_chunk_samples / 16_000,
        "silence_db": config.silence_db,
        "kept_audio_rms_dbfs": {
            "min": round(min(levels), 2),
            "median": round(statistics.median(levels), 2),
            "max": round(max(levels), 2),
        }
        if levels
        else None,
    }


def summarize(
    config: IngestConfig,
    store: OutputStore,
    inputs: RunInputs,
    labels: LabelIndex | None,
    stats: RunStats,
    skipped: int,
    seconds: float,
    ray_where: str | None,
    s3_requests: dict[str, int] | None = None,
) -> tuple[dict, list[dict]]:
    """Account for every listed video from all manifests (this run's and earlier ones'); write the summary and
    the failures table. Returns (summary, failure rows)."""
    sources = inputs.sources
    latest, _ = store.recover()
    listed = {s.uri for s in sources}
    entries = [latest[s.uri] for s in sources if s.uri in latest]
    missing = [s.uri for s in sources if s.uri not in latest]
    if missing:  # cannot happen after a completed run; guard the invariant videos_in == ok + failed
        raise RuntimeError(f"{len(missing)} listed videos have no recorded outcome, e.g. {missing[0]}")
    ok = [e for e in entries if e["status"] == STATUS_OK]
    failed = [e for e in entries if e["status"] != STATUS_OK]
    failure_rows = [*failed, *container_failures(inputs.indexes)]
    store.write_failures(failure_rows)
    status = {s.uri: latest[s.uri]["status"] for s in sources}
    coverage = coverage_report(labels, config.labels or "", sources, status).to_dict() if labels else None
    chunks_by_split: Counter[str] = Counter()
    videos_by_split: Counter[str] = Counter()
    for e in ok:
        chunks_by_split[e["split"]] += e["chunks"]
        videos_by_split[e["split"]] += 1
    decode_busy = sum(stats.decode_seconds.get(k, 0.0) for k in DECODE_TIMING_KEYS)
    this_run = {
        "seconds": round(seconds, 3),
        "videos_skipped_as_done": skipped,
        "videos_processed": stats.videos_committed,
        "chunks_written": stats.rows_written,
        "commits": stats.commits,
        "ray": ray_where,
        # the driver's S3 requests until now (runtime/s3_requests.py): listing, labels, commits' manifests; the
        # decode workers read the videos and write the shards, and count their own
        "s3_requests_driver": s3_requests or {},
    }
    previous = store.read_summary()
    runs = [*(previous or {}).get("runs", [])[-20:], this_run]
    summary = {
        "schema_version": SCHEMA_VERSION,
        "input": list(config.input),
        "output": config.output,
        "videos_in": len(sources),
        "videos_ok": len(ok),
        "videos_failed": len(failed),
        "videos_crashed": sum(e["reason"] == CRASHED_REASON for e in failed),
        "videos_lost": sum(e["reason"] == LOST_REASON for e in failed),
        "chunks_written": sum(e["chunks"] for e in ok),
        "chunks_by_split": {s: chunks_by_split.get(s, 0) for s in ("train", "test")},
        "videos_by_split": {s: videos_by_split.get(s, 0) for s in ("train", "test")},
        "audio_hours_written": round(sum(e["info"].get("audio_seconds", 0.0) for e in ok) / 3600, 4),
        "failures_by_stage": dict(Counter(e["stage"] for e in failed)),
        "inputs": inputs_report(inputs),
        "hygiene": hygiene_report(config, ok, failed),
        "coverage": coverage,
        "split_leaks": split_leaks(sources, status),
        "decoders": {
            "audio": dict(Counter(e["audio_decoder"] for e in ok)),
            "video": dict(Counter(e["video_decoder"] for e in ok)),
            "frame_sampling": dict(Counter(e["info"].get("frame_sampling") for e in ok)),
        },
        "labels": {
            "index": config.labels,
            "format": labels.format if labels else None,
            "entries": len(labels.entries) if labels else 0,
            "conflicts": len(labels.conflicts) if labels else 0,
            "index_split_leaks": index_split_leaks(labels),
            "videos_labelled": sum(e["label"] is not None for e in ok),
            "videos_unlabelled": sum(e["label"] is None for e in ok),
        },
        "warnings": {
            "silent_chunks": sum(e["silent_chunks"] for e in ok),
            "silent_videos": sum(e["silent_chunks"] > 0 for e in ok),
            "decoder_fallbacks": sum(bool(e["info"].get("notes")) for e in ok),
            "outputs_of_unlisted_videos": len(set(latest) - listed),
        },
        "seconds": round(seconds, 3),
        "throughput": {
            "decode": {
                "videos": stats.decoded_videos,
                "busy_seconds": round(decode_busy, 3),
                "busy_seconds_by_step": {k: round(stats.decode_seconds.get(k, 0.0), 3) for k in DECODE_TIMING_KEYS},
                "chunks_per_busy_second": _rate(stats.rows_written, decode_busy),
            },
            "embed": {
                "chunks": stats.embedded_chunks,
                "frames": stats.embedded_frames,
                "busy_seconds": round(stats.embed_seconds, 3),
                "chunks_per_busy_second": _rate(stats.embedded_chunks, stats.embed_seconds),
                "frames_per_busy_second": _rate(stats.embedded_frames, stats.embed_seconds),
            },
            "write": {
                "commits": stats.commits,
                "rows": stats.rows_written,
                "bytes": stats.write_bytes,
                "seconds": round(stats.write_seconds, 3),
                "rows_per_second": _rate(stats.rows_written, stats.write_seconds),
            },
            "end_to_end": {
                "wall_seconds": round(seconds, 3),
                "chunks_per_second": _rate(stats.rows_written, seconds),
                "videos_per_second": _rate(stats.videos_committed, seconds),
            },
        },
        "settings": {**config.row_settings(), "labels_sha1": labels.sha1 if labels else None},
        "config": config.to_dict(),
        "runs": runs,
    }
    store.write_summary(summary)
    store.remove_staging()
    return summary, failure_rows
