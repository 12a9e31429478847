"""Benchmark: does the HiFi-GAN learn here? Its audio against training time and steps, beside Griffin-Lim.

    .venv/bin/python benchmarks/vocoder/run.py --preset tiny                     # the demo's shards, judge, model
    .venv/bin/python benchmarks/vocoder/run.py --preset cpu --budgets 60,300,600,1200
    .venv/bin/python benchmarks/vocoder/run.py --preset paper --device cuda --batch-size 16 --lr 2e-4 \\
        --segment-frames 32 --budgets 600,1800,3600                              # a GPU, HiFi-GAN V1's settings

It needs `make demo`'s outputs: the shards (train audio to learn from, test audio to measure on), the mel
classifier (the judge) and the diffusion bundle (the generated mels to vocode); clipsynth_platform.evaluation.
vocoder_quality says what is measured. In one process (no Ray: the core HiFiGANStep the Ray Train worker runs,
in a plain loop), it trains the HiFi-GAN of --preset from scratch on random segments of the train audio with the
paper's losses (least-squares adversarial, feature matching x 2, mel L1 x 45; --warmup-steps of mel L1 alone
first, if asked) and scores it at 0 and at each of --budgets (training seconds, steps, or CPU seconds of the
training: on a shared machine the work done whatever the load; the scoring is not counted). Griffin-Lim (32
iterations, what the service runs) is scored once: the reference line. The goal (issue 30): the HiFi-GAN's
audio heard as its class at least as often as Griffin-Lim's, and a lower log-spectral distance to the real audio.

Prints JSON and a one-line summary; writes benchmarks/results/vocoder_<device>_<label>.json (--out) and a PNG
of its curves beside it (benchmarks/vocoder/plot.py draws several runs in one figure). --save DIR keeps the
generator of every point (DIR/step_N, vocoder directories: what --vocoder of the jobs takes), and --rescore
scores a saved run again, on generated mels that did not exist when it trained (--bundle none: a probe that
measures on real audio only).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, replace
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


def train_and_score(
    recipe: Recipe,
    inputs: BenchmarkInputs,
    budgets: list[float],
    unit: str,
    device,
    seed: int,
    save: str,
    init_from: str = "",
    max_wall_seconds: float = 0.0,
):
    """Train from scratch; score at 0 s and at each budget (training seconds, steps or CPU seconds: runs on a
    shared machine then compare at equal work, their wall seconds recorded beside). Returns the curve.
    `max_wall_seconds` (> 0): past this many wall seconds of the run (scoring included), score where the training
    stands and stop, the budgets not reached left out (a loaded machine may not reach them in time)."""
    from clipsynth_core import HiFiGANDiscriminator, HiFiGANGenerator, HiFiGANStep, HiFiGANVocoder, MelFrontend
    from clipsynth_core.hifigan import hifigan_config
    from clipsynth_core.training import resolve_bf16
    from clipsynth_platform.train.data import vocoder_examples

    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    config = hifigan_config(recipe.preset, lambda_mel=recipe.lambda_mel, lambda_fm=recipe.lambda_fm)
    generator, discriminator = HiFiGANGenerator(config).to(device), HiFiGANDiscriminator(config).to(device)
    if init_from:  # a generator trained before (a probe continued: its step count and optimiser state start anew)
        from clipsynth_platform.train.vocoder import load_hifigan_dir

        trained, _ = load_hifigan_dir(init_from)
        if replace(trained.config, lambda_mel=config.lambda_mel, lambda_fm=config.lambda_fm) != config:
            raise SystemExit(f"{init_from} holds another HiFi-GAN configuration than --preset {recipe.preset}")
        generator.load_state_dict(trained.state_dict())
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
        point = {"train_seconds": round(spent, 1), "train_cpu_seconds": round(cpu, 1), "step": step, **losses}
        point.update(inputs.score(lambda m: vocoder(m.to(device)).cpu()).to_dict())
        generator.train()
        if save:  # every scored generator, to score again later (--rescore)
            from clipsynth_platform.train.vocoder import save_vocoder

            point["generator"] = str(save_vocoder(Path(save) / f"step_{step:06d}", generator, config, step))
        print(json.dumps(point), flush=True)
        return point

    g_params = sum(p.numel() for p in generator.parameters())
    d_params = sum(p.numel() for p in discriminator.parameters())
    print(
        f"[vocoder] {recipe.preset}: generator {g_params / 1e6:.2f} M, discriminators {d_params / 1e6:.2f} M",
        flush=True,
    )
    spent, cpu, step, since, pending = 0.0, 0.0, 0, 0, sorted(budgets)
    began = time.perf_counter()
    curve = [score(spent, step, {})]
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    while pending:
        t0, c0 = time.perf_counter(), time.process_time()
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
        cpu += time.process_time() - c0
        out_of_time = max_wall_seconds > 0 and time.perf_counter() - began > max_wall_seconds
        if out_of_time or {"steps": step, "seconds": spent, "cpu-seconds": cpu}[unit] >= pending[0]:
            pending = [] if out_of_time else pending[1:]
            means = dict(zip(losses, (sums / since).tolist()))
            sums.zero_()
            since = 0
            curve.append(score(spent, step, means))
    return curve, {"generator_params": g_params, "discriminator_params": d_params}


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--data", default="demo_output/shards", help="preprocessed dataset (train/ and test/, with audio)")
    p.add_argument("--classifier", default="demo_output/mel_classifier", help="the judge: a mel classifier directory")
    p.add_argument(
        "--bundle",
        default="",
        help='diffusion bundle (path or MLflow URI); default: the demo\'s (demo_summary.json); "none": no generated '
        "mels (a recipe probe: the real-audio figures only)",
    )
    p.add_argument("--preset", default="tiny", help="HiFi-GAN size (clipsynth_core.hifigan.HIFIGAN_PRESETS)")
    p.add_argument("--budgets", default="60,120,300,600,900,1200", help="training seconds at which to score")
    p.add_argument(
        "--budget-unit",
        default="seconds",
        choices=("seconds", "steps", "cpu-seconds"),
        help="what --budgets count: training seconds, steps, or the CPU seconds of the training (all threads: on a "
        "shared machine, the work done whatever the load)",
    )
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
    p.add_argument(
        "--save", default="", help="a directory: the generator of every scored point as a vocoder directory step_N"
    )
    p.add_argument(
        "--rescore",
        default="",
        help="a result JSON of a run with --save: score its saved generators again (on the bundle's generated mels, "
        "say, when the run had none) and rewrite it",
    )
    p.add_argument(
        "--max-wall-seconds",
        type=float,
        default=0.0,
        help="end the run after this many wall seconds, scored where it stands (0: when the budgets are reached)",
    )
    p.add_argument("--init-from", default="", help="start the generator from this vocoder directory's weights")
    p.add_argument("--label", default="", help="this run's name in plots (default: the preset)")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    bundle = "" if args.bundle == "none" else args.bundle or demo_bundle(Path(args.data).parent)
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
    references = reference_lines(inputs, args.griffin_lim_iters)
    if args.rescore:
        out = Path(args.rescore)
        result = rescore(json.loads(out.read_text()), inputs, device)
    else:
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
        curve, sizes = train_and_score(
            recipe,
            inputs,
            budgets,
            args.budget_unit,
            device,
            args.seed,
            args.save,
            args.init_from,
            args.max_wall_seconds,
        )
        label = args.label or args.preset
        result = {
            "benchmark": "vocoder",
            "label": label,
            "environment": environment(device),
            "data": args.data,
            "train_chunks": len(inputs.train_audio),
            "recipe": asdict(recipe),
            "budget_unit": args.budget_unit,
            "init_from": args.init_from,
            "budgets": budgets,
            "max_wall_seconds": args.max_wall_seconds,
            **sizes,
            "curve": curve,
            "seconds": round(time.perf_counter() - t_start, 1),
        }
        out = Path(args.out) if args.out else RESULTS / f"vocoder_{device.type}_{label}.json"
    result.update(
        bundle=bundle,
        test_windows=len(inputs.reference.labels),
        generated_mels=len(inputs.generated_labels),
        **references,
        **goal(result["curve"], references["griffin_lim"]),
    )
    plot_runs([result], out.with_suffix(".png"))
    emit(result, out.stem, summary_line(result), str(out))


def reference_lines(inputs: BenchmarkInputs, griffin_lim_iters: int) -> dict:
    """Griffin-Lim's figures (the line to beat) and the judge on the mels themselves (the ceiling)."""
    from clipsynth_core import GriffinLimVocoder

    ceiling = inputs.judge_mels()
    griffin_lim = inputs.score(GriffinLimVocoder(n_iter=griffin_lim_iters)).to_dict()
    print(f"[vocoder] the judge on the mels themselves: {json.dumps(ceiling)}", flush=True)
    print(f"[vocoder] Griffin-Lim ({griffin_lim_iters} iterations): {json.dumps(griffin_lim)}", flush=True)
    return {"judge_on_mels": ceiling, "griffin_lim": {"n_iter": griffin_lim_iters, **griffin_lim}}


