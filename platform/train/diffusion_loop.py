"""The Ray Train worker function of the diffusion model (one per data-parallel worker).

Per step: a batch of (64-frame mel window, CLIP condition) examples from this worker's dataset shard, then
the core's DiffusionStep: the hybrid loss, backward through DDP (gradients averaged over workers), optional
gradient clipping, AdamW, EMA. Training stops at --max-steps or when --train-seconds are spent.
At intervals: metrics averaged over workers (MLflow, rank 0), EMA samples (rank 0), checkpoints (all ranks
report; rank 0 writes the state). At the end, rank 0 registers the synthesizer bundle with the EMA weights.
"""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path
from typing import cast

import numpy as np
import torch

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
from clipsynth_core.synthesizer import bundles_clip_weights, make_generators
from clipsynth_core.training import DiffusionStep, resolve_bf16, scheduled_lr
from clipsynth_platform.runtime.logs import get_logger

from .common import (
    TimeBudget,
    WorkerPlace,
    resume,
    run_worker,
    start_tracking,
    stream_seed,
)
from .config import DiffusionTrainConfig
from .data import diffusion_examples
from .registration import BundleRegistration, register_bundle
from .state import TrainingState
from .steps import StepParts, run_steps, worker_batches
from .tracking import RunTracker, log_samples
from .vocoder import load_hifigan

log = get_logger("train")


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
    """EMA-model samples [K, n_mels, frames] (DDPM over the respaced steps), example i seeded with seed + i."""
    device = cond.device
    gens = make_generators([seed + i for i in range(cond.shape[0])], "cpu")
    shape = (cond.shape[0], 1, n_mels, frames)
    x = diffusion.sample(lambda x, t: model(x, t, cond, None), shape, generator=gens, device=device)
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
    import ray.train.torch

    rank, world, device = place.rank, place.world, place.device
    on_gpu = device.type == "cuda"
    bf16 = resolve_bf16(cfg.bf16, device)

    unet_config = UNetConfig.from_dict(job["unet"])
    diffusion_config = DiffusionConfig(**job["diffusion"])
    diffusion = GaussianDiffusion.from_config(diffusion_config)

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = ConditionalUNet(unet_config).to(device)
    if on_gpu and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = EMA(model, cfg.ema_decay, warmup=cfg.ema_warmup)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))

    state = TrainingState(model, optimizer, ema=ema)
    start = resume(state, device, rank, log)
    start_step, resumed = start.step, start.rank_info
    ddp_model = ray.train.torch.prepare_model(model)

    # Noise and timesteps: a stream per rank and per attempt, reproducible from the seed.
    noise_gen = torch.Generator().manual_seed(stream_seed(cfg.seed, rank, start_step))
    examples = partial(_examples, variant=cfg.variant, window_frames=cfg.window_frames)
    batches = worker_batches(cfg, job, place, start_step, examples)

    tracker: RunTracker | None = None
    sample = None
    if rank == 0:
        tracker = start_tracking(cfg, job, start, world, log)
        vocoder: torch.nn.Module
        if cfg.vocoder:
            generator, _ = load_hifigan(cfg.vocoder)
            vocoder, vocoder_name = HiFiGANVocoder(generator).eval(), f"hifigan:{cfg.vocoder}"
        else:
            vocoder, vocoder_name = GriffinLimVocoder(), GriffinLimVocoder.name
        tracker.set_tags({"sample_vocoder": vocoder_name, "resumed_at_step": str(start_step) if resumed else "0"})
        sample = partial(
            _log_ema_samples,
            cfg=cfg,
            names=job["sample_names"],
            model=ema.model,
            diffusion=diffusion.respaced(cfg.sample_steps),
            cond=torch.tensor(np.asarray(job["sample_conds"], dtype=np.float32), device=device),
            n_mels=unet_config.input_height,
            vocoder=vocoder,
            vocoder_name=vocoder_name,
        )

    budget = TimeBudget(cfg.train_seconds, start.train_seconds)

    step_fn = DiffusionStep(
        ddp_model,
        diffusion,
        optimizer,
        ema,
        grad_clip=cfg.grad_clip or None,
        cond_drop_prob=diffusion_config.cond_drop_prob,
        bf16=bf16,
        generator=noise_gen,
    )

    # Running sums stay on the device (no host sync per step); they are read at log intervals.
    term_keys = ("loss", "mse", "vb", "grad_norm")
    sums = torch.zeros(len(term_keys), dtype=torch.float64, device=device)

    def update(step: int, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if cfg.lr_schedule != "constant":
            for group in optimizer.param_groups:
                group["lr"] = scheduled_lr(cfg.lr_schedule, cfg.lr, budget.fraction(step - 1, cfg.max_steps))
        mel = batch["mel"].unsqueeze(1).float()
        cond = batch["cond"].float()
        if on_gpu and cfg.channels_last:
            mel = mel.contiguous(memory_format=torch.channels_last)
        terms = step_fn(mel, cond, step)
        sums.add_(torch.stack([terms[k] for k in term_keys]).double())
        return terms

    def interval_means(count: int) -> dict[str, float]:
        means = dict(zip(term_keys, (sums / count).tolist()))
        sums.zero_()
        return means

    def describe(m: dict[str, float]) -> str:
        return f"loss {m['loss']:.4f} mse {m['mse']:.4f} vb {m['vb']:.4f} grad {m['grad_norm']:.3f}"

    parts = StepParts(
        update=update,
        interval_means=interval_means,
        describe=describe,
        lr=lambda: optimizer.param_groups[0]["lr"],
        checkpoint_metrics=lambda terms: {"loss": float(terms["loss"].detach())},
        state=state,
        kind="diffusion",
        sample=sample,
    )
    ddp_model.train()
    last_checkpoint = run_steps(cfg, job, place, start, budget, batches, parts, tracker, log)

    if tracker is not None:
        _finish(cfg, job, tracker, ema, unet_config, diffusion_config, last_checkpoint)


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
