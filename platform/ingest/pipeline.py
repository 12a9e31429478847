"""The ingestion job on Ray Data: list -> decode (CPU tasks) -> CLIP (actor pool) -> write (tasks) -> commit.

Streaming with bounded memory: one video (or `videos_per_task`) per input block; Ray Data's backpressure
bounds what is in flight. The workers write the Parquet shards (write.py, staged under the output); the driver
receives only bookkeeping rows and commits staged files by manifest (commit.py), so no chunk's bytes pass
through it, whatever the corpus size.

Retries: Ray Data retries a task lost with its node (its default); a decoder that crashes natively does so in
its child process (isolated.py) and that video is recorded as failed at stage "decode" with reason
"worker crashed (native)". A block that errors anyway is a bug: the job stops, or within --max-errored-blocks
its videos are recorded as lost. Every listed video ends up committed as ok or failed.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from clipsynth_platform.datasets.schema import SCHEMA_VERSION
from clipsynth_platform.runtime.logs import LogFn, get_logger, progress
from clipsynth_platform.runtime.options import fields_from
from clipsynth_platform.runtime.preflight import ClusterView, require_shared_locations
from clipsynth_platform.runtime.ray_cluster import LocalRay, connect_ray

from .commit import LOST_REASON, Committer, RunStats
from .config import IngestConfig
from .decode import decode_videos
from .embed import ClipEmbedder
from .labels import LabelIndex, load_label_index
from .records import CRASHED_REASON, STATUS_OK
from .settings import DecodeSettings
from .sources import VideoSource, plan_sources
from .store import OutputStore
from .write import rewrite_without, write_staged

# Without --num-gpus, CLIP actors on an autoscaling cluster with unlimited GPU nodes stop at this many.
MAX_AUTO_GPU_ACTORS = 64
# CPUs of a write task: it encodes Parquet and uploads it.
WRITE_CPUS = 0.5
DECODE_TIMING_KEYS = ("read", "probe", "audio", "video", "mel", "jpeg")


def ensure_ray(config: IngestConfig) -> str:
    """Connect to the cluster at --address / RAY_ADDRESS, or start a local one with explicit resources."""
    local = LocalRay(
        num_cpus=config.num_cpus or 0,
        num_gpus=config.num_gpus,  # None: Ray detects the machine's GPUs
        object_store_bytes=int((config.object_store_gb or 0) * 1e9),
        dashboard=False,
    )
    return connect_ray(config.address, local)


@dataclass(frozen=True)
class ClipPlan:
    """How the CLIP stage runs: GPU or CPU actors, and the actor pool's bounds (Ray Data scales within them)."""

    gpu: bool
    min_actors: int
    max_actors: int
    note: str


def plan_clip_stage(config: IngestConfig, view: ClusterView) -> ClipPlan:
    """--num-gpus N: N GPU actors; 0: CPU actors; unset: one actor per GPU the cluster has or its node types can
    add (an autoscaling cluster from zero starts a GPU node for the first one), else CPU actors, said aloud."""
    if config.num_gpus:
        return ClipPlan(True, config.num_gpus, config.num_gpus, f"{config.num_gpus} GPU actor(s) (--num-gpus)")
    if config.num_gpus == 0:
        return ClipPlan(False, 1, config.clip_actors, f"up to {config.clip_actors} CPU actor(s) (--num-gpus 0)")
    now, most = int(view.total_now("GPU")), view.total_at_most("GPU")
    if most == 0:
        return ClipPlan(
            False,
            1,
            config.clip_actors,
            f"no GPU on the cluster nor on its node types: up to {config.clip_actors} CPU actor(s) "
            "(--clip-actors; --num-gpus 0 says this on purpose)",
        )
    most = int(min(most, MAX_AUTO_GPU_ACTORS))
    if now:
        return ClipPlan(True, min(now, most), most, f"{now} GPU actor(s), up to {most} as GPU nodes join")
    return ClipPlan(True, 1, most, f"no GPU yet: the autoscaler starts GPU nodes for up to {most} actor(s)")


def _text_embeddings(config: IngestConfig, labels: list[str]) -> tuple[dict[str, list[float]], int, str]:
    """Build CLIP once on the driver: missing weights fail here (ClipWeightsError), before any work."""
    from clipsynth_core import ClipQueryEncoder

    encoder = ClipQueryEncoder(config.clip_config)
    table = {}
    if labels:
        emb = encoder.encode_text(labels).numpy()
        table = {label: emb[i].tolist() for i, label in enumerate(labels)}
    return table, encoder.embed_dim, encoder.config.identity


