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
RESULTS_DIR = HERE.parents[1] / "results"


def child(batch: int, steps: int, warmup: int, threads: int, kernels: list[str]) -> dict:
    """Every measurement of one round, in this process, of whichever clipsynth_core is on the path: a training
    step as the tree's loop builds it, a sampling step, and (in a tree that has them) the AdamW kernels."""
    import torch

    import clipsynth_core
    from clipsynth_core import EMA, ConditionalUNet, DiffusionConfig, GaussianDiffusion, unet_config
    from clipsynth_core.training import DiffusionStep

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(1)
    mel = torch.rand(batch, 1, 64, 64, generator=g) * 2 - 1
    cond = torch.nn.functional.normalize(torch.randn(batch, 64, generator=g), dim=-1)

    def rate(run, per_call: int = 1) -> float:
        for _ in range(warmup):
            run()
        t0 = time.perf_counter()
        for _ in range(steps):
            run()
        return steps * per_call / (time.perf_counter() - t0)

    def train_rate(kernel: str | None) -> float:
        torch.manual_seed(0)
        model = ConditionalUNet(unet_config("cpu", cond_dim=64))
        diffusion = GaussianDiffusion.from_config(DiffusionConfig())
        if kernel is None:  # the base tree: torch's default AdamW and a CPU generator, as its loop built them
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, betas=(0.9, 0.999))
            generator = torch.Generator().manual_seed(0)
        else:  # this tree: the loop's optimiser (`kernel` "auto" is what it picks) and the device generator
            from clipsynth_core.noise import device_generator
            from clipsynth_core.training import adamw

            optimizer = adamw(model.parameters(), "cpu", lr=1e-4, kernel=kernel)
            generator = device_generator("cpu", 0)
            diffusion = diffusion.to("cpu")
        step = DiffusionStep(model, diffusion, optimizer, EMA(model, 0.9999), generator=generator)
        model.train()
        return rate(lambda: step(mel, cond, 1))

    has_kernels = hasattr(clipsynth_core.training, "adamw")
    out = {"core": clipsynth_core.__file__, "train": train_rate("auto" if has_kernels else None)}

    from clipsynth_core import Synthesizer, SynthesizerConfig

    synth = Synthesizer.untrained(SynthesizerConfig.tiny(unet=unet_config("cpu", cond_dim=64)))
    seeds = list(range(batch))
    out["sample"] = rate(lambda: synth.sample_mels(cond, steps=10, seed=seeds), per_call=10)  # 10 U-Net passes
    for kernel in kernels if has_kernels else []:
        out[f"train_adamw_{kernel}"] = train_rate(kernel)
    return out


def measure(tree: str, args) -> dict:
    env = {**os.environ, "PYTHONPATH": tree, "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, str(HERE), "--child", "--batch", str(args.batch), "--steps", str(args.steps)]
    cmd += ["--warmup", str(args.warmup), "--threads", str(args.threads), "--kernels", args.kernels]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=tree)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if not result.pop("core").startswith(tree):
        raise RuntimeError(f"the child did not measure the tree {tree}")
    return result


def main() -> None:
    from common import benchmark_parser, emit

    p = benchmark_parser(__doc__)
    p.add_argument("--base", required=False, help="the tree measured as 'before' (a git worktree)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=4, help="timed calls per measurement")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch threads (the demo's Train worker has 2)")
    p.add_argument("--kernels", default="fused,foreach,loop", help="AdamW kernels compared in this tree")
    p.add_argument("--child", action="store_true", help=argparse_hidden())
    p.add_argument("--out", default=None)
    args = p.parse_args()
    kernels = [k for k in args.kernels.split(",") if k]
    if args.child:
        print(json.dumps(child(args.batch, args.steps, args.warmup, args.threads, kernels)))
        return
    if not args.base:
        p.error("--base is required (a worktree of the commit to compare with)")
    base, after = str(Path(args.base).resolve()), str(REPO)
    samples: dict[str, list[float]] = {}
    for r in range(args.rounds):
        order = [("before", base), ("after", after)] if r % 2 == 0 else [("after", after), ("before", base)]
        for label, tree in order:
            for key, value in measure(tree, args).items():
                samples.setdefault(key if key.startswith("train_adamw") else f"{key}_{label}", []).append(value)
        result = _result(args, base, after, samples, kernels)
        partial = RESULTS_DIR / "before_after_cpu.partial.json"
        partial.write_text(json.dumps(result, indent=2))  # a run cut short still leaves its rounds
        print(
            f"# round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in samples.items()),
            file=sys.stderr,
        )
    partial.unlink()
    medians = result["medians"]
    summary = (
        f"cpu U-Net batch {args.batch}: training {medians['train_before']:.3f} -> {medians['train_after']:.3f} steps/s "
        f"({result['ratio_train_after_vs_before']:.2f}x), sampling {medians['sample_before']:.2f} -> "
        f"{medians['sample_after']:.2f} steps/s ({result['ratio_sample_after_vs_before']:.2f}x); AdamW "
        + ", ".join(f"{k} {medians[f'train_adamw_{k}']:.3f}" for k in kernels)
    )
    emit(result, "before_after_cpu", summary, args.out)


def _result(args, base: str, after: str, samples: dict[str, list[float]], kernels: list[str]) -> dict:
    medians = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "benchmark": "before_after_cpu",
        "what": "steps/s of the cpu-preset U-Net at batch 16: a training step (DiffusionStep with EMA, as each tree's "
        "loop builds it: base, torch's default AdamW and a CPU generator; after, adamw('auto': fused) and a device "
        "generator) and a sampling step (sample_mels at 10 steps, per-example seeds); the trees alternate, one child "
        "process each per round; AdamW kernels on this tree's step. The machine was shared with other helpers' "
        "jobs (see load_average): only ratios within a round mean much",
        "base_tree": base,
        "base_commit": _commit(base),
        "after_commit": _commit(after),
        "batch": args.batch,
        "threads": args.threads,
        "steps_per_measurement": args.steps,
        "rounds": len(samples.get("train_before", [])),
        "samples": samples,
        "medians": medians,
        "ratio_train_after_vs_before": medians["train_after"] / medians["train_before"],
        "ratio_sample_after_vs_before": medians["sample_after"] / medians["sample_before"],
        "per_round_ratio_train": [a / b for a, b in zip(samples["train_after"], samples["train_before"])],
        "per_round_ratio_sample": [a / b for a, b in zip(samples["sample_after"], samples["sample_before"])],
        "adamw_kernels_vs_fused": {
            k: statistics.median(a / b for a, b in zip(samples[f"train_adamw_{k}"], samples["train_adamw_fused"]))
            for k in kernels
            if "fused" in kernels
        },
        "load_average": os.getloadavg(),
    }


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
