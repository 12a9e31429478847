"""The synthesizer bundle a diffusion run registers at its end, through an MLflow that may be away; and the
completion of a run later, by the command the run printed.

At the end, rank 0 first lets the run's buffered tracking drain (bounded by --tracking-wait-seconds), then logs
the bundle as an MLflow model and registers it: `REGISTER_ATTEMPTS` attempts, --tracking-wait-seconds apart in
all, each first asking the server's /health once (a server that is away costs seconds, not the minutes MLflow's
client spends retrying each request); an attempt goes on from the first step the previous one did not finish.
When MLflow still does not take it, the bundle is copied to `<storage>/<run>/bundles/step_<N>/`, the run record
notes what is left to do, and the job prints the command (jobs/finish_tracking.py) that does it once MLflow is
back: it sends what the run kept in storage (tracking_pending/), registers the kept bundle, and ends the run.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow

from clipsynth_platform.runtime.logs import get_logger
from clipsynth_platform.runtime.options import opt, required
from clipsynth_platform.runtime.uri import fsspec_filesystem, is_s3, join, strip_scheme
from clipsynth_platform.tracking.outbox import PENDING_DIR, TrackingOutbox
from clipsynth_platform.tracking.registry import log_bundle_model, set_alias

from .tracking import (
    RUN_RECORD,
    RunTracker,
    finish_command,
    read_run_record,
    resolve_tracking_uri,
    server_reachable,
    write_run_record,
)

REGISTER_ATTEMPTS = 3
BUNDLES_DIR = "bundles"
log = get_logger("train")


@dataclass(frozen=True)
class BundleRegistration:
    """What to register: the bundle of `step`, under `register_as` (none when empty) and `alias`."""

    step: int
    register_as: str = ""
    alias: str = ""
    vocoder_note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RegistrationResult:
    model_uri: str | None = None
    version: int | None = None
    alias_uri: str | None = None
    kept_at: str | None = None  # where the bundle waits in storage when MLflow did not take it

    def to_dict(self) -> dict:
        return asdict(self)


def register_bundle(
    tracker: RunTracker,
    bundle_dir: Path,
    what: BundleRegistration,
    attempts: int = REGISTER_ATTEMPTS,
    wait_s: float | None = None,
) -> RegistrationResult:
    """Log and register the bundle in the tracker's run, with retries; keep it in storage when that fails."""
    # Metrics and samples first; this also leaves one thread at a time on a SQLite store.
    tracker.flush(tracker.wait_seconds)
    wait = tracker.wait_seconds / max(attempts - 1, 1) if wait_s is None else wait_s
    done = RegistrationResult()
    error: Exception | None = None
    for attempt in range(1, attempts + 1):
        try:
            if not server_reachable(tracker.tracking_uri):  # one quick request, not the client's minutes of retries
                raise ConnectionError(f"MLflow at {tracker.tracking_uri} does not answer")
            _log_and_register(tracker.run_id, bundle_dir, what, done)
            tracker.set_tags(
                {
                    "bundle_vocoder": what.vocoder_note,
                    "model_uri": done.model_uri or "",
                    "model_alias": done.alias_uri or "",
                }
            )
            tracker.update_record(**_registered(what, done))
            return done
        except Exception as exc:  # MLflow away or failing: retried, then kept for later
            error = exc
            more = attempt < attempts
            log.warning(
                f"registering the bundle of step {what.step}: attempt {attempt}/{attempts} failed "
                f"({str(exc).splitlines()[0][:300]}){f'; again in {wait:.0f} s' if more else ''}"
            )
            if more:
                time.sleep(wait)
    kept = join(tracker.run_dir, BUNDLES_DIR, f"step_{what.step:09d}")
    _copy_dir(bundle_dir, kept)
    tracker.update_record(pending_registration={**what.to_dict(), "bundle": kept})
    log.warning(
        f"the bundle of step {what.step} is not registered (MLflow: {str(error).splitlines()[0][:300]}); it is kept "
        f"at {kept}. Register it once MLflow is back with:\n  {finish_command(tracker.run_dir, tracker.tracking_uri)}"
    )
    return RegistrationResult(kept_at=kept)


