"""Benchmark: the modality gap with and without reduction, classifier-free guidance, combined queries.

    nice -n 19 .venv/bin/python benchmarks/beyond/run.py --data demo_output/shards \\
        --classifier demo_output/mel_classifier --steps 1500 --stages guided-gap,guidance,blends,control
    E=demo_output/checkpoints/demo-diffusion-image/checkpoint_000001424/ema.safetensors
    nice -n 19 .venv/bin/python benchmarks/beyond/run.py --base $E --init $E --steps 200  # the demo's model

What it does, in one process (no Ray), on fixed STEP budgets so that runs are reproducible on a busy machine:
  1. fits the gap statistics (platform/train/modality_gap.py: the shift and the prior) on the train split, with the
     evaluation's phrasing "playing {name}" held out of the texts they see (cached in --cache);
  2. --base: a trained U-Net (no condition dropout) measured as it is;
  3. trains the cpu U-Net (image-trained CLIPSynth, the learning benchmark's recipe) for --steps steps with
     condition dropout --cond-drop, from scratch or from --init (cached in --cache by configuration); with
     --stages control the same steps without dropout, to see what dropout costs unguided queries;
  4. per model: relevance and fd_melclf of image queries (test frames) and of text queries under each gap
     method, on the same seeds; the gap is image minus text relevance (and text minus image fd_melclf);
  5. on the model with dropout: relevance and fd_melclf against the guidance scale, image queries and text
     queries (unreduced and with the better reduction);
  6. combined queries: for --blend-pairs pairs of classes (a, b), "a + b" and "a*0.7 + b*0.3" against a and b
     alone, scored by the judge's probability of a and of b.
Prints JSON and a one-line summary; writes benchmarks/results/beyond_<device>.json (after every stage, marked
partial until the end) and a PNG."""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import RESULTS, benchmark_parser, emit, environment, save_figure
from learning.run import Judge, Queries, load_split


def train_model(train: list[dict], steps: int, cond_drop: float, args, device) -> torch.nn.Module:
    """The EMA U-Net after `steps` steps (batch, lr, EMA as the learning benchmark's default), cached.

    With --init the steps continue from those weights (a trained model fine-tuned with condition dropout).
    """
    from safetensors.torch import load_file, save_file

    from clipsynth_core import EMA, ConditionalUNet, DiffusionConfig, GaussianDiffusion, unet_config
    from clipsynth_core.noise import device_generator
    from clipsynth_core.training import DiffusionStep, resolve_bf16
    from clipsynth_platform.train.data import diffusion_examples

    embed_dim = int(train[0]["embed_dim"])
    config = unet_config(args.model_size, cond_dim=embed_dim)
    key = json.dumps(
        [args.data, len(train), steps, cond_drop, args.seed, args.batch_size, args.lr, args.model_size, args.init],
        sort_keys=True,
    )
    path = Path(args.cache) / f"unet-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"
    model = ConditionalUNet(config).to(device)
    if path.exists():
        model.load_state_dict(load_file(str(path)))
        print(f"[beyond] cached model {path} (cond_drop {cond_drop}, {steps} steps)", flush=True)
        return model.eval()
    torch.manual_seed(args.seed)
    model = ConditionalUNet(config).to(device)
    if args.init:
        model.load_state_dict(load_file(args.init))
    diffusion = GaussianDiffusion.from_config(DiffusionConfig(num_steps=args.diffusion_steps))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.999))
    ema = EMA(model, 0.999, warmup=True)
    step_fn = DiffusionStep(
        model,
        diffusion,
        optimizer,
        ema,
        cond_drop_prob=cond_drop,
        bf16=resolve_bf16("auto", device),
        generator=device_generator(device, args.seed),
    )
    rng = np.random.default_rng(args.seed)
    columns = ["chunk_id", "mel", "n_mels", "mel_frames", "image_embeddings", "embed_dim"]
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        rows = rng.choice(len(train), args.batch_size)
        ex = diffusion_examples(
            {k: [train[i][k] for i in rows] for k in columns},
            variant="image",
            window_frames=64,
            seed=int(rng.integers(2**31)),
        )
        terms = step_fn(
            torch.from_numpy(ex["mel"]).unsqueeze(1).to(device), torch.from_numpy(ex["cond"]).to(device), step
        )
        if step % 250 == 0:
            rate = step / (time.perf_counter() - t0)
            print(
                f"[beyond] cond_drop {cond_drop}: step {step}, loss {float(terms['loss']):.4f}, {rate:.2f} steps/s",
                flush=True,
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in ema.model.state_dict().items()}, str(path))
    return ema.model.eval()


