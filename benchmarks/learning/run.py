"""Benchmark: does the model learn? Relevance and FD against training time, and quality against sampling steps.

    .venv/bin/python benchmarks/learning/run.py --data demo_output/shards          # the demo's dataset
    .venv/bin/python benchmarks/learning/run.py --data s3://.../shards --model-size paper --device cuda \\
        --budgets 600,1800,3600 --batch-size 128 --lr 1e-4                               # a GPU, the paper

What it does, in one process (no Ray: the same core code the Ray Train workers run, in a plain loop):
  1. the judge: a mel classifier trained on the train split (or --classifier DIR), reporting its accuracy on
     the test split's real windows: relevance is only as meaningful as that number;
  2. training: the conditional U-Net on random 64-frame windows with their frames' CLIP embeddings (the
     paper's CLIPSynth, image-trained), through the platform's example transform and the core's
     DiffusionStep, for each variant in --variants, stopping at each budget in --budgets (training seconds);
  3. at each budget, samples of the EMA model for --samples test queries, once conditioned on the test rows'
     frame embeddings (image queries) and once on the text "a photo of playing {label}" through the dataset's
     CLIP (text queries, zero-shot: the model never saw a text embedding): relevance (the judge's accuracy on
     the intended label), relevance_prob, and fd_melclf (the Frechet distance between the judge's features of
     the samples and of the test split's windows, the FID recipe on the classifier's features). Budget 0 is
     the untrained model;
  4. the final model of the first variant: the same metrics against sampling steps, DDPM and DDIM at
     --sweep-steps, and relevance measured on the audio (Griffin-Lim, re-analysed into a mel).
Prints JSON and a one-line summary; writes benchmarks/results/learning_<device>.json and a PNG of the curves.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import RESULTS, benchmark_parser, emit, environment, save_figure

from clipsynth_core.training import BF16_SETTINGS, LR_SCHEDULES

# Variants: what each one changes against the default configuration (a measured choice each).
VARIANTS = {
    "default": {},  # the paper's conditioning: c concatenated to every layer's output, nothing else
    "cond-in-embedding": {"unet": {"cond_in_embedding": True}},
    "no-ema-warmup": {"ema_warmup": False},
    "grad-clip-1": {"grad_clip": 1.0},
    "fp32": {"bf16": "off"},
    "cosine-lr": {"lr_schedule": "cosine"},  # lr decays to 0 over the largest budget (the run's time)
    "batch-32": {"batch_size": 32},
    "batch-8": {"batch_size": 8},  # compare with batch 16 at twice the steps: the same examples seen
    "cond-channels-16": {"unet": {"cond_channels": 16}},  # a wider condition concatenated to every layer
    "width-16": {"unet": {"model_channels": 16}},
    "lr-6e-3": {"lr": 6e-3},
    "cond-drop-0.1": {"cond_drop_prob": 0.1},  # trains the null condition too: classifier-free guidance (--guidance)
    "cosine-lr+cond-drop-0.1": {"lr_schedule": "cosine", "cond_drop_prob": 0.1},
}


@dataclasses.dataclass
class Setup:
    model_size: str
    batch_size: int
    lr: float
    ema_decay: float
    ema_warmup: bool
    grad_clip: float
    diffusion_steps: int
    bf16: str
    unet: dict
    lr_schedule: str = "constant"
    cond_drop_prob: float = 0.0

    def with_changes(self, changes: dict) -> Setup:
        unet = {**self.unet, **changes.get("unet", {})}
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if k != "unet"}, unet=unet)


def load_split(data: str, split: str) -> list[dict]:
    from clipsynth_platform.datasets.splits import iter_split_rows

    cols = ["chunk_id", "mel", "n_mels", "mel_frames", "image_embeddings", "embed_dim", "label", "clip_model"]
    return [r for r in iter_split_rows(data, split, cols) if r["label"] is not None]


def mel_of(row: dict) -> np.ndarray:
    return np.asarray(row["mel"], np.float32).reshape(row["n_mels"], row["mel_frames"])


class Queries:
    """The fixed evaluation queries: test rows drawn with a seed, one frame each, and their labels' texts."""

    def __init__(self, test: list[dict], labels: list[str], encoder, count: int, seed: int = 0) -> None:
        from clipsynth_platform.datasets.captions import class_name

        rng = np.random.default_rng(seed)
        rows = rng.choice(len(test), count)
        frames = []
        for i in rows:
            emb = np.asarray(test[i]["image_embeddings"], np.float32).reshape(-1, test[i]["embed_dim"])
            frames.append(emb[rng.integers(0, len(emb))])
        self.targets = np.array([labels.index(test[i]["label"]) for i in rows])
        self.image = torch.from_numpy(np.stack(frames))
        texts = encoder.encode_text([f"playing {class_name(label)}" for label in labels])
        self.text = texts[torch.from_numpy(self.targets)]
        self.seeds = [int(s) for s in rng.integers(0, 2**31 - 1, count)]


