"""The driver side of a training job: connect to Ray, inspect the data, resolve every location, and run a
Ray Train TorchTrainer (Train V2 API) that survives worker failures and resumes across re-runs.

Fault tolerance: FailureConfig(max_failures) restarts the worker group after a crash, and every worker
reloads the newest checkpoint reported to RunConfig(storage_path, name) through ray.train.get_checkpoint();
running the same command again (same run name and storage path) finds the same checkpoints and resumes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clipsynth_core import ClipConfig, DiffusionConfig, MelConfig, UNetConfig, hifigan_config, unet_config
from clipsynth_core.synthesizer import read_bundle_config
from clipsynth_platform.runtime.logs import get_logger
from clipsynth_platform.runtime.preflight import ClusterView, Preflight, check_request, require_shared_locations
from clipsynth_platform.runtime.ray_cluster import LocalRay, connect_ray
from clipsynth_platform.runtime.uri import fsspec_filesystem, is_s3, join, pyarrow_filesystem, strip_scheme
from clipsynth_platform.tracking.registry import resolve_bundle

from .config import DiffusionTrainConfig, HiFiGANTrainConfig, TrainConfig
from .data import (
    VOCODER_COLUMNS,
    DatasetError,
    DatasetInfo,
    cache_budget_mb,
    column_bytes,
    diffusion_columns,
    diffusion_dataset,
    first_rows,
    inspect_dataset,
    label_text_embeddings,
    map_batch_rows,
    read_train_dataset,
    repeat_factor,
    should_cache,
    vocoder_dataset,
)
from .tracking import flatten_params, git_commit, read_run_record, resolve_tracking_uri, run_record_uri

if TYPE_CHECKING:
    import ray.data

log = get_logger("train")


@dataclass
class TrainingSummary:
    run_name: str
    storage_path: str
    final_step: int | None
    checkpoint_path: str | None
    mlflow_run_id: str | None
    record: dict
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------------- Ray
def connect_training_ray(cfg: TrainConfig) -> str:
    """Join the cluster named by --ray-address or $RAY_ADDRESS (set by `ray job submit`); otherwise start a
    local Ray with more logical CPUs than Train workers need, so that the data stages get CPUs too."""
    need = int(max(cfg.num_workers, 1) * cfg.cpus_per_worker) + 2
    return connect_ray(cfg.ray_address, LocalRay(num_cpus=cfg.local_num_cpus or max(os.cpu_count() or 1, need)))


def check_cluster_resources(cfg: TrainConfig, view: ClusterView | None = None) -> Preflight:
    """Refuse a layout that no node the cluster has or can start would hold, or that leaves the data pipeline
    no CPU (the known TorchTrainer + Ray Data hang); warn when it fits only once the autoscaler adds nodes."""
    view = view or ClusterView.from_ray()
    result = check_request(view, worker_bundle(cfg), cfg.num_workers, spare_cpus=1.0, what="training")
    if result.refused:
        raise RuntimeError(
            f"{result.messages[0]}. Each Train worker reserves its CPUs, so Ray Data would get none and the run "
            "would hang, or the workers would never be placed. Lower --cpus-per-worker (e.g. 0.5), use fewer "
            "workers, or give Ray more logical CPUs (--local-num-cpus, `ray start --num-cpus`) or GPUs."
        )
    for message in result.messages:
        get_logger("preflight").info(message)
    return result


def _vocoder(cfg: TrainConfig) -> str:
    """The diffusion job's --vocoder (read by rank 0 on whichever node it lands): a path must be shared too."""
    value = getattr(cfg, "vocoder", "")
    return "" if value.startswith(("runs:", "models:")) else value


def configure_data_context() -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    # Progress bars flood job logs; the training loop prints its own progress lines.
    ctx.enable_progress_bars = sys.stderr.isatty()
    ctx.execution_options.preserve_order = False


def resolve_storage(storage_path: str) -> str:
    """Absolute local path or s3:// URI (relative paths would land in a job's temporary working dir)."""
    if is_s3(storage_path):
        return storage_path.rstrip("/")
    return str(Path(strip_scheme(os.path.expanduser(storage_path))))


