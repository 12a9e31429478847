"""The Ray Train worker function of the diffusion model (one per data-parallel worker), one training step top
to bottom in `_train_diffusion_worker`'s loop:

    batch   a batch of (64-frame mel window, CLIP condition) examples from this worker's dataset shard
    lr      the learning rate for this step (constant, or cosine over the budget)
    update  the core's DiffusionStep: timesteps, noise and condition dropout drawn on the device; per micro-batch
            the hybrid loss and its backward (DDP all-reduces the gradients at the last one); clipping, AdamW, EMA
    sums    the step's losses added to device sums (no host sync)
    last?   the time budget, agreed over the ranks
    then, at their intervals: metrics averaged over the ranks (MLflow, rank 0), EMA samples (rank 0),
            a checkpoint (every rank reports; rank 0 writes the state)

Before the loop: the model, its EMA and optimiser, resumed from Ray Train's checkpoint or (fine-tuning) started
from a trained bundle's weights, wrapped for DDP (and compiled with --compile). After it, rank 0 registers the
synthesizer bundle with the EMA weights. Training stops at --max-steps or when --train-seconds are spent.
"""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path
from typing import cast

import numpy as np
import torch
from safetensors.torch import load as load_safetensors

from clipsynth_core import (
    EMA,
    ClipConfig,
    ConditionalUNet,
    DiffusionConfig,
    GaussianDiffusion,
    GriffinLimVocoder,
    HiFiGANConfig,
    HiFiGANGenerator,
    HiFiGANVocoder,
    SamplingDefaults,
    Synthesizer,
    SynthesizerConfig,
    UNetConfig,
)
from clipsynth_core.noise import device_generator, example_keys
from clipsynth_core.synthesizer import bundles_clip_weights
from clipsynth_core.training import DiffusionStep, adamw, resolve_bf16, scheduled_lr
from clipsynth_platform.runtime.logs import get_logger
from clipsynth_platform.runtime.uri import fsspec_filesystem, strip_scheme

from .checkpoints import TrainingState, resume, save_checkpoint
from .config import DiffusionTrainConfig
from .data import diffusion_examples, training_batches
from .loop import IntervalSums, StepLoop, start_tracking
from .registration import BundleRegistration, register_bundle
from .tracking import RunTracker, log_samples
from .vocoder import load_hifigan
from .worker import RankStreams, WorkerPlace, configure_device, prepare_model, run_worker

log = get_logger("train")
TERMS = ("loss", "mse", "vb", "grad_norm")


