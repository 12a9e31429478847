"""The Ray Train worker function of HiFi-GAN (one per data-parallel worker).

Per step: a batch of random waveform segments (segment_frames x 1024 samples) from this worker's shard;
their mels are computed on the worker's device with the platform's mel function, padded as core
HiFiGANStep.mel_of pads, so a segment of T x 1024 samples gives exactly T frames; then one discriminator
and one generator update (core HiFiGANStep) through DDP. The learning rates decay by `lr_decay` per epoch
(a pass over the training chunks), as in HiFi-GAN. At the end rank 0 logs the generator as the MLflow
artifact "vocoder" (see vocoder.py), which --vocoder of the diffusion jobs accepts as runs:/RUN_ID/vocoder.
"""

from __future__ import annotations

import json
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipsynth_core import (
    HiFiGANConfig,
    HiFiGANDiscriminator,
    HiFiGANGenerator,
    HiFiGANStep,
    MelConfig,
    MelFrontend,
)
from clipsynth_platform.runtime.logs import get_logger
from clipsynth_platform.tracking.registry import VOCODER_ARTIFACT

from .common import (
    TimeBudget,
    WorkerPlace,
    resume,
    run_worker,
    start_tracking,
)
from .config import HiFiGANTrainConfig
from .data import vocoder_examples
from .state import TrainingState
from .steps import StepParts, run_steps, worker_batches
from .tracking import RunTracker, log_samples
from .vocoder import VOCODER_FILE, save_vocoder, vocoder_manifest

log = get_logger("hifigan")
LOSS_KEYS = ("loss_d", "loss_g", "loss_adv", "loss_fm", "loss_mel")


def _segments(rows: dict, seed: int, *, segment_samples: int) -> dict[str, np.ndarray]:
    return vocoder_examples(rows, segment_samples=segment_samples, seed=seed)


def train_hifigan_worker(loop_config: dict) -> None:
    """Ray Train's train_loop_per_worker; `loop_config` comes from the runner (config + resolved job)."""
    run_worker(HiFiGANTrainConfig, loop_config, _train_hifigan_worker)


