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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow

from clipsynth_platform.runtime.logs import LogFn, progress
from clipsynth_platform.tracking.registry import default_tracking_uri, ensure_experiment

from .config import (
    EVAL_MARKER,
    EVAL_MARKER_TAG,
    METRICS_VERSION,
    METRICS_VERSION_TAG,
    is_random_identity,
    normalize_dataset,
)
from .table_render import (
    FLAG_NAMES,
    METRIC_HEADS,
    METRIC_MEANING,
    QUERY_NAMES,
    bar_chart,
    describe_backbone,
    footnotes,
    format_value,
    to_markdown,
    write_csv,
    write_gaps_csv,
)
from .tables import DATASET_NAMES, METRICS, ROW_ORDER, Table, TableRow, cell_value, dataset_name, modality_gaps
from .variants import DEFAULT_MODEL_NAMES

COMPARISON_MARKER = "comparison"
__all__ = [  # the rendering and table names callers import from here
    "FLAG_NAMES",
    "METRIC_HEADS",
    "METRIC_MEANING",
    "QUERY_NAMES",
    "ROW_ORDER",
    "Comparison",
    "Table",
    "TableRow",
    "bar_chart",
    "build_table",
    "build_tables",
    "cell_value",
    "compare_experiment",
    "describe_backbone",
    "eval_runs",
    "footnotes",
    "format_value",
    "modality_gaps",
    "select_runs",
    "to_markdown",
    "write_csv",
    "write_gaps_csv",
]
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
class Comparison:
    """What compare_experiment wrote: the tables (the first holds the newest run) and the files."""

    tables: list[Table]
    rows: list[TableRow]  # the first table's
    datasets: list[str]
    gaps: list[dict]  # the first table's modality gaps (modality_gaps)
    paths: dict[str, Path]  # markdown, csv, gaps_csv, chart
    runs: int  # evaluation runs in the experiment
    used_runs: int  # of them in the tables
    run_id: str | None  # the MLflow run the files were logged to


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


def select_runs(runs: list, exclude_random: bool = False, log: LogFn | None = None) -> list:
    """FINISHED runs with the current metric names and the tags a table needs, newest first; refuses a mix of
    random-backbone and real-backbone runs unless `exclude_random` drops the random ones."""
    log = log or progress("compare")
    kept = []
    for run in runs:
        t, rid = run.data.tags, run.info.run_id
        status = getattr(run.info, "status", "FINISHED")
        if status != "FINISHED":
            log(f"skipping run {rid}: status {status}")
            continue
        if t.get(METRICS_VERSION_TAG) != METRICS_VERSION:
            log(
                f"skipping run {rid}: logged with metric names of version "
                f"{t.get(METRICS_VERSION_TAG, '1')} (its 'fid' was the classifier distance); evaluate it again"
            )
            continue
        missing = [k for k in ("model_name", "variant", "dataset", "test_query_type", *SIGNATURE_TAGS) if k not in t]
        if missing:
            log(f"skipping run {rid}: no tags {missing}")
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
        log(f"leaving out {len(random)} run(s) with random backbones")
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
    # The vocoder's reconstructions, from the generative runs when no --hifigan-recon run filled the row (under
    # whatever name it was given: "Griffin-Lim reconstructions" for a bundle that vocodes with Griffin-Lim).
    for d, run in sorted(recon_sources.items()):
        if any(r.variant == RECON_VARIANT and d in r.cells for r in rows.values()):
            continue
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


def build_tables(runs: list, exclude_random: bool = False, log: LogFn | None = None) -> list[Table]:
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


def compare_experiment(
    experiment: str, out_dir: str | Path, log_to_mlflow: bool = True, exclude_random: bool = False
) -> Comparison:
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
    return Comparison(tables, first.rows, first.datasets, modality_gaps(first), paths, len(runs), used, run_id)
