"""A run's MLflow calls, sent from a background thread: a tracking server that is slow or gone never stops the
caller, and what it could not take yet is kept, in order, until it can.

Why our own and not MLflow's asynchronous logging (`log_batch(..., synchronous=False)`, mlflow 3.17): that
queue is unbounded, hands each batch to a thread pool once, and when the HTTP client's retries run out (about
two minutes by default) it logs an error and drops the batch. Measured here against a killed server with the
client's retries shortened: steps 3-5 logged during the outage were missing from MLflow afterwards. Training
needs the opposite: nothing dropped, memory bounded, and what is still unsent at a checkpoint saved with it.

The caller puts operations (metrics of a step, params, tags, a directory of artifacts, a run status); one
sender thread sends them in order, merging consecutive metric operations into one `log_batch`, and retries the
operation at the head of the queue with capped exponential back-off until the server takes it. An error the
server will give again (a 4xx other than 429: a bad value, a run that does not exist) drops that operation with
an error line instead of blocking the others. A metric step is sent at most once per key: steps at or below the
last one MLflow already holds for that key are skipped, so operations replayed from a checkpoint, or sent twice
because a reply was lost, never appear twice.

Bounds: at most `max_pending_metric_values` metric values wait in memory (beyond that a step's metrics are
dropped and counted, with a warning), and at most `max_pending_artifact_bytes` of artifacts wait in the spool
directory on local disk (beyond that an artifact directory is skipped and counted).

`save_pending(dir)` writes what is unsent (ops.jsonl and the artifacts' files); `load_pending(dir)` queues such
a directory again, in a later attempt or by the command that completes a run.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from clipsynth_platform.runtime.logs import get_logger

PENDING_FORMAT = "clipsynth-tracking-pending/1"
OPS_FILE = "ops.jsonl"
PENDING_DIR = "tracking_pending"  # where a run keeps what MLflow has not taken: in a checkpoint, in the run's folder
MAX_METRICS_PER_BATCH = 1000  # MLflow's limit per log_batch request
MAX_ITEMS_PER_BATCH = 100  # params or tags per log_batch request

logger = get_logger("tracking")


class TrackingClient(Protocol):
    """The part of mlflow.MlflowClient the sender uses (tests give a fake one)."""

    def log_batch(self, run_id: str, metrics: Any = (), params: Any = (), tags: Any = ()) -> Any: ...
    def get_run(self, run_id: str) -> Any: ...
    def get_metric_history(self, run_id: str, key: str) -> Any: ...
    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None = None) -> Any: ...
    def update_run(self, run_id: str, status: str | None = None) -> Any: ...
    def set_terminated(self, run_id: str, status: str | None = None) -> Any: ...


# ----------------------------------------------------------------------------------------------- operations
@dataclass(frozen=True)
class MetricsOp:
    step: int
    timestamp_ms: int
    values: dict[str, float]


@dataclass(frozen=True)
class ParamsOp:
    """Params logged once: a key MLflow already holds with another value becomes a `resumed_with.KEY` tag."""

    values: dict[str, str]


@dataclass(frozen=True)
class TagsOp:
    values: dict[str, str]


@dataclass(frozen=True)
class ArtifactsOp:
    files: str  # the directory (in the outbox's spool) whose files are sent
    artifact_path: str
    nbytes: int


@dataclass(frozen=True)
class StatusOp:
    """RUNNING (a resumed run) or a terminal status (FINISHED, FAILED, KILLED)."""

    status: str


Op = MetricsOp | ParamsOp | TagsOp | ArtifactsOp | StatusOp
_KINDS: dict[str, type] = {"metrics": MetricsOp, "params": ParamsOp, "tags": TagsOp, "artifacts": ArtifactsOp}
_KINDS["status"] = StatusOp


def _kind(op: Op) -> str:
    return next(k for k, cls in _KINDS.items() if isinstance(op, cls))


@dataclass(frozen=True)
class OutboxLimits:
    max_pending_metric_values: int = 200_000  # ~15 values a log interval: about 13,000 intervals
    max_pending_artifact_bytes: int = 1 << 30
    first_retry_s: float = 1.0  # back-off after a failed send: doubles up to max_retry_s, with jitter
    max_retry_s: float = 30.0


@dataclass
class OutboxStats:
    """What the sender did; `to_dict()` for logs and results files."""

    sent_ops: int = 0
    sent_metric_values: int = 0
    skipped_metric_values: int = 0  # already in MLflow (a replayed step)
    failed_sends: int = 0  # attempts that raised (each after the MLflow client's own retries)
    outages: int = 0
    longest_outage_s: float = 0.0
    dropped_metric_ops: int = 0  # over the memory bound
    dropped_artifact_ops: int = 0  # over the disk bound
    rejected_ops: int = 0  # refused by the server for good (4xx)

    def to_dict(self) -> dict:
        return asdict(self)


def is_permanent(exc: BaseException) -> bool:
    """Whether the server will refuse this again: an MLflow error with a 4xx status other than 429."""
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException):
        return False
    status = exc.get_http_status_code()
    return 400 <= status < 500 and status != 429


@dataclass
class _Outage:
    started: float = field(default_factory=time.monotonic)
    failures: int = 0


class TrackingOutbox:
    """The ordered, bounded buffer of one MLflow run's operations and the thread that sends them."""

    def __init__(
        self,
        client: TrackingClient,
        run_id: str,
        limits: OutboxLimits | None = None,
        logged_through: dict[str, int] | None = None,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.limits = limits or OutboxLimits()
        self.stats = OutboxStats()
        # Per metric key, the last step MLflow holds; None until read from the server (by the sender, lazily).
        self.logged_through: dict[str, int] | None = dict(logged_through) if logged_through is not None else None
        self._queue: deque[Op] = deque()
        self._metric_values = 0
        self._artifact_bytes = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._busy = False  # the sender holds operations it has taken but not yet settled
        self._outage: _Outage | None = None
        self._spool = Path(tempfile.mkdtemp(prefix="clipsynth-outbox-"))
        self._warned_full = False
        self._thread = threading.Thread(target=self._run, name="clipsynth-tracking-outbox", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------ the caller
    def log_metrics(self, values: dict[str, float], step: int, timestamp_ms: int | None = None) -> None:
        if values:
            ts = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
            self._put(MetricsOp(int(step), ts, {k: float(v) for k, v in values.items()}))

    def log_params(self, values: dict[str, str]) -> None:
        if values:
            self._put(ParamsOp(dict(values)))

    def set_tags(self, values: dict[str, str]) -> None:
        if values:
            self._put(TagsOp({k: str(v) for k, v in values.items()}))

    def set_status(self, status: str) -> None:
        self._put(StatusOp(status))

    def log_artifacts(self, local_dir: str | os.PathLike, artifact_path: str) -> None:
        """Copy the directory's files into the spool now (the caller may delete them) and queue them."""
        nbytes = sum(p.stat().st_size for p in Path(local_dir).rglob("*") if p.is_file())
        if self._artifact_bytes + nbytes > self.limits.max_pending_artifact_bytes:
            self.stats.dropped_artifact_ops += 1
            logger.warning(
                f"{self._artifact_bytes / 2**20:.0f} MiB of artifacts already wait for MLflow; "
                f"{artifact_path} is not kept"
            )
            return
        files = tempfile.mkdtemp(prefix="artifacts-", dir=self._spool)
        shutil.copytree(local_dir, files, dirs_exist_ok=True)
        self._put(ArtifactsOp(files, artifact_path, nbytes))

    def pending(self) -> list[Op]:
        """The operations not yet sent, oldest first (the one being sent included)."""
        with self._cond:
            return list(self._queue)

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued operation is sent (True) or `timeout_s` passes (False)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(min(left, 0.5))
        return True

    def close(self, timeout_s: float) -> bool:
        """Flush for up to `timeout_s`, then stop the sender. Returns whether everything was sent; what was
        not stays in `pending()` (save it with `save_pending`)."""
        sent = self.flush(timeout_s)
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if sent:
            shutil.rmtree(self._spool, ignore_errors=True)
        return sent

    def discard(self) -> None:
        """Remove the spool directory (the artifacts' copies) once what is pending is saved or given up."""
        shutil.rmtree(self._spool, ignore_errors=True)

    def abandon(self) -> None:
        """Stop sending at once, as a process that dies would (tests)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    # ---------------------------------------------------------------------------------------- persistence
    def save_pending(self, directory: str | Path) -> int:
        """Write the unsent operations to `directory` (ops.jsonl and their artifacts' files); returns how many.
        Writes nothing when none are pending."""
        ops = self.pending()
        if not ops:
            return 0
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        lines: list[str] = []
        for i, op in enumerate(ops):
            entry = {"op": _kind(op), **asdict(op)}
            if isinstance(op, ArtifactsOp):
                entry["files"] = f"artifacts/{i:06d}"
                try:
                    shutil.copytree(op.files, d / entry["files"], dirs_exist_ok=True)
                except (FileNotFoundError, shutil.Error):
                    continue  # sent meanwhile: the sender removed its copy
            lines.append(json.dumps(entry))
        header = json.dumps({"format": PENDING_FORMAT, "run_id": self.run_id, "ops": len(lines)})
        (d / OPS_FILE).write_text("\n".join([header, *lines]) + "\n")
        return len(lines)

    def load_pending(self, directory: str | Path, statuses: bool = True) -> list[Op]:
        """Queue the operations a `save_pending` wrote (of this run only); returns them. `statuses=False` leaves
        out run statuses: a later attempt sets its own (an earlier attempt's FINISHED would end it early)."""
        path = Path(directory) / OPS_FILE
        if not path.exists():
            return []
        header, *entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if header.get("format") != PENDING_FORMAT or header.get("run_id") != self.run_id:
            logger.warning(f"{directory} holds operations of another run or format; not sent")
            return []
        loaded: list[Op] = []
        for entry in entries:
            kind = entry.pop("op")
            if kind == "artifacts":
                files = tempfile.mkdtemp(prefix="artifacts-", dir=self._spool)
                shutil.copytree(Path(directory) / entry["files"], files, dirs_exist_ok=True)
                entry["files"] = files
            op = _KINDS[kind](**entry)
            if isinstance(op, StatusOp) and not statuses:
                continue
            self._put(op)
            loaded.append(op)
        return loaded

    # ---------------------------------------------------------------------------------------- the sender
    def _put(self, op: Op) -> None:
        with self._cond:
            if isinstance(op, MetricsOp):
                if self._metric_values + len(op.values) > self.limits.max_pending_metric_values:
                    self.stats.dropped_metric_ops += 1
                    if not self._warned_full:
                        self._warned_full = True
                        logger.warning(
                            f"{self._metric_values} metric values already wait for MLflow (the bound); "
                            f"the metrics of step {op.step} and later ones are dropped until it takes them"
                        )
                    return
                self._metric_values += len(op.values)
            elif isinstance(op, ArtifactsOp):
                self._artifact_bytes += op.nbytes
            self._queue.append(op)
            self._cond.notify_all()

    def _take(self) -> list[Op]:
        """The head operation, or the run of consecutive metric operations at the head (one request)."""
        head = self._queue[0]
        if not isinstance(head, MetricsOp):
            return [head]
        batch: list[Op] = []
        values = 0
        for op in self._queue:
            if not isinstance(op, MetricsOp) or (batch and values + len(op.values) > MAX_METRICS_PER_BATCH):
                break
            batch.append(op)
            values += len(op.values)
        return batch

    def _settle(self, ops: list[Op]) -> None:
        with self._cond:
            for op in ops:
                self._queue.popleft()
                if isinstance(op, MetricsOp):
                    self._metric_values -= len(op.values)
                elif isinstance(op, ArtifactsOp):
                    self._artifact_bytes -= op.nbytes
                    shutil.rmtree(op.files, ignore_errors=True)
            if self._metric_values < self.limits.max_pending_metric_values // 2:
                self._warned_full = False
            self._busy = False
            self._cond.notify_all()

    def _run(self) -> None:
        delay = self.limits.first_retry_s
        while True:
            with self._cond:
                while not self._queue and not self._stop.is_set():
                    self._cond.wait()
                if self._stop.is_set():
                    return
                ops = self._take()
                self._busy = True
            try:
                self._send(ops)
            except Exception as exc:  # the server is gone, slow or refusing: never the caller's problem
                if is_permanent(exc):
                    self.stats.rejected_ops += len(ops)
                    logger.error(f"MLflow refused {_kind(ops[0])} for good, not sent again: {exc}")
                    self._settle(ops)
                    continue
                self._failed(exc, len(self._queue))
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
                self._stop.wait(delay * (0.5 + random.random()))  # back-off, cut short by close or abandon
                delay = min(delay * 2, self.limits.max_retry_s)
                continue
            self._settle(ops)
            self.stats.sent_ops += len(ops)
            delay = self.limits.first_retry_s
            if self._outage is not None:
                seconds = time.monotonic() - self._outage.started
                self.stats.longest_outage_s = max(self.stats.longest_outage_s, seconds)
                logger.info(
                    f"MLflow reachable again after {seconds:.0f} s; sending the {len(self._queue)} "
                    "operations that waited"
                )
                self._outage = None

    def _failed(self, exc: Exception, pending: int) -> None:
        self.stats.failed_sends += 1
        if self._outage is None:
            self._outage = _Outage()
            self.stats.outages += 1
            logger.warning(
                f"MLflow did not take an operation ({str(exc).splitlines()[0][:300]}); training goes on, "
                f"{pending} operations wait and are sent when it is back"
            )
        self._outage.failures += 1

    def _send(self, ops: list[Op]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        head = ops[0]
        if isinstance(head, MetricsOp):
            if self.logged_through is None:
                self.logged_through = metric_steps_logged(self.client, self.run_id)
            done = self.logged_through
            metrics = [
                Metric(k, v, op.timestamp_ms, op.step)
                for op in ops
                if isinstance(op, MetricsOp)
                for k, v in op.values.items()
                if op.step > done.get(k, -1)
            ]
            total = sum(len(op.values) for op in ops if isinstance(op, MetricsOp))
            self.stats.skipped_metric_values += total - len(metrics)
            if metrics:
                self.client.log_batch(self.run_id, metrics=metrics)
            for m in metrics:
                done[m.key] = max(done.get(m.key, -1), m.step)
            self.stats.sent_metric_values += len(metrics)
        elif isinstance(head, ParamsOp):
            existing = self.client.get_run(self.run_id).data.params
            new = [Param(k, v[:6000]) for k, v in head.values.items() if k not in existing]
            changed = {
                f"resumed_with.{k}": v for k, v in head.values.items() if k in existing and existing[k] != v[:6000]
            }
            for i in range(0, len(new), MAX_ITEMS_PER_BATCH):
                self.client.log_batch(self.run_id, params=new[i : i + MAX_ITEMS_PER_BATCH])
            self._send_tags(changed, RunTag)
        elif isinstance(head, TagsOp):
            self._send_tags(head.values, RunTag)
        elif isinstance(head, ArtifactsOp):
            self.client.log_artifacts(self.run_id, head.files, head.artifact_path)
        elif head.status == "RUNNING":
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.client.set_terminated(self.run_id, status=head.status)

    def _send_tags(self, values: dict[str, str], tag_type: type) -> None:
        items = [tag_type(k, str(v)) for k, v in values.items()]
        for i in range(0, len(items), MAX_ITEMS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=items[i : i + MAX_ITEMS_PER_BATCH])


def metric_steps_logged(client: TrackingClient, run_id: str) -> dict[str, int]:
    """Per metric key of the run, the last step MLflow holds."""
    out: dict[str, int] = {}
    for key in client.get_run(run_id).data.metrics:
        out[key] = max((m.step for m in client.get_metric_history(run_id, key)), default=-1)
    return out
