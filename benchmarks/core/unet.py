"""U-Net training-step and sampling benchmark.

Modes (each measured in the same run, so ratios are meaningful):
  fp32_eager                 the baseline
  channels_last              fp32, channels_last memory format
  bf16_channels_last         bf16 autocast + channels_last (CUDA only; CPU autocast is skipped)
  bf16_channels_last_compile the above under torch.compile (CUDA; on CPU only with --compile-on-cpu)

Reports median seconds per training step (forward + backward + AdamW), training samples/s, median seconds per
denoising step at batch B, sampling samples/s projected for 1,000 (paper) and 50 respaced steps, and peak
memory. Usage: python benchmarks/core/unet.py [--preset small] [--batch-size 8] [--device cuda]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import benchmark_parser, emit, environment, peak_memory_mb, reset_peak, time_it

from clipsynth_core import ConditionalUNet, DiffusionConfig, GaussianDiffusion, diffusion_losses, unet_config
from clipsynth_core.noise import device_generator
from clipsynth_core.training import adamw, clip_and_step

MODES = ("fp32_eager", "channels_last", "bf16_channels_last", "bf16_channels_last_compile")


def run_mode(mode: str, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    cfg = unet_config(args.preset)
    model = ConditionalUNet(cfg).to(device)
    channels_last = mode != "fp32_eager"
    bf16 = mode.startswith("bf16")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fn = torch.compile(model) if mode.endswith("compile") else model
    diffusion = GaussianDiffusion.from_config(DiffusionConfig()).to(device)
    opt = adamw(model.parameters(), device, lr=1e-4)  # the training loop's: fused on CUDA and CPU
    mel = torch.rand(args.batch_size, 1, 64, args.frames, device=device) * 2 - 1
    if channels_last:
        mel = mel.to(memory_format=torch.channels_last)
    cond = torch.nn.functional.normalize(torch.randn(args.batch_size, cfg.cond_dim, device=device), dim=-1)
    gen = device_generator(device, 0)

    def train_step():
        model.train()
        loss = diffusion_losses(fn, diffusion, mel, cond, generator=gen, bf16=bf16)["loss"]
        loss.backward()
        clip_and_step(model.parameters(), opt, 1.0)

    reset_peak(device)
    train = time_it(train_step, device, args.warmup, args.iters)
    train_peak = peak_memory_mb(device)

    t = torch.full((args.batch_size,), 500, device=device)

    @torch.no_grad()
    def denoise_step():
        model.eval()
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and device.type == "cuda" else torch.no_grad()
        with ctx:
            fn(mel, t, cond)

    reset_peak(device)
    sample = time_it(denoise_step, device, args.warmup, args.iters)
    sample_peak = peak_memory_mb(device)
    per_step = sample["median_s"]
    return {
        "mode": mode,
        "train_step": train,
        "train_samples_per_s": args.batch_size / train["median_s"],
        "train_peak_memory_mb": train_peak,
        "denoise_step": sample,
        "sampling_samples_per_s_1000_steps": args.batch_size / (per_step * 1000),
        "sampling_samples_per_s_50_steps": args.batch_size / (per_step * 50),
        "sampling_peak_memory_mb": sample_peak,
    }


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--preset", default="small", help="U-Net preset: tiny | small | paper")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--frames", type=int, default=64, help="mel frames (64 = 4.16 s, 128 = 8.32 s)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--compile-on-cpu", action="store_true", help="also run torch.compile on CPU (slow to build)")
    p.add_argument("--out", default=None, help="JSON output path (default benchmarks/results/unet_<device>.json)")
    args = p.parse_args()
    device = torch.device(args.device)
    results = []
    for mode in args.modes.split(","):
        cpu_bf16 = device.type == "cpu" and mode.startswith("bf16")
        if cpu_bf16 and not (args.compile_on_cpu and mode.endswith("compile")):
            continue
        results.append(run_mode(mode, args, device))
        print(f"# {mode}: train {results[-1]['train_samples_per_s']:.2f} samples/s", file=sys.stderr)
    base = results[0]
    for r in results:
        r["train_speedup_vs_fp32_eager"] = r["train_samples_per_s"] / base["train_samples_per_s"]
        r["sampling_speedup_vs_fp32_eager"] = base["denoise_step"]["median_s"] / r["denoise_step"]["median_s"]
    result = {
        "benchmark": "unet",
        "preset": args.preset,
        "batch_size": args.batch_size,
        "frames": args.frames,
        "parameters": sum(p.numel() for p in ConditionalUNet(unet_config(args.preset)).parameters()),
        "environment": environment(device),
        "modes": results,
    }
    best = max(results, key=lambda r: r["train_samples_per_s"])
    summary = (
        f"{args.preset} U-Net on {device.type}, batch {args.batch_size}: fp32 eager {base['train_samples_per_s']:.2f} "
        f"train samples/s; best {best['mode']} {best['train_samples_per_s']:.2f} "
        f"({best['train_speedup_vs_fp32_eager']:.2f}x); sampling at 1,000 steps "
        f"{best['sampling_samples_per_s_1000_steps']:.4f} samples/s"
    )
    emit(result, f"unet_{device.type}", summary, args.out)


if __name__ == "__main__":
    main()
