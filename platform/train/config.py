"""Typed configurations of the training jobs, with the paper's defaults, and their command-line form.

Every field is one command-line option (`max_steps` -> `--max-steps`, clipsynth_platform.runtime.options). The
resolved config is printed at start and logged to MLflow as run parameters.

Defaults, from Dong et al. (2023) and the implementations they cite:
- diffusion: improved-diffusion (Nichol & Dhariwal, 2021): AdamW, lr 1e-4, no weight decay, EMA 0.9999,
  batch 128 (its 64x64 setting), 4,000 cosine steps, hybrid loss; 500K steps on VGG-Sound, 100K on MUSIC.
- HiFi-GAN (Kong et al., 2020, config V1): AdamW lr 2e-4, betas (0.8, 0.99), weight decay 0.01 (AdamW's
  default, which the original code keeps), lr decay 0.999 per epoch, batch 16, a 32-frame segment
  (8,192 samples at its hop of 256; here 32 x 1024 samples); 500K steps.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import ClassVar, TypeVar

from clipsynth_core.training import BF16_SETTINGS, LR_SCHEDULES
from clipsynth_platform.runtime.options import build_parser, check_choices, config_from_dict, opt, parse_config

__all__ = ["build_parser", "config_from_dict", "opt", "parse_config"]

VARIANTS = ("image", "text", "hybrid")
MODEL_SIZES = ("tiny", "cpu", "small", "paper")


@dataclass(frozen=True)
class TrainConfig:
    """What every training job shares: data, cluster, storage, intervals, tracking."""

    data: str = opt("", "URI of a preprocessed dataset (local path or s3://bucket/prefix) with train/*.parquet")
    experiment: str = opt("clipsynth", "MLflow experiment name")
    run_name: str = opt(
        "",
        "Ray Train and MLflow run name (default: the experiment, plus -VARIANT for diffusion); re-running with "
        "the same name and storage path resumes that run",
    )
    storage_path: str = opt(
        "~/clipsynth_runs",
        "where checkpoints go (local path or s3://...); must be shared storage (S3, NFS) on a multi-node cluster",
    )
    num_workers: int = opt(
        1, "data-parallel Ray Train workers (one GPU each with --use-gpu); 0: Ray Train's local mode, in this process"
    )
    use_gpu: bool = opt(False, "train on GPUs (bf16 autocast, channels_last, fused AdamW)")
    tf32: bool = opt(True, "on GPUs: TF32 tensor cores for float32 matmuls and convolutions (off: full float32)")
    cpus_per_worker: float = opt(1.0, "logical CPUs reserved per Train worker (the rest feed the data pipeline)")
    placement_strategy: str = opt(
        "PACK",
        "how Ray places the Train workers: PACK (as few nodes as possible, Ray's default) or SPREAD (one per node "
        "where it can: a lost node costs fewer workers, and they still pack onto the survivors to resume)",
        choices=("PACK", "SPREAD"),
    )
    max_failures: int = opt(3, "worker failures to recover from (resuming from the last checkpoint); -1: no limit")
    max_steps: int = opt(500_000, "optimizer steps to train for (in total, across resumptions)")
    train_seconds: float = opt(
        0.0, "stop once this many seconds of training are spent (in total, across resumptions); 0: no time limit"
    )
    global_batch_size: int = opt(
        0,
        "examples per optimiser step over all workers, the number the learning rate goes with; each worker steps "
        "on global / workers (0: --batch-size x workers, or the paper's batch when neither is given)",
    )
    batch_size: int = opt(0, "examples per worker per step (0: --global-batch-size / workers)")
    microbatch: int = opt(
        0,
        "examples per forward/backward pass: a worker's batch is split into batch / microbatch passes whose "
        "gradients add up (DDP all-reduces only the last) before one optimiser step; for a batch that does not "
        "fit in the device's memory (0: the whole batch in one pass)",
    )
    lr: float = opt(2e-4, "learning rate")
    checkpoint_every: int = opt(10_000, "steps between checkpoints (a final one is always written)")
    keep_checkpoints: int = opt(3, "checkpoints kept in storage (the newest)")
    log_every: int = opt(100, "steps between metric logs and progress lines")
    sample_every: int = opt(10_000, "steps between sample artifacts (audio and mel images) in MLflow; 0: never")
    windows_per_chunk: int = opt(1, "random training windows drawn from each 10 s chunk per pass over the data")
    min_examples_per_pass: int = opt(
        2048, "draw more windows per chunk from small datasets so one pass holds at least this many examples"
    )
    shuffle_buffer: int = opt(256, "rows in each worker's local shuffle buffer")
    cache_in_worker: str = opt(
        "auto",
        "hold each worker's share of the train split in its memory and cut examples there, instead of streaming "
        "them from Ray Data pass after pass: on, off, or auto (when the share is under --cache-max-mb)",
        choices=("auto", "on", "off"),
    )
    cache_max_mb: float = opt(
        0.0,
        "largest share of the train split (uncompressed MB per worker) that --cache-in-worker auto caches; 0: a "
        "quarter of each worker's part of its node's memory, as Ray reports it (1024 when Ray reports none)",
    )
    seed: int = opt(0, "seed of the model initialisation and of the training noise")
    tracking_uri: str = opt("", "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")
    tracking_wait_seconds: float = opt(
        120.0,
        "at the end of a run, how long to wait for an unreachable MLflow to take what is still buffered (and, for "
        "the diffusion job, between attempts to register the bundle); what it did not take is kept in storage "
        "with the command that sends it",
    )
    ray_address: str = opt(
        "", "Ray cluster to join (default: $RAY_ADDRESS as set by `ray job submit`, else a new local Ray)"
    )
    local_num_cpus: int = opt(
        0, "logical CPUs of a new local Ray (0: max(cores, workers x cpus-per-worker + 2), so data stages run)"
    )
    fail_at_step: int = opt(
        0, "fault drill: worker rank 1 (rank 0 when alone) exits hard at this step, once per storage path; 0: off"
    )

    # The global batch of the paper's setting, when neither --global-batch-size nor --batch-size is given.
    PAPER_GLOBAL_BATCH: ClassVar[int] = 16

    def run_name_or_default(self) -> str:
        return self.run_name or self.experiment

    def batch_plan(self) -> BatchPlan:
        """How a step's examples divide over the workers and over each worker's passes (ValueError when they
        do not divide)."""
        return BatchPlan.resolve(
            global_size=self.global_batch_size or None,
            per_worker=self.batch_size or None,
            workers=max(self.num_workers, 1),
            microbatch=self.microbatch or None,
            default_global=self.PAPER_GLOBAL_BATCH,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def check(self) -> None:
        """Raise ValueError for values no run can use."""
        check_choices(self)  # variant, lr schedule, model size, placement strategy: what `choices=` declares
        if not self.data:
            raise ValueError("--data is required: the URI of a preprocessed dataset")
        positive = ("max_steps", "checkpoint_every", "keep_checkpoints", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        non_negative = ("num_workers", "sample_every", "fail_at_step", "local_num_cpus", "shuffle_buffer")
        for name in (*non_negative, "global_batch_size", "batch_size", "microbatch"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.cache_max_mb < 0:
            raise ValueError(f"--cache-max-mb must be >= 0, got {self.cache_max_mb}")
        if self.windows_per_chunk < 1:
            raise ValueError("--windows-per-chunk must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        if self.train_seconds < 0:
            raise ValueError("--train-seconds must be >= 0 (0: no time limit)")
        if not self.cpus_per_worker > 0:
            raise ValueError("--cpus-per-worker must be > 0")
        if self.tracking_wait_seconds < 0:
            raise ValueError("--tracking-wait-seconds must be >= 0")
        if self.max_failures < -1:
            raise ValueError("--max-failures must be -1 (no limit) or >= 0")
        self.batch_plan()


@dataclass(frozen=True)
class BatchPlan:
    """A step's examples: `global_size` over all workers (what the learning rate goes with), `per_worker` on each
    of `workers`, in passes of `microbatch` whose gradients accumulate before the optimiser steps."""

    global_size: int
    workers: int
    per_worker: int
    microbatch: int

    @property
    def accumulation(self) -> int:
        """Forward/backward passes per optimiser step on a worker."""
        return self.per_worker // self.microbatch

    @classmethod
    def resolve(
        cls,
        *,
        global_size: int | None,
        per_worker: int | None,
        workers: int,
        microbatch: int | None,
        default_global: int,
    ) -> BatchPlan:
        """From what was given (None: not given): the global batch, or the per-worker one, or both when they
        agree; the paper's global batch when neither is. Raises ValueError, saying what would divide, otherwise."""
        if global_size is None and per_worker is None:
            global_size = default_global
        if global_size is None:
            global_size = per_worker * workers  # type: ignore[operator]
        if global_size % workers:
            lower, upper = global_size // workers * workers, (global_size // workers + 1) * workers
            raise ValueError(
                f"a global batch of {global_size} does not divide over {workers} workers: use a multiple of "
                f"{workers} (such as {lower or upper} or {upper}), or give --batch-size per worker"
            )
        if per_worker is not None and per_worker * workers != global_size:
            raise ValueError(
                f"--batch-size {per_worker} on {workers} workers is a global batch of {per_worker * workers}, "
                f"not the --global-batch-size {global_size}: give one of them"
            )
        per_worker = global_size // workers
        microbatch = microbatch or per_worker
        if microbatch > per_worker or per_worker % microbatch:
            raise ValueError(
                f"--microbatch {microbatch} does not divide a worker's batch of {per_worker} (global {global_size} "
                f"over {workers} workers): use a divisor of {per_worker}"
            )
        return cls(global_size, workers, per_worker, microbatch)

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "accumulation": self.accumulation}


