"""The offline CLIP's training step, by AdamW implementation.

The demo trains its offline CLIP (platform/experiments/offline_clip) on the first run, on the demo's critical path. The toy
dual encoder has 8.1 M parameters, 6.3 M of them the text tower's token embedding (open_clip's 49,408-token
vocabulary), so the optimiser's update can cost more than the forward and backward passes together. This
script times one step (a batch of one picture and caption per class, as train_offline_clip draws it) split
into forward, backward and optimiser, for each AdamW implementation, in one run so the ratios are meaningful.
Usage: python benchmarks/core/offline_clip.py [--iters 30]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import benchmark_parser, emit, environment

from clipsynth_core.clip_encoder import LOCAL_CLIP_CONFIGS, build_local_clip

# torch.optim.AdamW's three implementations: per-tensor loop (the CPU default), multi-tensor, one fused kernel
IMPLEMENTATIONS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def time_step(implementation: str, batch: int, iters: int, warmup: int) -> dict:
    from open_clip.loss import ClipLoss

    torch.manual_seed(0)
    model = build_local_clip("toy", 0).train()
    cfg = LOCAL_CLIP_CONFIGS["toy"]
    size, context = cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["context_length"]
    vocab = cfg["text_cfg"]["vocab_size"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, **IMPLEMENTATIONS[implementation])
    loss_fn = ClipLoss()
    images = torch.randn(batch, 3, size, size)
    text = torch.randint(0, vocab, (batch, context))
    parts: dict[str, list[float]] = {"forward_s": [], "backward_s": [], "optimizer_s": [], "step_s": []}
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        loss = loss_fn(*model(images, text))
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        optimizer.step()
        t3 = time.perf_counter()
        if i >= warmup:
            for name, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
                parts[name].append(seconds)
    medians = {name: statistics.median(values) for name, values in parts.items()}
    return {**medians, "steps_per_s": 1.0 / medians["step_s"]}


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--batch", type=int, default=15, help="pairs per step (the demo: one per instrument, 15)")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    model = build_local_clip("toy", 0)
    rows = {name: time_step(name, args.batch, args.iters, args.warmup) for name in IMPLEMENTATIONS}
    base = rows["for-loop"]["step_s"]
    result = {
        "benchmark": "offline_clip",
        "environment": environment(torch.device("cpu")),
        "parameters": sum(p.numel() for p in model.parameters()),
        "token_embedding_parameters": model.token_embedding.weight.numel(),
        "batch": args.batch,
        "iters": args.iters,
        "rows": rows,
        "speedup_over_for_loop": {name: base / row["step_s"] for name, row in rows.items()},
    }
    summary = ", ".join(
        f"{name} {row['step_s'] * 1e3:.0f} ms/step (optimizer {row['optimizer_s'] * 1e3:.0f} ms)"
        for name, row in rows.items()
    )
    emit(result, "offline_clip_cpu", summary, args.out)


if __name__ == "__main__":
    main()