PrepareJob = Callable[[ClusterView], tuple[dict, DatasetInfo]]


def launch(
    cfg: TrainConfig,
    prepare: PrepareJob,
    make_dataset: Callable[[dict, DatasetInfo], ray.data.Dataset],
    worker: Callable[[dict], None],
) -> TrainingSummary:
    """What every training job does: Ray, the cluster checks, the job prepared for this cluster (the data's
    description, the row cache sized from the workers' memory), the dataset, the plan, the trainer."""
    connect_training_ray(cfg)
    view = ClusterView.from_ray()
    check_cluster_resources(cfg, view)
    job, info = prepare(view)
    require_shared_locations(
        view, data=cfg.data, storage_path=job["storage_path"], tracking_uri=job["tracking_uri"], vocoder=_vocoder(cfg)
    )
    configure_data_context()
    dataset = make_dataset(job, info)  # after connect_training_ray: a Dataset built first would start Ray with defaults
    print_plan(cfg, job)
    return run_trainer(cfg, worker, job, dataset)


def run_trainer(
    cfg: TrainConfig,
    train_fn: Callable[[dict], None],
    job: dict,
    dataset: ray.data.Dataset,
) -> TrainingSummary:
    """TorchTrainer with the Train V2 API; returns what the run produced."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage = job["storage_path"]
    storage_fs, storage_fs_path = pyarrow_filesystem(storage) if is_s3(storage) else (None, storage)
    trainer = TorchTrainer(
        train_fn,
        train_loop_config={"config": cfg.to_dict(), "job": job},
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})},
            placement_strategy=cfg.placement_strategy,
        ),
        run_config=RunConfig(
            name=job["run_name"],
            storage_path=storage_fs_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        ),
        datasets={"train": dataset},
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - t0
    record = read_run_record(job["record_uri"]) or {}
    metrics = result.metrics or {}
    return TrainingSummary(
        run_name=job["run_name"],
        storage_path=storage,
        final_step=metrics.get("step"),
        # Local mode (0 workers) keeps no checkpoints in storage: the reported directory is gone by now.
        checkpoint_path=_checkpoint_uri(storage, result.checkpoint.path)
        if result.checkpoint and cfg.num_workers
        else None,
        mlflow_run_id=record.get("mlflow_run_id"),
        record=record,
        seconds=seconds,
    )


def _checkpoint_uri(storage: str, path: str) -> str:
    return f"s3://{path}" if is_s3(storage) and not path.startswith("s3://") else path


def _warn_about_job_local_tracking(cfg: TrainConfig) -> None:
    """A submitted job runs in a temporary copy of its working dir: a default SQLite store there is lost."""
    submitted = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
    if submitted and not cfg.tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI"):
        log.warning(
            "no MLflow tracking URI: the SQLite store goes into this job's temporary working directory. "
            "Pass --tracking-uri, or MLFLOW_TRACKING_URI in --runtime-env-json, to keep runs and models."
        )


def worker_bundle(cfg: TrainConfig) -> dict[str, float]:
    """The resources each Train worker reserves."""
    return {"CPU": cfg.cpus_per_worker, **({"GPU": 1.0} if cfg.use_gpu else {})}


def _common_job(cfg: TrainConfig, info: DatasetInfo, kind: str, columns: list[str], view: ClusterView | None) -> dict:
    _warn_about_job_local_tracking(cfg)
    storage = resolve_storage(cfg.storage_path)
    run_name = cfg.run_name_or_default()
    plan = cfg.batch_plan()
    share_bytes = column_bytes(info, columns) / plan.workers
    cache_mb = cfg.cache_max_mb or cache_budget_mb(view, worker_bundle(cfg))
    return {
        "cache_in_worker": should_cache(cfg.cache_in_worker, share_bytes, cache_mb),
        "kind": kind,
        "storage_path": storage,
        "run_name": run_name,
        "record_uri": run_record_uri(storage, run_name),
        "tracking_uri": resolve_tracking_uri(cfg.tracking_uri),
        "batch": {"global": plan.global_size, "per_worker": plan.per_worker, "microbatch": plan.microbatch},
        "global_batch_size": plan.global_size,
        "dataset": {
            "uri": info.uri,
            "train_rows": info.num_rows,
            "train_files": len(info.files),
            "embed_dim": info.embed_dim,
            "clip_model": info.clip_model,
            "labels": len(info.labels),
            "share_mb_per_worker": round(share_bytes / 1e6, 1),
            "cache_max_mb": round(cache_mb, 1),
            "map_batch_rows": map_batch_rows(info.num_rows),
        },
    }


def _tags(cfg: TrainConfig, info: DatasetInfo, kind: str, extra: dict[str, str]) -> dict[str, str]:
    return {
        "kind": kind,
        "dataset": cfg.data,
        "git_commit": git_commit(),
        "clip_model": info.clip_model_name,
        "clip_weights": info.clip_pretrained,
        "ray_train_run": cfg.run_name_or_default(),
        **extra,
    }


# ------------------------------------------------------------------------------------------- diffusion
def sample_conditions(cfg: DiffusionTrainConfig, info: DatasetInfo) -> tuple[list[str], list[list[float]], str]:
    """(names, CLIP embeddings, kind) that condition the periodic samples; see --sample-queries."""
    if cfg.sample_queries:
        from clipsynth_core import ClipQueryEncoder

        clip = ClipConfig(model_name=info.clip_model_name, pretrained=info.clip_pretrained, template=cfg.clip_template)
        encoder = ClipQueryEncoder(clip)
        if encoder.embed_dim != info.embed_dim:
            raise DatasetError(
                f"CLIP {clip.identity} embeds to {encoder.embed_dim} dims, the shards hold {info.embed_dim}"
            )
        emb = encoder.encode_text(list(cfg.sample_queries)).numpy()
        return list(cfg.sample_queries), emb.tolist(), "text queries"
    labelled = label_text_embeddings(info)
    if labelled:
        return list(labelled), list(labelled.values()), "dataset labels"
    rows = first_rows(info, ["chunk_id", "image_embeddings", "embed_dim"], 4)
    names = [f"chunk {r['chunk_id']}" for r in rows]
    conds = [list(r["image_embeddings"][: r["embed_dim"]]) for r in rows]
    return names, conds, "frame embeddings of fixed chunks"


def prepare_diffusion(cfg: DiffusionTrainConfig, view: ClusterView | None = None) -> tuple[dict, DatasetInfo]:
    """Everything the workers need, resolved on the driver (raises DatasetError for unusable data)."""
    info = inspect_dataset(cfg.data)
    if info.n_mels != MelConfig().n_mels:
        raise DatasetError(f"the shards hold {info.n_mels}-band mels; the platform's mel has {MelConfig().n_mels}")
    if info.min_mel_frames < cfg.window_frames:
        raise DatasetError(
            f"some chunks have only {info.min_mel_frames} mel frames, fewer than the {cfg.window_frames}-frame window"
        )
    if cfg.variant in ("text", "hybrid") and info.rows_with_text == 0:
        raise DatasetError(
            f"--variant {cfg.variant} needs label text embeddings, but no training row has one (unlabeled data): "
            "use --variant image"
        )
    job = _common_job(cfg, info, "diffusion", diffusion_columns(cfg.variant), view)
    start = starting_weights(cfg, info, job) if cfg.init_from else None
    if start is not None:
        unet, trained = start
        diffusion = DiffusionConfig(**{**trained.to_dict(), "cond_drop_prob": cfg.cond_drop_prob})
    else:
        unet = unet_config(cfg.model_size, cond_dim=info.embed_dim, cond_in_embedding=cfg.cond_in_embedding)
        diffusion = DiffusionConfig(num_steps=cfg.diffusion_steps, cond_drop_prob=cfg.cond_drop_prob)
    if cfg.sample_steps > diffusion.num_steps:
        raise ValueError(f"--sample-steps {cfg.sample_steps} exceeds the model's {diffusion.num_steps} diffusion steps")
    clip = ClipConfig(model_name=info.clip_model_name, pretrained=info.clip_pretrained, template=cfg.clip_template)
    names, conds, sample_kind = sample_conditions(cfg, info)
    repeat = repeat_factor(info.num_rows, cfg.windows_per_chunk, cfg.min_examples_per_pass)
    job.update(
        {
            "unet": unet.to_dict(),
            "diffusion": diffusion.to_dict(),
            "clip": clip.to_dict(),
            "vocoder_config": hifigan_config(cfg.model_size).to_dict(),
            "sample_names": names,
            "sample_conds": conds,
            "repeat": repeat,
        }
    )
    job["params"] = flatten_params(
        {
            **cfg.to_dict(),
            "batch": cfg.batch_plan().to_dict(),
            "unet": unet.to_dict(),
            "diffusion": diffusion.to_dict(),
            "optim": {"betas": [0.9, 0.999]},
            "mel": asdict(MelConfig()),
            "clip": clip.to_dict(),
            "data": {
                **job["dataset"],
                "examples_per_chunk_per_pass": repeat,
                "cache_in_worker": job["cache_in_worker"],
            },
            "samples": {"kind": sample_kind, "names": names},
            **({"init": job["init_from"]} if start is not None else {}),
        }
    )
    lineage = {"init_from": cfg.init_from, "init_from_run": str(job["init_from"]["source_run"])} if start else {}
    job["tags"] = _tags(cfg, info, "diffusion", {"variant": cfg.variant, "model_size": cfg.model_size, **lineage})
    return job, info


INIT_WEIGHTS = "init_from.safetensors"


def starting_weights(cfg: DiffusionTrainConfig, info: DatasetInfo, job: dict) -> tuple[UNetConfig, DiffusionConfig]:
    """--init-from: the trained bundle's U-Net and diffusion process, once its variant and CLIP are checked
    against this run's, and its weights copied into the run's storage (job["init_from"]["weights"]), where every
    worker (on any node, and after a restart) reads the same file."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="clipsynth-init-") as tmp:
        try:
            bundle = resolve_bundle(cfg.init_from, tmp)
        except (FileNotFoundError, OSError, ValueError) as exc:
            raise DatasetError(f"--init-from {cfg.init_from}: {exc}") from exc
        trained = read_bundle_config(bundle)
        variant = trained.metadata.get("variant")
        if variant != cfg.variant:
            raise DatasetError(
                f"--init-from {cfg.init_from} was trained with --variant {variant or '(unrecorded)'}, this run is "
                f"--variant {cfg.variant}: its condition meant another thing; fine-tune with --variant {variant}"
                if variant
                else f"--init-from {cfg.init_from} does not record its variant (metadata.variant): it was not "
                "written by the training job, so whether its conditions mean this run's cannot be checked"
            )
        if trained.clip.identity != info.clip_model:
            raise DatasetError(
                f"--init-from {cfg.init_from} was trained on CLIP {trained.clip.identity} embeddings, the shards at "
                f"{cfg.data} hold {info.clip_model}'s: the conditions would mean nothing to it (re-embed the data "
                "with the model's CLIP, or train from scratch)"
            )
        weights = join(job["storage_path"], job["run_name"], INIT_WEIGHTS)
        fs = fsspec_filesystem(weights)
        if not is_s3(weights):
            os.makedirs(os.path.dirname(strip_scheme(weights)), exist_ok=True)
        with open(bundle / "unet.safetensors", "rb") as src, fs.open(strip_scheme(weights), "wb") as dst:
            shutil.copyfileobj(src, dst)
    job["init_from"] = {
        "uri": cfg.init_from,
        "weights": weights,
        "source_run": trained.metadata.get("mlflow_run_id"),
        "source_step": trained.metadata.get("step"),
    }
    return trained.unet, trained.diffusion


