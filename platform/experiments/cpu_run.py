"""The knobs the demo and Table 1 share: a small U-Net and HiFi-GAN trained, evaluated and served on a few CPU
cores, with the settings measured in benchmarks/learning. DemoConfig and Table1Config add their own fields
(budgets, paths, what only one of them runs) on top, and build their stages' configs from these methods, so a
knob means the same thing, under the same flag, in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clipsynth_core.training import LR_SCHEDULES
from clipsynth_platform.runtime.options import check_choices, opt

SERVING_VOCODERS = ("hifigan", "griffin-lim")
# The HiFi-GAN's discriminators never join on a CPU run: its mel-L1 "warm-up" spans the whole budget. Measured in
# benchmarks/vocoder (README, "The vocoder"): once they join, a tiny step costs ~16x the CPU (0.8 against 13 steps
# per CPU second) and 150 CPU s of it moved no figure (mel L1 0.97 -> 0.99, LSD 10.39 -> 10.51 dB).
VOCODER_WARMUP_STEPS = 1_000_000_000


@dataclass(frozen=True, kw_only=True)
class CpuRunConfig:
    """Model sizes, optimisation, data passes, evaluation and the local Ray of a run on a few CPU cores."""

    # the "cpu" U-Net learns the demo's 8 classes in a few CPU minutes
    model_size: str = opt("cpu", "U-Net size (tiny, cpu, small, paper)")
    diffusion_steps: int = opt(1000, "diffusion steps of the training process")
    batch_size: int = opt(16, "diffusion batch size")
    lr: float = opt(3e-3, "diffusion learning rate")
    # benchmarks/learning, 360 s on the demo's data: cosine decay 0.67/0.64 (image/text relevance) vs constant
    # 0.62/0.50; constant is improved-diffusion's (the paper's protocol)
    lr_schedule: str = opt(
        "cosine", "diffusion learning rate over the budget (constant or cosine)", choices=LR_SCHEDULES
    )
    ema_decay: float = opt(0.999, "EMA rate of the diffusion weights")
    # Each pass over the data restarts Ray Data's streaming split, a stall of several seconds on 2 cores: long
    # passes (many windows per chunk) stall rarely, and a large shuffle buffer keeps batches diverse in chunks.
    examples_per_pass: int = opt(8192, "examples per pass over the data (long passes stall rarely)")
    shuffle_buffer: int = opt(4096, "rows in each Train worker's shuffle buffer")
    # The HiFi-GAN's CPU recipe, measured in benchmarks/vocoder (README, "The vocoder"): the tiny preset (at equal
    # CPU seconds ahead of the cpu preset on every figure); 16 segments of 8 frames (V1's 8,192 samples each);
    # lr 3e-3 decaying 0.9985 per pass (1e-2 is ahead at 150 CPU s, then worsens past ~2,000 steps: mel L1 0.98 ->
    # 1.45 at 300 CPU s, where 3e-3 reaches 0.98 and LSD 10.0 dB); the mel L1 alone (VOCODER_WARMUP_STEPS). It
    # does not reach Griffin-Lim in CPU minutes, so Griffin-Lim serves.
    vocoder_size: str = opt("tiny", "HiFi-GAN size (tiny, cpu, small, paper)")
    vocoder_batch_size: int = opt(16, "HiFi-GAN segments per step")
    vocoder_segment_frames: int = opt(8, "mel frames per HiFi-GAN training segment")
    vocoder_lr: float = opt(3e-3, "HiFi-GAN learning rate (V1: 2e-4)")
    vocoder_lr_decay: float = opt(0.9985, "HiFi-GAN learning-rate decay per pass over the train chunks (V1: 0.999)")
    vocoder_warmup_steps: int = opt(
        VOCODER_WARMUP_STEPS, "HiFi-GAN steps on the mel L1 alone before the discriminators join"
    )
    # The HiFi-GAN gets minutes here, far from the 500K steps it needs (on 2 cores 150 steps made noise:
    # reconstructions at fad_melclf 1048 against 152 for real audio; benchmarks/vocoder: still short of Griffin-Lim
    # on every figure after 15 CPU minutes), so Griffin-Lim is the default.
    serving_vocoder: str = opt(
        "griffin-lim",
        "what turns generated mels into audio, for the service and for FAD: hifigan (the trained one, the paper's "
        "protocol) or griffin-lim",
        choices=SERVING_VOCODERS,
    )
    cpus_per_worker: int = opt(2, "logical CPUs (torch threads) of each Train worker and of the evaluation's actor")
    ray_num_cpus: int = opt(6, "logical CPUs of the local Ray: more than the cores so data stages are never starved")
    classifier_epochs: int = opt(40, "epochs of the mel classifier (FID and relevance)")
    eval_samples: int = opt(64, "generated samples per evaluation")
    eval_steps: int = opt(25, "sampling steps of evaluation")
    seed: int = opt(0, "seed of every stage (corpus, training, sampling, the gap prior)")

    def check(self) -> None:
        """Raise ValueError for a knob outside its declared choices (options.parse_config calls it)."""
        check_choices(self)

    def _worker_settings(self) -> dict[str, Any]:
        """What both trainings take alike: the Train worker's CPUs and the seed."""
        return {"cpus_per_worker": self.cpus_per_worker, "seed": self.seed}

    def hifigan_settings(self) -> dict[str, Any]:
        """The HiFiGANTrainConfig fields these knobs set."""
        return {
            **self._worker_settings(),
            "model_size": self.vocoder_size,
            "batch_size": self.vocoder_batch_size,
            "segment_frames": self.vocoder_segment_frames,
            "lr": self.vocoder_lr,
            "lr_decay": self.vocoder_lr_decay,
            "warmup_steps": self.vocoder_warmup_steps,
        }

    def diffusion_settings(self) -> dict[str, Any]:
        """The DiffusionTrainConfig fields these knobs set."""
        return {
            **self._worker_settings(),
            "model_size": self.model_size,
            "diffusion_steps": self.diffusion_steps,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "lr_schedule": self.lr_schedule,
            "ema_decay": self.ema_decay,
            "min_examples_per_pass": self.examples_per_pass,
            "shuffle_buffer": self.shuffle_buffer,
            "serving_vocoder": self.serving_vocoder,
        }

    def eval_settings(self) -> dict[str, Any]:
        """The EvalConfig fields these knobs set."""
        # the sampling actor's threads: one actor with 2 threads evaluates the demo in 53-59 s against 75 s with 1
        return {"num_samples": self.eval_samples, "steps": self.eval_steps, "cpus_per_worker": self.cpus_per_worker}

    def local_ray_settings(self, tracking_uri: str) -> dict[str, Any]:
        """The LocalRay fields of the run's cluster, its workers pointed at the run's MLflow."""
        return {"num_cpus": self.ray_num_cpus, "env_vars": {"MLFLOW_TRACKING_URI": tracking_uri}}
