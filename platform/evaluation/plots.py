"""Artifacts of an evaluation run: WAV files and a grid of mel images (matplotlib's Agg canvas, no pyplot,
so nothing depends on a display or on global plotting state)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf


def write_wavs(directory: Path, waves: np.ndarray, names: Sequence[str], sample_rate: int) -> list[Path]:
    """16-bit PCM WAVs, one per waveform; names are made filesystem-safe."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for wave, name in zip(waves, names):
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:80]
        path = directory / f"{safe}.wav"
        sf.write(str(path), np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0), sample_rate, subtype="PCM_16")
        paths.append(path)
    return paths


def mel_grid_png(mels: np.ndarray, titles: Sequence[str], path: Path, columns: int = 4) -> Path:
    """Normalised mels [N, n_mels, T] in [-1, 1] as a grid of images (low frequencies at the bottom)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(mels)
    if n == 0:
        raise ValueError("no mels to plot")
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(2.6 * cols, 2.2 * rows), dpi=80)
    FigureCanvasAgg(fig)
    for i, mel in enumerate(mels):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(np.asarray(mel), origin="lower", aspect="auto", vmin=-1, vmax=1, cmap="magma")
        ax.set_title(str(titles[i]) if i < len(titles) else "", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path))
    return path


def generated_vs_real_png(
    generated: np.ndarray, real: np.ndarray, queries: Sequence[str], labels: Sequence[str], path: Path
) -> Path:
    """One row per class: the mel generated for its text query beside a real mel of that class."""
    if not len(generated) == len(real) == len(queries) == len(labels):
        raise ValueError("need one generated mel, one real mel, one query and one label per class")
    mels = np.stack([m for pair in zip(generated, real) for m in pair])
    titles = [t for q, lab in zip(queries, labels) for t in (f"generated: '{q}'", f"real: {lab} (test)")]
    return mel_grid_png(mels, titles, path, columns=4)
