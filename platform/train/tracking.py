"""MLflow for training runs, written by rank 0 only: one run per job that survives restarts.

The run id lives in `<storage_path>/<run name>/clipsynth_run.json` (and in every checkpoint's state.json),
so a worker restarted by Ray Train, or the same command run again, continues the same MLflow run.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from clipsynth_platform.runtime.uri import fsspec_filesystem, join, strip_scheme
from clipsynth_platform.tracking.registry import default_tracking_uri, ensure_experiment

RUN_RECORD = "clipsynth_run.json"
MLFLOW_BATCH = 100  # MLflow accepts at most 100 params / 1000 metrics per log_batch request


def resolve_tracking_uri(explicit: str = "") -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else a SQLite file in the current directory (absolute)."""
    return explicit or default_tracking_uri()


def git_commit(repo: str | os.PathLike | None = None) -> str:
    """The checkout's commit (with "-dirty" when it has local changes), $CLIPSYNTH_GIT_COMMIT, or "unknown"."""
    env = os.environ.get("CLIPSYNTH_GIT_COMMIT")
    if env:
        return env
    cwd = str(repo or Path(__file__).resolve().parents[2])
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten_params(values: dict, prefix: str = "") -> dict[str, str]:
    """Nested dicts -> {"a.b": "value"} with JSON for lists and tuples (MLflow params are strings)."""
    out: dict[str, str] = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_params(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v)
        else:
            out[key] = str(v)
    return out


def run_record_uri(storage_path: str, run_name: str) -> str:
    return join(storage_path, run_name, RUN_RECORD)


def read_run_record(uri: str) -> dict | None:
    fs = fsspec_filesystem(uri)
    path = strip_scheme(uri)
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as f:
        return json.load(f)


def write_run_record(uri: str, record: dict) -> None:
    fs = fsspec_filesystem(uri)
    path = strip_scheme(uri)
    parent = path.rsplit("/", 1)[0]
    if not uri.startswith("s3://"):
        os.makedirs(parent, exist_ok=True)
    with fs.open(path, "w") as f:
        json.dump(record, f, indent=2)


class RunTracker:
    """The job's MLflow run: created on first start, continued after any restart."""

    def __init__(
        self, tracking_uri: str, experiment: str, run_name: str, record_uri: str, tags: dict[str, str]
    ) -> None:
        mlflow.set_tracking_uri(tracking_uri)
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.record_uri = record_uri
        self.experiment_id = ensure_experiment(experiment)
        record = read_run_record(record_uri) or {}
        run_id = record.get("mlflow_run_id")
        self.resumed = False
        if run_id:
            try:
                self.client.get_run(run_id)
                self.resumed = True
            except mlflow.exceptions.MlflowException:
                run_id = None  # the record points at another tracking store: start a new run
        if not run_id:
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
            run_id = run.info.run_id
            record = {"mlflow_run_id": run_id, "experiment_id": self.experiment_id, "run_name": run_name}
            write_run_record(record_uri, record)
        self.run_id = run_id
        self.record = record
        # Per metric, the last step already in MLflow: a restart from the last checkpoint replays the steps
        # after it, whose values the first attempt logged; they are not logged twice (one value per step).
        self.logged_through: dict[str, int] = {}
        if self.resumed:
            self.client.update_run(run_id, status="RUNNING")
            self.set_tags(tags)
            for key in self.client.get_run(run_id).data.metrics:
                history = self.client.get_metric_history(run_id, key)
                self.logged_through[key] = max((m.step for m in history), default=-1)

    def update_record(self, **values) -> None:
        self.record.update(values)
        write_run_record(self.record_uri, self.record)

    def log_params(self, params: dict[str, str]) -> None:
        """Log params once; a resumed run whose value changed (e.g. a larger --max-steps) gets a tag instead."""
        existing = self.client.get_run(self.run_id).data.params
        new = [Param(k, v[:6000]) for k, v in params.items() if k not in existing]
        changed = {f"resumed_with.{k}": v for k, v in params.items() if k in existing and existing[k] != v[:6000]}
        for i in range(0, len(new), MLFLOW_BATCH):
            self.client.log_batch(self.run_id, params=new[i : i + MLFLOW_BATCH])
        if changed:
            self.set_tags(changed)

    def set_tags(self, tags: dict[str, str]) -> None:
        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), MLFLOW_BATCH):
            self.client.log_batch(self.run_id, tags=items[i : i + MLFLOW_BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        items = [
            Metric(k, float(v), ts, int(step))
            for k, v in metrics.items()
            if math.isfinite(float(v)) and int(step) > self.logged_through.get(k, -1)
        ]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_artifacts(self, local_dir: str | os.PathLike, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


# ---------------------------------------------------------------------------------------------- samples
def safe_name(text: str, limit: int = 60) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:limit] or "sample"


def write_samples(
    directory: str | os.PathLike,
    names: list[str],
    mels: np.ndarray,
    waves: np.ndarray,
    sample_rate: int,
    title: str,
    reference_mels: np.ndarray | None = None,
) -> list[Path]:
    """One WAV per sample and one PNG of all mels (with the references above them when given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import soundfile as sf

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for i, (name, wave) in enumerate(zip(names, waves)):
        path = d / f"{i:02d}_{safe_name(name)}.wav"
        sf.write(str(path), np.clip(np.asarray(wave, dtype=np.float32), -1, 1), sample_rate, subtype="PCM_16")
        written.append(path)
    rows = 2 if reference_mels is not None else 1
    fig, axes = plt.subplots(rows, len(names), figsize=(3.2 * len(names), 3.0 * rows), squeeze=False)
    for i, name in enumerate(names):
        panels = [("", mels[i])] if reference_mels is None else [("real", reference_mels[i]), ("generated", mels[i])]
        for r, (label, mel) in enumerate(panels):
            ax = axes[r][i]
            ax.imshow(np.asarray(mel), origin="lower", aspect="auto", vmin=-1, vmax=1, cmap="magma")
            ax.set_title(f"{label} {name}"[:40].strip(), fontsize=8)
            ax.set_xlabel("frame")
            ax.set_ylabel("mel band")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    png = d / "mels.png"
    fig.savefig(png, dpi=80)
    plt.close(fig)
    written.append(png)
    return written


def log_samples(tracker: RunTracker, step: int, **kwargs) -> None:
    with tempfile.TemporaryDirectory(prefix="clipsynth-samples-") as tmp:
        write_samples(tmp, **kwargs)
        tracker.log_artifacts(tmp, f"samples/step_{step:08d}")
