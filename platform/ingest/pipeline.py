"""The ingestion job on Ray Data: list -> decode (CPU tasks) -> CLIP (actor pool) -> shards (driver commits).

Streaming with bounded memory: one video (or `videos_per_task`) per input block, so a decode task holds one
video at a time and yields its chunks in small blocks; Ray Data's backpressure bounds what is in flight; the
driver holds only videos not yet committed (at most about `shard_rows` rows plus what is in flight).

A decode worker that crashes natively (segfault, abort) loses its block: decode runs with max_retries=0 (a
file that crashes once crashes again) and the dataset tolerates errored blocks. The driver then accounts
for it: every listed video ends up committed as ok or failed, and a video of which nothing arrived is
recorded as failed at stage "decode" with reason "worker crashed (native)".
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from ..schema import SCHEMA_VERSION
from .config import IngestConfig
from .decode import DecodeSettings, decode_videos
from .embed import ClipEmbedder
from .labels import LabelIndex, load_label_index
from .records import (
    CRASHED_REASON,
    RECORD_CHUNK,
    RECORD_CHUNK_FAILED,
    RECORD_VIDEO,
    STAGE_DECODE,
    STAGE_EMBED,
    STATUS_FAILED,
    STATUS_OK,
    to_chunk_table,
)
from .sources import VideoSource, plan_sources
from .store import OutputStore, VideoOutcome

# Commit failed-only videos once this many are waiting, so a corpus of bad files still makes progress.
MAX_VIDEOS_PER_COMMIT = 1000
DECODE_TIMING_KEYS = ("read", "probe", "audio", "video", "mel", "jpeg")


def ensure_ray(config: IngestConfig) -> str:
    """Connect to the cluster at --address / RAY_ADDRESS, or start a local one with explicit resources."""
    import ray

    if ray.is_initialized():
        return "existing"
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return f"cluster at {address}"
    # num_gpus None lets Ray detect the machine's GPUs.
    kwargs: dict = {"num_cpus": config.num_cpus or os.cpu_count() or 1, "num_gpus": config.num_gpus}
    if config.object_store_gb:
        kwargs["object_store_memory"] = int(config.object_store_gb * 1e9)
    ray.init(include_dashboard=False, **kwargs)
    return f"local cluster ({kwargs['num_cpus']} CPUs)"


def clip_gpus(config: IngestConfig) -> int:
    """GPUs for the CLIP stage: as asked, or (None) every GPU of the cluster: GPU when present, else CPU."""
    import ray

    if config.num_gpus is not None:
        return config.num_gpus
    return int(ray.cluster_resources().get("GPU", 0))


@dataclass
class _Tracked:
    """A video in flight on the driver: its chunk rows so far and, once it arrived, its "video" row."""

    tables: list[pa.Table] = field(default_factory=list)
    rows: int = 0
    outcome: VideoOutcome | None = None
    embed_failure: str | None = None

    def complete(self) -> bool:
        if self.outcome is None:
            return False
        return self.outcome.status != STATUS_OK or self.embed_failure is not None or self.rows >= self.outcome.chunks


@dataclass
class _RunStats:
    decode_seconds: Counter = field(default_factory=Counter)
    decoded_videos: int = 0
    embed_seconds: float = 0.0
    embedded_chunks: int = 0
    embedded_frames: int = 0
    write_seconds: float = 0.0
    write_bytes: int = 0
    commits: int = 0
    rows_written: int = 0
    videos_committed: int = 0


class _Committer:
    """Collects finished videos on the driver and commits them in shards of about `shard_rows` rows."""

    def __init__(self, store: OutputStore, config: IngestConfig, stats: _RunStats, total: int, log: Callable) -> None:
        self.store = store
        self.config = config
        self.stats = stats
        self.total = total
        self.log = log
        self.tracked: dict[str, _Tracked] = {}
        self.finished: set[str] = set()
        self.ready: list[tuple[VideoOutcome, list[pa.Table]]] = []
        self.ready_rows = 0
        self.t_start = time.perf_counter()

    def add_batch(self, batch: pa.Table) -> None:
        records = batch["record"].to_pylist()
        video_ids = batch["video_id"].to_pylist()
        chunk_rows: dict[str, list[int]] = {}
        for i, (kind, vid) in enumerate(zip(records, video_ids)):
            if vid in self.finished:
                continue
            tracked = self.tracked.setdefault(vid, _Tracked())
            if kind == RECORD_CHUNK:
                chunk_rows.setdefault(vid, []).append(i)
            elif kind == RECORD_CHUNK_FAILED:
                tracked.embed_failure = tracked.embed_failure or batch["fail_reason"][i].as_py()
            elif kind == RECORD_VIDEO:
                tracked.outcome = _outcome_of(batch.slice(i, 1).to_pylist()[0])
        if chunk_rows:
            embedded = batch.filter(pc.equal(batch["record"], RECORD_CHUNK))
            self.stats.embed_seconds += sum(
                json.loads(s)["embed_seconds"] for s in embedded["info_json"].to_pylist() if s
            )
            self.stats.embedded_chunks += embedded.num_rows
            self.stats.embedded_frames += int(pc.sum(pc.list_value_length(embedded["frames_jpeg"])).as_py() or 0)
        for vid, idx in chunk_rows.items():
            tracked = self.tracked[vid]
            tracked.tables.append(batch.take(pa.array(idx)))
            tracked.rows += len(idx)
        for vid in [v for v, t in self.tracked.items() if t.complete()]:
            self._finish(vid, self.tracked.pop(vid))
        self.maybe_commit()

    def _finish(self, vid: str, tracked: _Tracked) -> None:
        outcome = tracked.outcome
        assert outcome is not None
        self.finished.add(vid)
        self.stats.decoded_videos += 1
        self.stats.decode_seconds.update({k: float(v) for k, v in outcome.info.get("timings", {}).items()})
        if outcome.status == STATUS_OK and tracked.embed_failure is not None:
            outcome.status, outcome.stage, outcome.reason = STATUS_FAILED, STAGE_EMBED, tracked.embed_failure
        if outcome.status != STATUS_OK:
            outcome.chunks = 0
            self.ready.append((outcome, []))
            return
        self.ready.append((outcome, tracked.tables))
        self.ready_rows += tracked.rows

    def lost(self, sources: list[VideoSource]) -> None:
        """Account for videos that never completed: their worker died (decode) or their CLIP batch was lost."""
        for source in sources:
            if source.video_id in self.finished:
                continue
            tracked = self.tracked.pop(source.video_id, None)
            stage, reason = STAGE_DECODE, CRASHED_REASON
            if tracked is not None and tracked.outcome is not None:
                stage, reason = STAGE_EMBED, "chunks lost in the CLIP stage (worker crashed)"
            outcome = VideoOutcome(
                source.uri, source.video_id, source.split, source.label, STATUS_FAILED, stage, reason
            )
            self.finished.add(source.video_id)
            self.ready.append((outcome, []))

    def maybe_commit(self, final: bool = False) -> None:
        if not self.ready:
            return
        if final or self.ready_rows >= self.config.shard_rows or len(self.ready) >= MAX_VIDEOS_PER_COMMIT:
            self.commit()

    def commit(self) -> None:
        outcomes = [o for o, _ in self.ready]
        tables = [t for _, ts in self.ready for t in ts]
        chunk_table = to_chunk_table(pa.concat_tables(tables)) if tables else None
        result = self.store.commit(outcomes, chunk_table)
        self.stats.commits += 1
        self.stats.write_seconds += result.seconds
        self.stats.write_bytes += result.bytes
        self.stats.rows_written += sum(result.rows.values())
        self.stats.videos_committed += len(outcomes)
        self.ready, self.ready_rows = [], 0
        ok = sum(o.status == STATUS_OK for o in outcomes)
        elapsed = time.perf_counter() - self.t_start
        self.log(
            f"[ingest] commit {result.name}: {len(outcomes)} videos ({ok} ok, {len(outcomes) - ok} failed), "
            f"{sum(result.rows.values())} rows {result.rows}; {self.stats.videos_committed}/{self.total} videos, "
            f"{self.stats.rows_written} rows, {self.stats.rows_written / max(elapsed, 1e-9):.2f} chunks/s"
        )
        if self.config.test_hooks and self.config.test_exit_after_commits == self.stats.commits:
            self.log("[ingest] test hook: interrupting the job after a commit")
            raise KeyboardInterrupt


def _outcome_of(row: dict) -> VideoOutcome:
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


def _text_embeddings(config: IngestConfig, labels: list[str]) -> tuple[dict[str, list[float]], int, str]:
    """Build CLIP once on the driver: missing weights fail here (ClipWeightsError), before any work."""
    from clipsynth_core import ClipQueryEncoder

    encoder = ClipQueryEncoder(config.clip_config)
    table = {}
    if labels:
        emb = encoder.encode_text(labels).numpy()
        table = {label: emb[i].tolist() for i, label in enumerate(labels)}
    return table, encoder.embed_dim, encoder.config.identity


def _build_dataset(config: IngestConfig, pending: list[VideoSource], text: dict, worker_env: dict | None):
    import ray.data

    blocks = math.ceil(len(pending) / config.videos_per_task)
    ds: ray.data.Dataset = ray.data.from_items([s.to_dict() for s in pending], override_num_blocks=blocks)
    settings = DecodeSettings(
        chunk_samples=config.chunk_samples,
        min_chunk_samples=config.min_chunk_samples,
        frames_per_second=config.frames_per_second,
        frame_sampling=config.frame_sampling,
        image_size=config.image_size,
        jpeg_quality=config.jpeg_quality,
        with_audio=config.with_audio,
        threads=max(1, int(config.decode_cpus)),
        test_hooks=config.test_hooks,
    )
    decode_args: dict = {
        "batch_size": None,  # the whole block: `videos_per_task` videos
        "batch_format": "pyarrow",
        "fn_kwargs": {"settings": settings.to_dict()},
        "num_cpus": config.decode_cpus,
        # A file that crashes the decoder natively crashes it again: never retry, account for it instead.
        "max_retries": 0,
    }
    if config.decode_concurrency:
        decode_args["compute"] = ray.data.TaskPoolStrategy(size=config.decode_concurrency)
    if worker_env:
        decode_args["runtime_env"] = {"env_vars": dict(worker_env)}
    with warnings.catch_warnings():
        # Ray 2.60 sets no named parameter for max_retries (its default, -1, retries a crashing file forever)
        # and flags the remote-args route as deprecated; it is still the one that works here.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        ds = ds.map_batches(decode_videos, **decode_args)  # type: ignore[arg-type]  # Ray's stub ignores fn_args/fn_kwargs

    gpus = clip_gpus(config)
    use_gpu = gpus > 0
    pool = (
        ray.data.ActorPoolStrategy(size=gpus)
        if use_gpu
        else ray.data.ActorPoolStrategy(min_size=1, max_size=config.clip_actors)
    )
    clip = config.clip_config.to_dict()
    return ds.map_batches(
        ClipEmbedder,
        batch_size=config.clip_batch_size,
        batch_format="pyarrow",
        compute=pool,
        num_cpus=config.clip_cpus,
        num_gpus=1 if use_gpu else 0,
        fn_constructor_kwargs={
            "clip": clip,
            "text_embeddings": text,
            "use_gpu": use_gpu,
            "threads": max(1, int(config.clip_cpus)),
        },
    )


def run_ingest(config: IngestConfig, worker_env: dict[str, str] | None = None, log: Callable = print) -> dict:
    """Run (or resume) ingestion as `config` says; returns the summary written to _summary.json.

    `worker_env`: environment variables for the decode workers, for clusters whose workers lack the driver's
    environment (e.g. S3 endpoint settings in tests). Values are passed to Ray, never printed.
    """
    t_start = time.perf_counter()
    config.validate()
    log(f"[ingest] config:\n{config.describe()}")
    labels: LabelIndex | None = None
    if config.labels:
        labels = load_label_index(config.labels, config.labels_format, config.input)
        log(
            f"[ingest] label index {config.labels}: {labels.format}, {len(labels.entries)} entries, {len(labels.labels)} labels"
        )
    sources = plan_sources(config.input, config.extensions, config.test_fraction, labels, config.output, config.limit)
    # CLIP first: missing weights stop the job before it writes anything.
    text, embed_dim, identity = _text_embeddings(config, sorted({s.label for s in sources if s.label}))
    store = OutputStore(config.output)
    store.check_settings({**config.row_settings(), "labels_sha1": labels.sha1 if labels else None})
    latest, recovery = store.recover()
    pending = [
        s for s in sources if s.uri not in latest or (config.retry_failed and latest[s.uri]["status"] != STATUS_OK)
    ]
    log(
        f"[ingest] {len(sources)} videos listed under {config.input}; {len(sources) - len(pending)} already done, "
        f"{len(pending)} to process; CLIP {identity} (dim {embed_dim}); {recovery}"
    )

    stats = _RunStats()
    ray_where = None
    if pending:
        import ray.data

        ray_where = ensure_ray(config)
        log(f"[ingest] Ray: {ray_where}; CLIP stage on {clip_gpus(config) or 'no'} GPU(s)")
        context = ray.data.DataContext.get_current()
        saved = context.max_errored_blocks
        # Tolerate lost blocks (native crashes); every lost video is accounted for below.
        context.max_errored_blocks = -1
        committer = _Committer(store, config, stats, len(pending), log)
        batches = None
        try:
            ds = _build_dataset(config, pending, text, worker_env)
            batches = iter(ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2))
            for batch in batches:
                committer.add_batch(batch)
        finally:
            context.max_errored_blocks = saved
            # On an interrupt, stop the streaming executor now rather than whenever the iterator is collected.
            close = getattr(batches, "close", None)
            if close is not None:
                close()
        committer.lost(pending)
        committer.maybe_commit(final=True)

    summary = _summarize(
        config, store, sources, labels, stats, len(sources) - len(pending), time.perf_counter() - t_start, ray_where
    )
    log(
        f"[ingest] done in {summary['seconds']:.1f} s: {summary['videos_in']} videos in, {summary['videos_ok']} ok, "
        f"{summary['videos_failed']} failed ({summary['videos_crashed']} crashed), {summary['chunks_written']} chunks "
        f"{summary['chunks_by_split']}, {summary['warnings']['silent_chunks']} silent chunks -> {config.output}"
    )
    return summary


def _rate(amount: float, seconds: float) -> float | None:
    return round(amount / seconds, 3) if seconds > 0 else None


def _summarize(
    config: IngestConfig,
    store: OutputStore,
    sources: list[VideoSource],
    labels: LabelIndex | None,
    stats: _RunStats,
    skipped: int,
    seconds: float,
    ray_where: str | None,
) -> dict:
    """Account for every listed video from all manifests (this run's and earlier ones'); write the summary."""
    latest, _ = store.recover()
    listed = {s.uri for s in sources}
    entries = [latest[s.uri] for s in sources if s.uri in latest]
    missing = [s.uri for s in sources if s.uri not in latest]
    if missing:  # cannot happen after a completed run; guard the invariant videos_in == ok + failed
        raise RuntimeError(f"{len(missing)} listed videos have no recorded outcome, e.g. {missing[0]}")
    ok = [e for e in entries if e["status"] == STATUS_OK]
    failed = [e for e in entries if e["status"] != STATUS_OK]
    store.write_failures(failed)
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
    }
    previous = store.read_summary()
    runs = [*(previous or {}).get("runs", [])[-20:], this_run]
    summary = {
        "schema_version": SCHEMA_VERSION,
        "input": config.input,
        "output": config.output,
        "videos_in": len(sources),
        "videos_ok": len(ok),
        "videos_failed": len(failed),
        "videos_crashed": sum(e["reason"] == CRASHED_REASON for e in failed),
        "chunks_written": sum(e["chunks"] for e in ok),
        "chunks_by_split": {s: chunks_by_split.get(s, 0) for s in ("train", "test")},
        "videos_by_split": {s: videos_by_split.get(s, 0) for s in ("train", "test")},
        "audio_hours_written": round(sum(e["info"].get("audio_seconds", 0.0) for e in ok) / 3600, 4),
        "failures_by_stage": dict(Counter(e["stage"] for e in failed)),
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
    return summary
