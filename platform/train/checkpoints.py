"""Checkpoints of a training loop: what they hold (`TrainingState`, declared once per loop), the one function
that writes one (`save_checkpoint`, from every rank), and where a worker starts (`resume`, from the checkpoint
Ray Train gives it). A resumed worker loads exactly the objects its checkpoints save, and every rank's digests in
a checkpoint are of those same modules.

A checkpoint proves it is whole: rank 0 writes a manifest of its files' sizes and checksums last
(whole_checkpoints.py), and `resume` takes the newest checkpoint whose files match it, skipping newer ones cut
short. Rank 0's checkpoints also hold what the run's MLflow outbox had not sent yet (tracking_pending/), which
the attempt that resumes from it sends."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from clipsynth_core import EMA, load_training_state, save_training_state, state_digest
from clipsynth_platform.tracking.outbox import PENDING_DIR

from .whole_checkpoints import restore_whole, write_manifest

if TYPE_CHECKING:
    from .tracking import RunTracker

RANK_FILE = "rank_{rank}.json"


@dataclass(frozen=True)
class TrainingState:
    """The model and its optimiser, the EMA when the loop keeps one, and further named modules and optimisers
    (HiFi-GAN's discriminator). Give the modules unwrapped: saving and digests see through DDP, which wraps
    the same module objects."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    ema: EMA | None = None
    modules: dict[str, nn.Module] = field(default_factory=dict)
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)

    def load(self, directory: Path, device: torch.device) -> dict:
        """Fill every object from a checkpoint directory; returns its saved state (step and extras)."""
        return load_training_state(
            directory,
            model=self.model,
            ema=self.ema,
            optimizer=self.optimizer,
            modules=self.modules,
            optimizers=self.optimizers,
            map_location=device,
        )

    def save(self, directory: Path, step: int, extra: dict) -> None:
        """Write every object, the step and `extra` (into state.json) to a checkpoint directory."""
        save_training_state(
            directory,
            model=self.model,
            step=step,
            ema=self.ema,
            optimizer=self.optimizer,
            modules=self.modules,
            optimizers=self.optimizers,
            extra=extra,
        )

    def digests(self) -> dict[str, str]:
        """sha256 of each module's weights: model_digest, ema_digest (the EMA's model), <name>_digest."""
        out = {"model_digest": state_digest(self.model)}
        if self.ema is not None:
            out["ema_digest"] = state_digest(self.ema.model)
        out.update({f"{name}_digest": state_digest(module) for name, module in self.modules.items()})
        return out


def save_checkpoint(
    step: int,
    state: TrainingState,
    rank: int,
    *,
    metrics: dict[str, float],
    fields: dict[str, Any],
    rank_info: dict[str, Any],
    files: Callable[[Path], None] | None = None,
    tracker: RunTracker | None = None,
) -> None:
    """Every checkpoint goes through here, on every rank at the same step: rank 0 writes the training state with
    `fields` in its state.json (and `files(directory)`, the loop's own files, and what its `tracker` has not sent
    to MLflow yet), every rank adds rank_<r>.json (its digests and `rank_info`), rank 0 writes the manifest last,
    and ray.train.report hands the directory to Ray Train, which merges the ranks' directories into
    checkpoint_<step> in the run's storage and reports `metrics` with it."""
    import ray.train

    with tempfile.TemporaryDirectory(prefix="clipsynth-ckpt-") as tmp:
        d = Path(tmp)
        if rank == 0:
            state.save(d, step, fields)
            if files is not None:
                files(d)
            if tracker is not None:
                tracker.save_pending(d)  # sent by the attempt that resumes from here
        info = {"rank": rank, "step": step, **state.digests(), **rank_info}
        (d / RANK_FILE.format(rank=rank)).write_text(json.dumps(info, indent=2))
        if rank == 0:
            write_manifest(d)  # last: the sizes and checksums a resume checks
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=f"checkpoint_{step:09d}",
        )


def wait_for_committed_checkpoints(timeout_s: float = 120.0) -> None:
    """Block until Ray Train has committed this worker's reported checkpoints.

    The controller collects reports when it polls the workers (every 2 s by default): a worker that dies
    right after ray.train.report can take its newest checkpoint with it.
    """
    import ray.train

    ray.train.get_all_reported_checkpoints(
        consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED, timeout_s=timeout_s
    )


@dataclass
class Resumption:
    """Where a worker's loop starts: step 0, or the state of the checkpoint Ray Train gave it."""

    step: int = 0
    train_seconds: float = 0.0  # of the time budget, spent before
    rank_info: dict[str, Any] = field(default_factory=dict)  # into every checkpoint report: the resumed digest
    state: dict[str, Any] = field(default_factory=dict)  # the checkpoint's saved state (the loops' own extras)
    tracking_pending: Path | None = None  # what the attempt that wrote the checkpoint had not yet sent to MLflow

    @property
    def resumed(self) -> bool:
        return bool(self.rank_info)


def resume(state: TrainingState, device: torch.device, rank: int, log: logging.Logger) -> Resumption:
    """Fill the loop's training state from the newest whole checkpoint: Ray Train's, or an older one in its
    storage when that one is cut short (with a warning); step 0 when none is whole."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return Resumption()

    def load(directory: Path, path: str) -> dict:
        return restore(path, directory, lambda d: state.load(d, device))

    # rank 0's tracker sends what the checkpoint kept for MLflow: a local copy of it outlives the download
    restored = restore_whole(checkpoint, load, log, carry=(PENDING_DIR,) if rank == 0 else ())
    if restored is None:
        return Resumption()
    saved = restored.saved
    step = int(saved["step"])
    log.info(f"rank {rank} resumed from the checkpoint at step {step}")
    info = {"resumed_from_step": step, "resumed_digest": state_digest(state.model)}
    return Resumption(step, float(saved.get("train_seconds", 0.0)), info, saved, restored.carried.get(PENDING_DIR))


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