def sample(
    model, diffusion, cond: torch.Tensor, seeds: list[int], steps: int, sampler: str, device, guidance: float = 0.0
) -> np.ndarray:
    from clipsynth_core.diffusion import guided_model
    from clipsynth_core.noise import example_keys

    process = diffusion.respaced(steps)
    shape = (len(seeds), 1, 64, 64)
    with torch.no_grad():
        x = process.sample(
            guided_model(model, cond.to(device), guidance),
            shape,
            sampler=sampler,
            seeds=example_keys(seeds, device),
        )
    return x[:, 0].clamp(-1, 1).float().cpu().numpy()


class Judge:
    """The mel classifier as relevance scorer and FD feature extractor, with the test windows' statistics."""

    def __init__(self, model, test: list[dict], device) -> None:
        from clipsynth_core.metrics import embedding_statistics
        from clipsynth_platform.evaluation.mel_classifier import ClassifierFeatures

        self.features = ClassifierFeatures(model, "judge", device)
        self.labels = list(model.config.labels)
        windows = [mel_of(r)[:, s : s + 64] for r in test for s in range(0, r["mel_frames"] - 63, 32)]
        self.reference = embedding_statistics(self.features.features(np.stack(windows)))
        firsts = np.stack([mel_of(r)[:, :64] for r in test])
        truth = np.array([self.labels.index(r["label"]) for r in test])
        self.real_accuracy = float((self.features.predict_proba(firsts).argmax(1) == truth).mean())

    def score(self, mels: np.ndarray, targets: np.ndarray) -> dict:
        from clipsynth_core.metrics import embedding_statistics, frechet_distance_stats

        probs = self.features.predict_proba(mels)
        return {
            "relevance": float((probs.argmax(1) == targets).mean()),
            "relevance_prob": float(probs[np.arange(len(targets)), targets].mean()),
            "fd_melclf": float(
                frechet_distance_stats(embedding_statistics(self.features.features(mels)), self.reference)
            ),
        }


def evaluate(
    model, diffusion, queries: Queries, judge: Judge, steps: int, sampler: str, device, guidance: float = 0.0
) -> dict:
    out = {}
    for kind in ("image", "text"):
        cond = queries.image if kind == "image" else queries.text
        mels = sample(model, diffusion, cond, queries.seeds, steps, sampler, device, guidance)
        out.update({f"{kind}_{k}": v for k, v in judge.score(mels, queries.targets).items()})
    return out


