"""The Ray Train worker function of the diffusion model (one per data-parallel worker).

Per step: a batch of (64-frame mel window, CLIP condition) examples from this worker's dataset shard, then
the core's DiffusionStep: the hybrid loss, backward through DDP (gradients averaged over workers), optional
gradient clipping, AdamW, EMA. Training stops at --max-steps or when --train-seconds are spent.
At intervals: metrics averaged over workers (MLflow, rank 0), EMA samples (rank 0), checkpoints (all ranks
report; rank 0 writes the state). At the end, rank 0 registers the synthesizer bundle with the EMA weights.
"""

from __future__ import annotations

import functools
import tempfile
import time
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
    load_training_state,
    save_training_state,
)
from clipsynth_core.synthesizer import bundles_clip_weights, make_generators
from clipsynth_core.training import DiffusionStep, resolve_bf16, scheduled_lr

from ..logs import get_logger
from ..registry import log_bundle_model, set_alias
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
from .config import DiffusionTrainConfig
from .data import diffusion_examples, training_batches
from .tracking import RunTracker, log_samples
from .vocoder import load_vocoder

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
    x = diffusion.p_sample_loop(lambda x, t: model(x, t, cond, None), shape, generator=gens, device=device)
    return x[:, 0].clamp(-1, 1)


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

    start = resume(
        lambda d: load_training_state(d, model=model, ema=ema, optimizer=optimizer, map_location=device),
        model,
        rank,
        log,
    )
    start_step, resumed = start.step, start.rank_info
    ddp_model = ray.train.torch.prepare_model(model)

    # Noise and timesteps: a stream per rank and per attempt, reproducible from the seed.
    noise_gen = torch.Generator().manual_seed(stream_seed(cfg.seed, rank, start_step))
    batches = training_batches(
        ray.train.get_dataset_shard("train"),
        cached=job["cache_in_worker"],
        make_examples=partial(_examples, variant=cfg.variant, window_frames=cfg.window_frames),
        batch_size=cfg.batch_size,
        shuffle_buffer=cfg.shuffle_buffer,
        seed=stream_seed(cfg.seed, rank, start_step) + 1,  # the data's stream, beside the noise's
        device=device,
    )

    tracker: RunTracker | None = None
    vocoder: torch.nn.Module | None = None
    if rank == 0:
        tracker = start_tracking(cfg, job, start, world, log)
        if cfg.vocoder:
            generator, _ = load_vocoder(cfg.vocoder)
            vocoder, vocoder_name = HiFiGANVocoder(generator).eval(), f"hifigan:{cfg.vocoder}"
        else:
            vocoder, vocoder_name = GriffinLimVocoder(), GriffinLimVocoder.name
        tracker.set_tags({"sample_vocoder": vocoder_name, "resumed_at_step": str(start_step) if resumed else "0"})
    sample_diffusion = diffusion.respaced(cfg.sample_steps)
    sample_cond = torch.tensor(np.asarray(job["sample_conds"], dtype=np.float32), device=device)

    budget = TimeBudget(cfg.train_seconds, start.train_seconds)

    def write_state(d: Path, step: int) -> None:
        save_training_state(
            d,
            model=ddp_model,
            step=step,
            ema=ema,
            optimizer=optimizer,
            extra={
                "mlflow_run_id": tracker.run_id if tracker else None,
                "kind": "diffusion",
                "config": cfg.to_dict(),
                "train_seconds": budget.spent(),
            },
        )

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

    progress = Progress(start_step, cfg.max_steps, cfg.batch_size * world)
    # Running sums stay on the device (no host sync per step); they are read at log intervals.
    term_keys = ("loss", "mse", "vb", "grad_norm")
    sums = torch.zeros(len(term_keys), dtype=torch.float64, device=device)
    data_wait = 0.0
    count = 0
    last_checkpoint = start_step
    ddp_model.train()
    out_of_time = budget.exhausted(start_step, device, force=True)  # a finished run, resumed: nothing to do
    for step in range(start_step + 1, cfg.max_steps + 1):
        if out_of_time:
            break
        fault_drill(cfg.fail_at_step, step, rank, world, job["storage_path"], job["run_name"])
        if cfg.lr_schedule != "constant":
            for group in optimizer.param_groups:
                group["lr"] = scheduled_lr(cfg.lr_schedule, cfg.lr, budget.fraction(step - 1, cfg.max_steps))
        t_wait = time.perf_counter()
        batch = next(batches)
        data_wait += time.perf_counter() - t_wait
        mel = batch["mel"].unsqueeze(1).float()
        cond = batch["cond"].float()
        if on_gpu and cfg.channels_last:
            mel = mel.contiguous(memory_format=torch.channels_last)
        terms = step_fn(mel, cond, step)
        sums += torch.stack([terms[k] for k in term_keys]).double()
        count += 1
        out_of_time = budget.exhausted(step, device)
        last = step == cfg.max_steps or out_of_time

        if step % cfg.log_every == 0 or last:
            values = dict(zip(term_keys, (sums / count).tolist()))
            means = mean_across_ranks({**values, "data_wait_s_per_step": data_wait / count}, device)
            pace = progress.interval(step)
            if tracker is not None:
                tracker.log_metrics(
                    interval_metrics(means, optimizer.param_groups[0]["lr"], budget, pace, world, device), step
                )
                log.info(
                    f"step {step}/{cfg.max_steps} loss {means['loss']:.4f} mse {means['mse']:.4f} "
                    f"vb {means['vb']:.4f} grad {means['grad_norm']:.3f} | {pace['samples_per_s']:.1f} samples/s | "
                    f"ETA {Progress.format_eta(pace['eta_s'])}"
                )
            sums.zero_()
            data_wait, count = 0.0, 0

        if tracker is not None and vocoder is not None and cfg.sample_every and (step % cfg.sample_every == 0 or last):
            mels = sample_mels(
                ema.model, sample_diffusion, sample_cond, cfg.window_frames, unet_config.input_height, cfg.sample_seed
            )
            with torch.no_grad():
                waves = vocoder(mels.cpu()).clamp(-1.0, 1.0)
            log_samples(
                tracker,
                step,
                names=job["sample_names"],
                mels=mels.cpu().numpy(),
                waves=waves.numpy(),
                sample_rate=16_000,
                title=f"step {step}, EMA model, {cfg.sample_steps} DDPM steps, vocoder {vocoder_name}",
            )

        if step % cfg.checkpoint_every == 0 or last:
            rank_info = {"model_digest": state_digest(ddp_model), "ema_digest": state_digest(ema.model), **resumed}
            report_checkpoint(
                step,
                {"step": step, "loss": float(terms["loss"].detach())},
                rank,
                functools.partial(write_state, step=step),
                rank_info,
            )
            last_checkpoint = step

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
    import mlflow

    done = tracker.record.get("bundle_step")
    if done is not None and int(done) >= final_step:
        log.info(f"already finished: the bundle of step {done} is logged (run {tracker.run_id})")
        tracker.finish()
        return
    if cfg.vocoder:
        vocoder, _ = load_vocoder(cfg.vocoder)
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
        with mlflow.start_run(run_id=tracker.run_id):
            info = log_bundle_model(Path(tmp) / "bundle", registered_name=cfg.register_as or None)
    version = getattr(info, "registered_model_version", None)
    alias_uri = None
    if version is not None and cfg.register_alias:
        alias_uri = set_alias(f"models:/{cfg.register_as}/{version}", cfg.register_alias)
    tracker.set_tags({"bundle_vocoder": vocoder_note, "model_uri": info.model_uri, "model_alias": alias_uri or ""})
    tracker.update_record(
        bundle_step=final_step,
        model_uri=info.model_uri,
        registered_model=cfg.register_as or None,
        registered_version=int(version) if version is not None else None,
        registered_alias=alias_uri,
    )
    where = f"models:/{cfg.register_as}/{version}" if version is not None else info.model_uri
    where += f" = {alias_uri}" if alias_uri else ""
    log.info(f"finished at step {final_step}; synthesizer bundle: {where} (MLflow run {tracker.run_id})")
    tracker.finish()
