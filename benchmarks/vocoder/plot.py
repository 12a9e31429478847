"""The vocoder benchmark's figure: relevance (on generated mels' audio, and on the real test mels' audio),
log-spectral distance and mel L1 against training minutes (CPU minutes of the training where the run's budgets
counted CPU seconds: on a shared machine, the work done), one curve per run, Griffin-Lim's value as a dashed line
(and the judge on the mels themselves as the ceiling).

    .venv/bin/python benchmarks/vocoder/plot.py benchmarks/results/vocoder_cpu_tiny.json \\
        benchmarks/results/vocoder_cpu_cpu.json --out benchmarks/results/vocoder_cpu.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import benchmark_parser, save_figure

PANELS = (
    ("relevance", "relevance on generated mels' audio", "heard as its class (judge)"),
    ("recon_relevance", "relevance on real test mels' audio", "heard as its class (judge)"),
    ("lsd_db", "log-spectral distance to the real audio", "LSD (dB), lower is better"),
    ("mel_l1", "ln-mel L1 to the real audio", "mel L1, lower is better"),
)


def plot_runs(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # a panel with no number in any run (no generated mels: a probe on real audio) is left out
    panels = [p for p in PANELS if any(pt[p[0]] == pt[p[0]] for r in results for pt in r["curve"])]
    fig, grid = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    axes = list(grid[0])
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, result in enumerate(results):
        colour = colours[i % len(colours)]
        minutes = [p[_time_key(results)] / 60 for p in result["curve"]]
        for ax, (key, _, _) in zip(axes, panels):
            ax.plot(minutes, [p[key] for p in result["curve"]], "o-", color=colour, label=result["label"])
    reference = results[0]
    for ax, (key, title, ylabel) in zip(axes, panels):
        ax.axhline(reference["griffin_lim"][key], color="black", ls="--", lw=1, label="Griffin-Lim")
        ax.set(xlabel="training minutes", ylabel=ylabel, title=title)
    for ax, (key, _, _) in zip(axes, panels):
        if key not in ("relevance", "recon_relevance"):
            continue
        mels = "generated_mels" if key == "relevance" else "real_test_mels"
        ax.axhline(reference["judge_on_mels"][mels], color="grey", ls=":", lw=1, label="the mels themselves")
        ax.set_ylim(0, 1)
    if _time_key(results) == "train_cpu_seconds":
        for ax in axes:
            ax.set_xlabel("training CPU minutes")
    save_figure(fig, axes, path)


def _time_key(results: list[dict]) -> str:
    """CPU seconds when every run counted its budgets in them (a shared machine), else wall seconds."""
    cpu = all(r.get("budget_unit") == "cpu-seconds" for r in results)
    return "train_cpu_seconds" if cpu else "train_seconds"


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("results", nargs="+", help="result JSON files of benchmarks/vocoder/run.py")
    p.add_argument("--out", required=True, help="the PNG to write")
    args = p.parse_args()
    plot_runs([json.loads(Path(f).read_text()) for f in args.results], Path(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