def goal(curve: list[dict], griffin_lim: dict) -> dict:
    """Issue 30's goal at each point: heard as its class at least as often as Griffin-Lim's audio, and a lower
    log-spectral distance to the real audio."""

    def met(p: dict) -> bool:
        return p["relevance"] >= griffin_lim["relevance"] and p["lsd_db"] < griffin_lim["lsd_db"]

    first = next((p for p in curve if met(p)), None)
    return {
        "goal_met_at_end": met(curve[-1]),
        "goal_first_met": {k: first[k] for k in ("step", "train_seconds", "train_cpu_seconds") if k in first}
        if first
        else None,
    }


def rescore(result: dict, inputs: BenchmarkInputs, device) -> dict:
    """The saved generator of every point scored again on these inputs (the training figures kept)."""
    from clipsynth_core import HiFiGANVocoder
    from clipsynth_platform.train.vocoder import load_hifigan_dir

    for point in result["curve"]:
        if "generator" not in point:
            raise SystemExit(f"point at step {point['step']} has no saved generator: run with --save to rescore")
        generator, _ = load_hifigan_dir(point["generator"])
        vocoder = HiFiGANVocoder(generator.to(device).eval())
        point.update(inputs.score(lambda m, v=vocoder: v(m.to(device)).cpu()).to_dict())
        print(json.dumps(point), flush=True)
    return result


def summary_line(result: dict) -> str:
    last, gl, ceiling = result["curve"][-1], result["griffin_lim"], result["judge_on_mels"]
    met = result["goal_first_met"]
    return (
        f"{result['label']} after {last['train_seconds']:.0f} s ({last.get('train_cpu_seconds', float('nan')):.0f} "
        f"CPU s, {last['step']} steps): relevance {last['relevance']:.2f} (Griffin-Lim {gl['relevance']:.2f}, the "
        f"mels {ceiling['generated_mels']:.2f}), LSD {last['lsd_db']:.2f} dB (Griffin-Lim {gl['lsd_db']:.2f}), "
        f"MR-STFT {last['mrstft']:.3f} ({gl['mrstft']:.3f}), mel L1 {last['mel_l1']:.3f} ({gl['mel_l1']:.3f}); goal "
        + (f"met from step {met['step']}" if met else "not met")
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