class _ReferencedClip(torch.nn.Module):
    """Stands in for a pretrained CLIP when a bundle is written: bundles reference pretrained CLIP weights by
    name (they never copy them), so the weights need not be present on the training workers."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self._embed_dim = embed_dim

    @property
    def embed_dim(self) -> int:
        return self._embed_dim


def build_bundle(
    directory: Path,
    *,
    clip: ClipConfig,
    unet_config: UNetConfig,
    unet_state: dict[str, torch.Tensor],
    diffusion: DiffusionConfig,
    vocoder: HiFiGANGenerator,
    sampling_steps: int,
    metadata: dict,
    serving_vocoder: str = "hifigan",
) -> Path:
    """Write a synthesizer bundle (core format) with the given U-Net weights and vocoder."""
    from clipsynth_core import ClipQueryEncoder

    config = SynthesizerConfig(
        clip=clip,
        unet=unet_config,
        diffusion=diffusion,
        vocoder=vocoder.config,
        serving_vocoder=serving_vocoder,
        sampling=SamplingDefaults(steps=min(sampling_steps, diffusion.num_steps)),
        metadata=metadata,
    )
    unet = ConditionalUNet(unet_config)
    unet.load_state_dict(unet_state)
    # Random and local CLIPs travel inside the bundle (their weights are loaded here, from the worker's disk).
    encoder = (
        ClipQueryEncoder(clip)
        if bundles_clip_weights(clip)
        else cast(ClipQueryEncoder, _ReferencedClip(unet_config.cond_dim))  # stands in: the bundle names the CLIP
    )
    return Synthesizer(config, unet=unet, hifigan=vocoder, encoder=encoder).save(directory)


@torch.no_grad()
def sample_mels(
    model: torch.nn.Module,
    diffusion: GaussianDiffusion,
    cond: torch.Tensor,
    frames: int,
    n_mels: int,
    seed: int,
) -> torch.Tensor:
    """EMA-model samples [K, n_mels, frames] (DDPM over the respaced steps), example i seeded with seed + i (the
    serving sampler's noise, drawn on the device)."""
    keys = example_keys([seed + i for i in range(cond.shape[0])], cond.device)
    shape = (cond.shape[0], 1, n_mels, frames)
    x = diffusion.sample(lambda x, t: model(x, t, cond, None), shape, seeds=keys)
    return x[:, 0].clamp(-1, 1)


def _log_ema_samples(
    tracker: RunTracker,
    step: int,
    *,
    cfg: DiffusionTrainConfig,
    names: list[str],
    model: torch.nn.Module,
    diffusion: GaussianDiffusion,
    cond: torch.Tensor,
    n_mels: int,
    vocoder: torch.nn.Module,
    vocoder_name: str,
) -> None:
    """The EMA model's samples of the fixed conditions (mels and audio) logged at a sample interval."""
    mels = sample_mels(model, diffusion, cond, cfg.window_frames, n_mels, cfg.sample_seed)
    with torch.no_grad():
        waves = vocoder(mels.cpu()).clamp(-1.0, 1.0)
    log_samples(
        tracker,
        step,
        names=names,
        mels=mels.cpu().numpy(),
        waves=waves.numpy(),
        sample_rate=16_000,
        title=f"step {step}, EMA model, {cfg.sample_steps} DDPM steps, vocoder {vocoder_name}",
    )


def _examples(rows: dict, seed: int, *, variant: str, window_frames: int) -> dict[str, np.ndarray]:
    return diffusion_examples(rows, variant=variant, window_frames=window_frames, seed=seed)


def train_diffusion_worker(loop_config: dict) -> None:
    """Ray Train's train_loop_per_worker; `loop_config` comes from the runner (config + resolved job)."""
    run_worker(DiffusionTrainConfig, loop_config, _train_diffusion_worker)


def _train_diffusion_worker(cfg: DiffusionTrainConfig, job: dict, place: WorkerPlace) -> None:
    """The diffusion loop itself (see the module docstring)."""
    import ray.train

    rank, device = place.rank, place.device
    configure_device(device, cfg.tf32)
    channels_last = device.type == "cuda" and cfg.channels_last
    unet_config = UNetConfig.from_dict(job["unet"])
    diffusion_config = DiffusionConfig(**job["diffusion"])
    diffusion = GaussianDiffusion.from_config(diffusion_config).to(device)  # its tables on the device, once

    # The model (the same initial weights on every rank: DDP also broadcasts rank 0's), its EMA and optimiser.
    torch.manual_seed(cfg.seed)
    model = ConditionalUNet(unet_config).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = EMA(model, cfg.ema_decay, warmup=cfg.ema_warmup)
    optimizer = adamw(model.parameters(), device, lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = TrainingState(model, optimizer, ema=ema)
    start = resume(state, device, rank, log)
    if not start.resumed and job.get("init_from"):
        _start_from_trained(model, ema, job["init_from"])
    streams = RankStreams(cfg.seed, rank, start.step)
    torch.manual_seed(streams.dropout)  # each rank its own dropout, now that the weights are made
    plan = job["batch"]
    update = DiffusionStep(
        prepare_model(model, broadcast_buffers=False, compiled=cfg.compile),  # the U-Net has no buffers
        diffusion,
        optimizer,
        ema,
        grad_clip=cfg.grad_clip or None,
        cond_drop_prob=diffusion_config.cond_drop_prob,
        bf16=resolve_bf16(cfg.bf16, device),
        generator=device_generator(device, streams.noise),
        microbatch=plan["microbatch"],
    )
    batches = training_batches(
        ray.train.get_dataset_shard("train"),
        cached=job["cache_in_worker"],
        make_examples=partial(_examples, variant=cfg.variant, window_frames=cfg.window_frames),
        batch_size=plan["per_worker"],
        shuffle_buffer=cfg.shuffle_buffer,
        seed=streams.data,
        device=device,
    )
    tracker = start_tracking(cfg, job, start, place.world, log) if rank == 0 else None
    sample = _ema_sampler(cfg, job, ema, diffusion_config, device, tracker, start.step) if tracker else None

    loop = StepLoop(cfg, job, place, start)
    sums = IntervalSums(TERMS, device)
    update.model.train()
    for step in loop:
        batch = loop.next_batch(batches)
        if cfg.lr_schedule != "constant":
            for group in optimizer.param_groups:
                group["lr"] = scheduled_lr(cfg.lr_schedule, cfg.lr, loop.budget.fraction(step - 1, cfg.max_steps))
        mel = batch["mel"].unsqueeze(1).float()
        if channels_last:
            mel = mel.contiguous(memory_format=torch.channels_last)
        terms = update(mel, batch["cond"].float(), step)
        sums.add(terms)
        loop.finish(step)

        if loop.due(cfg.log_every, step):
            lr = optimizer.param_groups[0]["lr"]
            loop.log(step, sums, tracker, lr, "loss {loss:.4f} mse {mse:.4f} vb {vb:.4f} grad {grad_norm:.3f}", log)
        if sample is not None and loop.due(cfg.sample_every, step):
            sample(step)
        if loop.due(cfg.checkpoint_every, step):
            save_checkpoint(
                step,
                state,
                rank,
                metrics={"step": step, "loss": float(terms["loss"])},
                fields=loop.checkpoint_fields(tracker, "diffusion"),
                rank_info=start.rank_info,
                tracker=tracker,
            )

    if tracker is not None:
        _finish(cfg, job, tracker, ema, unet_config, diffusion_config, loop.last_step)


def _start_from_trained(model: torch.nn.Module, ema: EMA, init: dict) -> None:
    """Fine-tuning's start: the trained bundle's U-Net weights (its EMA weights, which the bundle carries) in
    both the model and its EMA, read from the copy the driver put in the run's storage."""
    fs = fsspec_filesystem(init["weights"])
    with fs.open(strip_scheme(init["weights"]), "rb") as f:
        weights = load_safetensors(f.read())
    model.load_state_dict(weights)
    ema.load_state_dict(weights)
    log.info(f"starting from the weights of {init['uri']} (run {init['source_run']}, step {init['source_step']})")


def _ema_sampler(
    cfg: DiffusionTrainConfig,
    job: dict,
    ema: EMA,
    diffusion_config: DiffusionConfig,
    device: torch.device,
    tracker: RunTracker,
    start_step: int,
):
    """Rank 0's periodic samples: the EMA model on the fixed conditions, voiced by the --vocoder's HiFi-GAN
    (or Griffin-Lim), logged to the run at each sample interval."""
    vocoder: torch.nn.Module
    if cfg.vocoder:
        generator, _ = load_hifigan(cfg.vocoder)
        vocoder, vocoder_name = HiFiGANVocoder(generator).eval(), f"hifigan:{cfg.vocoder}"
    else:
        vocoder, vocoder_name = GriffinLimVocoder(), GriffinLimVocoder.name
    tracker.set_tags({"sample_vocoder": vocoder_name, "resumed_at_step": str(start_step)})
    return partial(
        _log_ema_samples,
        tracker,
        cfg=cfg,
        names=job["sample_names"],
        model=ema.model,
        diffusion=GaussianDiffusion.from_config(diffusion_config).respaced(cfg.sample_steps).to(device),
        cond=torch.tensor(np.asarray(job["sample_conds"], dtype=np.float32), device=device),
        n_mels=UNetConfig.from_dict(job["unet"]).input_height,
        vocoder=vocoder,
        vocoder_name=vocoder_name,
    )


def _finish(
    cfg: DiffusionTrainConfig,
    job: dict,
    tracker: RunTracker,
    ema: EMA,
    unet_config: UNetConfig,
    diffusion_config: DiffusionConfig,
    final_step: int,
) -> None:
    """Rank 0 at the end: the synthesizer bundle (EMA weights) as an MLflow model, registered when asked."""
    done = tracker.record.get("bundle_step")
    if done is not None and int(done) >= final_step:
        log.info(f"already finished: the bundle of step {done} is logged (run {tracker.run_id})")
        tracker.finish()
        return
    if cfg.vocoder:
        vocoder, _ = load_hifigan(cfg.vocoder)
        vocoder_note = cfg.vocoder
    else:
        vocoder = HiFiGANGenerator(HiFiGANConfig.from_dict(job["vocoder_config"]))
        vocoder_note = "untrained (random init): train one with jobs/train_hifigan.py and pass --vocoder"
    metadata = {
        "mlflow_run_id": tracker.run_id,
        "dataset": cfg.data,
        "variant": cfg.variant,
        "step": final_step,
        "ema_decay": cfg.ema_decay,
        "vocoder": vocoder_note,
        "experiment": cfg.experiment,
        **({"init_from": job["init_from"]["uri"]} if job.get("init_from") else {}),
    }
    with tempfile.TemporaryDirectory(prefix="clipsynth-bundle-") as tmp:
        ema_state = {k: v.detach().cpu() for k, v in ema.state_dict().items()}
        build_bundle(
            Path(tmp) / "bundle",
            clip=ClipConfig(**job["clip"]),
            unet_config=unet_config,
            unet_state=ema_state,
            diffusion=diffusion_config,
            vocoder=vocoder,
            sampling_steps=cfg.bundle_sampling_steps,
            metadata=metadata,
            serving_vocoder=cfg.serving_vocoder,
        )
        # Retried; kept in storage with the command that registers it when MLflow does not take it (registration.py)
        what = BundleRegistration(final_step, cfg.register_as, cfg.register_alias, vocoder_note)
        result = register_bundle(tracker, Path(tmp) / "bundle", what)
    if result.model_uri is not None:
        where = f"models:/{cfg.register_as}/{result.version}" if result.version is not None else result.model_uri
        where += f" = {result.alias_uri}" if result.alias_uri else ""
        log.info(f"finished at step {final_step}; synthesizer bundle: {where} (MLflow run {tracker.run_id})")
    tracker.finish()
