"""The paper's Table 1 from an MLflow experiment of evaluation runs: Markdown, CSV and a bar chart.

Rows are (model name, variant, train query type, test query type); columns are FAD and FID per dataset.
When several runs fill one cell, the latest one counts (its run id is in the CSV). The modality gap (FAD with
text queries minus FAD with image queries) is computed for every model and dataset that has both.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import mlflow

from ..registry import default_tracking_uri, ensure_experiment
from .runner import EVAL_MARKER, EVAL_MARKER_TAG

COMPARISON_MARKER = "comparison"
# The paper's row order: generative models by (train, test) query type, then the baselines.
ROW_ORDER = [
    ("image", "text"),
    ("text", "text"),
    ("hybrid", "text"),
    ("image", "image"),
    ("text", "image"),
    ("hybrid", "image"),
    ("retriever", "text"),
    ("retriever", "image"),
    ("hifigan-recon", "n/a"),
]
DATASET_NAMES = {"music": "MUSIC", "vggsound": "VGG-Sound"}
QUERY_NAMES = {"image": "Image", "text": "Text", "hybrid": "Image+Text", "n/a": "-"}
FLAG_NAMES = {"true": "✓", "false": "×", "n/a": "-"}
METRICS = ("fad", "fid")


@dataclass
class TableRow:
    model: str
    variant: str
    generative: str
    unlabeled_only: str
    train_query_type: str
    test_query_type: str
    cells: dict[str, dict[str, float | str]] = field(default_factory=dict)  # dataset -> fad, fid, run_id

    def sort_key(self) -> tuple:
        order = (self.variant, self.test_query_type)
        return (ROW_ORDER.index(order) if order in ROW_ORDER else len(ROW_ORDER), self.model)


def eval_runs(experiment: str) -> list:
    """The experiment's evaluation runs, newest first."""
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment named {experiment!r} at {mlflow.get_tracking_uri()}")
    return mlflow.search_runs(
        experiment_ids=[exp.experiment_id],
        filter_string=f"tags.`{EVAL_MARKER_TAG}` = '{EVAL_MARKER}'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )


def build_table(runs: list) -> tuple[list[TableRow], list[str]]:
    """Rows in the paper's order and the datasets (MUSIC, VGG-Sound first) from runs sorted newest first."""
    rows: dict[tuple, TableRow] = {}
    datasets: set[str] = set()
    for run in runs:
        t = run.data.tags
        missing = [k for k in ("model_name", "variant", "dataset", "test_query_type") if k not in t]
        if missing:
            print(f"[compare] skipping run {run.info.run_id}: no tags {missing}")
            continue
        key = (t["model_name"], t["variant"], t.get("train_query_type", "n/a"), t["test_query_type"])
        row = rows.setdefault(
            key,
            TableRow(
                model=t["model_name"],
                variant=t["variant"],
                generative=t.get("generative", "n/a"),
                unlabeled_only=t.get("unlabeled_only", "n/a"),
                train_query_type=t.get("train_query_type", "n/a"),
                test_query_type=t["test_query_type"],
            ),
        )
        datasets.add(t["dataset"])
        if t["dataset"] in row.cells:  # an older run of a filled cell
            continue
        cell: dict[str, float | str] = {"run_id": run.info.run_id}
        for m in METRICS:
            if m in run.data.metrics:
                cell[m] = float(run.data.metrics[m])
        row.cells[t["dataset"]] = cell
    known = [d for d in DATASET_NAMES if d in datasets]
    return sorted(rows.values(), key=TableRow.sort_key), known + sorted(datasets - set(known))


def modality_gaps(rows: list[TableRow], datasets: list[str]) -> list[dict]:
    """FAD(text queries) - FAD(image queries) per (model, variant, train query type, dataset)."""
    out = []
    by_key = {(r.model, r.variant, r.train_query_type, r.test_query_type): r for r in rows}
    for (model, variant, train_q, test_q), row in by_key.items():
        other = by_key.get((model, variant, train_q, "image"))
        if test_q != "text" or other is None:
            continue
        for d in datasets:
            fad_text = row.cells.get(d, {}).get("fad")
            fad_image = other.cells.get(d, {}).get("fad")
            if fad_text is None or fad_image is None:
                continue
            out.append(
                {
                    "model": model,
                    "variant": variant,
                    "train_query_type": train_q,
                    "dataset": d,
                    "fad_text": fad_text,
                    "fad_image": fad_image,
                    "modality_gap_fad": fad_text - fad_image,
                }
            )
    return out


def format_value(value: float | None) -> str:
    """Two decimals as in the paper; three significant digits below 1 so small values stay visible."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


def dataset_name(d: str) -> str:
    return DATASET_NAMES.get(d, d)


def to_markdown(rows: list[TableRow], datasets: list[str], gaps: list[dict]) -> str:
    head = ["Model", "Generative", "Unlabeled data only", "Training query", "Test query"]
    for d in datasets:
        head += [f"{dataset_name(d)} FAD↓", f"{dataset_name(d)} FID↓"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    for r in rows:
        cells = [
            r.model,
            FLAG_NAMES.get(r.generative, r.generative),
            FLAG_NAMES.get(r.unlabeled_only, r.unlabeled_only),
            QUERY_NAMES.get(r.train_query_type, r.train_query_type),
            QUERY_NAMES.get(r.test_query_type, r.test_query_type),
        ]
        for d in datasets:
            cell = r.cells.get(d, {})
            cells += [format_value(cell.get("fad")), format_value(cell.get("fid"))]
        lines.append("| " + " | ".join(cells) + " |")
    text = "# Objective evaluation (Table 1)\n\n" + "\n".join(lines) + "\n"
    if gaps:
        text += "\n## Modality gap (FAD with text queries minus FAD with image queries)\n\n"
        text += (
            "| Model | Training query | Dataset | FAD text | FAD image | Gap |\n| --- | --- | --- | --- | --- | --- |\n"
        )
        for g in gaps:
            text += (
                f"| {g['model']} | {QUERY_NAMES.get(g['train_query_type'], g['train_query_type'])} | "
                f"{dataset_name(g['dataset'])} | {format_value(g['fad_text'])} | {format_value(g['fad_image'])} | "
                f"{format_value(g['modality_gap_fad'])} |\n"
            )
    return text


def write_csv(rows: list[TableRow], datasets: list[str], path: Path) -> Path:
    head = ["model", "variant", "generative", "unlabeled_only", "train_query_type", "test_query_type"]
    for d in datasets:
        head += [f"{d}_fad", f"{d}_fid", f"{d}_run_id"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        for r in rows:
            line = [r.model, r.variant, r.generative, r.unlabeled_only, r.train_query_type, r.test_query_type]
            for d in datasets:
                cell = r.cells.get(d, {})
                line += [repr(cell["fad"]) if "fad" in cell else "", repr(cell["fid"]) if "fid" in cell else ""]
                line.append(cell.get("run_id", ""))
            w.writerow(line)
    return path


def write_gaps_csv(gaps: list[dict], path: Path) -> Path:
    head = ["model", "variant", "train_query_type", "dataset", "fad_text", "fad_image", "modality_gap_fad"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=head)
        w.writeheader()
        for g in gaps:
            w.writerow({k: repr(v) if isinstance(v, float) else v for k, v in g.items()})
    return path


def bar_chart(rows: list[TableRow], datasets: list[str], path: Path) -> Path:
    """Grouped horizontal bars: one panel per metric, one bar per dataset for every row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = [
        f"{r.model} ({QUERY_NAMES.get(r.train_query_type, '-')} → {QUERY_NAMES.get(r.test_query_type, '-')})"
        for r in rows
    ]
    fig = Figure(figsize=(12, 1.2 + 0.45 * max(len(rows), 1) * max(len(datasets), 1)), dpi=90)
    FigureCanvasAgg(fig)
    height = 0.8 / max(len(datasets), 1)
    for k, metric in enumerate(METRICS):
        ax = fig.add_subplot(1, len(METRICS), k + 1)
        for j, d in enumerate(datasets):
            ys = [i + j * height for i in range(len(rows))]
            values = [r.cells.get(d, {}).get(metric) for r in rows]
            ax.barh(ys, [v if v is not None else 0.0 for v in values], height=height, label=dataset_name(d))
            for y, v in zip(ys, values):
                if v is None:
                    ax.text(0, y, " -", va="center", fontsize=7)
        ax.set_yticks([i + 0.4 - height / 2 for i in range(len(rows))])
        ax.set_yticklabels(labels if k == 0 else [""] * len(rows), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{metric.upper()} (lower is better)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path))
    return path