@dataclass(frozen=True)
class DiffusionTrainConfig(TrainConfig):
    """CLIPSynth's conditional diffusion model (U-Net on 64 x 64 log-mels, CLIP condition)."""

    experiment: str = opt("clipsynth-vggsound", "MLflow experiment name")
    variant: str = opt(
        "image",
        "condition: image (a frame's CLIP embedding, self-supervised), text (the label's), hybrid (50/50)",
        choices=VARIANTS,
    )
    model_size: str = opt(
        "paper",
        "U-Net size: paper (improved-diffusion's 64x64 model), small, cpu (learns in CPU minutes), tiny (tests)",
        choices=MODEL_SIZES,
    )
    cond_in_embedding: bool = opt(
        False,
        "beyond the paper: the condition also enters the U-Net's timestep embedding (an MLP of c added to it), "
        "besides being concatenated to every layer's output as in the paper (benchmarks/learning: no gain)",
    )
    max_steps: int = opt(500_000, "optimizer steps (paper: 500K on VGG-Sound, 100K on MUSIC)")
    lr: float = opt(1e-4, "AdamW learning rate (improved-diffusion, with its global batch of 128)")
    weight_decay: float = opt(0.0, "AdamW weight decay (improved-diffusion: 0)")
    lr_schedule: str = opt(
        "constant",
        "learning rate over the run: constant (improved-diffusion), or cosine, decaying to 0 as the budget "
        "(--max-steps, or --train-seconds when that ends the run sooner) is spent",
        choices=LR_SCHEDULES,
    )
    ema_decay: float = opt(0.9999, "EMA rate of the weights that samples and the bundle use")
    ema_warmup: bool = opt(
        False, "EMA decay min(rate, (1 + step) / (10 + step)): short runs do not average in the initialisation"
    )
    grad_clip: float = opt(0.0, "clip the global gradient norm to this; 0: off (improved-diffusion clips nothing)")
    diffusion_steps: int = opt(4000, "diffusion steps of the training process (paper: 4,000, cosine schedule)")
    cond_drop_prob: float = opt(0.0, "probability of training with the null condition (classifier-free guidance)")
    window_frames: int = opt(64, "mel frames per training example (64 = 4.16 s, the paper's 64 x 64)")
    bf16: str = opt(
        "auto",
        "bf16 autocast: on, off, or auto (GPUs, and CPUs with native bf16: AMX or AVX512-BF16)",
        choices=BF16_SETTINGS,
    )
    channels_last: bool = opt(True, "channels_last memory format on GPU (ignored on CPU)")
    compile: bool = opt(
        False,
        "torch.compile the U-Net for training (the first steps compile: about a minute on a GPU, minutes on CPUs)",
    )
    sample_steps: int = opt(25, "respaced diffusion steps for the periodic samples (the EMA model)")
    sample_queries: tuple[str, ...] = opt(
        (),
        "text queries of the periodic samples, encoded by the dataset's CLIP (default: up to 4 dataset labels, "
        "from their stored text embeddings; unlabeled data: frame embeddings of fixed chunks)",
    )
    sample_seed: int = opt(1234, "seed of the periodic samples (the same noise every time)")
    vocoder: str = opt(
        "",
        "HiFi-GAN for samples and the bundle: a vocoder dir, a HiFi-GAN checkpoint, a synthesizer bundle or an "
        "MLflow URI (runs:/ID/vocoder); default: Griffin-Lim for samples and an untrained HiFi-GAN in the bundle",
    )
    serving_vocoder: str = opt(
        "hifigan",
        "vocoder the bundle serves with: its HiFi-GAN, or griffin-lim (for a HiFi-GAN not yet trained far enough)",
        choices=("hifigan", "griffin-lim"),
    )
    clip_template: str = opt("a photo of {query}", "query template stored in the bundle's CLIP config")
    bundle_sampling_steps: int = opt(1000, "default sampling steps stored in the bundle (paper: 1,000)")
    register_as: str = opt(
        "clipsynth-vggsound", "MLflow registered model name of the final synthesizer bundle; empty: do not register"
    )
    register_alias: str = opt(
        "latest-train",
        "alias the registered version gets (serve models:/NAME@ALIAS; evaluation promotes to @champion); empty: none",
    )
    init_from: str = opt(
        "",
        "fine-tune: start from a trained synthesizer's weights and EMA (a bundle directory, or models:/NAME@ALIAS, "
        "models:/NAME/VERSION, runs:/...) with a fresh optimiser, in a new run (default name: ...-finetune); the "
        "U-Net and the diffusion process are the bundle's (--model-size, --diffusion-steps and "
        "--cond-in-embedding do not apply), its variant and CLIP must be this run's and the data's",
    )

    PAPER_GLOBAL_BATCH: ClassVar[int] = 128  # improved-diffusion's 64x64 setting

    def run_name_or_default(self) -> str:
        return self.run_name or f"{self.experiment}-{self.variant}{'-finetune' if self.init_from else ''}"

    def check(self) -> None:
        super().check()
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError("--ema-decay must lie in [0, 1]")
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise ValueError("--cond-drop-prob must lie in [0, 1)")
        if self.diffusion_steps < 2:
            raise ValueError("--diffusion-steps must be >= 2")
        if not 1 <= self.sample_steps <= self.diffusion_steps:
            raise ValueError(f"--sample-steps must lie in 1..{self.diffusion_steps} (the diffusion steps)")
        if self.window_frames < 8 or self.window_frames % 8:
            raise ValueError("--window-frames must be a multiple of 8 (the U-Net downsamples by up to 8)")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("--grad-clip and --weight-decay must be >= 0")


