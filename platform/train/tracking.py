"""MLflow for training runs, written by rank 0 only: one run per job that survives restarts and outages.

The run id lives in `<storage_path>/<run name>/clipsynth_run.json` (and in every checkpoint's state.json),
so a worker restarted by Ray Train, or the same command run again, continues the same MLflow run. What the run
logs is sent from a background thread (RunTracker), so a tracking server that goes away never stops training.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from clipsynth_platform.runtime.logs import get_logger
from clipsynth_platform.runtime.uri import fsspec_filesystem, is_s3, join, strip_scheme
from clipsynth_platform.tracking.outbox import (
    PENDING_DIR,
    MetricsOp,
    OutboxLimits,
    TrackingOutbox,
    is_permanent,
    metric_steps_logged,
)
from clipsynth_platform.tracking.registry import default_tracking_uri, ensure_experiment

RUN_RECORD = "clipsynth_run.json"
logger = get_logger("tracking")


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
    """The job's MLflow run: created on first start, continued after any restart.

    Everything a running loop logs goes through a TrackingOutbox (clipsynth_platform.tracking.outbox): a
    background thread sends it, so an MLflow server that is slow or gone never stops or fails the step loop.
    What it has not sent yet goes into every checkpoint (`save_pending`) and is sent by the attempt that
    resumes from it; what it has not sent when the run ends (`finish`) is kept in the run's folder in storage,
    sent by the next attempt or by `python jobs/finish_tracking.py`. Only a run that does not exist yet needs
    the server at start (to create it); a resumed run goes on from the run record when the server is away.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        record_uri: str,
        tags: dict[str, str],
        previous: Path | None = None,
        wait_seconds: float = 120.0,
        limits: OutboxLimits | None = None,
    ) -> None:
        mlflow.set_tracking_uri(tracking_uri)
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.record_uri = record_uri
        self.run_dir = record_uri.rsplit("/", 1)[0]
        self.wait_seconds = wait_seconds
        record = read_run_record(record_uri) or {}
        run_id = record.get("mlflow_run_id")
        self.resumed = False
        logged_through = None
        if run_id:
            self.resumed, logged_through = self._continue(run_id)
            if not self.resumed:
                run_id = None  # the record points at another tracking store: start a new run
        if not run_id:
            experiment_id = ensure_experiment(experiment)
            run = self.client.create_run(experiment_id, run_name=run_name, tags=tags)
            run_id = run.info.run_id
            record = {"mlflow_run_id": run_id, "experiment_id": experiment_id, "run_name": run_name}
            write_run_record(record_uri, record)
        self.run_id = run_id
        self.record = record
        self.experiment_id = record.get("experiment_id")
        self.outbox = TrackingOutbox(self.client, run_id, limits, logged_through)
        if self.resumed:
            self.outbox.set_status("RUNNING")
            self.outbox.set_tags(tags)
        self._previous_run_folder = False
        self._queue_previous(previous)
        self._caller_seconds = 0.0
        self._cpu_at_last_log = time.process_time()

    def _continue(self, run_id: str) -> tuple[bool, dict[str, int] | None]:
        """(whether the recorded run goes on, per metric the last step MLflow holds when it could be asked)."""
        if not server_reachable(self.tracking_uri):
            logger.warning(
                f"MLflow at {self.tracking_uri} is not reachable; run {run_id} goes on from the run record "
                "and what it logs waits until the server is back"
            )
            return True, None
        try:
            self.client.get_run(run_id)
            # Per metric, the last step already in MLflow: a restart from the last checkpoint replays the steps
            # after it, whose values the first attempt logged; they are not logged twice (one value per step).
            return True, metric_steps_logged(self.client, run_id)
        except mlflow.exceptions.MlflowException as exc:
            if is_permanent(exc):
                return False, None
            logger.warning(f"MLflow did not answer for run {run_id} ({exc}); it goes on from the run record")
            return True, None

    def _queue_previous(self, checkpoint_pending: Path | None) -> None:
        """Queue what earlier attempts could not send: from the checkpoint this attempt resumes from, and from
        the run's folder (an attempt that ended while MLflow was away)."""
        if checkpoint_pending is not None:
            self._announce(self.outbox.load_pending(checkpoint_pending, statuses=False), "the checkpoint")
        folder = join(self.run_dir, PENDING_DIR)
        fs = fsspec_filesystem(folder)
        if fs.exists(strip_scheme(folder)):
            with tempfile.TemporaryDirectory(prefix="clipsynth-pending-") as tmp:
                fs.get(strip_scheme(folder).rstrip("/") + "/", tmp, recursive=True)
                self._announce(self.outbox.load_pending(tmp, statuses=False), folder)
            self._previous_run_folder = True

    def _announce(self, ops: list, where: str) -> None:
        if ops:
            steps = [op.step for op in ops if isinstance(op, MetricsOp)]
            span = f", metrics of steps {min(steps)}-{max(steps)}" if steps else ""
            logger.warning(
                f"{len(ops)} operations an earlier attempt could not send to MLflow{span}, kept in "
                f"{where}: sending them now"
            )

    @property
    def logged_through(self) -> dict[str, int]:
        """Per metric key, the last step MLflow holds (as far as this attempt knows)."""
        return dict(self.outbox.logged_through or {})

    def update_record(self, **values) -> None:
        self.record.update(values)
        write_run_record(self.record_uri, self.record)

    def log_params(self, params: dict[str, str]) -> None:
        """Log params once; a resumed run whose value changed (e.g. a larger --max-steps) gets a tag instead."""
        self.outbox.log_params(params)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.outbox.set_tags(tags)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queue the step's metrics, with two of the tracker's own since the previous call: `tracking_seconds`
        (what the caller spent in this tracker: near 0 when MLflow is away too) and `process_cpu_seconds` (this
        process's CPU time: a pace that falls while it stays put means the machine, not the loop, slowed)."""
        t0 = time.perf_counter()
        cpu = time.process_time()
        own = {"tracking_seconds": self._caller_seconds, "process_cpu_seconds": cpu - self._cpu_at_last_log}
        values = {k: float(v) for k, v in {**metrics, **own}.items() if math.isfinite(float(v))}
        self.outbox.log_metrics(values, int(step))
        self._cpu_at_last_log = cpu
        self._caller_seconds = time.perf_counter() - t0

    def log_artifacts(self, local_dir: str | os.PathLike, artifact_path: str) -> None:
        t0 = time.perf_counter()
        self.outbox.log_artifacts(local_dir, artifact_path)
        self._caller_seconds += time.perf_counter() - t0

    def flush(self, timeout_s: float) -> bool:
        """Wait until MLflow has taken everything logged so far (True), or `timeout_s` passes (False)."""
        return self.outbox.flush(timeout_s)

    def save_pending(self, directory: Path) -> int:
        """Into a checkpoint directory: what MLflow has not taken yet (PENDING_DIR), for the attempt that resumes
        from it. Returns how many operations."""
        t0 = time.perf_counter()
        n = self.outbox.save_pending(directory / PENDING_DIR)
        self._caller_seconds += time.perf_counter() - t0
        if n:
            logger.warning(f"{n} operations MLflow has not taken yet are kept in the checkpoint")
        return n

    def finish(self, status: str = "FINISHED") -> bool:
        """End the run: wait up to `wait_seconds` for MLflow to take everything; what it did not take is kept in
        the run's folder in storage, with the command that sends it. Returns whether everything was sent."""
        self.outbox.set_status(status)
        sent = self.outbox.close(self.wait_seconds)
        folder = join(self.run_dir, PENDING_DIR)
        fs = fsspec_filesystem(folder)
        if sent:
            if self._previous_run_folder and fs.exists(strip_scheme(folder)):
                fs.rm(strip_scheme(folder), recursive=True)
            return True
        with tempfile.TemporaryDirectory(prefix="clipsynth-pending-") as tmp:
            n = self.outbox.save_pending(tmp)
            self.outbox.discard()
            if fs.exists(strip_scheme(folder)):
                fs.rm(strip_scheme(folder), recursive=True)
            if not is_s3(folder):
                os.makedirs(strip_scheme(folder), exist_ok=True)
            fs.put(tmp.rstrip("/") + "/", strip_scheme(folder), recursive=True)
        logger.warning(
            f"MLflow at {self.tracking_uri} did not take {n} operations within {self.wait_seconds:.0f} s; "
            f"they are kept in {folder} and sent by the next attempt of this run, or now with:\n"
            f"  {finish_command(self.run_dir, self.tracking_uri)}"
        )
        return False


def server_reachable(tracking_uri: str, timeout_s: float = 5.0) -> bool:
    """One quick request to an MLflow server's /health (no retries); other stores (SQLite, files) are local."""
    if not tracking_uri.startswith(("http://", "https://")):
        return True
    import requests

    try:
        return requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=timeout_s).status_code == 200
    except requests.RequestException:
        return False


def finish_command(run_dir: str, tracking_uri: str) -> str:
    """The command that sends what a run kept in storage to MLflow and registers its bundle."""
    storage, _, run_name = run_dir.rstrip("/").rpartition("/")
    return (
        f"MLFLOW_TRACKING_URI={shlex.quote(tracking_uri)} python jobs/finish_tracking.py "
        f"--storage-path {shlex.quote(storage)} --run-name {shlex.quote(run_name)}"
    )


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
