"""The CPU path before and after a change, measured in alternation in one run: training steps per second of the
demo's U-Net (the `cpu` preset, batch 16, as the training loop builds its step in each tree: optimiser, random
streams, EMA) and sampling steps per second (Synthesizer.sample_mels, batch 16, per-example seeds), for the tree
at --base and this one; plus, in this tree, the AdamW kernels on the same step (fused, foreach, per-tensor loop).

Every measurement runs in a child process whose PYTHONPATH is the tree measured, so each imports its own
clipsynth_core; the trees alternate round after round (ABAB...), and the summary gives medians and their ratio.

    git worktree add /tmp/base 18a2105
    python benchmarks/core/before_after.py --base /tmp/base --rounds 6

Prints JSON (and writes benchmarks/results/before_after_cpu.json) and a one-line summary.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
sys.path.insert(0, str(HERE.parents[1]))


def child(kind: str, batch: int, steps: int, warmup: int, threads: int, kernel: str) -> dict:
    """One measurement, in this process, of whichever clipsynth_core is on the path."""
    import torch

    from clipsynth_core import EMA, ConditionalUNet, DiffusionConfig, GaussianDiffusion, unet_config
    from clipsynth_core.training import DiffusionStep

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if kind == "train":
        model = ConditionalUNet(unet_config("cpu", cond_dim=64))
        diffusion = GaussianDiffusion.from_config(DiffusionConfig())
        try:  # this tree: the loop's optimiser and the step's device generator
            from clipsynth_core.noise import device_generator
            from clipsynth_core.training import adamw

            optimizer = adamw(model.parameters(), "cpu", lr=1e-4, kernel=kernel)
            generator = device_generator("cpu", 0)
            diffusion = diffusion.to("cpu")
        except ImportError:  # the base tree: torch's default AdamW and a CPU generator, as its loop built them
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, betas=(0.9, 0.999))
            generator = torch.Generator().manual_seed(0)
        step = DiffusionStep(model, diffusion, optimizer, EMA(model, 0.9999), generator=generator)
        mel = torch.rand(batch, 1, 64, 64, generator=g) * 2 - 1
        cond = torch.nn.functional.normalize(torch.randn(batch, 64, generator=g), dim=-1)
        model.train()

        def run() -> None:
            step(mel, cond, 1)

    else:
        from clipsynth_core import Synthesizer, SynthesizerConfig

        config = SynthesizerConfig.tiny(unet=unet_config("cpu", cond_dim=64))
        synth = Synthesizer.untrained(config)
        cond = torch.nn.functional.normalize(torch.randn(batch, 64, generator=g), dim=-1)
        seeds = list(range(batch))

        def run() -> None:
            synth.sample_mels(cond, steps=10, seed=seeds)  # 10 U-Net passes and 10 noise draws

    for _ in range(warmup):
        run()
    t0 = time.perf_counter()
    for _ in range(steps):
        run()
    seconds = time.perf_counter() - t0
    per_call = 10 if kind == "sample" else 1
    import clipsynth_core

    return {"steps_per_s": steps * per_call / seconds, "core": clipsynth_core.__file__}


def measure(tree: str, kind: str, args, kernel: str = "auto") -> float:
    env = {**os.environ, "PYTHONPATH": tree, "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, str(HERE), "--child", kind, "--batch", str(args.batch), "--steps", str(args.steps)]
    cmd += ["--warmup", str(args.warmup), "--threads", str(args.threads), "--kernel", kernel]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=tree)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if not result["core"].startswith(tree):
        raise RuntimeError(f"the child measured {result['core']}, not the tree {tree}")
    return float(result["steps_per_s"])


def main() -> None:
    from common import benchmark_parser, emit

    p = benchmark_parser(__doc__)
    p.add_argument("--base", required=False, help="the tree measured as 'before' (a git worktree)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=8, help="timed calls per measurement")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="torch threads (the demo's Train worker has 2)")
    p.add_argument("--kernels", default="fused,foreach,loop", help="AdamW kernels compared in this tree")
    p.add_argument("--child", default="", help=argparse_hidden())
    p.add_argument("--kernel", default="auto", help=argparse_hidden())
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.steps, args.warmup, args.threads, args.kernel)))
        return
    if not args.base:
        p.error("--base is required (a worktree of the commit to compare with)")
    base, after = str(Path(args.base).resolve()), str(REPO)
    samples: dict[str, list[float]] = {}
    kernels = [k for k in args.kernels.split(",") if k]
    for r in range(args.rounds):
        order = [("before", base), ("after", after)] if r % 2 == 0 else [("after", after), ("before", base)]
        for kind in ("train", "sample"):
            for label, tree in order:
                samples.setdefault(f"{kind}_{label}", []).append(measure(tree, kind, args))
        for kernel in kernels:
            samples.setdefault(f"train_after_adamw_{kernel}", []).append(measure(after, "train", args, kernel))
        print(
            f"# round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in samples.items()),
            file=sys.stderr,
        )
    medians = {k: statistics.median(v) for k, v in samples.items()}
    result = {
        "benchmark": "before_after_cpu",
        "what": "steps/s of the cpu-preset U-Net at batch 16: a training step (DiffusionStep with EMA, as each tree's "
        "loop builds it) and a sampling step (sample_mels at 10 steps, per-example seeds); medians of rounds run in "
        "alternation; the machine was shared with other jobs, so only the ratios within a round are meaningful",
        "base_tree": base,
        "base_commit": _commit(base),
        "after_commit": _commit(after),
        "batch": args.batch,
        "threads": args.threads,
        "rounds": args.rounds,
        "samples": samples,
        "medians": medians,
        "ratio_train_after_vs_before": medians["train_after"] / medians["train_before"],
        "ratio_sample_after_vs_before": medians["sample_after"] / medians["sample_before"],
        "per_round_ratio_train": [a / b for a, b in zip(samples["train_after"], samples["train_before"])],
        "per_round_ratio_sample": [a / b for a, b in zip(samples["sample_after"], samples["sample_before"])],
        "load_average": os.getloadavg(),
    }
    summary = (
        f"cpu U-Net batch {args.batch}: training {medians['train_before']:.2f} -> {medians['train_after']:.2f} steps/s "
        f"({result['ratio_train_after_vs_before']:.2f}x), sampling {medians['sample_before']:.2f} -> "
        f"{medians['sample_after']:.2f} steps/s ({result['ratio_sample_after_vs_before']:.2f}x); AdamW "
        + ", ".join(f"{k} {medians[f'train_after_adamw_{k}']:.2f}" for k in kernels)
    )
    emit(result, "before_after_cpu", summary, args.out)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


def _commit(tree: str) -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=tree, capture_output=True, text=True
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()
