"""The paper's Table 1 from an MLflow experiment of evaluation runs: Markdown, CSV and a bar chart.

Only FINISHED evaluation runs logged with the current metric names (tag clipsynth.metrics_version) count.
Rows are (model name, variant, train query type, test query type); columns are the metrics per dataset, each
under its own name: `fad` (VGGish, as published), `fad_melclf` (the mel classifier's audio embedding, the
offline FAD), `fid` (Inception FID on mel images), `fd_melclf` (the mel classifier's features), `relevance`.

Tables never mix numbers of different kinds:
- runs are grouped by the identity of every backbone they used and by their FAD reference (raw test audio or
  vocoded test mels); each group is its own table, and a footnote names the backbone and reference of every
  column. Groups of different datasets that differ only in backbones trained on their own dataset (the mel
  classifier) share a table, column by column;
- a run with a random backbone (`tiny-random`, unit tests) is never put beside a real one: a selection holding
  both is refused, unless `exclude_random` drops the random ones.
When several runs fill one cell, the newest counts (its run id is in the CSV). The HiFi-GAN reconstructions
row comes from a `--hifigan-recon` run, else from the `<fad metric>_hifigan_recon` that generative runs log
against the same reference with the same backbone. The modality gap (a metric with text queries minus with
image queries) is computed for every model, dataset and metric that has both.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow

from ..registry import default_tracking_uri, ensure_experiment
from .config import (
    EVAL_MARKER,
    EVAL_MARKER_TAG,
    METRICS_VERSION,
    METRICS_VERSION_TAG,
    is_random_identity,
    normalize_dataset,
)
from .variants import DEFAULT_MODEL_NAMES

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
# Table columns, in this order, where any run of the table has them.
METRICS = ("fad", "fad_melclf", "fid", "fd_melclf", "relevance")
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
# The run tag naming each metric's backbone.
BACKBONE_TAG = {
    "fad": "fad_backbone",
    "fad_melclf": "fad_backbone",
    "fid": "fid_backbone",
    "fd_melclf": "melclf_backbone",
    "relevance": "melclf_backbone",
}
SIGNATURE_TAGS = ("fad_reference", "fad_backbone", "fid_backbone", "melclf_backbone")
# Backbones trained on one dataset: their identities differ between datasets by construction.
DATASET_TRAINED_PREFIXES = ("mel-classifier/", "melclf-audio/")
RECON_VARIANT = "hifigan-recon"


@dataclass
class TableRow:
    model: str
    variant: str
    generative: str
    unlabeled_only: str
    train_query_type: str
    test_query_type: str
    cells: dict[str, dict[str, float | str]] = field(default_factory=dict)  # dataset -> metric -> value, run_id

    def sort_key(self) -> tuple:
        order = (self.variant, self.test_query_type)
        return (ROW_ORDER.index(order) if order in ROW_ORDER else len(ROW_ORDER), self.model)


@dataclass
class Table:
    """One table: runs whose columns each have one backbone and one reference."""

    rows: list[TableRow]
    datasets: list[str]
    metrics: list[str]
    backbones: dict[tuple[str, str], str]  # (dataset, metric) -> backbone identity
    references: dict[tuple[str, str], str]  # (dataset, metric) -> what the samples are compared with
    notes: list[str] = field(default_factory=list)
    random: bool = False
    runs: int = 0


def eval_runs(experiment: str) -> list:
    """The experiment's evaluation runs (of any status), newest first."""
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment named {experiment!r} at {mlflow.get_tracking_uri()}")
    return mlflow.search_runs(
        experiment_ids=[exp.experiment_id],
        filter_string=f"tags.`{EVAL_MARKER_TAG}` = '{EVAL_MARKER}'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )


def run_is_random(tags: dict) -> bool:
    listed = tags.get("random_backbones", "none")
    return (listed not in ("", "none")) or any(is_random_identity(tags.get(t, "")) for t in SIGNATURE_TAGS)


def _kind(identity: str) -> str:
    for prefix in DATASET_TRAINED_PREFIXES:
        if identity.startswith(prefix):
            return prefix.rstrip("/")
    return identity


def _reference_of(metric: str, tags: dict) -> str:
    if metric in ("fad", "fad_melclf"):
        return {"audio": "test audio", "vocoded_mels": "test mels through the bundle's vocoder"}.get(
            tags.get("fad_reference", "?"), tags.get("fad_reference", "?")
        )
    if metric == "relevance":
        return "intended labels"
    return "test mel windows"


def select_runs(runs: list, exclude_random: bool = False, log: Callable[[str], None] = print) -> list:
    """FINISHED runs with the current metric names and the tags a table needs, newest first; refuses a mix of
    random-backbone and real-backbone runs unless `exclude_random` drops the random ones."""
    kept = []
    for run in runs:
        t, rid = run.data.tags, run.info.run_id
        status = getattr(run.info, "status", "FINISHED")
        if status != "FINISHED":
            log(f"[compare] skipping run {rid}: status {status}")
            continue
        if t.get(METRICS_VERSION_TAG) != METRICS_VERSION:
            log(
                f"[compare] skipping run {rid}: logged with metric names of version "
                f"{t.get(METRICS_VERSION_TAG, '1')} (its 'fid' was the classifier distance); evaluate it again"
            )
            continue
        missing = [k for k in ("model_name", "variant", "dataset", "test_query_type", *SIGNATURE_TAGS) if k not in t]
        if missing:
            log(f"[compare] skipping run {rid}: no tags {missing}")
            continue
        kept.append(run)
    random = [r for r in kept if run_is_random(r.data.tags)]
    real = [r for r in kept if not run_is_random(r.data.tags)]
    if random and real:
        if not exclude_random:
            raise ValueError(
                f"refusing to put runs with random backbones beside runs with real ones: random "
                f"{[r.info.run_id for r in random][:5]} (tags random_backbones="
                f"{sorted({r.data.tags.get('random_backbones', '?') for r in random})}), real "
                f"{[r.info.run_id for r in real][:5]}. Random-backbone numbers carry no information; pass "
                "--exclude-random (exclude_random=True) to leave them out, or compare them in their own experiment"
            )
        log(f"[compare] leaving out {len(random)} run(s) with random backbones")
        kept = real
    return kept


def _row_for(rows: dict, t: dict) -> TableRow:
    key = (t["model_name"], t["variant"], t.get("train_query_type", "n/a"), t["test_query_type"])
    return rows.setdefault(
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


def _make_table(runs: list) -> Table:
    """One table from runs (newest first) whose columns agree on backbones and references."""
    rows: dict[tuple, TableRow] = {}
    backbones: dict[tuple[str, str], str] = {}
    references: dict[tuple[str, str], str] = {}
    metrics: set[str] = set()
    datasets: set[str] = set()
    recon_sources: dict[str, Any] = {}  # dataset -> newest run carrying <fad metric>_hifigan_recon
    notes: list[str] = []
    for run in runs:
        t, m = run.data.tags, run.data.metrics
        d = normalize_dataset(t["dataset"])
        datasets.add(d)
        row = _row_for(rows, t)
        present = [k for k in METRICS if k in m]
        for k in present:
            ident = t[BACKBONE_TAG[k]]
            if backbones.setdefault((d, k), ident) != ident:  # the grouping guarantees this; never mix silently
                raise AssertionError(f"column {d}/{k} would mix backbones {backbones[(d, k)]} and {ident}")
            references.setdefault((d, k), _reference_of(k, t))
            metrics.add(k)
        fad_metric = t.get("fad_metric", "fad")
        if f"{fad_metric}_hifigan_recon" in m and t["variant"] != RECON_VARIANT:
            recon_sources.setdefault(d, run)
        if d in row.cells:  # an older run of a filled cell
            continue
        cell: dict[str, float | str] = {"run_id": run.info.run_id}
        for k in present:
            cell[k] = float(m[k])
        row.cells[d] = cell
    # The vocoder's reconstructions, from the generative runs when no --hifigan-recon run filled the row.
    for d, run in sorted(recon_sources.items()):
        t = run.data.tags
        fad_metric = t.get("fad_metric", "fad")
        recon_tags = {
            "model_name": DEFAULT_MODEL_NAMES[RECON_VARIANT],
            "variant": RECON_VARIANT,
            "train_query_type": "n/a",
            "test_query_type": "n/a",
            "generative": "false",
            "unlabeled_only": "n/a",
        }
        row = _row_for(rows, recon_tags)
        if d in row.cells:
            continue
        row.cells[d] = {"run_id": run.info.run_id, fad_metric: float(run.data.metrics[f"{fad_metric}_hifigan_recon"])}
        backbones.setdefault((d, fad_metric), t["fad_backbone"])
        references.setdefault((d, fad_metric), _reference_of(fad_metric, t))
        metrics.add(fad_metric)
        notes.append(
            f"{DEFAULT_MODEL_NAMES[RECON_VARIANT]} ({dataset_name(d)}): the {fad_metric}_hifigan_recon of run "
            f"{run.info.run_id} (the bundle's vocoder on the test mels, same reference and backbone)."
        )
    known = [d for d in DATASET_NAMES if d in datasets]
    return Table(
        rows=sorted(rows.values(), key=TableRow.sort_key),
        datasets=known + sorted(datasets - set(known)),
        metrics=[k for k in METRICS if k in metrics],
        backbones=backbones,
        references=references,
        notes=notes,
        random=any(run_is_random(r.data.tags) for r in runs),
        runs=len(runs),
    )


def build_tables(runs: list, exclude_random: bool = False, log: Callable[[str], None] = print) -> list[Table]:
    """Tables from runs sorted newest first: one per group of backbones and FAD reference (see the module
    docstring); the table holding the newest run first."""
    selected = select_runs(runs, exclude_random, log)
    groups: dict[tuple, list] = {}
    for run in selected:
        t = run.data.tags
        signature = tuple(t[k] for k in SIGNATURE_TAGS)
        groups.setdefault(signature, []).append(run)
    # Merge groups of different datasets whose backbones differ only where each is trained on its dataset.
    merged: list[tuple[tuple, set[str], list]] = []
    for signature, group in groups.items():  # dict order: by each group's newest run
        kind = tuple(_kind(x) for x in signature)
        names = {normalize_dataset(r.data.tags["dataset"]) for r in group}
        for entry in merged:
            if entry[0] == kind and not entry[1] & names:
                entry[1].update(names)
                entry[2].extend(group)
                break
        else:
            merged.append((kind, names, list(group)))
    tables = []
    for _, _, group in merged:
        group.sort(key=lambda r: -int(getattr(r.info, "start_time", 0) or 0))
        tables.append(_make_table(group))
    return tables


def build_table(runs: list) -> tuple[list[TableRow], list[str]]:
    """Rows and datasets of the first table (runs sorted newest first)."""
    tables = build_tables(runs)
    if not tables:
        return [], []
    return tables[0].rows, tables[0].datasets


def modality_gaps(table: Table) -> list[dict]:
    """metric(text queries) - metric(image queries) per (model, variant, train query type, dataset, metric)."""
    out = []
    by_key = {(r.model, r.variant, r.train_query_type, r.test_query_type): r for r in table.rows}
    for (model, variant, train_q, test_q), row in by_key.items():
        other = by_key.get((model, variant, train_q, "image"))
        if test_q != "text" or other is None:
            continue
        for d in table.datasets:
            for k in table.metrics:
                text, image = cell_value(row.cells.get(d, {}), k), cell_value(other.cells.get(d, {}), k)
                if text is None or image is None:
                    continue
                out.append(
                    {
                        "model": model,
                        "variant": variant,
                        "train_query_type": train_q,
                        "dataset": d,
                        "metric": k,
                        "text": text,
                        "image": image,
                        "modality_gap": text - image,
                    }
                )
    return out


def cell_value(cell: dict[str, float | str], metric: str) -> float | None:
    """A metric's value in a table cell (the cell also holds its run's id, a string)."""
    value = cell.get(metric)
    return value if isinstance(value, float) else None


def format_value(value: float | None) -> str:
    """Two decimals as in the paper; three significant digits below 1 so small values stay visible."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


def dataset_name(d: str) -> str:
    return DATASET_NAMES.get(normalize_dataset(d), d)


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


def compare_experiment(
    experiment: str, out_dir: str | Path, log_to_mlflow: bool = True, exclude_random: bool = False
) -> dict:
    """Write table.md, table.csv, modality_gap.csv and table.png to out_dir (and to an MLflow run)."""
    mlflow.set_tracking_uri(default_tracking_uri())
    runs = eval_runs(experiment)
    if not runs:
        raise ValueError(f"experiment {experiment!r} holds no evaluation runs (tag {EVAL_MARKER_TAG}={EVAL_MARKER})")
    tables = build_tables(runs, exclude_random=exclude_random)
    if not tables:
        raise ValueError(
            f"experiment {experiment!r} holds no FINISHED evaluation runs with metric names of version "
            f"{METRICS_VERSION} ({len(runs)} evaluation runs in all)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out / "table.md",
        "csv": write_csv(tables, out / "table.csv"),
        "gaps_csv": write_gaps_csv(tables, out / "modality_gap.csv"),
        "chart": bar_chart(tables, out / "table.png"),
    }
    paths["markdown"].write_text(to_markdown(tables))
    used = sum(t.runs for t in tables)
    run_id = None
    if log_to_mlflow:
        with mlflow.start_run(experiment_id=ensure_experiment(experiment), run_name="table1-comparison") as run:
            mlflow.set_tags({EVAL_MARKER_TAG: COMPARISON_MARKER, "source_runs": str(used)})
            mlflow.log_metrics(
                {"tables": len(tables), "rows": sum(len(t.rows) for t in tables), "eval_runs": len(runs), "used": used}
            )
            for p in paths.values():
                mlflow.log_artifact(str(p), artifact_path="comparison")
            run_id = run.info.run_id
    first = tables[0]
    return {
        "tables": tables,
        "rows": first.rows,
        "datasets": first.datasets,
        "gaps": modality_gaps(first),
        "paths": paths,
        "runs": len(runs),
        "used_runs": used,
        "run_id": run_id,
    }
