"""Benchmark: does the HiFi-GAN learn here? Its audio against training time and steps, beside Griffin-Lim.

    .venv/bin/python benchmarks/vocoder/run.py --preset tiny                     # the demo's shards, judge, model
    .venv/bin/python benchmarks/vocoder/run.py --preset cpu --budgets 60,300,600,1200
    .venv/bin/python benchmarks/vocoder/run.py --preset paper --device cuda --batch-size 16 --lr 2e-4 \\
        --segment-frames 32 --budgets 600,1800,3600                              # a GPU, HiFi-GAN V1's settings

It needs `make demo`'s outputs: the shards (train audio to learn from, test audio to measure on), the mel
classifier (the judge) and the diffusion bundle (the generated mels to vocode); benchmarks/vocoder/measure.py
says what is measured. In one process (no Ray: the core HiFiGANStep the Ray Train worker runs, in a plain loop),
it trains the HiFi-GAN of --preset from scratch on random segments of the train audio with the paper's losses
(least-squares adversarial, feature matching x 2, mel L1 x 45; --warmup-steps of mel L1 alone first, if asked)
and scores it at 0 s and at each of --budgets (training seconds; the scoring is not counted). Griffin-Lim (32
iterations, what the service runs) is scored once: the reference line. The goal (issue 30): the HiFi-GAN's
audio heard as its class at least as often as Griffin-Lim's, and a lower spectral distance to the real audio.

Prints JSON and a one-line summary; writes benchmarks/results/vocoder_<device>_<preset>.json (--out) and a PNG
of its curves beside it (benchmarks/vocoder/plot.py draws several runs in one figure). --save DIR writes the
final generator as a vocoder directory (what --vocoder of the training jobs and make_vocoder_bundle take).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, benchmark_parser, emit, environment
from measure import BenchmarkInputs
from plot import plot_runs

from clipsynth_core.training import BF16_SETTINGS


@dataclass(frozen=True)
class Recipe:
    """What a run trains: the HiFi-GAN preset and the optimisation (defaults: HiFi-GAN V1's)."""

    preset: str
    batch_size: int
    segment_frames: int
    lr: float
    lr_d: float  # the discriminators' rate (V1: the generator's)
    adam_b1: float
    adam_b2: float
    weight_decay: float
    lr_decay: float  # per pass over the train chunks
    warmup_steps: int
    lambda_mel: float
    lambda_fm: float
    bf16: str
    fused_adamw: bool


def train_and_score(recipe: Recipe, inputs: BenchmarkInputs, budgets: list[float], device, seed: int, save: str):
    """Train from scratch; score at 0 s and at each budget (training seconds). Returns the curve."""
    from clipsynth_core import HiFiGANDiscriminator, HiFiGANGenerator, HiFiGANStep, HiFiGANVocoder, MelFrontend
    from clipsynth_core.hifigan import hifigan_config
    from clipsynth_core.training import resolve_bf16
    from clipsynth_platform.train.data import vocoder_examples

    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    config = hifigan_config(recipe.preset, lambda_mel=recipe.lambda_mel, lambda_fm=recipe.lambda_fm)
    generator, discriminator = HiFiGANGenerator(config).to(device), HiFiGANDiscriminator(config).to(device)
    adam = {"betas": (recipe.adam_b1, recipe.adam_b2), "weight_decay": recipe.weight_decay}
    opt_g = torch.optim.AdamW(generator.parameters(), lr=recipe.lr, fused=recipe.fused_adamw, **adam)
    opt_d = torch.optim.AdamW(discriminator.parameters(), lr=recipe.lr_d, fused=recipe.fused_adamw, **adam)
    step_fn = HiFiGANStep(
        generator,
        discriminator,
        MelFrontend().to(device),
        config,
        opt_g,
        opt_d,
        bf16=resolve_bf16(recipe.bf16, device),
        warmup_steps=recipe.warmup_steps,
    )
    vocoder = HiFiGANVocoder(generator)
    steps_per_epoch = max(1, len(inputs.train_audio) // recipe.batch_size)
    segment = recipe.segment_frames * config.hop_length
    rng = np.random.default_rng(seed)

    def score(spent: float, step: int, losses: dict[str, float]) -> dict:
        generator.eval()
        point = {"train_seconds": round(spent, 1), "step": step, **losses}
        point.update(inputs.score(lambda m: vocoder(m.to(device)).cpu()).to_dict())
        generator.train()
        print(json.dumps(point), flush=True)
        return point

    g_params = sum(p.numel() for p in generator.parameters())
    d_params = sum(p.numel() for p in discriminator.parameters())
    print(
        f"[vocoder] {recipe.preset}: generator {g_params / 1e6:.2f} M, discriminators {d_params / 1e6:.2f} M",
        flush=True,
    )
    curve = [score(0.0, 0, {})]
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    spent, step, since, pending = 0.0, 0, 0, sorted(budgets)
    while pending:
        t0 = time.perf_counter()
        rows = rng.choice(len(inputs.train_audio), recipe.batch_size)
        batch = vocoder_examples(
            {"audio": [inputs.train_audio[i] for i in rows]}, segment_samples=segment, seed=int(rng.integers(2**31))
        )
        wave = torch.from_numpy(batch["audio"]).to(device)
        with torch.no_grad():
            mel = step_fn.mel_of(wave)
        step += 1
        losses = step_fn(mel, wave, step)
        sums.add_(torch.stack(list(losses.values())).double())
        since += 1
        if step % steps_per_epoch == 0:
            for opt in (opt_g, opt_d):
                for group in opt.param_groups:
                    group["lr"] *= recipe.lr_decay
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        spent += time.perf_counter() - t0
        if spent >= pending[0]:
            pending.pop(0)
            means = dict(zip(losses, (sums / since).tolist()))
            sums.zero_()
            since = 0
            curve.append(score(spent, step, means))
    if save:
        from clipsynth_platform.train.vocoder import save_vocoder

        save_vocoder(save, generator, config, step)
        print(f"[vocoder] saved the generator (step {step}) to {save}", flush=True)
    return curve, {"generator_params": g_params, "discriminator_params": d_params}


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--data", default="demo_output/shards", help="preprocessed dataset (train/ and test/, with audio)")
    p.add_argument("--classifier", default="demo_output/mel_classifier", help="the judge: a mel classifier directory")
    p.add_argument(
        "--bundle", default="", help="diffusion bundle (path or MLflow URI); default: the demo's (demo_summary.json)"
    )
    p.add_argument("--preset", default="tiny", help="HiFi-GAN size (clipsynth_core.hifigan.HIFIGAN_PRESETS)")
    p.add_argument("--budgets", default="60,120,300,600,900,1200", help="training seconds at which to score")
    p.add_argument("--batch-size", type=int, default=16, help="segments per step (V1: 16)")
    p.add_argument("--segment-frames", type=int, default=32, help="mel frames per segment, x 1024 samples (V1: 32)")
    p.add_argument("--lr", type=float, default=2e-4, help="AdamW learning rate of the generator (V1: 2e-4)")
    p.add_argument("--lr-d", type=float, default=0.0, help="the discriminators' rate (0: --lr, as V1)")
    p.add_argument("--adam-b1", type=float, default=0.8)
    p.add_argument("--adam-b2", type=float, default=0.99)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--lr-decay", type=float, default=0.999, help="per pass over the train chunks (V1: 0.999)")
    p.add_argument("--warmup-steps", type=int, default=0, help="mel-L1-only steps before the discriminators join")
    p.add_argument("--lambda-mel", type=float, default=45.0)
    p.add_argument("--lambda-fm", type=float, default=2.0)
    p.add_argument("--bf16", default="auto", choices=BF16_SETTINGS)
    p.add_argument("--fused-adamw", default="auto", choices=("auto", "on", "off"), help="auto: on CUDA and CPU")
    p.add_argument("--test-windows-per-chunk", type=int, default=2, help="4.16 s test windows from each test chunk")
    p.add_argument("--generated-per-class", type=int, default=8, help="generated mels per class (seeds)")
    p.add_argument("--generated-steps", type=int, default=25, help="DDPM steps of the generated mels (the service's)")
    p.add_argument("--griffin-lim-iters", type=int, default=32, help="the reference line's iterations (the service's)")
    p.add_argument("--work", default="build/vocoder_benchmark", help="cache of the generated mels")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", default="", help="write the final generator here as a vocoder directory")
    p.add_argument("--label", default="", help="this run's name in plots (default: the preset)")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    from clipsynth_core import GriffinLimVocoder

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    bundle = args.bundle or demo_bundle(Path(args.data).parent)
    inputs = BenchmarkInputs.load(
        args.data,
        args.classifier,
        bundle,
        Path(args.work),
        windows_per_chunk=args.test_windows_per_chunk,
        per_class=args.generated_per_class,
        steps=args.generated_steps,
        seed=args.seed,
    )
    ceiling = inputs.judge_mels()
    griffin_lim = inputs.score(GriffinLimVocoder(n_iter=args.griffin_lim_iters)).to_dict()
    print(f"[vocoder] the judge on the mels themselves: {json.dumps(ceiling)}", flush=True)
    print(f"[vocoder] Griffin-Lim ({args.griffin_lim_iters} iterations): {json.dumps(griffin_lim)}", flush=True)

    fused = {"on": True, "off": False}.get(args.fused_adamw, device.type in ("cuda", "cpu"))
    recipe = Recipe(
        preset=args.preset,
        batch_size=args.batch_size,
        segment_frames=args.segment_frames,
        lr=args.lr,
        lr_d=args.lr_d or args.lr,
        adam_b1=args.adam_b1,
        adam_b2=args.adam_b2,
        weight_decay=args.weight_decay,
        lr_decay=args.lr_decay,
        warmup_steps=args.warmup_steps,
        lambda_mel=args.lambda_mel,
        lambda_fm=args.lambda_fm,
        bf16=args.bf16,
        fused_adamw=fused,
    )
    print(f"[vocoder] recipe {json.dumps(asdict(recipe))}", flush=True)
    budgets = [float(b) for b in args.budgets.split(",") if b]
    curve, sizes = train_and_score(recipe, inputs, budgets, device, args.seed, args.save)

    last = curve[-1]
    beats = last["relevance"] >= griffin_lim["relevance"] and last["lsd_db"] < griffin_lim["lsd_db"]
    first_beat = next(
        (
            p["train_seconds"]
            for p in curve
            if p["relevance"] >= griffin_lim["relevance"] and p["lsd_db"] < griffin_lim["lsd_db"]
        ),
        None,
    )
    label = args.label or args.preset
    result = {
        "benchmark": "vocoder",
        "label": label,
        "environment": environment(device),
        "data": args.data,
        "bundle": bundle,
        "train_chunks": len(inputs.train_audio),
        "test_windows": len(inputs.reference.labels),
        "generated_mels": len(inputs.generated_labels),
        "recipe": asdict(recipe),
        **sizes,
        "judge_on_mels": ceiling,
        "griffin_lim": {"n_iter": args.griffin_lim_iters, **griffin_lim},
        "curve": curve,
        "goal_met_at_end": beats,
        "goal_first_met_at_seconds": first_beat,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    name = f"vocoder_{device.type}_{label}"
    out = Path(args.out) if args.out else RESULTS / f"{name}.json"
    plot_runs([result], out.with_suffix(".png"))
    emit(
        result,
        name,
        f"{label} after {last['train_seconds']:.0f} s ({last['step']} steps): relevance {last['relevance']:.2f} "
        f"(Griffin-Lim {griffin_lim['relevance']:.2f}, the mels {ceiling['generated_mels']:.2f}), LSD "
        f"{last['lsd_db']:.2f} dB (Griffin-Lim {griffin_lim['lsd_db']:.2f}), MR-STFT {last['mrstft']:.3f} "
        f"({griffin_lim['mrstft']:.3f}), mel L1 {last['mel_l1']:.3f} ({griffin_lim['mel_l1']:.3f}); goal "
        + (f"met from {first_beat:.0f} s" if first_beat is not None else "not met"),
        str(out),
    )


def demo_bundle(demo_root: Path) -> str:
    """The demo's diffusion bundle: its model URI in demo_summary.json, on the demo's MLflow store."""
    import os

    summary = demo_root / "demo_summary.json"
    if not summary.exists():
        raise SystemExit(f"no {summary}: run `make demo` first, or pass --bundle")
    done = json.loads(summary.read_text())
    os.environ.setdefault("MLFLOW_TRACKING_URI", done["mlflow_tracking_uri"])
    return str(done["model_uri"])


if __name__ == "__main__":
    main()