def _build_dataset(
    config: IngestConfig, pending: list[VideoSource], text: dict, worker_env: dict | None, plan: ClipPlan
):
    import ray.data

    blocks = math.ceil(len(pending) / config.videos_per_task)
    ds: ray.data.Dataset = ray.data.from_items([s.to_dict() for s in pending], override_num_blocks=blocks)
    settings = fields_from(DecodeSettings, config, threads=max(1, int(config.decode_cpus)))
    runtime_env = {"env_vars": dict(worker_env)} if worker_env else None
    # Ray Data's own retries stay on (a task lost with its node runs again elsewhere); a decoder that crashes
    # natively does so in its child process (isolated.py), which fails that video, not the task.
    ds = ds.map_batches(
        decode_videos,  # type: ignore[arg-type]  # its settings come in fn_kwargs, which Ray's stub ignores
        batch_size=None,  # the whole block: `videos_per_task` videos
        batch_format="pyarrow",
        fn_kwargs={"settings": settings.to_dict()},
        num_cpus=config.decode_cpus,
        compute=ray.data.TaskPoolStrategy(size=config.decode_concurrency) if config.decode_concurrency else None,
        runtime_env=runtime_env,
    )

    use_gpu = plan.gpu
    pool = ray.data.ActorPoolStrategy(min_size=plan.min_actors, max_size=plan.max_actors)
    clip = config.clip_config.to_dict()
    ds = ds.map_batches(
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
    # The workers write the shards; the driver gets bookkeeping rows only (write.py) and commits.
    return ds.map_batches(
        write_staged,  # type: ignore[arg-type]  # its arguments come in fn_kwargs, which Ray's stub ignores
        batch_size=config.shard_rows,
        batch_format="pyarrow",
        fn_kwargs={"output": config.output},
        num_cpus=WRITE_CPUS,
        runtime_env=runtime_env,
    )


def _rewriter(config: IngestConfig, worker_env: dict | None) -> Callable[[str, list[str]], dict]:
    """Staged files that hold rows of failed videos are rewritten by a Ray task, not on the driver."""
    import ray

    task = ray.remote(rewrite_without).options(
        num_cpus=WRITE_CPUS, runtime_env={"env_vars": dict(worker_env)} if worker_env else None
    )
    return lambda relative, drop: ray.get(task.remote(config.output, relative, drop))


def run_ingest(config: IngestConfig, worker_env: dict[str, str] | None = None, log: LogFn | None = None) -> dict:
    """Run (or resume) ingestion as `config` says; returns the summary written to _summary.json.

    `worker_env`: environment variables for the decode workers, for clusters whose workers lack the driver's
    environment (e.g. S3 endpoint settings in tests). Values are passed to Ray, never printed.
    """
    from clipsynth_platform.runtime.origin import require_consistent_origin

    log = log or progress("ingest")
    t_start = time.perf_counter()
    config.validate()
    if config.address or os.environ.get("RAY_ADDRESS"):  # on a cluster: refuse driver-only paths before any write
        ensure_ray(config)
        require_shared_locations(ClusterView.from_ray(), input=config.input, output=config.output)
    log(f"code from {require_consistent_origin().platform_root}")
    get_logger("ingest").debug(f"config:\n{config.describe()}")
    labels: LabelIndex | None = None
    if config.labels:
        labels = load_label_index(config.labels, config.labels_format, config.input)
        log(f"label index {config.labels}: {labels.format}, {len(labels.entries)} entries, {len(labels.labels)} labels")
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
        f"{len(sources)} videos listed under {config.input}; {len(sources) - len(pending)} already done, "
        f"{len(pending)} to process; CLIP {identity} (dim {embed_dim}); {recovery}"
    )

    stats = RunStats()
    ray_where = None
    if pending:
        import ray.data

        ray_where = ensure_ray(config)
        view = ClusterView.from_ray()
        # The label index is read here, on the driver; videos are read and shards written on the workers.
        require_shared_locations(view, input=config.input, output=config.output)
        plan = plan_clip_stage(config, view)
        log(f"Ray: {ray_where}; CLIP stage: {plan.note}")
        context = ray.data.DataContext.get_current()
        saved = context.max_errored_blocks
        # A finite budget: a block that errors is a bug in this job's code (decoder crashes are isolated), so by
        # default the job stops on the first; within --max-errored-blocks its videos are recorded as lost.
        context.max_errored_blocks = config.max_errored_blocks
        committer = Committer(store, config, stats, len(pending), log, _rewriter(config, worker_env))
        batches = None
        try:
            ds = _build_dataset(config, pending, text, worker_env, plan)
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
        f"done in {summary['seconds']:.1f} s: {summary['videos_in']} videos in, {summary['videos_ok']} ok, "
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
    stats: RunStats,
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
        "videos_lost": sum(e["reason"] == LOST_REASON for e in failed),
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
