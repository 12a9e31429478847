"""The fetch run in MLflow (only when a tracking URI is set): its settings (no secrets), the counts, and the
manifest, ledger and summary files as artifacts, so a later stage can name the exact list it was fed."""

from __future__ import annotations

import json
import os
import tempfile

from clipsynth_platform.datasets.manifest import MANIFEST_FILE, Manifest

from .config import FetchConfig
from .ledger import SUMMARY_FILE, Ledger
from .summary import FetchSummary


def log_fetch(config: FetchConfig, manifest: Manifest, ledger: Ledger, summary: FetchSummary) -> str:
    """One MLflow run for this fetch run; returns its id."""
    import mlflow

    from clipsynth_platform.tracking.registry import ensure_experiment

    uri = config.resolved_tracking_uri
    assert uri, "log_fetch needs a tracking URI"
    mlflow.set_tracking_uri(uri)
    experiment_id = ensure_experiment(config.experiment)
    name = f"fetch-{os.path.basename(config.output.rstrip('/')) or 'output'}-run{summary.run.run}"
    metrics: dict[str, float] = {
        "clips_in": summary.clips_in,
        "clips_ok": summary.ok,
        "clips_failed": summary.failed,
        "clips_not_tried": summary.not_tried,
        "run_fetched_ok": summary.run.fetched_ok,
        "run_fetched_failed": summary.run.fetched_failed,
        "run_attempts": summary.run.attempts,
        **{f"failed_{cls}": n for cls, n in summary.failed_by_class.items()},
    }
    if summary.run.clips_per_second is not None:
        metrics["run_clips_per_second"] = summary.run.clips_per_second
    with mlflow.start_run(experiment_id=experiment_id, run_name=name) as run:
        mlflow.set_tags({"clipsynth.stage": "fetch", "manifest_digest": manifest.digest()})
        mlflow.log_params({k: str(v) for k, v in config.to_dict().items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        with tempfile.TemporaryDirectory() as tmp:
            manifest.write(os.path.join(tmp, MANIFEST_FILE))
            ledger.write(tmp)
            with open(os.path.join(tmp, SUMMARY_FILE), "w") as f:
                json.dump(summary.to_dict(), f, indent=2)
            mlflow.log_artifacts(tmp, artifact_path="fetch")
    return run.info.run_id
