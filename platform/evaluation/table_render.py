"""Table 1 for readers: Markdown (with footnotes naming every column's backbone and reference and the
modality gaps), CSV files, and a bar chart."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from .config import is_random_identity
from .tables import METRICS, Table, cell_value, dataset_name, modality_gaps

QUERY_NAMES = {"image": "Image", "text": "Text", "hybrid": "Image+Text", "n/a": "-"}
FLAG_NAMES = {"true": "✓", "false": "×", "n/a": "-"}
METRIC_HEADS = {
    "fad": "FAD↓",
    "fad_melclf": "FAD-melclf↓",
    "fid": "FID↓",
    "fd_melclf": "FD-melclf↓",
    "relevance": "Relevance↑",
}
METRIC_MEANING = {
    "fad": "Fréchet audio distance",
    "fad_melclf": "Fréchet distance of the mel classifier's embedding of the audio (offline FAD)",
    "fid": "Inception FID of the mels rendered as images",
    "fd_melclf": "Fréchet distance of the mel classifier's features of the mels",
    "relevance": "mel classifier's accuracy on the intended label",
}


def format_value(value: float | None) -> str:
    """Two decimals as in the paper; three significant digits below 1 so small values stay visible."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


def describe_backbone(identity: str) -> str:
    """A reader's name for a backbone identity."""
    if identity.startswith("vggish-relu/"):
        return f"VGGish after its final ReLU (not the published FAD), weights {identity.split('/', 1)[1]}"
    if identity.startswith("vggish/"):
        return f"VGGish, 128-d pre-activation embeddings, weights {identity.split('/', 1)[1]}"
    if identity.startswith("fid-inception-v3/"):
        return f"pytorch-fid's FID Inception-v3 pool3, weights {identity.split('/', 1)[1]}"
    if identity.startswith("melclf-audio/"):
        return f"mel classifier trained on the dataset, on the re-analysed audio ({identity})"
    if identity.startswith("mel-classifier/"):
        return f"mel classifier trained on the dataset ({identity})"
    if is_random_identity(identity):
        return f"RANDOM weights, meaningless ({identity})"
    return identity


def footnotes(table: Table) -> list[str]:
    """One line per metric: its backbone and reference in every dataset (merged where they agree)."""
    lines = []
    for k in table.metrics:
        per = {
            d: (table.backbones[(d, k)], table.references[(d, k)]) for d in table.datasets if (d, k) in table.backbones
        }
        if not per:
            continue
        if len(set(per.values())) == 1:
            ((ident, ref),) = set(per.values())
            lines.append(
                f"{METRIC_HEADS[k]} ({k}, {METRIC_MEANING[k]}): {describe_backbone(ident)}; against the {ref}."
            )
        else:
            parts = "; ".join(
                f"{dataset_name(d)}: {describe_backbone(i)}, against the {r}" for d, (i, r) in per.items()
            )
            lines.append(f"{METRIC_HEADS[k]} ({k}, {METRIC_MEANING[k]}): {parts}.")
    return lines