def _train_hifigan_worker(cfg: HiFiGANTrainConfig, job: dict, place: WorkerPlace) -> None:
    """The HiFi-GAN loop itself (see the module docstring)."""
    import ray.train
    import ray.train.torch

    rank, world, device = place.rank, place.world, place.device
    hcfg = HiFiGANConfig.from_dict(job["hifigan"])

    torch.manual_seed(cfg.seed)
    generator = HiFiGANGenerator(hcfg).to(device)
    discriminator = HiFiGANDiscriminator(hcfg).to(device)
    adam: dict[str, Any] = {"lr": cfg.lr, "betas": (cfg.adam_b1, cfg.adam_b2), "weight_decay": cfg.weight_decay}
    opt_g = torch.optim.AdamW(generator.parameters(), **adam)
    opt_d = torch.optim.AdamW(discriminator.parameters(), **adam)
    sched_g = torch.optim.lr_scheduler.ExponentialLR(opt_g, gamma=cfg.lr_decay)
    sched_d = torch.optim.lr_scheduler.ExponentialLR(opt_d, gamma=cfg.lr_decay)

    state = TrainingState(
        generator, opt_g, modules={"discriminator": discriminator}, optimizers={"discriminator": opt_d}
    )
    start = resume(state, device, rank, log)
    if start.state:
        sched_g.load_state_dict(start.state["scheduler_g"])
        sched_d.load_state_dict(start.state["scheduler_d"])
    start_step = start.step

    g_ddp = ray.train.torch.prepare_model(generator)
    d_ddp = ray.train.torch.prepare_model(discriminator)
    mel_frontend = MelFrontend(MelConfig()).to(device)
    step_fn = HiFiGANStep(g_ddp, d_ddp, mel_frontend, hcfg, opt_g, opt_d, grad_clip=None)
    segments = partial(_segments, segment_samples=cfg.segment_frames * hcfg.hop_length)
    batches = worker_batches(cfg, job, place, start_step, segments)
    steps_per_epoch = max(1, int(job["steps_per_epoch"]))

    tracker = None
    if rank == 0:
        tracker = start_tracking(cfg, job, start, world, log)
    reference = torch.tensor(np.asarray(job["sample_audio"], dtype=np.float32))
    budget = TimeBudget(cfg.train_seconds, start.train_seconds)

    def vocoder_file(step: int, d: Path) -> None:
        # A checkpoint is also a vocoder directory (vocoder.py): --vocoder accepts it as it is.
        (d / VOCODER_FILE).write_text(json.dumps(vocoder_manifest(hcfg, MelConfig(), "model.safetensors", step)))

    sums = dict.fromkeys(LOSS_KEYS, 0.0)

    def update(step: int, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        wave = batch["audio"].float()
        with torch.no_grad():
            mel = step_fn.mel_of(wave)
        losses = step_fn(mel, wave)
        for k in LOSS_KEYS:
            sums[k] += losses[k]
        if step % steps_per_epoch == 0:
            sched_g.step()
            sched_d.step()
        return losses

    def interval_means(count: int) -> dict[str, float]:
        means = {k: v / count for k, v in sums.items()}
        sums.update(dict.fromkeys(LOSS_KEYS, 0.0))
        return means

    def describe(m: dict[str, float]) -> str:
        return f"mel-L1 {m['loss_mel']:.4f} G {m['loss_g']:.3f} D {m['loss_d']:.3f}"

    def sample(tracker: RunTracker, step: int) -> None:
        _log_reconstructions(tracker, step, generator, step_fn, reference, device)

    parts = StepParts(
        update=update,
        interval_means=interval_means,
        describe=describe,
        lr=lambda: opt_g.param_groups[0]["lr"],
        checkpoint_metrics=lambda losses: {"loss_mel": losses["loss_mel"]},
        state=state,
        kind="hifigan",
        extra_state=lambda: {"scheduler_g": sched_g.state_dict(), "scheduler_d": sched_d.state_dict()},
        checkpoint_files=vocoder_file,
        sample=sample if len(reference) else None,
    )
    g_ddp.train()
    d_ddp.train()
    final_step = run_steps(cfg, job, place, start, budget, batches, parts, tracker, log)

    if tracker is not None:
        done = tracker.record.get("vocoder_step")
        if done is None or int(done) < final_step:
            with tempfile.TemporaryDirectory(prefix="clipsynth-vocoder-") as tmp:
                save_vocoder(Path(tmp), generator, hcfg, final_step)
                tracker.log_artifacts(tmp, VOCODER_ARTIFACT)
            uri = f"runs:/{tracker.run_id}/{VOCODER_ARTIFACT}"
            tracker.set_tags({"vocoder_uri": uri})
            tracker.update_record(vocoder_step=final_step, vocoder_uri=uri)
            why = "out of training time" if final_step < cfg.max_steps else "all steps done"
            log.info(f"finished at step {final_step} ({why}); vocoder: {uri} (pass it as --vocoder)")
        tracker.finish()


@torch.no_grad()
def _log_reconstructions(
    tracker: RunTracker,
    step: int,
    generator: torch.nn.Module,
    step_fn: HiFiGANStep,
    reference: torch.Tensor,
    device: torch.device,
) -> None:
    """Real vs reconstructed mels (PNG) and the reconstructed audio (WAV) of the fixed reference segments."""
    was_training = generator.training
    generator.eval()
    real = reference.to(device)
    real_mel = step_fn.mel_of(real)
    fake = generator(real_mel).clamp(-1, 1)
    fake_mel = step_fn.mel_of(fake)
    generator.train(was_training)
    names = [f"reference_{i}" for i in range(len(reference))]
    l1 = float((fake_mel - real_mel).abs().mean())
    log_samples(
        tracker,
        step,
        names=names,
        mels=fake_mel.cpu().numpy(),
        waves=fake.cpu().numpy(),
        sample_rate=16_000,
        title=f"step {step}: HiFi-GAN reconstructions (mel-L1 {l1:.3f})",
        reference_mels=real_mel.cpu().numpy(),
    )
    tracker.log_metrics({"sample_mel_l1": l1}, step)
