"""Benchmark: time to evaluate 512 samples at the paper's 1,000 sampling steps and at a fast 50 steps.

    .venv/bin/python benchmarks/eval/run.py [--unet-preset tiny] [--workers 2] [--repeats 3]

On a CPU even the tiny model cannot run 512 x 1,000 steps in a benchmark's time (hours), so this measures
and projects, and labels which is which:
  measured  - the whole evaluation (run_evaluation: Ray actors, FAD/FID/relevance, MLflow) on a subset;
  measured  - in-process costs on one thread (as a CPU actor runs): the U-Net forward pass (one sampling
              step; median of --forward-repeats), the vocoder and the FAD/FID backbones (median of
              --repeats), per sample; real sampling runs (median of --repeats) check the per-step model;
  projected - 512 samples at 50 and at 1,000 steps on --workers actors, from the measured costs.
The ratio 1000-step / 50-step comes from the same measured costs of one run. Prints a JSON object and a
one-line summary; writes benchmarks/results/eval_cpu.json.
"""

from __future__ import annotations

import json
import math
import os
import platform as std_platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import benchmark_parser

RESULTS = Path(__file__).resolve().parents[1] / "results" / "eval_cpu.json"


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--unet-preset", default="tiny", help="U-Net preset of the benchmarked model (default: tiny)")
    parser.add_argument("--workers", type=int, default=2, help="Ray actors (default: 2, one per core here)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4, help="batch of the in-process measurements")
    parser.add_argument("--forward-repeats", type=int, default=15, help="U-Net forward passes timed (median)")
    parser.add_argument("--check-steps", type=int, default=8, help="steps of the one real sampling check")
    parser.add_argument("--subset", type=int, default=8, help="samples of the measured end-to-end evaluation")
    parser.add_argument("--subset-steps", type=int, default=4)
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--fast-steps", type=int, default=50)
    parser.add_argument("--paper-steps", type=int, default=1000)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    import mlflow
    import ray

    from clipsynth_core import (
        DiffusionConfig,
        SamplingDefaults,
        Synthesizer,
        SynthesizerConfig,
        unet_config,
    )
    from clipsynth_platform.datasets.synthetic import write_synthetic_dataset
    from clipsynth_platform.evaluation.embedders import build_audio_embedder
    from clipsynth_platform.evaluation.mel_classifier import build_mel_feature_extractor
    from clipsynth_platform.evaluation.runner import EvalConfig, run_evaluation

    work = Path(tempfile.mkdtemp(prefix="clipsynth-bench-eval-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    config = SynthesizerConfig.tiny(
        unet=unet_config(args.unet_preset, cond_dim=64),
        diffusion=DiffusionConfig(num_steps=4000),  # the paper's training steps, respaced for sampling
        sampling=SamplingDefaults(steps=args.paper_steps),
        metadata={"train_query_type": "image", "model_name": f"CLIPSynth-{args.unet_preset}"},
    )
    synth = Synthesizer(config)
    bundle = synth.save(work / "bundle")
    data = work / "data"
    write_synthetic_dataset(str(data), synth.encoder, videos_per_label=3, test_every=3)

    # ---- in-process costs, one thread (as one CPU actor runs) ------------------------------------------
    # A sampling step is one U-Net forward plus elementwise math, so the per-step cost is the median of many
    # short forward passes: robust to load spikes on a shared machine, unlike a few long sampling runs.
    torch.set_num_threads(1)
    cond = synth.encode(["violin"] * args.batch)
    x = torch.randn(args.batch, 1, 64, 64)
    t = torch.full((args.batch,), 10, dtype=torch.long)
    with torch.no_grad():
        synth.unet(x, t, cond)  # warm-up
        forward = median_time(lambda: synth.unet(x, t, cond), args.forward_repeats)
    per_sample_step = forward / args.batch
    mels = synth.sample_mels(cond, steps=2, seed=0)
    vocode = median_time(lambda: synth.vocode(mels), args.repeats) / args.batch
    waves = synth.vocode(mels).numpy()
    embedder = build_audio_embedder("tiny-random", device="cpu")
    extractor = build_mel_feature_extractor("tiny-random", device="cpu", labels=("a", "b"))
    metric = median_time(lambda: (embedder.embed(waves), extractor.features(mels.numpy())), args.repeats)
    metric /= args.batch
    per_sample_fixed = vocode
    # Check of the per-step model: real sampling runs against its prediction.
    check = median_time(lambda: synth.sample_mels(cond, steps=args.check_steps, seed=0), args.repeats)
    check_ratio = check / (args.check_steps * forward)

    # ---- measured end to end on a subset ---------------------------------------------------------------
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    ray.init(address="local", num_cpus=max(args.workers, 2), include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    (result,) = run_evaluation(
        EvalConfig(
            model=str(bundle),
            data=str(data),
            num_samples=args.subset,
            steps=args.subset_steps,
            batch_size=max(1, math.ceil(args.subset / args.workers)),
            num_workers=args.workers,
            fad_backbone="tiny-random",
            fid_backbone="tiny-random",
            mel_classifier="tiny-random",
            stats_cache=str(work / "cache"),
            experiment="bench-eval",
        ),
        log=lambda _: None,
    )
    subset_total = time.perf_counter() - t0
    ray.shutdown()
    subset_gen = float(result.metrics["seconds_generation"])
    subset_compute = args.subset / args.workers * (per_sample_fixed + per_sample_step * args.subset_steps)
    actor_startup = max(0.0, subset_gen - subset_compute)
    rest = subset_total - subset_gen  # references (cached once per dataset), metrics, MLflow

    def projected(steps: int) -> float:
        generation = args.num_samples * (per_sample_fixed + per_sample_step * steps) / args.workers
        return actor_startup + generation + rest + args.num_samples * metric

    fast, paper = projected(args.fast_steps), projected(args.paper_steps)
    out = {
        "benchmark": "eval",
        "device": "cpu",
        "machine": f"{std_platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}",
        "torch": torch.__version__,
        "model": {"unet_preset": args.unet_preset, "vocoder": "tiny", "clip": "tiny/none", "sampler": "ddpm"},
        "measured": {
            "median_of": {"unet_forward": args.forward_repeats, "others": args.repeats},
            "batch": args.batch,
            "seconds_unet_forward_batch": round(forward, 4),
            "seconds_per_sample_step": round(per_sample_step, 5),
            "sampling_check": {
                "steps": args.check_steps,
                "seconds": round(check, 3),
                "actual_over_predicted": round(check_ratio, 3),
            },
            "seconds_per_sample_fixed": round(per_sample_fixed, 5),
            "seconds_per_sample_metrics": round(metric, 5),
            "subset_end_to_end": {
                "samples": args.subset,
                "steps": args.subset_steps,
                "workers": args.workers,
                "seconds_total": round(subset_total, 2),
                "seconds_generation": round(subset_gen, 2),
                "fad": result.metrics["fad"],
                "fid": result.metrics.get("fid"),
            },
            "actor_startup_seconds_estimate": round(actor_startup, 2),
        },
        "projected": {
            "note": "extrapolated from the measured costs above, not run",
            "samples": args.num_samples,
            "workers": args.workers,
            f"seconds_{args.fast_steps}_steps": round(fast, 1),
            f"seconds_{args.paper_steps}_steps": round(paper, 1),
            f"seconds_per_sample_{args.fast_steps}_steps": round(fast / args.num_samples, 3),
            f"seconds_per_sample_{args.paper_steps}_steps": round(paper / args.num_samples, 3),
            f"ratio_{args.paper_steps}_over_{args.fast_steps}": round(paper / fast, 2),
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    print(
        f"eval ({args.unet_preset} U-Net, CPU, {args.workers} actors): {per_sample_step * 1000:.1f} ms per sample-step "
        f"(median of {args.forward_repeats}); measured {args.subset} samples x {args.subset_steps} steps end to end in "
        f"{subset_total:.1f} s; PROJECTED {args.num_samples} samples: {fast / 3600:.2f} h at {args.fast_steps} steps, "
        f"{paper / 3600:.1f} h at {args.paper_steps} steps ({paper / fast:.1f}x)"
    )


if __name__ == "__main__":
    main()