def run_diffusion_training(cfg: DiffusionTrainConfig) -> TrainingSummary:
    from .diffusion_loop import train_diffusion_worker

    cfg.check()

    def make_dataset(job: dict, info: DatasetInfo) -> ray.data.Dataset:
        if job["cache_in_worker"]:  # rows: the workers cut the examples from their cached share
            return read_train_dataset(info, diffusion_columns(cfg.variant))
        return diffusion_dataset(info, variant=cfg.variant, window_frames=cfg.window_frames, repeat=job["repeat"])

    return launch(cfg, lambda view: prepare_diffusion(cfg, view), make_dataset, train_diffusion_worker)


# -------------------------------------------------------------------------------------------- HiFi-GAN
REFERENCE_FRAMES = 64  # reference segments for reconstructions: 4.16 s


def prepare_hifigan(cfg: HiFiGANTrainConfig, view: ClusterView | None = None) -> tuple[dict, DatasetInfo]:
    info = inspect_dataset(cfg.data)
    if info.rows_with_audio == 0:
        raise DatasetError(
            f"the shards at {cfg.data} have no audio (the `audio` column is empty): HiFi-GAN needs waveforms. "
            "Re-run ingestion without --no-audio."
        )
    hifigan = hifigan_config(cfg.model_size)
    if hifigan.hop_length != MelConfig().hop_length:
        raise ValueError(f"HiFi-GAN upsamples by {hifigan.hop_length}, the mel hop is {MelConfig().hop_length}")
    repeat = repeat_factor(info.num_rows, cfg.windows_per_chunk, cfg.min_examples_per_pass)
    rows = [r for r in first_rows(info, ["chunk_id", "audio"], max(cfg.num_samples * 4, 4)) if r["audio"]]
    ref_len = REFERENCE_FRAMES * MelConfig().hop_length
    # float32 arrays travel compactly in the loop config (no JSON: they are not printed or logged)
    reference = np.zeros((min(len(rows), cfg.num_samples), ref_len), np.float32)
    for i, r in enumerate(rows[: len(reference)]):
        pcm = np.asarray(r["audio"][:ref_len], dtype=np.int16)
        reference[i, : len(pcm)] = pcm.astype(np.float32) / 32768.0
    job = _common_job(cfg, info, "hifigan", VOCODER_COLUMNS, view)
    steps_per_epoch = max(1, info.num_rows // job["global_batch_size"])
    job.update(
        {
            "hifigan": hifigan.to_dict(),
            "repeat": repeat,
            "steps_per_epoch": steps_per_epoch,
            "sample_audio": reference,
        }
    )
    job["params"] = flatten_params(
        {
            **cfg.to_dict(),
            "batch": cfg.batch_plan().to_dict(),
            "hifigan": hifigan.to_dict(),
            "mel": asdict(MelConfig()),
            "segment_samples": cfg.segment_frames * hifigan.hop_length,
            "steps_per_epoch": steps_per_epoch,
            "data": {
                **job["dataset"],
                "segments_per_chunk_per_pass": repeat,
                "rows_with_audio": info.rows_with_audio,
                "cache_in_worker": job["cache_in_worker"],
            },
        }
    )
    job["tags"] = _tags(cfg, info, "hifigan", {"model_size": cfg.model_size})
    return job, info


def run_hifigan_training(cfg: HiFiGANTrainConfig) -> TrainingSummary:
    from .hifigan_loop import train_hifigan_worker

    cfg.check()
    segment = cfg.segment_frames * MelConfig().hop_length

    def make_dataset(job: dict, info: DatasetInfo) -> ray.data.Dataset:
        if job["cache_in_worker"]:
            return read_train_dataset(info, VOCODER_COLUMNS)
        return vocoder_dataset(info, segment_samples=segment, repeat=job["repeat"])

    return launch(cfg, lambda view: prepare_hifigan(cfg, view), make_dataset, train_hifigan_worker)


def print_plan(cfg: TrainConfig, job: dict) -> None:
    """The resolved configuration, printed at start (the same values go to MLflow as params)."""
    shown = {k: v for k, v in job.items() if k not in ("params", "sample_conds", "sample_audio", "tags")}
    # the whole config and what it resolved to, in the log file (and the run's MLflow params)
    get_logger(job["kind"]).debug(f"config:\n{cfg.to_json()}")
    get_logger(job["kind"]).debug(f"resolved:\n{json.dumps(shown, indent=2, default=str)}")
