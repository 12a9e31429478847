"""End-to-end sampling benchmark of the Synthesizer: text -> CLIP -> diffusion (respaced) -> HiFi-GAN.

Measures, for each step count, the median wall time of `synthesize` on a batch and the split between the
diffusion loop and the vocoder, and reports samples/s and real-time factor (seconds of audio per second).
Models are randomly initialised at the chosen sizes (speed does not depend on the weights).
Usage: python benchmarks/core/sampling.py [--unet small] [--vocoder small] [--steps 25,50,100] [--device cuda]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import benchmark_parser, emit, environment, peak_memory_mb, reset_peak, time_it

from clipsynth_core import (
    ClipConfig,
    SamplingDefaults,
    Synthesizer,
    SynthesizerConfig,
    hifigan_config,
    unet_config,
)


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--unet", default="small", help="U-Net preset: tiny | small | paper")
    p.add_argument("--vocoder", default="small", help="HiFi-GAN preset: tiny | small | paper")
    p.add_argument("--clip", default="tiny", help="CLIP model name (random weights; 'tiny' or e.g. ViT-B-32)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", default="10,25,50")
    p.add_argument("--sampler", default="ddpm", choices=["ddpm", "ddim"])
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device = torch.device(args.device)

    clip = ClipConfig(model_name=args.clip, pretrained="none")
    probe = Synthesizer(
        SynthesizerConfig(clip=clip, unet=unet_config("tiny", cond_dim=64 if args.clip == "tiny" else 512)),
        device="cpu",
    )
    cond_dim = probe.encoder.embed_dim
    cfg = SynthesizerConfig(
        clip=clip,
        unet=unet_config(args.unet, cond_dim=cond_dim),
        vocoder=hifigan_config(args.vocoder),
        sampling=SamplingDefaults(sampler=args.sampler),
    )
    synth = Synthesizer(cfg, encoder=probe.encoder, device=device)
    queries = [f"query {i}" for i in range(args.batch_size)]
    audio_s = 64 * 1024 / 16_000

    rows = []
    for steps in [int(s) for s in args.steps.split(",")]:
        reset_peak(device)
        total = time_it(lambda s=steps: synth.synthesize(queries, steps=s, seed=0), device, 1, args.iters)
        cond = synth.encode(queries)
        t0 = time.perf_counter()
        mel = synth.sample_mels(cond, steps=steps, seed=0)
        t1 = time.perf_counter()
        synth.vocode(mel)
        t2 = time.perf_counter()
        rows.append(
            {
                "steps": steps,
                "synthesize": total,
                "diffusion_s": t1 - t0,
                "vocoder_s": t2 - t1,
                "samples_per_s": args.batch_size / total["median_s"],
                "real_time_factor": args.batch_size * audio_s / total["median_s"],
                "peak_memory_mb": peak_memory_mb(device),
            }
        )
        print(f"# {steps} steps: {rows[-1]['samples_per_s']:.3f} samples/s", file=sys.stderr)
    # Linear fit of time against steps gives the per-step cost and a projection for the paper's 1,000 steps.
    xs = [r["steps"] for r in rows]
    ys = [r["synthesize"]["median_s"] for r in rows]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(sum((x - mx) ** 2 for x in xs), 1e-12)
    fixed = my - slope * mx
    projected_1000 = fixed + 1000 * slope
    result = {
        "benchmark": "sampling",
        "unet": args.unet,
        "vocoder": args.vocoder,
        "sampler": args.sampler,
        "batch_size": args.batch_size,
        "environment": environment(device),
        "rows": rows,
        "per_step_s": slope,
        "fixed_s": fixed,
        "projected_1000_steps_s": projected_1000,
        "projected_1000_steps_samples_per_s": args.batch_size / projected_1000,
    }
    fast = rows[-1]
    summary = (
        f"{args.unet} U-Net + {args.vocoder} HiFi-GAN on {device.type}, batch {args.batch_size}: "
        f"{fast['steps']} steps {fast['samples_per_s']:.3f} samples/s (RTF {fast['real_time_factor']:.2f}); "
        f"1,000 steps projected {result['projected_1000_steps_samples_per_s']:.4f} samples/s "
        f"({slope * 1000:.1f} ms per denoising step)"
    )
    emit(result, f"sampling_{device.type}", summary, args.out)


if __name__ == "__main__":
    main()
