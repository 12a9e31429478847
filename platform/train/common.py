"""Pieces both training loops share, inside a Ray Train worker: checkpoints reported from every rank,
metric averaging across ranks, progress lines, parameter digests, resuming from Ray Train's checkpoint, the
run's MLflow tracker, and the fault drill."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from clipsynth_core import state_digest
from clipsynth_platform.runtime.logs import configure_logging, get_logger
from clipsynth_platform.runtime.uri import fsspec_filesystem, join, strip_scheme
from clipsynth_platform.tracking.outbox import PENDING_DIR

from .config import C, TrainConfig, config_from_dict
from .whole_checkpoints import restore_whole, write_manifest

if TYPE_CHECKING:
    from .state import TrainingState
    from .tracking import RunTracker

RANK_FILE = "rank_{rank}.json"


def restore(path: str, directory: Path, load: Callable[[Path], dict]) -> dict:
    """Run `load(directory)` on the checkpoint at `path`, with a clear error when its weights do not fit."""
    try:
        return load(directory)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise RuntimeError(
            f"cannot resume from the checkpoint at {path}: {exc}\n"
            "It was probably written with another model configuration under the same run name and storage "
            "path: choose a new --run-name (or --storage-path) to start a new run."
        ) from exc


@dataclass
class Resumption:
    """Where a worker's loop starts: step 0, or the state of the checkpoint Ray Train gave it."""

    step: int = 0
    train_seconds: float = 0.0  # of the time budget, spent before
    rank_info: dict[str, Any] = field(default_factory=dict)  # into every checkpoint report: the resumed digest
    state: dict[str, Any] = field(default_factory=dict)  # the checkpoint's saved state (the loops' own extras)
    tracking_pending: Path | None = None  # what the attempt that wrote the checkpoint had not yet sent to MLflow