def load_unet(path: str, embed_dim: int, model_size: str, device) -> torch.nn.Module:
    from safetensors.torch import load_file

    from clipsynth_core import ConditionalUNet, unet_config

    model = ConditionalUNet(unet_config(model_size, cond_dim=embed_dim))
    model.load_state_dict(load_file(path))
    return model.to(device).eval()


def sample(model, process, cond: torch.Tensor, seeds: list[int], guidance: float, device) -> np.ndarray:
    from clipsynth_core.diffusion import guided_model
    from clipsynth_core.noise import example_keys

    shape = (len(seeds), 1, 64, 64)
    with torch.no_grad():
        fn = guided_model(model, cond.to(device), guidance)
        x = process.sample(fn, shape, sampler="ddpm", seeds=example_keys(seeds, device))
    return x[:, 0].clamp(-1, 1).float().cpu().numpy()


def gap_table(model, process, queries: Queries, reducer, judge: Judge, device, guidance: float = 0.0) -> dict:
    """Image queries and text queries under each gap method, on the same seeds and targets."""
    conds = {"image": queries.image}
    conds.update({f"text_{m}": reducer(queries.text, m) for m in reducer.methods})
    out = {}
    for name, cond in conds.items():
        mels = sample(model, process, cond, queries.seeds, guidance, device)
        out[name] = judge.score(mels, queries.targets)
    for m in reducer.methods:
        out[f"gap_{m}"] = {
            "relevance": out["image"]["relevance"] - out[f"text_{m}"]["relevance"],
            "fd_melclf": out[f"text_{m}"]["fd_melclf"] - out["image"]["fd_melclf"],
        }
    return out


