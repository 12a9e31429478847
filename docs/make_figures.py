"""Draw the README's figures: the pipeline diagram; with --demo, the generated-vs-real mels of a demo run.

python docs/make_figures.py [--demo demo_output]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

HERE = Path(__file__).resolve().parent

STAGES = [
    ("corpus", "videos\nlocal | s3://\n(+ label index)", "#e8eef7"),
    ("ingest", "Ray Data\ndecode -> 10 s chunks\nmel + frames + CLIP", "#dbe9d8"),
    ("shards", "Parquet shards\n_summary.json\n_failures.parquet", "#f4ecd8"),
    ("train", "Ray Train (DDP)\nHiFi-GAN + diffusion\ncheckpoints, EMA", "#dbe9d8"),
    ("mlflow", "MLflow\nruns, artifacts,\nregistered bundle", "#f1dede"),
    ("serve", "Ray Serve\nCLIP -> sampler\n-> vocoder -> wav", "#dbe9d8"),
]


def pipeline(out: Path) -> None:
    fig, ax = plt.subplots(figsize=(13, 2.6))
    ax.set_xlim(0, len(STAGES) * 2.2)
    ax.set_ylim(0, 2.4)
    ax.axis("off")
    for i, (title, body, color) in enumerate(STAGES):
        x = i * 2.2 + 0.1
        ax.add_patch(FancyBboxPatch((x, 0.2), 1.8, 1.9, boxstyle="round,pad=0.05", fc=color, ec="#555"))
        ax.text(x + 0.9, 1.8, title, ha="center", va="center", fontsize=12, weight="bold")
        ax.text(x + 0.9, 0.95, body, ha="center", va="center", fontsize=9)
        if i < len(STAGES) - 1:
            ax.annotate("", xy=(x + 2.15, 1.15), xytext=(x + 1.95, 1.15), arrowprops=dict(arrowstyle="->", lw=1.5))
    ax.text(
        len(STAGES) * 1.1,
        0.0,
        "evaluation (FAD, FID, relevance, CLIPRetriever) reads the shards and the registered bundle, writes to MLflow",
        ha="center",
        fontsize=9,
        style="italic",
    )
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--demo", type=Path, default=None, help="a demo output folder: copy its class_mels.png")
    a = p.parse_args()
    pipeline(HERE / "pipeline.png")
    if a.demo:
        shutil.copyfile(a.demo / "class_mels.png", HERE / "demo_mel.png")
