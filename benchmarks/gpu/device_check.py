"""What a GPU does with the hot paths (issue 27), in one run: the pieces benchmarks/core/unet.py does not cover.

  syncs        host synchronisations per diffusion training step, per guided sampling step and per HiFi-GAN step,
               counted by torch.cuda.set_sync_debug_mode("warn") (CUDA only; on a CPU there is nothing to count:
               tests/test_sync_free.py proves the same on the meta device)
  attention    which scaled-dot-product kernels accept the U-Net's attention (flash, memory-efficient, cuDNN, math)
  mfu          model FLOPs utilisation of the U-Net training step (FLOPs counted by torch's FlopCounterMode,
               against the GPU's dense bf16 peak) in fp32 and bf16
  hifigan      the HiFi-GAN step (generator + both discriminators) in fp32 and bf16: steps/s, peak memory
  sampling     guided sampling of 50 respaced steps at batch 1, 16 and 64, fp32 and bf16 (Synthesizer.sample_in)

    python benchmarks/gpu/device_check.py --device cuda                # the paper's sizes
    python benchmarks/gpu/device_check.py --device cpu --quick         # small sizes: what tests/ runs

Prints JSON (default benchmarks/results/device_check_<device>.json) and a one-line summary. benchmarks/gpu/run.sh
runs it with the U-Net modes and a Ray Train smoke run.
"""

from __future__ import annotations

import sys
import time
import warnings
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import benchmark_parser, emit, environment, peak_memory_mb, reset_peak, sync, time_it

from clipsynth_core import ConditionalUNet, DiffusionConfig, GaussianDiffusion, unet_config
from clipsynth_core.clip_encoder import TINY_CLIP_CONFIG
from clipsynth_core.hifigan import HiFiGANDiscriminator, HiFiGANGenerator, hifigan_config
from clipsynth_core.hifigan_step import HiFiGANStep
from clipsynth_core.mel import MelConfig, MelFrontend
from clipsynth_core.noise import device_generator
from clipsynth_core.synthesizer import SamplingDefaults, Synthesizer, SynthesizerConfig
from clipsynth_core.training import DiffusionStep, adamw

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, matched on the device name.
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


def bf16_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK.items() if key in name), None)


def count_syncs(fn, device: torch.device, calls: int) -> float | None:
    """Host synchronisations per call of `fn` (after one warm-up call), as CUDA's sync debug mode reports them."""
    if device.type != "cuda":
        return None
    fn()
    sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(calls):
                fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught) / calls


def diffusion_setup(args, device: torch.device, bf16: bool):
    torch.manual_seed(0)
    model = ConditionalUNet(unet_config(args.preset)).to(device)
    diffusion = GaussianDiffusion.from_config(DiffusionConfig()).to(device)
    step = DiffusionStep(
        model,
        diffusion,
        adamw(model.parameters(), device, lr=1e-4),
        grad_clip=1.0,
        cond_drop_prob=0.1,
        bf16=bf16,
        generator=device_generator(device, 0),
    )
    mel = torch.rand(args.batch_size, 1, 64, 64, device=device) * 2 - 1
    cond = torch.nn.functional.normalize(torch.randn(args.batch_size, model.config.cond_dim, device=device), dim=-1)
    return model, step, mel, cond


def unet_step(args, device: torch.device) -> dict:
    """Steps/s, peak memory, syncs and MFU of the diffusion training step, fp32 and bf16."""
    from torch.utils.flop_counter import FlopCounterMode

    out = {}
    peak = bf16_peak(device)
    for name, bf16 in (("fp32", False), ("bf16", True)):
        if bf16 and device.type == "cpu" and not args.quick:
            continue
        model, step, mel, cond = diffusion_setup(args, device, bf16)
        counter = FlopCounterMode(display=False)
        with counter:
            step(mel, cond, 1)
        flops = counter.get_total_flops()
        reset_peak(device)
        call = partial(step, mel, cond, 1)
        timing = time_it(call, device, args.warmup, args.iters)
        out[name] = {
            "steps_per_s": 1 / timing["median_s"],
            "samples_per_s": args.batch_size / timing["median_s"],
            "step": timing,
            "peak_memory_mb": peak_memory_mb(device),
            "flops_per_step": flops,
            "mfu_vs_bf16_peak": flops / timing["median_s"] / peak if peak else None,
            "syncs_per_step": count_syncs(call, device, 3),
        }
        del model, step, call
    return out


