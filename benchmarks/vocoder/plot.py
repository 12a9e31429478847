"""The vocoder benchmark's figure: relevance, log-spectral distance and mel L1 against training minutes, one
curve per run, Griffin-Lim's value as a dashed line (and the judge on the generated mels as the ceiling).

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
    ("lsd_db", "log-spectral distance to the real audio", "LSD (dB), lower is better"),
    ("mel_l1", "ln-mel L1 to the real audio", "mel L1, lower is better"),
)


def plot_runs(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, result in enumerate(results):
        colour = colours[i % len(colours)]
        minutes = [p["train_seconds"] / 60 for p in result["curve"]]
        for ax, (key, _, _) in zip(axes, PANELS):
            ax.plot(minutes, [p[key] for p in result["curve"]], "o-", color=colour, label=result["label"])
    reference = results[0]
    for ax, (key, title, ylabel) in zip(axes, PANELS):
        ax.axhline(reference["griffin_lim"][key], color="black", ls="--", lw=1, label="Griffin-Lim")
        ax.set(xlabel="training minutes", ylabel=ylabel, title=title)
    axes[0].axhline(
        reference["judge_on_mels"]["generated_mels"], color="grey", ls=":", lw=1, label="the mels themselves"
    )
    axes[0].set_ylim(0, 1)
    save_figure(fig, axes, path)


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("results", nargs="+", help="result JSON files of benchmarks/vocoder/run.py")
    p.add_argument("--out", required=True, help="the PNG to write")
    args = p.parse_args()
    plot_runs([json.loads(Path(f).read_text()) for f in args.results], Path(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