def train_curve(
    setup: Setup,
    train: list[dict],
    budgets: list[float],
    evaluate_at,
    device,
    seed: int,
    extra_decays: tuple[float, ...] = (),
    unit: str = "seconds",
) -> tuple[list[dict], dict[str, list[dict]], torch.nn.Module, object]:
    """Train one variant from scratch; call evaluate_at(ema_model) at 0 s and at each budget.

    `unit`: budgets in training seconds, or in optimiser steps (variants compared at equal steps do not depend
    on how fast the machine happened to be while each ran).

    `extra_decays`: more EMA shadows of the same run (same warmup), evaluated at the same budgets, so the
    EMA rate is compared on one training trajectory (their update time is not counted as training time).
    """
    from clipsynth_core import EMA, ConditionalUNet, DiffusionConfig, GaussianDiffusion, unet_config
    from clipsynth_core.noise import device_generator
    from clipsynth_core.training import DiffusionStep, resolve_bf16, scheduled_lr
    from clipsynth_platform.train.data import diffusion_examples

    torch.manual_seed(seed)
    embed_dim = int(train[0]["embed_dim"])
    model = ConditionalUNet(unet_config(setup.model_size, cond_dim=embed_dim, **setup.unet)).to(device)
    diffusion = GaussianDiffusion.from_config(DiffusionConfig(num_steps=setup.diffusion_steps))
    optimizer = torch.optim.AdamW(model.parameters(), lr=setup.lr, weight_decay=0.0, betas=(0.9, 0.999))
    ema = EMA(model, setup.ema_decay, warmup=setup.ema_warmup)
    step_fn = DiffusionStep(
        model,
        diffusion,
        optimizer,
        ema,
        grad_clip=setup.grad_clip or None,
        cond_drop_prob=setup.cond_drop_prob,
        bf16=resolve_bf16(setup.bf16, device),
        generator=device_generator(device, seed),
    )
    shadows = {f"ema{d:g}": EMA(model, d, warmup=setup.ema_warmup) for d in extra_decays}
    rng = np.random.default_rng(seed)
    columns = ["chunk_id", "mel", "n_mels", "mel_frames", "image_embeddings", "embed_dim"]
    curve = [{"train_seconds": 0.0, "step": 0, **evaluate_at(ema.model, diffusion)}]
    extra = {name: [dict(curve[0])] for name in shadows}
    print(json.dumps(curve[-1]), flush=True)
    spent, step, pending = 0.0, 0, sorted(budgets)
    horizon = max(budgets)

    def done() -> float:  # how far the run is, in the budgets' unit
        return float(step) if unit == "steps" else spent

    while pending:
        t0 = time.perf_counter()
        if setup.lr_schedule != "constant":  # the platform's schedule, over the largest budget
            for group in optimizer.param_groups:
                group["lr"] = scheduled_lr(setup.lr_schedule, setup.lr, min(done() / horizon, 1.0))
        rows = rng.choice(len(train), setup.batch_size)
        batch = {k: [train[i][k] for i in rows] for k in columns}
        ex = diffusion_examples(batch, variant="image", window_frames=64, seed=int(rng.integers(2**31)))
        mel = torch.from_numpy(ex["mel"]).unsqueeze(1).to(device)
        terms = step_fn(mel, torch.from_numpy(ex["cond"]).to(device), step + 1)
        step += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        spent += time.perf_counter() - t0
        for shadow in shadows.values():
            shadow.update(model, step)
        if done() >= pending[0]:
            pending.pop(0)
            point = {"train_seconds": round(spent, 1), "step": step, "loss": float(terms["loss"])}
            point.update(evaluate_at(ema.model, diffusion))
            curve.append(point)
            print(json.dumps(point), flush=True)
            for name, shadow in shadows.items():
                extra[name].append({**point, **evaluate_at(shadow.model, diffusion)})
                print(json.dumps({"shadow": name, **extra[name][-1]}), flush=True)
    return curve, extra, ema.model, diffusion