def resume(state: TrainingState, device: torch.device, rank: int, log: logging.Logger) -> Resumption:
    """Fill the loop's training state from Ray Train's checkpoint, when it gives one."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return Resumption()
    # The newest checkpoint whose files match its manifest (whole_checkpoints.py), older ones when it does not.
    restored = restore_whole(
        checkpoint,
        lambda directory, path: restore(path, directory, lambda d: state.load(d, device)),
        log,
        (PENDING_DIR,),
    )
    if restored is None:
        return Resumption()
    saved = restored.saved
    step = int(saved["step"])
    log.info(f"rank {rank} resumed from the checkpoint at step {step}")
    info = {"resumed_from_step": step, "resumed_digest": state_digest(state.model)}
    return Resumption(step, float(saved.get("train_seconds", 0.0)), info, saved, restored.carried.get(PENDING_DIR))


def start_tracking(cfg: TrainConfig, job: dict, start: Resumption, world: int, log: logging.Logger) -> RunTracker:
    """Rank 0's MLflow run (created, or continued after a restart) with the job's parameters, and the start line."""
    from .tracking import RunTracker

    tracker = RunTracker(
        job["tracking_uri"],
        cfg.experiment,
        job["run_name"],
        job["record_uri"],
        job["tags"],
        previous=start.tracking_pending,
        wait_seconds=cfg.tracking_wait_seconds,
    )
    tracker.log_params(job["params"])
    if start.step < cfg.max_steps:
        log.info(
            f"{'resuming' if start.rank_info else 'starting'} at step {start.step} of {cfg.max_steps}; "
            f"{world} worker(s) x batch {cfg.batch_size}; MLflow run {tracker.run_id}"
        )
    return tracker


def mean_across_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalars over all workers (a no-op with one worker)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def configure_worker_logging() -> None:
    """The platform's `[component] message` lines in a Train worker, each printed once.

    Ray Train replaces `print` and wraps sys.stdout in its workers: text written there goes to Train's logger and
    to the stream as well, so every line reached the driver twice. The handler writes to the process's own
    stdout instead, which Ray still forwards to the driver with the worker's prefix.
    """
    configure_logging(stream=sys.__stdout__ or sys.stdout)


def fault_drill(fail_at_step: int, step: int, rank: int, world_size: int, storage_path: str, run_name: str) -> None:
    """Test hook: rank 1 (rank 0 when alone) exits hard when it reaches `fail_at_step`, once per run.

    A marker file in the run's storage makes the drill fire only the first time, so the restarted workers
    go past that step.
    """
    if not fail_at_step or step != fail_at_step or rank != min(1, world_size - 1):
        return
    marker = join(storage_path, run_name, f"fault_drill_step_{fail_at_step}.done")
    fs = fsspec_filesystem(marker)
    if fs.exists(strip_scheme(marker)):
        return
    if not marker.startswith("s3://"):
        os.makedirs(os.path.dirname(strip_scheme(marker)), exist_ok=True)
    with fs.open(strip_scheme(marker), "w") as f:
        f.write(json.dumps({"step": step, "rank": rank, "time": time.time()}))
    _wait_for_committed_checkpoints()
    get_logger("fault drill").info(f"rank {rank} exits at step {step}")
    os._exit(17)


def _wait_for_committed_checkpoints(timeout_s: float = 120.0) -> None:
    """Block until Ray Train has committed this worker's reported checkpoints.

    The controller collects reports when it polls the workers (every 2 s by default): a worker that dies
    right after ray.train.report can take its newest checkpoint with it. The drill crashes after the commit,
    so that where the run resumes from does not depend on the machine's speed.
    """
    import ray.train

    ray.train.get_all_reported_checkpoints(
        consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED, timeout_s=timeout_s
    )


def report_checkpoint(
    step: int,
    metrics: dict,
    rank: int,
    write_state: Callable[[Path], None] | None,
    rank_info: dict,
) -> None:
    """ray.train.report from every rank: rank 0 writes the training state (`write_state`), every rank adds
    rank_<r>.json (its parameter digests), and Ray merges them into one checkpoint directory in storage."""
    import ray.train

    with tempfile.TemporaryDirectory(prefix="clipsynth-ckpt-") as tmp:
        d = Path(tmp)
        if rank == 0 and write_state is not None:
            write_state(d)
        (d / RANK_FILE.format(rank=rank)).write_text(json.dumps({"rank": rank, "step": step, **rank_info}, indent=2))
        if rank == 0 and write_state is not None:
            write_manifest(d)  # last: the sizes and checksums a resume checks (whole_checkpoints.py)
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=f"checkpoint_{step:09d}",
        )


class Progress:
    """Throughput and ETA over the steps of this attempt (restarts begin a new measurement)."""

    def __init__(self, start_step: int, max_steps: int, global_batch: int) -> None:
        self.start_step = start_step
        self.max_steps = max_steps
        self.global_batch = global_batch
        self.t0 = time.perf_counter()
        self.last_t = self.t0
        self.last_step = start_step

    def interval(self, step: int) -> dict[str, float]:
        """samples/s over the last interval and the ETA from the average pace of this attempt."""
        now = time.perf_counter()
        dt = max(now - self.last_t, 1e-9)
        rate = (step - self.last_step) * self.global_batch / dt
        pace = (now - self.t0) / max(step - self.start_step, 1)
        self.last_t, self.last_step = now, step
        return {"samples_per_s": rate, "eta_s": pace * (self.max_steps - step)}

    @staticmethod
    def format_eta(seconds: float) -> str:
        seconds = int(max(seconds, 0))
        h, rem = divmod(seconds, 3600)
        m, s = divmod(rem, 60)
        return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def stream_seed(seed: int, rank: int, start_step: int) -> int:
    """A random stream's seed per rank and per attempt (a resumed run starts a new one), from the run's seed."""
    return seed * 1_000_003 + 7919 * rank + start_step


class TimeBudget:
    """A budget of training seconds (0: none), summed over attempts, that all ranks leave at the same step.

    Each rank measures its own loop time; every `check_every` steps the ranks agree (all-reduce of the
    largest time spent) whether the budget is used up, so DDP never sees one rank stop alone.
    """

    def __init__(self, seconds: float, spent_before: float = 0.0, check_every: int = 10) -> None:
        self.seconds = float(seconds)
        self.spent_before = float(spent_before)
        self.check_every = max(1, int(check_every))
        self.t0 = time.perf_counter()
        self.agreed = self.spent_before  # the time spent as all ranks last agreed on it (see exhausted)

    def spent(self) -> float:
        return self.spent_before + time.perf_counter() - self.t0

    def exhausted(self, step: int, device: torch.device, force: bool = False) -> bool:
        """Whether to stop after `step` (every rank must call it at every step, or with force=True)."""
        if not self.seconds:
            return False
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if distributed and step % self.check_every and not force:
            return False
        spent = torch.tensor([self.spent()], dtype=torch.float64, device=device)
        if distributed:
            dist.all_reduce(spent, op=dist.ReduceOp.MAX)
        self.agreed = float(spent)
        return self.agreed >= self.seconds

    def fraction(self, step: int, max_steps: int) -> float:
        """The share of the run's budget used after `step`: of max_steps, or of the seconds when that is more.

        Built from the agreed time only, so every rank computes the same value at the same step (a learning
        rate schedule on it keeps the DDP replicas identical)."""
        by_time = self.agreed / self.seconds if self.seconds else 0.0
        return min(1.0, max(step / max(1, max_steps), by_time))


class cpu_threads:
    """Use as many intra-op threads as the worker reserved CPUs (and restore the previous count on exit).

    Ray gives its workers OMP_NUM_THREADS from their CPU reservation; in local mode (0 workers) the loop runs
    in the caller's process, whose default of one thread per core oversubscribes a shared machine (on a
    loaded 2-core box, 2 threads made a HiFi-GAN step 10x slower than 1).
    """

    def __init__(self, cpus: float, device: torch.device) -> None:
        self.threads = max(1, int(cpus)) if device.type == "cpu" else None
        self.previous = torch.get_num_threads()

    def __enter__(self) -> cpu_threads:
        if self.threads:
            torch.set_num_threads(self.threads)
        return self

    def __exit__(self, *exc) -> None:
        if self.threads:
            torch.set_num_threads(self.previous)


@dataclass(frozen=True)
class WorkerPlace:
    """Where a Train worker runs: its rank, the number of workers and its device."""

    rank: int
    world: int
    device: torch.device


def run_worker(config_cls: type[C], loop_config: dict, loop: Callable[[C, dict, WorkerPlace], None]) -> None:
    """The train_loop_per_worker of every loop: `loop_config` (from the runner) holds the config as a dict and
    the resolved job; `loop(config, job, place)` runs with torch's threads bounded to the worker's CPUs."""
    import ray.train
    import ray.train.torch

    cfg = config_from_dict(config_cls, loop_config["config"])
    ctx = ray.train.get_context()
    place = WorkerPlace(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())
    configure_worker_logging()
    with cpu_threads(cfg.cpus_per_worker, place.device):
        loop(cfg, loop_config["job"], place)


def interval_metrics(
    means: dict[str, float], lr: float, budget: TimeBudget, pace: dict[str, float], world: int, device: torch.device
) -> dict[str, float]:
    """What both loops log at a log interval: the losses averaged over ranks, the learning rate, the time spent
    and the pace (in all and per worker), and the GPU's peak memory."""
    return {
        **means,
        "lr": lr,
        "train_seconds": budget.spent(),
        "samples_per_s": pace["samples_per_s"],
        "samples_per_s_per_worker": pace["samples_per_s"] / world,
        **gpu_memory_metrics(device),
    }


def gpu_memory_metrics(device: torch.device) -> dict[str, float]:
    if device.type != "cuda":
        return {}
    return {
        "gpu_mem_allocated_gb": torch.cuda.max_memory_allocated(device) / 2**30,
        "gpu_mem_reserved_gb": torch.cuda.max_memory_reserved(device) / 2**30,
    }
