"""What the demo records in MLflow beyond what each stage tracks itself: the ingestion run, the CLIP tags."""

from __future__ import annotations

from pathlib import Path

from .clip import DemoClip
from .config import DemoConfig


def log_ingest_run(config: DemoConfig, summary: dict, shards: Path, clip: DemoClip) -> str:
    """Ingestion does not track itself; the demo records its summary as the experiment's preprocessing run."""
    import mlflow

    from clipsynth_platform.tracking.registry import ensure_experiment

    with mlflow.start_run(experiment_id=ensure_experiment(config.experiment), run_name="preprocess") as run:
        mlflow.set_tags({"stage": "preprocess", **clip.tags()})
        mlflow.log_params(
            {"input": str(config.root / "corpus"), "output": str(shards), "test_per_class": config.test_per_class}
        )
        mlflow.log_metrics(
            {k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        )
        mlflow.log_dict(summary, "_summary.json")
        return run.info.run_id


def tag_clip(experiment: str, clip: DemoClip) -> None:
    """Every run of the experiment says which CLIP the demo ran with."""
    import mlflow

    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return
    client = mlflow.MlflowClient()
    for run in client.search_runs([exp.experiment_id], max_results=500):
        for key, value in clip.tags().items():
            client.set_tag(run.info.run_id, key, value)