def _log_and_register(run_id: str, bundle_dir: Path, what: BundleRegistration, done: RegistrationResult) -> None:
    """Each step once: an attempt after a failure goes on from the first step not yet done (in `done`)."""
    if done.model_uri is None:
        with mlflow.start_run(run_id=run_id):
            done.model_uri = log_bundle_model(bundle_dir).model_uri
    if what.register_as and done.version is None:
        done.version = int(mlflow.register_model(done.model_uri, what.register_as).version)
    if done.version is not None and what.alias and done.alias_uri is None:
        done.alias_uri = set_alias(f"models:/{what.register_as}/{done.version}", what.alias)


def _registered(what: BundleRegistration, done: RegistrationResult) -> dict:
    """The run record's fields once the bundle is registered."""
    return {
        "bundle_step": what.step,
        "model_uri": done.model_uri,
        "registered_model": what.register_as or None,
        "registered_version": done.version,
        "registered_alias": done.alias_uri,
        "pending_registration": None,
    }


def _copy_dir(local: Path, uri: str) -> None:
    fs = fsspec_filesystem(uri)
    if not is_s3(uri):
        os.makedirs(strip_scheme(uri), exist_ok=True)
    fs.put(str(local).rstrip("/") + "/", strip_scheme(uri), recursive=True)


# ---------------------------------------------------------------------------------------------- later
@dataclass(frozen=True)
class RunCompletionConfig:
    """jobs/finish_tracking.py: what a training run kept in storage while MLflow was away, sent now."""

    storage_path: str = required("the run's --storage-path (local path or s3://...)")
    run_name: str = required("the run's name (its folder under the storage path)")
    tracking_uri: str = opt("", "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")
    wait_seconds: float = opt(600.0, "how long to keep trying an MLflow that does not answer")


@dataclass
class RunCompletion:
    """What `complete_run` did (printed as JSON by jobs/finish_tracking.py)."""

    run_id: str
    sent_ops: int
    unsent_ops: int
    registration: RegistrationResult | None

    def to_dict(self) -> dict:
        return asdict(self)


def complete_run(config: RunCompletionConfig) -> RunCompletion:
    """Send what a run kept in storage for MLflow, register the bundle it kept, and end the run (FINISHED)."""
    tracking_uri = resolve_tracking_uri(config.tracking_uri)
    run_dir = join(config.storage_path.rstrip("/"), config.run_name)
    record = read_run_record(join(run_dir, RUN_RECORD))
    if not record or not record.get("mlflow_run_id"):
        raise FileNotFoundError(f"no training run record ({RUN_RECORD}) under {run_dir}")
    mlflow.set_tracking_uri(tracking_uri)
    run_id = record["mlflow_run_id"]
    outbox = TrackingOutbox(mlflow.MlflowClient(tracking_uri), run_id)
    folder = join(run_dir, PENDING_DIR)
    fs = fsspec_filesystem(folder)
    queued = 0
    if fs.exists(strip_scheme(folder)):
        with tempfile.TemporaryDirectory(prefix="clipsynth-pending-") as tmp:
            fs.get(strip_scheme(folder).rstrip("/") + "/", tmp, recursive=True)
            queued = len(outbox.load_pending(tmp))
    sent = outbox.close(config.wait_seconds)
    unsent = len(outbox.pending())
    outbox.discard()  # unsent operations stay in storage, for the next try
    if sent and queued:
        fs.rm(strip_scheme(folder), recursive=True)
    registration = None
    pending = record.get("pending_registration")
    if sent and pending:
        what = BundleRegistration(
            step=int(pending["step"]),
            register_as=pending.get("register_as", ""),
            alias=pending.get("alias", ""),
            vocoder_note=pending.get("vocoder_note", ""),
        )
        registration = RegistrationResult()
        with tempfile.TemporaryDirectory(prefix="clipsynth-bundle-") as tmp:
            bundle = Path(tmp) / "bundle"
            fsspec_filesystem(pending["bundle"]).get(
                strip_scheme(pending["bundle"]).rstrip("/") + "/", str(bundle), recursive=True
            )
            _log_and_register(run_id, bundle, what, registration)
        client = mlflow.MlflowClient(tracking_uri)
        tags = {"bundle_vocoder": what.vocoder_note, "model_uri": registration.model_uri or ""}
        for key, value in {**tags, "model_alias": registration.alias_uri or ""}.items():
            client.set_tag(run_id, key, value)
        client.set_terminated(run_id, status="FINISHED")
        record.update(_registered(what, registration))
        write_run_record(join(run_dir, RUN_RECORD), record)
    return RunCompletion(run_id, outbox.stats.sent_ops, unsent, registration)
