"""The parts of a training loop that both loops (diffusion_loop.py, hifigan_loop.py) share, each a small object
the loop calls by name; the loop itself, one step top to bottom, is written out in each of those files:

    loop = StepLoop(cfg, job, place, start)
    for step in loop:                               # start.step + 1 .. max_steps; the fault drill at each
        batch = loop.next_batch(batches)            # timed: the wait for data
        ... the loop's own update, its losses into IntervalSums (device tensors, no host sync) ...
        last = loop.finish(step)                    # the time budget, agreed over the ranks
        if loop.due(cfg.log_every, step):           # metrics to MLflow and a progress line (rank 0)
        if loop.due(cfg.checkpoint_every, step):    # checkpoints.save_checkpoint on every rank
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from clipsynth_platform.runtime.logs import get_logger
from clipsynth_platform.runtime.s3_requests import s3_request_counts
from clipsynth_platform.runtime.uri import fsspec_filesystem, join, strip_scheme

from .checkpoints import Resumption, wait_for_committed_checkpoints
from .config import TrainConfig
from .worker import WorkerPlace

if TYPE_CHECKING:
    from .tracking import RunTracker


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class IntervalSums:
    """Running sums of a step's scalar losses, kept on the device (adding them is a device op: no host sync per
    step) and read, averaged over the interval's steps and the ranks, at a log interval."""

    def __init__(self, keys: Sequence[str], device: torch.device) -> None:
        self.keys = tuple(keys)
        self.sums = torch.zeros(len(self.keys), dtype=torch.float64, device=device)
        self.count = 0

    def add(self, values: Mapping[str, torch.Tensor | float]) -> None:
        # a no-op move for values already on the device (the diffusion step's); host floats cross once a step
        self.sums.add_(torch.stack([torch.as_tensor(values[k]).detach() for k in self.keys]).to(self.sums))
        self.count += 1

    def read(self, host_values: dict[str, float] | None = None) -> dict[str, float]:
        """The interval's means (with `host_values`, per-rank numbers measured on the host), averaged over the
        ranks in one all-reduce, then restart; the one host sync of an interval."""
        host_values = host_values or {}
        local = torch.cat(
            [
                self.sums / max(self.count, 1),
                torch.tensor([host_values[k] for k in host_values], dtype=torch.float64).to(self.sums.device),
            ]
        )
        if distributed():
            dist.all_reduce(local)
            local /= dist.get_world_size()
        self.sums.zero_()
        self.count = 0
        return dict(zip((*self.keys, *host_values), local.tolist()))