@dataclass(frozen=True)
class HiFiGANTrainConfig(TrainConfig):
    """HiFi-GAN from scratch on the dataset's audio: random aligned (mel, waveform) segments."""

    experiment: str = opt("clipsynth-hifigan", "MLflow experiment name")
    model_size: str = opt(
        "paper", "HiFi-GAN size: paper (V1), small, cpu and tiny (benchmarks/vocoder)", choices=MODEL_SIZES
    )
    max_steps: int = opt(500_000, "optimizer steps (paper: 500K)")
    lr: float = opt(2e-4, "AdamW learning rate of generator and discriminator (HiFi-GAN V1)")
    adam_b1: float = opt(0.8, "AdamW beta1 (HiFi-GAN V1)")
    adam_b2: float = opt(0.99, "AdamW beta2 (HiFi-GAN V1)")
    weight_decay: float = opt(0.01, "AdamW weight decay (AdamW's default, which HiFi-GAN keeps)")
    lr_decay: float = opt(0.999, "learning-rate decay per epoch (a pass over the training chunks)")
    segment_frames: int = opt(32, "mel frames per training segment (x 1024 samples)")
    warmup_steps: int = opt(
        0, "first steps on the mel L1 alone, before the discriminators join (0: adversarial from the start, as V1)"
    )
    bf16: str = opt(
        "auto",
        "bf16 autocast of generator and discriminators: on, off, or auto (GPUs, and CPUs with native bf16)",
        choices=BF16_SETTINGS,
    )
    num_samples: int = opt(2, "fixed reference segments reconstructed at each sample interval")

    PAPER_GLOBAL_BATCH: ClassVar[int] = 16  # HiFi-GAN V1's batch

    def check(self) -> None:
        super().check()
        if self.segment_frames < 4:
            raise ValueError("--segment-frames must be >= 4")
        if self.warmup_steps < 0:
            raise ValueError("--warmup-steps must be >= 0")
        if not 0.0 < self.lr_decay <= 1.0:
            raise ValueError("--lr-decay must lie in (0, 1]")
        if not (0.0 <= self.adam_b1 < 1.0 and 0.0 <= self.adam_b2 < 1.0):
            raise ValueError("--adam-b1 and --adam-b2 must lie in [0, 1)")


C = TypeVar("C", bound=TrainConfig)
