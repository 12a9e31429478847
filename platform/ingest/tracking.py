"""An ingestion run in MLflow (with --tracking-uri): its counts, hygiene and coverage as metrics, the coverage
table and the failures as artifacts, the summary as JSON. Logged after the summary is written: a tracking
server that is down costs a warning, never data."""

from __future__ import annotations

import csv
import io
import posixpath

from clipsynth_platform.runtime.logs import LogFn

from .config import IngestConfig

COUNTS = ("videos_in", "videos_ok", "videos_failed", "videos_crashed", "videos_lost", "chunks_written")


def _csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def summary_metrics(summary: dict) -> dict[str, float]:
    """The summary's numbers as MLflow metrics: counts, hygiene and coverage (totals and per split)."""
    metrics = {k: float(summary[k]) for k in COUNTS}
    metrics.update({f"hygiene.{k}": float(v) for k, v in summary["hygiene"]["rejected"].items()})
    for split, n in summary["chunks_by_split"].items():
        metrics[f"chunks.{split}"] = float(n)
    coverage = summary.get("coverage")
    if coverage:
        for what in ("expected", "found", "ok"):
            metrics[f"coverage.{what}"] = float(coverage[what])
            for split, cell in coverage["by_split"].items():
                metrics[f"coverage.{split}.{what}"] = float(cell[what])
    return metrics


def log_ingest_run(config: IngestConfig, summary: dict, failures: list[dict], log: LogFn) -> str | None:
    """Log the run to MLflow; returns its run id, or None (with a warning) when tracking failed."""
    try:
        import mlflow

        from clipsynth_platform.tracking.registry import ensure_experiment

        mlflow.set_tracking_uri(config.tracking_uri or "")
        name = f"ingest {posixpath.basename(config.output.rstrip('/')) or config.output}"
        with mlflow.start_run(experiment_id=ensure_experiment(config.experiment), run_name=name) as run:
            mlflow.set_tags({"stage": "preprocess", "output": config.output})
            mlflow.log_params({k: str(v)[:500] for k, v in config.to_dict().items()})
            mlflow.log_metrics(summary_metrics(summary))
            mlflow.log_dict(summary, "_summary.json")
            coverage = summary.get("coverage")
            if coverage:
                rows = [
                    {"split": s, "label": label, **cell}
                    for s, cells in coverage["by_split_class"].items()
                    for label, cell in cells.items()
                ]
                mlflow.log_text(_csv(rows, ["split", "label", "expected", "found", "ok", "ok_share"]), "coverage.csv")
            mlflow.log_text(_csv(failures, ["uri", "stage", "reason"]), "failures.csv")
            return run.info.run_id
    except Exception as exc:  # the shards and the summary are written already: tracking must not fail the job
        log(f"warning: could not log the run to MLflow at {config.tracking_uri}: {type(exc).__name__}: {exc}")
        return None