def blend_table(
    model, process, encoder, reducer, method: str, judge: Judge, labels, seeds, device, max_pairs: int = 0
) -> dict:
    """Per pair (a, b): the judge's mean p(a), p(b) for a alone, b alone, a + b, a*0.7 + b*0.3."""
    from clipsynth_core.query_blend import blend
    from clipsynth_platform.datasets.captions import class_name

    names = [f"playing {class_name(label)}" for label in labels]
    text = reducer(encoder.encode_text(names), method)
    mixes = {"a": (1.0, 0.0), "b": (0.0, 1.0), "a+b": (0.5, 0.5), "a*0.7+b*0.3": (0.7, 0.3)}
    rows = []
    pairs = list(itertools.combinations(range(len(labels)), 2))
    if max_pairs and max_pairs < len(pairs):  # an even spread over the pairs, fixed
        pairs = [pairs[i] for i in np.linspace(0, len(pairs) - 1, max_pairs).round().astype(int)]
    for a, b in pairs:
        conds = torch.stack([blend(text[[a, b]], list(w)) for w in mixes.values()])
        cond = conds.repeat_interleave(len(seeds), 0)
        probs = judge.features.predict_proba(sample(model, process, cond, seeds * len(mixes), 0.0, device))
        for j, mix in enumerate(mixes):
            p = probs[j * len(seeds) : (j + 1) * len(seeds)]
            rows.append(
                {
                    "a": labels[a],
                    "b": labels[b],
                    "query": mix,
                    "p_a": float(p[:, a].mean()),
                    "p_b": float(p[:, b].mean()),
                    "top_is_a_or_b": float(np.isin(p.argmax(1), [a, b]).mean()),
                    "both_above_0.1": float(((p[:, a] > 0.1) & (p[:, b] > 0.1)).mean()),
                    "cos_a": float(conds[j] @ text[a]),
                    "cos_b": float(conds[j] @ text[b]),
                }
            )
    summary = {}
    for mix in mixes:
        sel = [r for r in rows if r["query"] == mix]
        summary[mix] = {
            k: float(np.mean([r[k] for r in sel])) for k in ("p_a", "p_b", "top_is_a_or_b", "both_above_0.1")
        }
    return {"method": method, "seeds_per_query": len(seeds), "pairs": rows, "summary": summary}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for model_name, table in result["gap"].items():
        methods = [k.removeprefix("text_") for k in table if k.startswith("text_")]
        axes[0].bar(
            [f"{model_name}\n{m}" for m in methods], [table[f"gap_{m}"]["relevance"] for m in methods], alpha=0.7
        )
    axes[0].set(ylabel="image minus text relevance", title="modality gap by reduction method")
    curve = result["guidance"]["curve"]
    ws = [p["guidance"] for p in curve]
    for name in [k for k in curve[0] if k not in ("guidance",)]:
        axes[1].plot(ws, [p[name]["relevance"] for p in curve], "o-", label=name)
        axes[2].plot(ws, [p[name]["fd_melclf"] for p in curve], "o-", label=name)
    axes[1].set(xlabel="guidance scale w", ylabel="relevance", title="relevance vs guidance", ylim=(0, 1))
    axes[2].set(xlabel="guidance scale w", ylabel="fd_melclf", title="fd_melclf vs guidance")
    save_figure(fig, axes[1:], path)


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--data", default="demo_output/shards")
    p.add_argument("--classifier", default="demo_output/mel_classifier", help="the judge (a mel classifier dir)")
    p.add_argument(
        "--base",
        default="",
        help="a trained U-Net (EMA safetensors of the cpu preset, no condition dropout; e.g. the demo's "
        "checkpoint_*/ema.safetensors), measured as it is; with --init the same file starts the fine-tuned models",
    )
    p.add_argument("--init", default="", help="weights the trained models start from (default: from scratch)")
    p.add_argument("--steps", type=int, default=1500, help="training steps per trained model")
    p.add_argument("--cond-drop", type=float, default=0.1, help="condition dropout of the guided model")
    p.add_argument(
        "--stages",
        default="gap,guided-gap,guidance,blends",
        help="of gap (the --base model), guided-gap, guidance, blends, control (the same steps without dropout)",
    )
    p.add_argument("--reduction", default="prior", help="the gap reduction of text queries in guidance and blends")
    p.add_argument("--model-size", default="cpu")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--diffusion-steps", type=int, default=1000)
    p.add_argument("--prior-steps", type=int, default=600)
    p.add_argument("--samples", type=int, default=128, help="queries per query type in the gap table")
    p.add_argument("--eval-steps", type=int, default=25, help="DDPM sampling steps")
    p.add_argument("--guidance", default="0,1,2,4")
    p.add_argument("--guidance-samples", type=int, default=64)
    p.add_argument("--blend-seeds", type=int, default=4, help="samples per combined query")
    p.add_argument("--blend-pairs", type=int, default=8, help="class pairs (a, b) for combined queries")
    p.add_argument("--cache", default=str(Path.home() / ".cache/clipsynth/beyond"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    from clipsynth_core import ClipConfig, ClipQueryEncoder, DiffusionConfig, GaussianDiffusion
    from clipsynth_core.modality_gap import GapReducer, PriorConfig
    from clipsynth_platform.evaluation.mel_classifier import MelClassifier
    from clipsynth_platform.train.modality_gap import GapFitConfig, fit_gap_reducer

    device = torch.device(args.device)
    t_start = time.perf_counter()
    out = Path(args.out) if args.out else RESULTS / f"beyond_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    train, test = load_split(args.data, "train"), load_split(args.data, "test")
    labels = sorted({r["label"] for r in train})
    judge = Judge(MelClassifier.load(args.classifier), test, device)
    model_name, _, pretrained = train[0]["clip_model"].partition("/")
    encoder = ClipQueryEncoder(ClipConfig(model_name=model_name, pretrained=pretrained or "none", allow_download=False))
    queries = Queries(test, labels, encoder, args.samples, args.seed)
    t0 = time.perf_counter()
    gap_dir = (
        Path(args.cache)
        / f"gap-{hashlib.sha256(json.dumps([args.data, args.prior_steps, args.seed]).encode()).hexdigest()[:16]}"
    )
    reducer = GapReducer.load(gap_dir)
    if reducer is None:
        fit = GapFitConfig(data=args.data, prior=PriorConfig(steps=args.prior_steps, seed=args.seed))
        reducer = fit_gap_reducer(fit, encoder)
        gap_dir.mkdir(parents=True, exist_ok=True)
        reducer.save(gap_dir)
    fit_seconds = time.perf_counter() - t0
    print(f"[beyond] gap statistics ({fit_seconds:.1f} s): {json.dumps(reducer.describe())}", flush=True)
    process = GaussianDiffusion.from_config(DiffusionConfig(num_steps=args.diffusion_steps)).respaced(args.eval_steps)
    result = {
        "benchmark": "beyond",
        "environment": environment(device),
        "data": args.data,
        "labels": labels,
        "clip": train[0]["clip_model"],
        "judge_real_test_accuracy": judge.real_accuracy,
        "base": args.base,
        "train": {
            "init": args.init,
            "steps": args.steps,
            "cond_drop": args.cond_drop,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "model_size": args.model_size,
        },
        "eval": {"samples": args.samples, "steps": args.eval_steps, "sampler": "ddpm"},
        "gap_fit": {"seconds": fit_seconds, **reducer.describe()},
        "gap": {},
    }

    def save_partial() -> None:
        out.write_text(json.dumps({**result, "partial": True}, indent=2) + "\n")

    embed_dim = int(train[0]["embed_dim"])
    stages = {x.strip() for x in args.stages.split(",") if x.strip()}
    base = load_unet(args.base, embed_dim, args.model_size, device) if args.base else None
    if base is not None and "gap" in stages:
        result["gap"]["base"] = gap_table(base, process, queries, reducer, judge, device)
        print(f"[beyond] base: {json.dumps(result['gap']['base'])}", flush=True)
        save_partial()
    guided_name = f"cond_drop={args.cond_drop:g}"
    guided = None
    if stages & {"guided-gap", "guidance"} or base is None:
        guided = train_model(train, args.steps, args.cond_drop, args, device)
    if guided is not None and "guided-gap" in stages:
        result["gap"][guided_name] = gap_table(guided, process, queries, reducer, judge, device)
        print(f"[beyond] {guided_name}: {json.dumps(result['gap'][guided_name])}", flush=True)
        save_partial()

    best = args.reduction
    result["best_reduction"] = best
    guidance = {"model": guided_name, "samples": args.guidance_samples, "curve": []}
    if guided is not None and "guidance" in stages:
        result["guidance"] = guidance
        few = Queries(test, labels, encoder, args.guidance_samples, args.seed + 1)
        for w in [float(x) for x in args.guidance.split(",") if x]:
            point = {"guidance": w}
            for name, cond in (("image", few.image), (f"text_{best}", reducer(few.text, best))):
                point[name] = judge.score(sample(guided, process, cond, few.seeds, w, device), few.targets)
            guidance["curve"].append(point)
            print(f"[beyond] guidance {json.dumps(point)}", flush=True)
            save_partial()

    blends = None
    if "blends" in stages:
        seeds = [int(s) for s in np.random.default_rng(args.seed + 2).integers(0, 2**31 - 1, args.blend_seeds)]
        model = guided if guided is not None else base
        blends = blend_table(model, process, encoder, reducer, best, judge, labels, seeds, device, args.blend_pairs)
        blends["model"] = guided_name if guided is not None else "base"
        result["blends"] = blends
        print(f"[beyond] blends {json.dumps(blends['summary'])}", flush=True)
        save_partial()

    if "control" in stages:
        control = train_model(train, args.steps, 0.0, args, device)
        result["gap"]["cond_drop=0"] = gap_table(control, process, queries, reducer, judge, device)
        print(f"[beyond] cond_drop=0: {json.dumps(result['gap']['cond_drop=0'])}", flush=True)
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    parts = []
    for name, t in result["gap"].items():
        gaps = ", ".join(f"{m} {t[f'gap_{m}']['relevance']:+.3f}" for m in reducer.methods)
        parts.append(f"{name}: relevance gap {gaps} (image {t['image']['relevance']:.3f})")
    if guidance["curve"]:
        plot(result, out.with_suffix(".png"))
        gc = guidance["curve"]
        best_w = max(gc, key=lambda q: q["image"]["relevance"] + q[f"text_{best}"]["relevance"])["guidance"]
        parts.append(f"best guidance {best_w:g}")
    if blends:
        bs = blends["summary"]
        parts.append(
            f"a+b: p_a {bs['a+b']['p_a']:.2f} p_b {bs['a+b']['p_b']:.2f} (a alone: {bs['a']['p_a']:.2f} / "
            f"{bs['a']['p_b']:.2f}, b alone: {bs['b']['p_a']:.2f} / {bs['b']['p_b']:.2f})"
        )
    emit(result, f"beyond_{device.type}", "; ".join(parts), str(out))


if __name__ == "__main__":
    main()
