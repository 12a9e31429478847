"""Benchmark: training throughput on CPU, per worker, and its scaling from 1 to 2 Ray Train workers.

    .venv/bin/python benchmarks/train/run.py [--unet-sizes tiny small] [--hifigan-sizes tiny] [--scaling-steps 12]

Measured, all in one run:
  step       - one optimiser step as a Train worker runs it (one intra-op thread, as Ray gives a 1-CPU worker):
               the diffusion step (hybrid loss, backward, clipping, AdamW, EMA) on 64 x 64 mels, and the
               HiFi-GAN step (D then G update, mel of the segment) on 32-frame segments; median of --iters
               after --warmup; reported as samples/s per worker;
  scaling    - the real job (run_diffusion_training: Ray Data -> TorchTrainer with DDP -> MLflow) with 1 and
               with 2 workers on the tiny U-Net; samples/s over the steady-state log intervals (median,
               start-up excluded); the ratio 2-worker / 1-worker total throughput.
On a 2-core machine shared with other jobs the scaling ratio is bounded by the free cores, not by DDP:
read it next to the machine's load average, which is recorded. Prints a JSON object and a one-line summary;
writes benchmarks/results/train_cpu.json.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import benchmark_parser, emit, environment, time_it


def diffusion_step_rate(size: str, batch: int, warmup: int, iters: int) -> dict:
    from clipsynth_core import EMA, ConditionalUNet, DiffusionConfig, GaussianDiffusion, diffusion_losses, unet_config
    from clipsynth_core.training import clip_and_step

    torch.manual_seed(0)
    model = ConditionalUNet(unet_config(size, cond_dim=512))
    ema = EMA(model, 0.9999)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    diffusion = GaussianDiffusion.from_config(DiffusionConfig())
    gen = torch.Generator().manual_seed(0)
    mel, cond = torch.rand(batch, 1, 64, 64) * 2 - 1, torch.nn.functional.normalize(torch.randn(batch, 512), dim=1)

    def step() -> None:
        terms = diffusion_losses(model, diffusion, mel, cond, cond_drop_prob=0.0, generator=gen, bf16=False)
        terms["loss"].backward()
        clip_and_step(model.parameters(), opt, 1.0)
        ema.update(model)

    t = time_it(step, torch.device("cpu"), warmup, iters)
    params = sum(p.numel() for p in model.parameters())
    return {"size": size, "batch": batch, "params": params, **t, "samples_per_s": batch / t["median_s"]}


def hifigan_step_rate(size: str, batch: int, frames: int, warmup: int, iters: int) -> dict:
    from clipsynth_core import HiFiGANDiscriminator, HiFiGANGenerator, HiFiGANStep, MelFrontend, hifigan_config

    torch.manual_seed(0)
    cfg = hifigan_config(size)
    g, d = HiFiGANGenerator(cfg), HiFiGANDiscriminator(cfg)
    adam = {"lr": 2e-4, "betas": (0.8, 0.99)}
    step_fn = HiFiGANStep(
        g, d, MelFrontend(), cfg, torch.optim.AdamW(g.parameters(), **adam), torch.optim.AdamW(d.parameters(), **adam)
    )
    wave = 0.3 * torch.sin(torch.linspace(0, 2000, frames * 1024)).repeat(batch, 1)

    def step() -> None:
        with torch.no_grad():
            mel = step_fn.mel_of(wave)
        step_fn(mel, wave)

    t = time_it(step, torch.device("cpu"), warmup, iters)
    return {"size": size, "batch": batch, "segment_frames": frames, **t, "samples_per_s": batch / t["median_s"]}


def scaling(workers: int, steps: int, batch: int, root: Path, shards: str) -> dict:
    import mlflow

    from clipsynth_platform.train import DiffusionTrainConfig, run_diffusion_training

    tracking = f"sqlite:///{root / 'mlflow.db'}"
    cfg = DiffusionTrainConfig(
        data=shards,
        experiment="bench-train",
        run_name=f"w{workers}",
        storage_path=str(root / "runs"),
        tracking_uri=tracking,
        model_size="tiny",
        num_workers=workers,
        max_steps=steps,
        batch_size=batch,
        checkpoint_every=steps,
        log_every=max(1, steps // 4),
        sample_every=0,
        diffusion_steps=1000,
        register_as="",
        min_examples_per_pass=4096,
    )
    t0 = time.perf_counter()
    summary = run_diffusion_training(cfg)
    wall = time.perf_counter() - t0
    history = sorted(
        mlflow.tracking.MlflowClient(tracking).get_metric_history(summary.mlflow_run_id, "samples_per_s"),
        key=lambda m: m.step,
    )
    steady = [m.value for m in history[1:]] or [m.value for m in history]  # the first interval holds start-up
    return {
        "workers": workers,
        "steps": steps,
        "batch_per_worker": batch,
        "wall_s": wall,
        "interval_samples_per_s": [m.value for m in history],
        "samples_per_s": statistics.median(steady),
        "samples_per_s_per_worker": statistics.median(steady) / workers,
    }


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument(
        "--unet-sizes", nargs="*", default=["tiny", "small"], help="U-Net presets of the step benchmark"
    )
    parser.add_argument("--hifigan-sizes", nargs="*", default=["tiny"], help="HiFi-GAN presets of the step benchmark")
    parser.add_argument("--batch", type=int, default=8, help="examples per step in the step benchmark")
    parser.add_argument("--hifigan-batch", type=int, default=4)
    parser.add_argument("--segment-frames", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--scaling-steps", type=int, default=16, help="steps of each scaling run; 0 skips scaling")
    parser.add_argument("--scaling-batch", type=int, default=4)
    parser.add_argument("--out", default=None, help="output JSON (default: benchmarks/results/train_cpu.json)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    torch.set_num_threads(1)  # as a 1-CPU Ray Train worker runs
    load_before = os.getloadavg()

    result: dict = {"environment": environment(torch.device("cpu")), "load_average_before": load_before}
    result["diffusion_step"] = [diffusion_step_rate(s, args.batch, args.warmup, args.iters) for s in args.unet_sizes]
    result["hifigan_step"] = [
        hifigan_step_rate(s, args.hifigan_batch, args.segment_frames, args.warmup, args.iters)
        for s in args.hifigan_sizes
    ]
    summary = (
        ", ".join(f"U-Net {r['size']} {r['samples_per_s']:.1f}" for r in result["diffusion_step"])
        + ", "
        + ", ".join(f"HiFi-GAN {r['size']} {r['samples_per_s']:.2f}" for r in result["hifigan_step"])
    )
    summary += " samples/s per worker"

    if args.scaling_steps:
        import ray

        from clipsynth_core import ClipConfig, ClipQueryEncoder
        from clipsynth_platform.datasets.synthetic import write_synthetic_dataset

        ray.init(address="local", num_cpus=8, object_store_memory=1_000_000_000, include_dashboard=False)
        with tempfile.TemporaryDirectory(prefix="clipsynth-bench-train-") as tmp:
            root = Path(tmp)
            encoder = ClipQueryEncoder(ClipConfig(model_name="tiny", pretrained="none"))
            write_synthetic_dataset(str(root / "data"), encoder, videos_per_label=1)
            one = scaling(1, args.scaling_steps, args.scaling_batch, root / "w1", str(root / "data"))
            two = scaling(2, args.scaling_steps, args.scaling_batch, root / "w2", str(root / "data"))
        ray.shutdown()
        ratio = two["samples_per_s"] / one["samples_per_s"]
        result["scaling"] = {
            "one_worker": one,
            "two_workers": two,
            "speedup_2_over_1": ratio,
            "efficiency": ratio / 2,
        }
        summary += f"; tiny job 1->2 workers: {one['samples_per_s']:.1f} -> {two['samples_per_s']:.1f} samples/s (x{ratio:.2f})"
    result["load_average_after"] = os.getloadavg()
    summary += f"; load avg {load_before[0]:.1f}"
    emit(result, "train_cpu", summary, args.out)


if __name__ == "__main__":
    main()
