"""The Ray Train worker function of HiFi-GAN (one per data-parallel worker).

Per step: a batch of random waveform segments (segment_frames x 1024 samples) from this worker's shard;
their mels are computed on the worker's device with the platform's mel function, padded as core
HiFiGANStep.mel_of pads, so a segment of T x 1024 samples gives exactly T frames; then one discriminator
and one generator update (core HiFiGANStep) through DDP (the generator's alone during --warmup-steps). The
learning rates decay by `lr_decay` per epoch (a pass over the training chunks), as in HiFi-GAN. At the end
rank 0 logs the generator as the MLflow artifact "vocoder" (see vocoder.py), which --vocoder of the diffusion
jobs accepts as runs:/RUN_ID/vocoder.

On a GPU: bf16 autocast (--bf16 auto), cudnn.benchmark (the segments have one shape), fused AdamW; the loss
sums stay on the device and are read at log intervals only.
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
from clipsynth_core.hifigan_step import LOSS_KEYS
from clipsynth_core.training import adamw, resolve_bf16
from clipsynth_platform.runtime.logs import get_logger
from clipsynth_platform.tracking.registry import VOCODER_ARTIFACT

from .checkpoints import TrainingState, resume, save_checkpoint
from .config import HiFiGANTrainConfig
from .data import training_batches, vocoder_examples
from .loop import IntervalSums, StepLoop, start_tracking
from .tracking import RunTracker, log_samples
from .vocoder import VOCODER_FILE, save_vocoder, vocoder_manifest
from .worker import RankStreams, WorkerPlace, configure_device, prepare_model, run_worker

log = get_logger("hifigan")


def _segments(rows: dict, seed: int, *, segment_samples: int) -> dict[str, np.ndarray]:
    return vocoder_examples(rows, segment_samples=segment_samples, seed=seed)


def train_hifigan_worker(loop_config: dict) -> None:
    """Ray Train's train_loop_per_worker; `loop_config` comes from the runner (config + resolved job)."""
    run_worker(HiFiGANTrainConfig, loop_config, _train_hifigan_worker)


def _train_hifigan_worker(cfg: HiFiGANTrainConfig, job: dict, place: WorkerPlace) -> None:
    """The HiFi-GAN loop itself (see the module docstring)."""
    import ray.train

    rank, world, device = place.rank, place.world, place.device
    configure_device(device, cfg.tf32)
    hcfg = HiFiGANConfig.from_dict(job["hifigan"])

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every step has the same shapes: the fastest kernels, once found
    torch.manual_seed(cfg.seed)
    generator = HiFiGANGenerator(hcfg).to(device)
    discriminator = HiFiGANDiscriminator(hcfg).to(device)
    adam: dict[str, Any] = {"lr": cfg.lr, "betas": (cfg.adam_b1, cfg.adam_b2), "weight_decay": cfg.weight_decay}
    opt_g = adamw(generator.parameters(), device, **adam)  # the fused kernel on CUDA and CPU
    opt_d = adamw(discriminator.parameters(), device, **adam)
    sched_g = torch.optim.lr_scheduler.ExponentialLR(opt_g, gamma=cfg.lr_decay)
    sched_d = torch.optim.lr_scheduler.ExponentialLR(opt_d, gamma=cfg.lr_decay)

    state = TrainingState(
        generator, opt_g, modules={"discriminator": discriminator}, optimizers={"discriminator": opt_d}
    )
    start = resume(state, device, rank, log)
    if start.state:
        sched_g.load_state_dict(start.state["scheduler_g"])
        sched_d.load_state_dict(start.state["scheduler_d"])
    streams = RankStreams(cfg.seed, rank, start.step)

    # spectral and weight norm keep buffers that change in training: DDP broadcasts them
    g_ddp = prepare_model(generator, broadcast_buffers=True)
    d_ddp = prepare_model(discriminator, broadcast_buffers=True)
    mel_frontend = MelFrontend(MelConfig()).to(device)
    step_fn = HiFiGANStep(
        g_ddp,
        d_ddp,
        mel_frontend,
        hcfg,
        opt_g,
        opt_d,
        grad_clip=None,
        bf16=resolve_bf16(cfg.bf16, device),
        warmup_steps=cfg.warmup_steps,
    )
    batches = training_batches(
        ray.train.get_dataset_shard("train"),
        cached=job["cache_in_worker"],
        make_examples=partial(_segments, segment_samples=cfg.segment_frames * hcfg.hop_length),
        batch_size=job["batch"]["per_worker"],
        shuffle_buffer=cfg.shuffle_buffer,
        seed=streams.data,
        device=device,
    )
    steps_per_epoch = max(1, int(job["steps_per_epoch"]))

    tracker = start_tracking(cfg, job, start, world, log) if rank == 0 else None
    reference = torch.tensor(np.asarray(job["sample_audio"], dtype=np.float32))

    def vocoder_file(step: int, d: Path) -> None:
        # A checkpoint is also a vocoder directory (vocoder.py): --vocoder accepts it as it is.
        (d / VOCODER_FILE).write_text(json.dumps(vocoder_manifest(hcfg, MelConfig(), "model.safetensors", step)))

    loop = StepLoop(cfg, job, place, start)
    sums = IntervalSums(LOSS_KEYS, device)  # on the device: read at log intervals only
    g_ddp.train()
    d_ddp.train()
    for step in loop:
        wave = loop.next_batch(batches)["audio"].float()
        with torch.no_grad():
            mel = step_fn.mel_of(wave)
        losses = step_fn(mel, wave, step)
        sums.add(losses)
        if step % steps_per_epoch == 0:
            sched_g.step()
            sched_d.step()
        loop.finish(step)

        if loop.due(cfg.log_every, step):
            lr = opt_g.param_groups[0]["lr"]
            loop.log(step, sums, tracker, lr, "mel-L1 {loss_mel:.4f} G {loss_g:.3f} D {loss_d:.3f}", log)
        if tracker is not None and len(reference) and loop.due(cfg.sample_every, step):
            _log_reconstructions(tracker, step, generator, step_fn, reference, device)
        if loop.due(cfg.checkpoint_every, step):
            save_checkpoint(
                step,
                state,
                rank,
                metrics={"step": step, "loss_mel": float(losses["loss_mel"])},
                fields={
                    **loop.checkpoint_fields(tracker, "hifigan"),
                    "scheduler_g": sched_g.state_dict(),
                    "scheduler_d": sched_d.state_dict(),
                },
                rank_info=start.rank_info,
                files=partial(vocoder_file, step),
                tracker=tracker,
            )
    final_step = loop.last_step

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
