"""Benchmark: a finished demo's model, measured with more queries than the demo's 64 per query type.

    .venv/bin/python benchmarks/learning/demo_model.py --demo demo_output --queries 192

The demo reports relevance on 64 queries per type, whose standard error is about 0.06 near 0.7: two runs of the
same code can differ by 0.1. This script samples the demo's registered model (the EMA U-Net of its bundle) for
--queries test rows (image queries: a frame's stored CLIP embedding; text queries: "a photo of playing {label}"
through the bundle's CLIP) and scores the samples with the demo's own mel classifier (relevance and fd_melclf,
as benchmarks/learning/run.py does), then does the same for an untrained U-Net of the same configuration: the
baseline of the "FID at least 3x lower than untrained" comparison. Prints JSON and a one-line summary; writes
benchmarks/results/learning_demo_model_<device>.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_parser, emit, environment
from run import Judge, Queries, evaluate, load_split


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--demo", default="demo_output", help="a finished demo's output directory")
    p.add_argument("--queries", type=int, default=192, help="test queries per query type")
    p.add_argument("--untrained-queries", type=int, default=64, help="queries of the untrained baseline")
    p.add_argument("--steps", type=int, default=25, help="DDPM sampling steps (the demo's evaluation: 25)")
    p.add_argument("--seed", type=int, default=1, help="seed of the query draw (the demo's evaluation draws its own)")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    from clipsynth_core import ConditionalUNet, GaussianDiffusion
    from clipsynth_core.synthesizer import load_bundle_encoder, load_bundle_unet, read_bundle_config
    from clipsynth_platform.evaluation.mel_classifier import MelClassifier

    t0 = time.perf_counter()
    demo = Path(args.demo).expanduser().resolve()
    bundles = sorted(demo.glob("mlartifacts/*/models/*/artifacts/artifacts/bundle"), key=lambda d: d.stat().st_mtime)
    if not bundles:
        raise SystemExit(f"no synthesizer bundle under {demo}/mlartifacts: run `make demo` first")
    bundle = bundles[-1]  # the newest registered model
    config = read_bundle_config(bundle)
    diffusion = GaussianDiffusion.from_config(config.diffusion)
    encoder = load_bundle_encoder(bundle, config.clip)
    test = load_split(str(demo / "shards"), "test")
    judge = Judge(MelClassifier.load(demo / "mel_classifier"), test, "cpu")

    trained = load_bundle_unet(bundle, config).eval()
    queries = Queries(test, judge.labels, encoder, args.queries, seed=args.seed)
    scores = evaluate(trained, diffusion, queries, judge, args.steps, "ddpm", "cpu")
    torch.manual_seed(0)
    untrained = ConditionalUNet(config.unet).eval()
    baseline_queries = Queries(test, judge.labels, encoder, args.untrained_queries, seed=args.seed)
    baseline = evaluate(untrained, diffusion, baseline_queries, judge, args.steps, "ddpm", "cpu")
    # relevance is a binomial proportion: its standard error at the measured value
    stderr = {k: (v * (1 - v) / args.queries) ** 0.5 for k, v in scores.items() if k.endswith("_relevance")}
    result = {
        "benchmark": "learning_demo_model",
        "environment": environment(torch.device("cpu")),
        "bundle": str(bundle),
        "training": config.metadata,
        "judge_real_test_accuracy": judge.real_accuracy,
        "queries": args.queries,
        "steps": args.steps,
        "trained": scores,
        "relevance_stderr": stderr,
        "untrained": baseline,
        "fd_melclf_untrained_over_trained": {
            kind: baseline[f"{kind}_fd_melclf"] / scores[f"{kind}_fd_melclf"] for kind in ("image", "text")
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }
    summary = (
        f"{args.queries} queries: relevance image {scores['image_relevance']:.2f} +/- {stderr['image_relevance']:.2f}, "
        f"text {scores['text_relevance']:.2f} +/- {stderr['text_relevance']:.2f}; fd_melclf image "
        f"{scores['image_fd_melclf']:.0f}, text {scores['text_fd_melclf']:.0f} against {baseline['image_fd_melclf']:.0f} "
        "untrained"
    )
    emit(result, "learning_demo_model_cpu", summary, args.out)


if __name__ == "__main__":
    main()