class TimeBudget:
    """A budget of training seconds (0: none), summed over attempts, that all ranks leave at the same step.

    Each rank measures its own loop time; every `check_every` steps the ranks agree (all-reduce of the
    largest time spent) whether the budget is used up, so DDP never sees one rank stop alone. A lone worker
    decides on its host clock alone, every step, with nothing sent to its device.
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
        if not distributed():
            self.agreed = self.spent()
            return self.agreed >= self.seconds
        if step % self.check_every and not force:
            return False
        spent = torch.tensor([self.spent()], dtype=torch.float64, device=device)
        dist.all_reduce(spent, op=dist.ReduceOp.MAX)
        self.agreed = float(spent)
        return self.agreed >= self.seconds

    def fraction(self, step: int, max_steps: int) -> float:
        """The share of the run's budget used after `step`: of max_steps, or of the seconds when that is more.

        Built from the agreed time only, so every rank computes the same value at the same step (a learning
        rate schedule on it keeps the DDP replicas identical)."""
        by_time = self.agreed / self.seconds if self.seconds else 0.0
        return min(1.0, max(step / max(1, max_steps), by_time))


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


class StepLoop:
    """The steps of one attempt of a worker, and the decisions around each: the fault drill before a step, the
    wait for its batch, whether the time budget ends the run after it, and which intervals fall on it."""

    def __init__(self, cfg: TrainConfig, job: dict, place: WorkerPlace, start: Resumption) -> None:
        self.cfg, self.job, self.place, self.start = cfg, job, place, start
        self.budget = TimeBudget(cfg.train_seconds, start.train_seconds)
        self.progress = Progress(start.step, cfg.max_steps, job["global_batch_size"])
        self.last_step = start.step  # the last step done (start.step when there was none to do)
        self.last = False
        self.data_wait = 0.0
        self.waits = 0
        # a finished run, resumed: nothing to do
        self.out_of_time = self.budget.exhausted(start.step, place.device, force=True)

    def __iter__(self) -> Iterator[int]:
        for step in range(self.start.step + 1, self.cfg.max_steps + 1):
            if self.out_of_time:
                return
            fault_drill(self.cfg.fail_at_step, step, self.place, self.job["storage_path"], self.job["run_name"])
            yield step

    def next_batch(self, batches: Iterator[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        t0 = time.perf_counter()
        batch = next(batches)
        self.data_wait += time.perf_counter() - t0
        self.waits += 1
        return batch

    def finish(self, step: int) -> bool:
        """After a step's update: whether it is the run's last (max_steps, or the time budget spent)."""
        self.last_step = step
        self.out_of_time = self.budget.exhausted(step, self.place.device)
        self.last = step == self.cfg.max_steps or self.out_of_time
        return self.last

    def due(self, every: int, step: int) -> bool:
        """Whether an interval of `every` steps (0: never) falls on `step`; the last step always has one."""
        return bool(every) and (step % every == 0 or self.last)

    def log(
        self,
        step: int,
        sums: IntervalSums,
        tracker: RunTracker | None,
        lr: float,
        describe: str,
        log: logging.Logger,
    ) -> dict[str, float]:
        """The interval's metrics averaged over the ranks (every rank takes part), to MLflow with a progress line
        on rank 0: the losses, the learning rate, the time spent, the pace, the GPU's peak memory and the worker's
        S3 requests (retries included)."""
        means = sums.read({"data_wait_s_per_step": self.data_wait / max(self.waits, 1)})
        self.data_wait, self.waits = 0.0, 0
        pace = self.progress.interval(step)
        if tracker is not None:
            world = self.place.world
            metrics = {
                **means,
                "lr": lr,
                "train_seconds": self.budget.spent(),
                "samples_per_s": pace["samples_per_s"],
                "samples_per_s_per_worker": pace["samples_per_s"] / world,
                **gpu_memory_metrics(self.place.device),
                **s3_request_metrics(),
            }
            tracker.log_metrics(metrics, step)
            line = describe.format(**means)
            log.info(
                f"step {step}/{self.cfg.max_steps} {line} | {pace['samples_per_s']:.1f} samples/s | "
                f"ETA {Progress.format_eta(pace['eta_s'])}"
            )
        return means

    def checkpoint_fields(self, tracker: RunTracker | None, kind: str) -> dict[str, Any]:
        """What every loop's state.json holds besides the step: the MLflow run, the loop's kind, the config and
        the training time spent (the loop adds its own fields)."""
        return {
            "mlflow_run_id": tracker.run_id if tracker else None,
            "kind": kind,
            "config": self.cfg.to_dict(),
            "train_seconds": self.budget.spent(),
        }


def gpu_memory_metrics(device: torch.device) -> dict[str, float]:
    if device.type != "cuda":
        return {}
    return {
        "gpu_mem_allocated_gb": torch.cuda.max_memory_allocated(device) / 2**30,
        "gpu_mem_reserved_gb": torch.cuda.max_memory_reserved(device) / 2**30,
    }


def s3_request_metrics() -> dict[str, float]:
    """This worker's S3 requests so far, as botocore counted them (run records, checkpoint uploads through Ray
    Train's storage filesystem): attempts, retried attempts, failed attempts and calls given up. None when it
    made no S3 request (local storage)."""
    counts = s3_request_counts()
    return {f"s3_{key}": float(value) for key, value in counts.to_dict().items()} if counts.attempts else {}


def fault_drill(fail_at_step: int, step: int, place: WorkerPlace, storage_path: str, run_name: str) -> None:
    """Test hook: rank 1 (rank 0 when alone) exits hard when it reaches `fail_at_step`, once per run.

    A marker file in the run's storage makes the drill fire only the first time, so the restarted workers
    go past that step. The drill crashes after Ray Train has committed the worker's checkpoints, so that where
    the run resumes from does not depend on the machine's speed.
    """
    if not fail_at_step or step != fail_at_step or place.rank != min(1, place.world - 1):
        return
    marker = join(storage_path, run_name, f"fault_drill_step_{fail_at_step}.done")
    fs = fsspec_filesystem(marker)
    if fs.exists(strip_scheme(marker)):
        return
    if not marker.startswith("s3://"):
        os.makedirs(os.path.dirname(strip_scheme(marker)), exist_ok=True)
    with fs.open(strip_scheme(marker), "w") as f:
        f.write(json.dumps({"step": step, "rank": place.rank, "time": time.time()}))
    wait_for_committed_checkpoints()
    get_logger("fault drill").info(f"rank {place.rank} exits at step {step}")
    os._exit(17)


def start_tracking(cfg: TrainConfig, job: dict, start: Resumption, world: int, log: logging.Logger) -> RunTracker:
    """Rank 0's MLflow run (created, or continued after a restart) with the job's parameters, and the start line."""
    from .tracking import RunTracker

    tracker = RunTracker(
        job["tracking_uri"],
        cfg.experiment,
        job["run_name"],
        job["record_uri"],
        job["tags"],
        previous=start.tracking_pending,  # what the attempt that wrote the checkpoint had not sent
        wait_seconds=cfg.tracking_wait_seconds,
    )
    if start.tracking_pending is not None:  # queued by the tracker (artifacts copied to its spool): the copy goes
        shutil.rmtree(start.tracking_pending, ignore_errors=True)
    tracker.log_params(job["params"])
    if start.step < cfg.max_steps:
        batch = job["batch"]
        log.info(
            f"{'resuming' if start.resumed else 'starting'} at step {start.step} of {cfg.max_steps}; "
            f"{world} worker(s) x batch {batch['per_worker']} (global {batch['global']}"
            f"{', micro-batches of ' + str(batch['microbatch']) if batch['microbatch'] < batch['per_worker'] else ''}"
            f"); MLflow run {tracker.run_id}"
        )
    return tracker