def compare_experiment(experiment: str, out_dir: str | Path, log_to_mlflow: bool = True) -> dict:
    """Write table.md, table.csv, modality_gap.csv and table.png to out_dir (and to an MLflow run)."""
    mlflow.set_tracking_uri(default_tracking_uri())
    runs = eval_runs(experiment)
    if not runs:
        raise ValueError(f"experiment {experiment!r} holds no evaluation runs (tag {EVAL_MARKER_TAG}={EVAL_MARKER})")
    rows, datasets = build_table(runs)
    gaps = modality_gaps(rows, datasets)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out / "table.md",
        "csv": write_csv(rows, datasets, out / "table.csv"),
        "gaps_csv": write_gaps_csv(gaps, out / "modality_gap.csv"),
        "chart": bar_chart(rows, datasets, out / "table.png"),
    }
    paths["markdown"].write_text(to_markdown(rows, datasets, gaps))
    run_id = None
    if log_to_mlflow:
        with mlflow.start_run(experiment_id=ensure_experiment(experiment), run_name="table1-comparison") as run:
            mlflow.set_tags({EVAL_MARKER_TAG: COMPARISON_MARKER, "source_runs": str(len(runs))})
            mlflow.log_metrics({"rows": len(rows), "datasets": len(datasets), "eval_runs": len(runs)})
            for p in paths.values():
                mlflow.log_artifact(str(p), artifact_path="comparison")
            run_id = run.info.run_id
    return {"rows": rows, "datasets": datasets, "gaps": gaps, "paths": paths, "runs": len(runs), "run_id": run_id}