def _markdown_table(table: Table) -> list[str]:
    head = ["Model", "Generative", "Unlabeled data only", "Training query", "Test query"]
    for d in table.datasets:
        head += [f"{dataset_name(d)} {METRIC_HEADS[k]}" for k in table.metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    for r in table.rows:
        cells = [
            r.model,
            FLAG_NAMES.get(r.generative, r.generative),
            FLAG_NAMES.get(r.unlabeled_only, r.unlabeled_only),
            QUERY_NAMES.get(r.train_query_type, r.train_query_type),
            QUERY_NAMES.get(r.test_query_type, r.test_query_type),
        ]
        for d in table.datasets:
            cell = r.cells.get(d, {})
            cells += [format_value(cell_value(cell, k)) for k in table.metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def to_markdown(tables: list[Table]) -> str:
    text = "# Objective evaluation (Table 1)\n"
    for n, table in enumerate(tables):
        title = "Table 1" if len(tables) == 1 else f"Table 1.{n + 1}"
        if table.random:
            title += " (RANDOM backbones: unit-test numbers, meaningless)"
        text += f"\n## {title}\n\n" + "\n".join(_markdown_table(table)) + "\n\n"
        text += "\n".join(f"- {line}" for line in footnotes(table) + table.notes) + "\n"
        gaps = modality_gaps(table)
        if gaps:
            text += f"\n### Modality gap ({title}: the metric with text queries minus with image queries)\n\n"
            text += "| Model | Training query | Dataset | Metric | Text | Image | Gap |\n"
            text += "| --- | --- | --- | --- | --- | --- | --- |\n"
            for g in gaps:
                text += (
                    f"| {g['model']} | {QUERY_NAMES.get(g['train_query_type'], g['train_query_type'])} | "
                    f"{dataset_name(g['dataset'])} | {g['metric']} | {format_value(g['text'])} | "
                    f"{format_value(g['image'])} | {format_value(g['modality_gap'])} |\n"
                )
    return text


def write_csv(tables: list[Table], path: Path) -> Path:
    datasets = list(dict.fromkeys(d for t in tables for d in t.datasets))
    metrics = [k for k in METRICS if any(k in t.metrics for t in tables)]
    head = ["table", "model", "variant", "generative", "unlabeled_only", "train_query_type", "test_query_type"]
    for d in datasets:
        head += [f"{d}_{k}" for k in metrics] + [f"{d}_{k}_backbone" for k in metrics] + [f"{d}_run_id"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        for n, t in enumerate(tables):
            for r in t.rows:
                line = [n + 1, r.model, r.variant, r.generative, r.unlabeled_only, r.train_query_type]
                line.append(r.test_query_type)
                for d in datasets:
                    cell = r.cells.get(d, {})
                    line += [repr(cell[k]) if k in cell else "" for k in metrics]
                    line += [t.backbones.get((d, k), "") if k in cell else "" for k in metrics]
                    line.append(cell.get("run_id", ""))
                w.writerow(line)
    return path


def write_gaps_csv(tables: list[Table], path: Path) -> Path:
    head = ["table", "model", "variant", "train_query_type", "dataset", "metric", "text", "image", "modality_gap"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=head)
        w.writeheader()
        for n, t in enumerate(tables):
            for g in modality_gaps(t):
                w.writerow({"table": n + 1, **{k: repr(v) if isinstance(v, float) else v for k, v in g.items()}})
    return path


def bar_chart(tables: list[Table], path: Path) -> Path:
    """Grouped horizontal bars: one line of panels per table, one panel per metric, one bar per dataset."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = max([len(t.metrics) for t in tables] + [1])
    heights = [1.2 + 0.45 * max(len(t.rows), 1) * max(len(t.datasets), 1) for t in tables] or [2.0]
    fig = Figure(figsize=(4.5 * cols, sum(heights)), dpi=90)
    FigureCanvasAgg(fig)
    for n, t in enumerate(tables):
        labels = [
            f"{r.model} ({QUERY_NAMES.get(r.train_query_type, '-')} → {QUERY_NAMES.get(r.test_query_type, '-')})"
            for r in t.rows
        ]
        height = 0.8 / max(len(t.datasets), 1)
        for k, metric in enumerate(t.metrics):
            ax = fig.add_subplot(len(tables), cols, n * cols + k + 1)
            for j, d in enumerate(t.datasets):
                ys = [i + j * height for i in range(len(t.rows))]
                values = [r.cells.get(d, {}).get(metric) for r in t.rows]
                ax.barh(ys, [v if v is not None else 0.0 for v in values], height=height, label=dataset_name(d))
                for y, v in zip(ys, values):
                    if v is None:
                        ax.text(0, y, " -", va="center", fontsize=7)
            ax.set_yticks([i + 0.4 - height / 2 for i in range(len(t.rows))])
            ax.set_yticklabels(labels if k == 0 else [""] * len(t.rows), fontsize=8)
            ax.invert_yaxis()
            prefix = "" if len(tables) == 1 else f"1.{n + 1}: "
            ax.set_title(f"{prefix}{METRIC_HEADS[metric]} ({metric})", fontsize=9)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path))
    return path
