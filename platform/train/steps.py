"""The step loop both training loops run inside a Ray Train worker: the fault drill, the data-wait timing, the
time budget, and the log, sample and checkpoint intervals, with the checkpoints' state.json fields; and the
worker's batches. A loop brings its own part (StepParts): the update on a batch, its running loss sums, its
progress line, its samples, and what its checkpoints hold."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

import torch

from .common import (
    Progress,
    Resumption,
    TimeBudget,
    WorkerPlace,
    fault_drill,
    interval_metrics,
    mean_across_ranks,
    report_checkpoint,
    stream_seed,
)
from .config import TrainConfig
from .data import ExampleMaker, training_batches
from .state import TrainingState

if TYPE_CHECKING:
    from .tracking import RunTracker

L = TypeVar("L")  # what a loop's update returns: the losses of its step


@dataclass(frozen=True)
class StepParts(Generic[L]):
    """One training loop's own part of the step loop, in the order run_steps calls them at a step."""

    # One optimiser step on a batch (the step's number, the batch): adds its losses to the loop's running
    # sums and returns them. Called every step: keep it free of host syncs the step does not need.
    update: Callable[[int, dict[str, torch.Tensor]], L]
    # At a log interval: the running sums over the interval's steps (their count) as means; the sums restart.
    interval_means: Callable[[int], dict[str, float]]
    # The progress line's losses, from the means averaged over the ranks.
    describe: Callable[[dict[str, float]], str]
    # The learning rate logged at a log interval.
    lr: Callable[[], float]
    # At a checkpoint: what the report gives Ray Train besides the step, from the last step's losses.
    checkpoint_metrics: Callable[[L], dict[str, float]]
    # What a checkpoint holds (rank 0 writes it; every rank's rank file has its digests), and its state.json
    # "kind" (the loop's name).
    state: TrainingState
    kind: str
    # At a checkpoint, on rank 0: the loop's own fields of state.json (None: none).
    extra_state: Callable[[], dict] | None = None
    # At a checkpoint, on rank 0: more files into the checkpoint directory (the step, the directory).
    checkpoint_files: Callable[[int, Path], None] | None = None
    # At a sample interval, on rank 0: samples logged to the run's tracker (None: the loop logs none).
    sample: Callable[[RunTracker, int], None] | None = None


def worker_batches(
    cfg: TrainConfig,
    job: dict,
    place: WorkerPlace,
    start_step: int,
    make_examples: ExampleMaker,
) -> Iterator[dict[str, torch.Tensor]]:
    """This worker's endless batches of its shard of the train split (cached in the worker or streamed, as the
    job resolved), `make_examples(rows, seed)` cutting the examples; a random stream per rank and attempt."""
    import ray.train

    return training_batches(
        ray.train.get_dataset_shard("train"),
        cached=job["cache_in_worker"],
        make_examples=make_examples,
        batch_size=cfg.batch_size,
        shuffle_buffer=cfg.shuffle_buffer,
        seed=stream_seed(cfg.seed, place.rank, start_step) + 1,  # the data's stream, beside the diffusion's noise
        device=place.device,
    )


def run_steps(
    cfg: TrainConfig,
    job: dict,
    place: WorkerPlace,
    start: Resumption,
    budget: TimeBudget,
    batches: Iterator[dict[str, torch.Tensor]],
    parts: StepParts[L],
    tracker: RunTracker | None,
    log: logging.Logger,
) -> int:
    """Steps start.step + 1 to cfg.max_steps, or until the time budget is spent; returns the last step done,
    which every rank has checkpointed (start.step when there was none to do).

    At every log interval (and the last step) the metrics averaged over the ranks go to the tracker (rank 0's)
    with a progress line; at every checkpoint interval (and the last step) every rank reports a checkpoint.
    """
    rank, world, device = place.rank, place.world, place.device
    progress = Progress(start.step, cfg.max_steps, cfg.batch_size * world)
    data_wait, count, final_step = 0.0, 0, start.step
    out_of_time = budget.exhausted(start.step, device, force=True)  # a finished run, resumed: nothing to do
    for step in range(start.step + 1, cfg.max_steps + 1):
        if out_of_time:
            break
        fault_drill(cfg.fail_at_step, step, rank, world, job["storage_path"], job["run_name"])
        t_wait = time.perf_counter()
        batch = next(batches)
        data_wait += time.perf_counter() - t_wait
        losses = parts.update(step, batch)
        count += 1
        final_step = step
        out_of_time = budget.exhausted(step, device)
        last = step == cfg.max_steps or out_of_time

        if step % cfg.log_every == 0 or last:
            means = mean_across_ranks(
                {**parts.interval_means(count), "data_wait_s_per_step": data_wait / count}, device
            )
            pace = progress.interval(step)
            if tracker is not None:
                tracker.log_metrics(interval_metrics(means, parts.lr(), budget, pace, world, device), step)
                log.info(
                    f"step {step}/{cfg.max_steps} {parts.describe(means)} | {pace['samples_per_s']:.1f} samples/s | "
                    f"ETA {Progress.format_eta(pace['eta_s'])}"
                )
            data_wait, count = 0.0, 0

        if (
            tracker is not None
            and parts.sample is not None
            and cfg.sample_every
            and (step % cfg.sample_every == 0 or last)
        ):
            parts.sample(tracker, step)

        if step % cfg.checkpoint_every == 0 or last:
            report_checkpoint(
                step,
                {"step": step, **parts.checkpoint_metrics(losses)},
                rank,
                functools.partial(_write_state, cfg, parts, tracker, budget, step),
                {**parts.state.digests(), **start.rank_info},
            )
    return final_step


def _write_state(
    cfg: TrainConfig, parts: StepParts, tracker: RunTracker | None, budget: TimeBudget, step: int, directory: Path
) -> None:
    """Rank 0's part of a checkpoint: the training state, with the run's fields and the loop's in state.json."""
    extra = {
        "mlflow_run_id": tracker.run_id if tracker else None,
        "kind": parts.kind,
        **(parts.extra_state() if parts.extra_state else {}),
        "config": cfg.to_dict(),
        "train_seconds": budget.spent(),
    }
    parts.state.save(directory, step, extra)
    if parts.checkpoint_files:
        parts.checkpoint_files(step, directory)
    if tracker is not None:
        tracker.save_pending(directory)  # what MLflow has not taken yet, sent by an attempt resuming from here
