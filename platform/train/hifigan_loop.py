"""The Ray Train worker function of HiFi-GAN (one per data-parallel worker).

Per step: a batch of random waveform segments (segment_frames x 1024 samples) from this worker's shard;
their mels are computed on the worker's device with the platform's mel function, padded as core
HiFiGANStep.mel_of pads, so a segment of T x 1024 samples gives exactly T frames; then one discriminator
and one generator update (core HiFiGANStep) through DDP. The learning rates decay by `lr_decay` per epoch
(a pass over the training chunks), as in HiFi-GAN. At the end rank 0 logs the generator as the MLflow
artifact "vocoder" (see vocoder.py), which --vocoder of the diffusion jobs accepts as runs:/RUN_ID/vocoder.
"""

from __future__ import annotations

import functools
import json
import tempfile
import time
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
    load_training_state,
    save_training_state,
)

from ..logs import get_logger
from ..registry import VOCODER_ARTIFACT
from .common import (
    Progress,
    TimeBudget,
    WorkerPlace,
    fault_drill,
    interval_metrics,
    mean_across_ranks,
    report_checkpoint,
    resume,
    run_worker,
    start_tracking,
    state_digest,
    stream_seed,
)
from .config import HiFiGANTrainConfig
from .data import training_batches, vocoder_examples
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

    start = resume(
        lambda d: load_training_state(
            d,
            model=generator,
            optimizer=opt_g,
            modules={"discriminator": discriminator},
            optimizers={"discriminator": opt_d},
            map_location=device,
        ),
        generator,
        rank,
        log,
    )
    if start.state:
        sched_g.load_state_dict(start.state["scheduler_g"])
        sched_d.load_state_dict(start.state["scheduler_d"])
    start_step, resumed = start.step, start.rank_info

    g_ddp = ray.train.torch.prepare_model(generator)
    d_ddp = ray.train.torch.prepare_model(discriminator)
    mel_frontend = MelFrontend(MelConfig()).to(device)
    step_fn = HiFiGANStep(g_ddp, d_ddp, mel_frontend, hcfg, opt_g, opt_d, grad_clip=None)
    batches = training_batches(
        ray.train.get_dataset_shard("train"),
        cached=job["cache_in_worker"],
        make_examples=partial(_segments, segment_samples=cfg.segment_frames * hcfg.hop_length),
        batch_size=cfg.batch_size,
        shuffle_buffer=cfg.shuffle_buffer,
        seed=stream_seed(cfg.seed, rank, start_step) + 1,
        device=device,
    )
    steps_per_epoch = max(1, int(job["steps_per_epoch"]))

    tracker = None
    if rank == 0:
        tracker = start_tracking(cfg, job, start, world, log)
    reference = torch.tensor(np.asarray(job["sample_audio"], dtype=np.float32))
    budget = TimeBudget(cfg.train_seconds, start.train_seconds)

    def write_state(d: Path, step: int) -> None:
        save_training_state(
            d,
            model=g_ddp,
            step=step,
            optimizer=opt_g,
            modules={"discriminator": d_ddp},
            optimizers={"discriminator": opt_d},
            extra={
                "mlflow_run_id": tracker.run_id if tracker else None,
                "kind": "hifigan",
                "scheduler_g": sched_g.state_dict(),
                "scheduler_d": sched_d.state_dict(),
                "config": cfg.to_dict(),
                "train_seconds": budget.spent(),
            },
        )
        # A checkpoint is also a vocoder directory (vocoder.py): --vocoder accepts it as it is.
        (d / VOCODER_FILE).write_text(json.dumps(vocoder_manifest(hcfg, MelConfig(), "model.safetensors", step)))

    progress = Progress(start_step, cfg.max_steps, cfg.batch_size * world)
    sums = dict.fromkeys((*LOSS_KEYS, "data_wait_s_per_step"), 0.0)
    count = 0
    g_ddp.train()
    d_ddp.train()
    final_step = start_step
    out_of_time = budget.exhausted(start_step, device, force=True)  # a finished run, resumed: nothing to do
    for step in range(start_step + 1, cfg.max_steps + 1):
        if out_of_time:
            break
        fault_drill(cfg.fail_at_step, step, rank, world, job["storage_path"], job["run_name"])
        t_wait = time.perf_counter()
        wave = next(batches)["audio"].float()
        sums["data_wait_s_per_step"] += time.perf_counter() - t_wait
        with torch.no_grad():
            mel = step_fn.mel_of(wave)
        losses = step_fn(mel, wave)
        for k in LOSS_KEYS:
            sums[k] += losses[k]
        count += 1
        if step % steps_per_epoch == 0:
            sched_g.step()
            sched_d.step()
        final_step = step
        out_of_time = budget.exhausted(step, device)
        last = step == cfg.max_steps or out_of_time

        if step % cfg.log_every == 0 or last:
            means = mean_across_ranks({k: v / count for k, v in sums.items()}, device)
            pace = progress.interval(step)
            if tracker is not None:
                tracker.log_metrics(
                    interval_metrics(means, opt_g.param_groups[0]["lr"], budget, pace, world, device), step
                )
                log.info(
                    f"step {step}/{cfg.max_steps} mel-L1 {means['loss_mel']:.4f} G {means['loss_g']:.3f} "
                    f"D {means['loss_d']:.3f} | {pace['samples_per_s']:.1f} samples/s | "
                    f"ETA {Progress.format_eta(pace['eta_s'])}"
                )
            sums = dict.fromkeys(sums, 0.0)
            count = 0

        if tracker is not None and cfg.sample_every and (step % cfg.sample_every == 0 or last) and len(reference):
            _log_reconstructions(tracker, step, generator, step_fn, reference, device)

        if step % cfg.checkpoint_every == 0 or last:
            rank_info = {
                "model_digest": state_digest(g_ddp),
                "discriminator_digest": state_digest(d_ddp),
                **resumed,
            }
            report_checkpoint(
                step,
                {"step": step, "loss_mel": losses["loss_mel"]},
                rank,
                functools.partial(write_state, step=step),
                rank_info,
            )

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
