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

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from clipsynth_platform.runtime.logs import LogFn, get_logger, progress
from clipsynth_platform.runtime.options import fields_from
from clipsynth_platform.runtime.preflight import ClusterView, require_shared_locations
from clipsynth_platform.runtime.ray_cluster import LocalRay, connect_ray
from clipsynth_platform.runtime.s3_requests import s3_request_counts

from .commit import Committer, RunStats
from .config import IngestConfig
from .containers import ContainerIndex, ListingSettings, index_container, index_inputs
from .decode import decode_videos
from .embed import ClipEmbedder
from .inputs import CONTAINER_KINDS, KIND_VIDEO, InputFile, list_inputs
from .labels import LabelIndex, load_label_index
from .readers import plan_units
from .records import STATUS_OK
from .settings import DecodeSettings
from .sources import VideoSource, plan_sources
from .store import OutputStore
from .summary import RunInputs, summarize
from .tracking import log_ingest_run
from .write import rewrite_without, write_staged

# Without --num-gpus, CLIP actors on an autoscaling cluster with unlimited GPU nodes stop at this many.
MAX_AUTO_GPU_ACTORS = 64
# CPUs of a write task: it encodes Parquet and uploads it.
WRITE_CPUS = 0.5


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


def _clip_encoder(config: IngestConfig):
    """Build CLIP once on the driver: missing weights fail here (ClipWeightsError), before any work."""
    from clipsynth_core import ClipQueryEncoder

    return ClipQueryEncoder(config.clip_config)


def _text_embeddings(encoder, labels: list[str]) -> dict[str, list[float]]:
    if not labels:
        return {}
    emb = encoder.encode_text(labels).numpy()
    return {label: emb[i].tolist() for i, label in enumerate(labels)}