def audio_relevance(model, diffusion, queries: Queries, judge: Judge, steps: int, sampler: str, device) -> dict:
    """Relevance of what a listener gets: samples vocoded by Griffin-Lim, re-analysed by the project's mel."""
    from clipsynth_core import GriffinLimVocoder, MelFrontend

    vocoder, frontend, out = GriffinLimVocoder(), MelFrontend(), {}
    for kind in ("image", "text"):
        mels = sample(
            model, diffusion, queries.image if kind == "image" else queries.text, queries.seeds, steps, sampler, device
        )
        with torch.no_grad():
            again = frontend(vocoder(torch.from_numpy(mels))).numpy()
        out.update({f"{kind}_audio_{k}": v for k, v in judge.score(again, queries.targets).items()})
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, curve in result["curves"].items():
        t = [p["train_seconds"] for p in curve]
        axes[0].plot(t, [p["image_relevance"] for p in curve], "o-", label=f"{name}, image queries")
        axes[0].plot(t, [p["text_relevance"] for p in curve], "s--", label=f"{name}, text queries")
        axes[1].semilogy(t, [p["image_fd_melclf"] for p in curve], "o-", label=f"{name}, image")
    chance = 1 / len(result["labels"])
    axes[0].axhline(chance, color="grey", lw=0.8, ls=":", label="chance")
    axes[0].set(xlabel="training seconds", ylabel="relevance", title="relevance (judge accuracy) vs time", ylim=(0, 1))
    axes[1].set(xlabel="training seconds", ylabel="FD on classifier features", title="fd_melclf vs time (log)")
    for sampler in ("ddpm", "ddim"):
        pts = [p for p in result["sampling"] if p["sampler"] == sampler]
        axes[2].plot([p["steps"] for p in pts], [p["image_relevance"] for p in pts], "o-", label=f"{sampler}, image")
        axes[2].plot([p["steps"] for p in pts], [p["text_relevance"] for p in pts], "s--", label=f"{sampler}, text")
    axes[2].set(
        xscale="log", xlabel="sampling steps", ylabel="relevance", title="final model vs sampling steps", ylim=(0, 1)
    )
    save_figure(fig, axes, path)


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--data", default="demo_output/shards", help="preprocessed dataset (train/ and test/)")
    p.add_argument("--classifier", default="", help="a mel classifier directory (default: train one here)")
    p.add_argument("--classifier-epochs", type=int, default=40)
    p.add_argument("--budgets", default="60,120,240,360,480", help="training seconds (or steps) at which to evaluate")
    p.add_argument("--budget-unit", default="seconds", choices=("seconds", "steps"), help="what --budgets count")
    p.add_argument("--variants", default="default", help=f"comma-separated, of {sorted(VARIANTS)}")
    p.add_argument("--model-size", default="cpu")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--no-ema-warmup", dest="ema_warmup", action="store_false")
    p.add_argument(
        "--extra-ema-decays", default="", help="more EMA rates to evaluate on the default variant's run (e.g. 0.995)"
    )
    p.add_argument("--lr-schedule", default="constant", choices=LR_SCHEDULES, help="of every variant")
    p.add_argument("--grad-clip", type=float, default=0.0)
    p.add_argument("--diffusion-steps", type=int, default=1000)
    p.add_argument("--bf16", default="auto", choices=BF16_SETTINGS)
    p.add_argument("--samples", type=int, default=64, help="evaluation queries per query type")
    p.add_argument("--eval-steps", type=int, default=25, help="sampling steps on the curve")
    p.add_argument("--eval-sampler", default="ddpm", choices=("ddpm", "ddim"))
    p.add_argument("--sweep-steps", default="10,25,50,100,250,1000")
    p.add_argument(
        "--guidance", default="0,1,2,3", help="guidance scales for the final model of variants with condition dropout"
    )
    p.add_argument("--sweep-samples", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    from clipsynth_core import ClipConfig, ClipQueryEncoder
    from clipsynth_platform.evaluation.mel_classifier import (
        MelClassifier,
        MelClassifierTrainConfig,
        train_mel_classifier,
    )
    from clipsynth_platform.runtime.options import fields_from

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    train, test = load_split(args.data, "train"), load_split(args.data, "test")
    if not train or not test:
        raise SystemExit(f"{args.data} needs labelled train and test splits (run `make demo` first for the default)")
    labels = sorted({r["label"] for r in train})
    if args.classifier:
        judge_model = MelClassifier.load(args.classifier)
    else:
        judge_model, _ = train_mel_classifier(
            MelClassifierTrainConfig(data=args.data, epochs=args.classifier_epochs, device=args.device)
        )
    judge = Judge(judge_model, test, device)
    model_name, _, pretrained = train[0]["clip_model"].partition("/")
    encoder = ClipQueryEncoder(ClipConfig(model_name=model_name, pretrained=pretrained or "none", allow_download=False))
    queries = Queries(test, labels, encoder, args.samples, args.seed)
    print(
        f"[learning] {len(train)} train / {len(test)} test chunks, {len(labels)} classes; judge accuracy on real "
        f"test windows {judge.real_accuracy:.3f}; CLIP {train[0]['clip_model']}",
        flush=True,
    )

    base = fields_from(Setup, args, unet={})  # the flags of the same names
    budgets = [float(b) for b in args.budgets.split(",") if b]
    extra_decays = tuple(float(d) for d in args.extra_ema_decays.split(",") if d)
    curves, setups, final = {}, {}, None
    guidance_scales = [float(w) for w in args.guidance.split(",") if w]
    guided: list[dict] = []
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        setup = base.with_changes(VARIANTS[name])
        setups[name] = dataclasses.asdict(setup)
        print(f"[learning] variant {name}: {json.dumps(setups[name])}", flush=True)
        curve, extra, model, diffusion = train_curve(
            setup,
            train,
            budgets,
            lambda m, d: evaluate(m, d, queries, judge, args.eval_steps, args.eval_sampler, device),
            device,
            args.seed,
            extra_decays if name == "default" else (),
            args.budget_unit,
        )
        curves[name] = curve
        curves.update({f"{name}, {shadow}": c for shadow, c in extra.items()})
        if setup.cond_drop_prob > 0:  # the final model against the guidance scale (0: unguided)
            for w in guidance_scales:
                point = {"variant": name, "guidance": w, "step": curve[-1]["step"]}
                point.update(evaluate(model, diffusion, queries, judge, args.eval_steps, args.eval_sampler, device, w))
                guided.append(point)
                print(json.dumps(point), flush=True)
        final = final or (model, diffusion)

    model, diffusion = final
    few = Queries(test, labels, encoder, args.sweep_samples, args.seed + 1)
    sweep = []
    for sampler in ("ddpm", "ddim"):
        for steps in [int(s) for s in args.sweep_steps.split(",") if s]:
            t0 = time.perf_counter()
            point = {
                "sampler": sampler,
                "steps": steps,
                **evaluate(model, diffusion, few, judge, steps, sampler, device),
            }
            point["seconds_per_sample"] = (time.perf_counter() - t0) / (2 * len(few.seeds))
            sweep.append(point)
            print(json.dumps(point), flush=True)
    audio = audio_relevance(model, diffusion, queries, judge, args.eval_steps, args.eval_sampler, device)

    first = next(iter(curves.values()))
    untrained, trained = first[0], first[-1]
    result = {
        "benchmark": "learning",
        "environment": environment(device),
        "data": args.data,
        "labels": labels,
        "train_chunks": len(train),
        "test_chunks": len(test),
        "clip": train[0]["clip_model"],
        "judge_real_test_accuracy": judge.real_accuracy,
        "eval": {"samples": args.samples, "steps": args.eval_steps, "sampler": args.eval_sampler},
        "setups": setups,
        "curves": curves,
        "sampling": sweep,
        "guidance": guided,
        "audio": audio,
        "fd_melclf_untrained_over_trained": untrained["image_fd_melclf"] / trained["image_fd_melclf"],
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    name = f"learning_{device.type}"
    out = Path(args.out) if args.out else RESULTS / f"{name}.json"
    plot(result, out.with_suffix(".png"))
    emit(
        result,
        name,
        f"after {trained['train_seconds']:.0f} s ({trained['step']} steps): relevance image "
        f"{trained['image_relevance']:.2f} / text {trained['text_relevance']:.2f} (chance {1 / len(labels):.3f}; "
        f"judge {judge.real_accuracy:.2f} on real audio), on the audio {audio['image_audio_relevance']:.2f} / "
        f"{audio['text_audio_relevance']:.2f}; fd_melclf {trained['image_fd_melclf']:.1f}, "
        f"{result['fd_melclf_untrained_over_trained']:.0f}x below the untrained model",
        str(out),
    )


if __name__ == "__main__":
    main()
