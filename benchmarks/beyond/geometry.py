"""Benchmark: the modality gap in CLIP's space itself, with and without reduction (seconds on a CPU).

    .venv/bin/python benchmarks/beyond/geometry.py --data demo_output/shards

On the TEST split's frame embeddings (never seen by the fit) and the evaluation's text queries ("playing
{name}", held out of the fit's texts), per gap method (none, shift, prior):
  - centroid_gap: |mean test frame - mean text query| (Liang et al.'s gap, between the modalities' centres);
  - own_class_cosine / other_class_cosine: mean cosine of a class's text query to the test frames of that
    class and of the other classes;
  - nearest_frame_accuracy: how often the test frame nearest to a class's text query shows that class (the
    retriever's view of the query), averaged over classes;
  - frame_to_frame_cosine: the same-class cosine between test frames, the level a condition "as the model saw
    in training" reaches.
Prints JSON and a one-line summary; writes benchmarks/results/beyond_geometry_<device>.json.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import benchmark_parser, emit, environment
from learning.run import load_split


def geometry(frames: torch.Tensor, frame_labels: np.ndarray, queries: torch.Tensor) -> dict:
    """frames [N, D] with class ids [N]; queries [C, D], one per class id."""
    sims = queries @ frames.T  # [C, N]
    own = np.array([float(sims[c, frame_labels == c].mean()) for c in range(len(queries))])
    other = np.array([float(sims[c, frame_labels != c].mean()) for c in range(len(queries))])
    nearest = frame_labels[sims.argmax(1).numpy()]
    return {
        "centroid_gap": float((frames.mean(0) - queries[torch.from_numpy(frame_labels)].mean(0)).norm()),
        "own_class_cosine": float(own.mean()),
        "other_class_cosine": float(other.mean()),
        "nearest_frame_accuracy": float((nearest == np.arange(len(queries))).mean()),
    }


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--data", default="demo_output/shards")
    p.add_argument("--prior-steps", type=int, default=600)
    p.add_argument("--cache", default=str(Path.home() / ".cache/clipsynth/beyond"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    from clipsynth_core import ClipConfig, ClipQueryEncoder
    from clipsynth_core.modality_gap import GapReducer, PriorConfig
    from clipsynth_platform.datasets.captions import class_name
    from clipsynth_platform.train.modality_gap import EVAL_PHRASE, GapFitConfig, fit_gap_reducer

    t0 = time.perf_counter()
    train, test = load_split(args.data, "train"), load_split(args.data, "test")
    labels = sorted({r["label"] for r in train})
    model_name, _, pretrained = train[0]["clip_model"].partition("/")
    encoder = ClipQueryEncoder(ClipConfig(model_name=model_name, pretrained=pretrained or "none", allow_download=False))
    # The same cache key as benchmarks/beyond/run.py: one fit serves both.
    key = hashlib.sha256(json.dumps([args.data, args.prior_steps, args.seed]).encode()).hexdigest()[:16]
    gap_dir = Path(args.cache) / f"gap-{key}"
    reducer = GapReducer.load(gap_dir)
    if reducer is None:
        reducer = fit_gap_reducer(
            GapFitConfig(data=args.data, prior=PriorConfig(steps=args.prior_steps, seed=args.seed)), encoder
        )
        gap_dir.mkdir(parents=True, exist_ok=True)
        reducer.save(gap_dir)
    frames, frame_labels = [], []
    for r in test:
        emb = np.asarray(r["image_embeddings"], np.float32).reshape(-1, r["embed_dim"])
        frames.append(emb)
        frame_labels += [labels.index(r["label"])] * len(emb)
    frames_t = F.normalize(torch.from_numpy(np.concatenate(frames)), dim=-1)
    frame_labels_a = np.array(frame_labels)
    texts = encoder.encode_text([EVAL_PHRASE.format(name=class_name(label)) for label in labels])
    methods = {m: geometry(frames_t, frame_labels_a, reducer(texts, m)) for m in reducer.methods}
    same = [float((frames_t[frame_labels_a == c] @ frames_t[frame_labels_a == c].T).mean()) for c in range(len(labels))]
    result = {
        "benchmark": "beyond_geometry",
        "environment": environment(torch.device("cpu")),
        "data": args.data,
        "clip": train[0]["clip_model"],
        "labels": labels,
        "test_frames": len(frame_labels),
        "query_phrase": EVAL_PHRASE,
        "fit": reducer.describe(),
        "methods": methods,
        "frame_to_frame_cosine": float(np.mean(same)),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    summary = (
        "; ".join(
            f"{m}: centroid gap {v['centroid_gap']:.3f}, own-class cosine {v['own_class_cosine']:.3f}, nearest-frame "
            f"accuracy {v['nearest_frame_accuracy']:.2f}"
            for m, v in methods.items()
        )
        + f" (frames among themselves: {result['frame_to_frame_cosine']:.3f})"
    )
    emit(result, "beyond_geometry_cpu", summary, args.out)


if __name__ == "__main__":
    main()