def _build_dataset(
    config: IngestConfig, pending: list[VideoSource], text: dict, worker_env: dict | None, plan: ClipPlan
):
    import ray.data

    # One read unit (files, shard members, a .tar.gz, a Parquet row group: readers.py) per block and task.
    units = [{"unit": u.to_json()} for u in plan_units(pending, config.videos_per_task)]
    ds: ray.data.Dataset = ray.data.from_items(units, override_num_blocks=len(units))
    settings = fields_from(DecodeSettings, config, threads=max(1, int(config.decode_cpus)))
    runtime_env = {"env_vars": dict(worker_env)} if worker_env else None
    # Ray Data's own retries stay on (a task lost with its node runs again elsewhere); a decoder that crashes
    # natively does so in its child process (isolated.py), which fails that video, not the task.
    ds = ds.map_batches(
        decode_videos,  # type: ignore[arg-type]  # its settings come in fn_kwargs, which Ray's stub ignores
        batch_size=None,  # the whole block: `videos_per_task` videos
        batch_format="pyarrow",
        fn_kwargs={"settings": settings.to_dict(), "parquet_video_column": config.parquet_video_column},
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


def container_lister(
    config: IngestConfig, worker_env: dict | None, use_ray: bool
) -> Callable[[list[InputFile]], list[ContainerIndex]]:
    """Who lists containers: with `use_ray` (a job on a cluster), Ray tasks, one per container, where the data is
    read; else threads in this process, which on a local Ray is the same machine, disks and network, without
    starting Ray workers for it (listing is I/O and zlib, which release the GIL)."""
    settings = ListingSettings(config.extensions, config.parquet_video_column, config.parquet_id_column)

    def list_all(items: list[InputFile]) -> list[ContainerIndex]:
        if not use_ray:
            with ThreadPoolExecutor(max_workers=min(len(items), os.cpu_count() or 1)) as pool:
                return list(pool.map(lambda item: index_container(item.uri, item.kind, settings), items))
        import ray

        ensure_ray(config)
        task = ray.remote(index_container).options(
            num_cpus=1, runtime_env={"env_vars": dict(worker_env)} if worker_env else None
        )
        return ray.get([task.remote(item.uri, item.kind, settings) for item in items])

    return list_all


def _inputs_of_cluster(config: IngestConfig) -> dict[str, str]:
    return {"input" if i == 0 else f"input_{i}": uri for i, uri in enumerate(config.input)}


def plan_inputs(
    config: IngestConfig, store: OutputStore, labels: LabelIndex | None, worker_env: dict | None, log: LogFn
) -> RunInputs:
    """List the inputs, the containers' members (reused from earlier runs when unchanged) and every video."""
    files = list_inputs(config.input, config.extensions, exclude=config.output)
    containers = [f for f in files if f.kind in CONTAINER_KINDS]
    enough = None
    if config.limit is not None:
        n_files = sum(f.kind == KIND_VIDEO for f in files)
        enough = lambda indexes: n_files + sum(len(i.members) for i in indexes.values()) >= config.limit  # noqa: E731
    indexes = index_inputs(
        store,
        containers,
        ListingSettings(config.extensions, config.parquet_video_column, config.parquet_id_column),
        container_lister(config, worker_env, use_ray=bool(config.address or os.environ.get("RAY_ADDRESS"))),
        retry_broken=config.retry_failed,
        enough=enough,
        log=log,
    )
    sources = plan_sources(files, indexes, config.test_fraction, labels, config.limit)
    return RunInputs(files, indexes, sources)


def run_ingest(config: IngestConfig, worker_env: dict[str, str] | None = None, log: LogFn | None = None) -> dict:
    """Run (or resume) ingestion as `config` says; returns the summary written to _summary.json.

    `worker_env`: environment variables for the decode workers, for clusters whose workers lack the driver's
    environment (e.g. S3 endpoint settings in tests). Values are passed to Ray, never printed.
    """
    from clipsynth_platform.runtime.origin import require_consistent_origin

    log = log or progress("ingest")
    t_start, s3_start = time.perf_counter(), s3_request_counts()
    config.validate()
    if config.address or os.environ.get("RAY_ADDRESS"):  # on a cluster: refuse driver-only paths before any write
        ensure_ray(config)
        require_shared_locations(ClusterView.from_ray(), **_inputs_of_cluster(config), output=config.output)
    log(f"code from {require_consistent_origin().platform_root}")
    get_logger("ingest").debug(f"config:\n{config.describe()}")
    labels: LabelIndex | None = None
    if config.labels:
        labels = load_label_index(config.labels, config.labels_format, config.input[0])
        log(f"label index {config.labels}: {labels.format}, {len(labels.entries)} entries, {len(labels.labels)} labels")
    # CLIP first: missing weights stop the job before it writes anything.
    encoder = _clip_encoder(config)
    list_inputs(config.input, config.extensions, exclude=config.output)  # a missing input fails before any write
    store = OutputStore(config.output)
    store.check_settings({**config.row_settings(), "labels_sha1": labels.sha1 if labels else None})
    latest, recovery = store.recover()
    inputs = plan_inputs(config, store, labels, worker_env, log)
    sources = inputs.sources
    text = _text_embeddings(encoder, sorted({s.label for s in sources if s.label}))
    pending = [
        s for s in sources if s.uri not in latest or (config.retry_failed and latest[s.uri]["status"] != STATUS_OK)
    ]
    members = len(sources) - sum(s.kind == KIND_VIDEO for s in sources)
    log(
        f"{len(sources)} videos listed ({members} in {len(inputs.indexes)} shard or Parquet file(s)) under "
        f"{' '.join(config.input)}; {len(sources) - len(pending)} already done, {len(pending)} to process; "
        f"CLIP {encoder.config.identity} (dim {encoder.embed_dim}); {recovery}"
    )

    stats = RunStats()
    ray_where = None
    if pending:
        import ray.data

        ray_where = ensure_ray(config)
        view = ClusterView.from_ray()
        # The label index is read here, on the driver; videos are read and shards written on the workers.
        require_shared_locations(view, **_inputs_of_cluster(config), output=config.output)
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

    summary, failures = summarize(
        config,
        store,
        inputs,
        labels,
        stats,
        len(sources) - len(pending),
        time.perf_counter() - t_start,
        ray_where,
        s3_requests=s3_request_counts().since(s3_start).to_dict(),
    )
    hygiene, coverage = summary["hygiene"]["rejected"], summary["coverage"]
    log(
        f"done in {summary['seconds']:.1f} s: {summary['videos_in']} videos in, {summary['videos_ok']} ok, "
        f"{summary['videos_failed']} failed ({summary['videos_crashed']} crashed; rejected {hygiene['too_short']} "
        f"too short, {hygiene['silent']} silent), {summary['chunks_written']} chunks {summary['chunks_by_split']}, "
        f"{summary['inputs']['containers_unreadable']} unreadable container(s), "
        f"{summary['split_leaks']['videos_in_both_splits']} source video(s) with kept clips in both splits "
        f"-> {config.output}"
        + (
            f"; coverage of {config.labels}: {coverage['ok']} of {coverage['expected']} clips kept "
            f"({coverage['found']} found in the inputs), by split "
            + ", ".join(f"{k} {v['ok']}/{v['expected']}" for k, v in coverage["by_split"].items())
            if coverage
            else ""
        )
    )
    if config.tracking_uri:
        run_id = log_ingest_run(config, summary, failures, log)
        if run_id:
            log(f"logged to MLflow {config.tracking_uri}, experiment {config.experiment}, run {run_id}")
    return summary