def attention_kernels(args, device: torch.device) -> dict:
    """For each SDPA backend alone: does the U-Net's forward pass run on it (bf16 on CUDA, fp32 on a CPU)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = ConditionalUNet(unet_config(args.preset)).to(device).eval()
    x = torch.randn(2, 1, 64, 64, device=device)
    t = torch.tensor([1, 500], device=device)
    cond = torch.randn(2, model.config.cond_dim, device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    usable = {}
    for backend in (
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.MATH,
    ):
        try:
            with (
                torch.no_grad(),
                sdpa_kernel([backend]),
                torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32),
            ):
                model(x, t, cond, None)
            usable[backend.name] = True
        except RuntimeError as e:  # "No available kernel": the backend refused these inputs
            usable[backend.name] = str(e).splitlines()[0][:200]
    return usable


def hifigan_step(args, device: torch.device) -> dict:
    """The HiFi-GAN update (discriminators, then generator) on one-second segments, fp32 and bf16."""
    cfg = hifigan_config(args.hifigan_preset)
    mel = MelFrontend(MelConfig()).to(device)
    segment = cfg.hop_length * args.hifigan_frames
    out = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        if bf16 and device.type == "cpu" and not args.quick:
            continue
        torch.manual_seed(0)
        g, d = HiFiGANGenerator(cfg).to(device), HiFiGANDiscriminator(cfg).to(device)
        step = HiFiGANStep(
            g, d, mel, cfg, adamw(g.parameters(), device, lr=2e-4), adamw(d.parameters(), device, lr=2e-4), bf16=bf16
        )
        wave = torch.randn(args.hifigan_batch, segment, device=device) * 0.1
        mels = step.mel_of(wave)
        reset_peak(device)
        call = partial(step, mels, wave, 10)
        timing = time_it(call, device, args.warmup, args.iters)
        out[name] = {
            "steps_per_s": 1 / timing["median_s"],
            "step": timing,
            "peak_memory_mb": peak_memory_mb(device),
            "syncs_per_step": count_syncs(call, device, 3),
        }
    return {"preset": args.hifigan_preset, "batch": args.hifigan_batch, "segment_samples": segment, **out}


def sampling(args, device: torch.device) -> dict:
    """Guided sampling, `--sample-steps` respaced steps, at each batch size: samples/s, fp32 and bf16."""
    unet = unet_config(args.preset, cond_dim=TINY_CLIP_CONFIG["embed_dim"])
    config = SynthesizerConfig.tiny(
        unet=unet, diffusion=DiffusionConfig(cond_drop_prob=0.1), sampling=SamplingDefaults(steps=args.sample_steps)
    )
    synth = Synthesizer.untrained(config)
    synth = Synthesizer(config, unet=synth.unet, hifigan=synth.hifigan, encoder=synth.encoder, device=device)
    out: dict = {"steps": args.sample_steps, "guidance": 3.0, "batches": {}}
    for batch in args.sample_batches:
        cond = torch.nn.functional.normalize(torch.randn(batch, unet.cond_dim, device=device), dim=-1)
        row = {}
        for precision in ("fp32", "bf16"):
            if precision == "bf16" and device.type == "cpu" and not args.quick:
                continue
            synth.sample_in(precision)
            synth.sample_mels(cond, seed=0, guidance=3.0)  # warm-up: respacing and kernels
            sync(device)
            t0 = time.perf_counter()
            synth.sample_mels(cond, seed=0, guidance=3.0)
            sync(device)
            seconds = time.perf_counter() - t0
            row[precision] = {"seconds": seconds, "samples_per_s": batch / seconds}
        if device.type == "cuda":
            two_steps = partial(synth.sample_mels, cond[:1], seed=0, guidance=3.0, steps=2)
            row["syncs_per_call_of_2_steps"] = count_syncs(two_steps, device, 2)
        out["batches"][str(batch)] = row
    return out


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small sizes (tiny presets, small batches): for tests")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    if args.quick:
        args.preset, args.batch_size, args.warmup, args.iters = "tiny", 4, 1, 2
        args.hifigan_preset, args.hifigan_batch, args.hifigan_frames = "tiny", 2, 8
        args.sample_steps, args.sample_batches = 3, [1, 2]
    else:
        args.preset, args.batch_size, args.warmup, args.iters = "paper", 128, 3, 10
        args.hifigan_preset, args.hifigan_batch, args.hifigan_frames = "paper", 16, 32
        args.sample_steps, args.sample_batches = 50, [1, 16, 64]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    result = {"benchmark": "device_check", "quick": args.quick, "environment": environment(device)}
    for section in (unet_step, attention_kernels, hifigan_step, sampling):
        t0 = time.perf_counter()
        result[section.__name__] = section(args, device)
        print(f"# {section.__name__}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    u = result["unet_step"]["fp32"]
    best = max(result["unet_step"].values(), key=lambda r: r["steps_per_s"])
    summary = (
        f"{args.preset} U-Net on {device.type}, batch {args.batch_size}: fp32 {u['steps_per_s']:.2f} steps/s, best "
        f"{best['steps_per_s']:.2f} (MFU {best['mfu_vs_bf16_peak']}); syncs per step {u['syncs_per_step']}; "
        f"attention kernels {[k for k, v in result['attention_kernels'].items() if v is True]}"
    )
    emit(result, f"device_check_{device.type}{'_quick' if args.quick else ''}", summary, args.out)


if __name__ == "__main__":
    main()
