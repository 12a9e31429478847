"""A Ray Train worker's setting: where it runs (rank, world, device), its threads and log lines, the device's
settings (TF32), its random streams (one per rank and attempt), and its model wrapped for data parallelism."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from clipsynth_platform.runtime.logs import configure_logging

from .config import C, config_from_dict


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


def configure_worker_logging() -> None:
    """The platform's `[component] message` lines in a Train worker, each printed once.

    Ray Train replaces `print` and wraps sys.stdout in its workers: text written there goes to Train's logger and
    to the stream as well, so every line reached the driver twice. The handler writes to the process's own
    stdout instead, which Ray still forwards to the driver with the worker's prefix.
    """
    configure_logging(stream=sys.__stdout__ or sys.stdout)


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


def configure_device(device: torch.device, tf32: bool) -> None:
    """The device's global settings for training: on CUDA, TF32 for float32 matmuls and convolutions (`tf32`:
    about 8x the float32 rate on A100/H100 tensor cores, a 10-bit mantissa in the products, float32
    accumulation) and cuDNN's autotuner (every step has the same shapes). Nothing to set on a CPU."""
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True


@dataclass(frozen=True)
class RankStreams:
    """The seeds of a worker's random streams, from the run's seed: distinct per rank (each rank draws other
    noise, timesteps, condition dropout, U-Net dropout and examples) and per attempt (a resumed run starts new
    streams rather than replaying the ones it already used)."""

    seed: int
    rank: int
    start_step: int

    def _of(self, stream: int) -> int:
        # numpy's SeedSequence hashes the four numbers together: no two (rank, attempt, stream) share a seed
        entropy = [self.seed, self.rank, self.start_step, stream]
        return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])

    @property
    def noise(self) -> int:
        """Diffusion timesteps, noise and condition dropout (the step's draws, on the device)."""
        return self._of(0)

    @property
    def data(self) -> int:
        """Which rows and windows the worker's batches hold."""
        return self._of(1)

    @property
    def dropout(self) -> int:
        """The model's dropout (torch's default generators, seeded after the initial weights are made)."""
        return self._of(2)


def prepare_model(model: nn.Module, *, broadcast_buffers: bool, compiled: bool = False) -> nn.Module:
    """`model` as the step runs it: DDP over the workers (when there are several), then torch.compile'd when asked.

    DDP keeps the gradients in its all-reduce buckets (`gradient_as_bucket_view`: no copy per step, less memory)
    and broadcasts rank 0's buffers at every forward only with `broadcast_buffers` (the U-Net has none; a model
    whose buffers change in training, such as spectral norm's, needs it). Compiling the DDP-wrapped model lets
    TorchDynamo split the graph at the bucket boundaries, so all-reduce still overlaps the backward pass.
    """
    import ray.train.torch

    wrapped = ray.train.torch.prepare_model(
        model,
        parallel_strategy_kwargs={"gradient_as_bucket_view": True, "broadcast_buffers": broadcast_buffers},
    )
    return torch.compile(wrapped) if compiled else wrapped  # type: ignore[return-value]
