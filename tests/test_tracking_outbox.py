"""The tracking outbox (clipsynth_platform.tracking.outbox) against a fake MLflow client: the caller never
waits on the server, operations go out in order (metrics merged into one request), a server that is away loses
nothing, a refused operation does not block the others, the buffer is bounded, a metric step goes out once,
and what is unsent round-trips through a directory into a later attempt."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from clipsynth_platform.tracking.outbox import (
    OPS_FILE,
    ArtifactsOp,
    MetricsOp,
    OutboxLimits,
    ParamsOp,
    StatusOp,
    TrackingOutbox,
    is_permanent,
)

FAST = OutboxLimits(first_retry_s=0.01, max_retry_s=0.05)


class FakeClient:
    """Records what reaches "MLflow"; `down` makes every call fail as MLflow's client does when its retries
    run out; `gate` (when cleared) holds the sender inside its first call."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.metrics: list[tuple[str, int, float]] = []
        self.params: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.down = False
        self.refuse: set[str] = set()  # tag keys the server rejects for good
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.failures = 0

    def _call(self, name: str, *args) -> None:
        self.entered.set()
        self.gate.wait()
        if self.down:
            self.failures += 1
            raise MlflowException("API request to http://mlflow/api failed: Max retries exceeded (refused)")
        self.calls.append((name, *args))

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        if any(t.key in self.refuse for t in tags):
            raise MlflowException("bad tag", error_code=INVALID_PARAMETER_VALUE)
        self._call("log_batch", len(metrics), len(params), len(tags))
        self.metrics += [(m.key, m.step, m.value) for m in metrics]
        self.params.update({p.key: p.value for p in params})
        self.tags.update({t.key: t.value for t in tags})

    def get_run(self, run_id):
        self._call("get_run")
        latest = {k: v for k, _, v in self.metrics}
        return SimpleNamespace(data=SimpleNamespace(params=dict(self.params), metrics=latest))

    def get_metric_history(self, run_id, key):
        return [SimpleNamespace(step=s) for k, s, _ in self.metrics if k == key]

    def log_artifacts(self, run_id, local_dir, artifact_path=None):
        files = sorted(p.relative_to(local_dir).as_posix() for p in Path(local_dir).rglob("*") if p.is_file())
        self._call("log_artifacts", artifact_path, tuple(files), Path(local_dir, files[0]).read_text())

    def update_run(self, run_id, status=None):
        self._call("update_run", status)

    def set_terminated(self, run_id, status=None):
        self._call("set_terminated", status)


def test_operations_go_out_in_order_with_metrics_merged(tmp_path):
    client = FakeClient()
    client.gate.clear()  # the sender waits inside its first call while the caller queues more
    outbox = TrackingOutbox(client, "run", FAST, logged_through={})
    outbox.set_tags({"kind": "test"})
    assert client.entered.wait(10)
    for step in (1, 2, 3):
        outbox.log_metrics({"loss": 1.0 / step, "lr": 0.1}, step)
    outbox.log_params({"lr": "0.1"})
    (tmp_path / "a.txt").write_text("sample")
    outbox.log_artifacts(tmp_path, "samples/step_3")
    (tmp_path / "a.txt").unlink()  # the caller's files may go at once: the outbox sends its own copy
    outbox.set_status("FINISHED")
    assert len(outbox.pending()) == 7  # none sent yet (the first is held), and the caller never waited
    client.gate.set()
    assert outbox.close(10)
    assert client.calls == [
        ("log_batch", 0, 0, 1),
        ("log_batch", 6, 0, 0),  # three steps' metrics in one request
        ("get_run",),
        ("log_batch", 0, 1, 0),
        ("log_artifacts", "samples/step_3", ("a.txt",), "sample"),
        ("set_terminated", "FINISHED"),
    ]
    assert outbox.pending() == [] and outbox.stats.sent_ops == 7


def test_an_outage_loses_nothing_and_never_holds_the_caller():
    client = FakeClient()
    client.down = True
    outbox = TrackingOutbox(client, "run", FAST, logged_through={})
    for step in range(1, 101):
        outbox.log_metrics({"loss": float(step)}, step)
    assert client.entered.wait(10)
    while client.failures < 3:  # the sender keeps trying the head operation, with back-off
        threading.Event().wait(0.01)
    assert outbox.stats.outages == 1 and not outbox.flush(0.05)
    client.down = False
    assert outbox.flush(10)
    assert [s for _, s, _ in client.metrics] == list(range(1, 101))  # every step once, in order
    assert outbox.stats.failed_sends == client.failures >= 3 and outbox.stats.longest_outage_s > 0
    outbox.close(1)


def test_a_refused_operation_is_dropped_and_the_rest_go_out():
    client = FakeClient()
    client.refuse = {"bad"}
    outbox = TrackingOutbox(client, "run", FAST, logged_through={})
    outbox.set_tags({"bad": "x"})
    outbox.set_tags({"good": "y"})
    outbox.log_metrics({"loss": 1.0}, 1)
    assert outbox.close(10)
    assert client.tags == {"good": "y"} and client.metrics == [("loss", 1, 1.0)]
    assert outbox.stats.rejected_ops == 1
    assert is_permanent(MlflowException("x", error_code=INVALID_PARAMETER_VALUE))
    assert not is_permanent(MlflowException("refused")) and not is_permanent(ConnectionError())


def test_the_buffer_is_bounded():
    client = FakeClient()
    client.gate.clear()
    outbox = TrackingOutbox(client, "run", OutboxLimits(max_pending_metric_values=10), logged_through={})
    outbox.set_tags({"first": "1"})  # holds the sender
    assert client.entered.wait(10)
    for step in range(1, 6):
        outbox.log_metrics({"a": 1.0, "b": 2.0, "c": 3.0}, step)
    assert outbox.stats.dropped_metric_ops == 2  # 3 x 3 values fit under 10; steps 4 and 5 do not
    client.gate.set()
    assert outbox.close(10)
    assert sorted({s for _, s, _ in client.metrics}) == [1, 2, 3]


def test_a_step_mlflow_holds_is_not_sent_again():
    client = FakeClient()
    outbox = TrackingOutbox(client, "run", FAST, logged_through={"loss": 5})
    for step in (3, 5, 6):
        outbox.log_metrics({"loss": float(step), "lr": 0.1}, step)
    assert outbox.close(10)
    assert sorted((k, s) for k, s, _ in client.metrics) == [("loss", 6), ("lr", 3), ("lr", 5), ("lr", 6)]
    assert outbox.stats.skipped_metric_values == 2


def test_unsent_operations_round_trip_into_a_later_attempt(tmp_path):
    client = FakeClient()
    client.down = True
    outbox = TrackingOutbox(client, "run", FAST, logged_through={})
    outbox.log_metrics({"loss": 0.5}, 10, timestamp_ms=1234)
    outbox.log_params({"lr": "0.1"})
    art = tmp_path / "art"
    art.mkdir()
    (art / "mels.png").write_text("png")
    outbox.log_artifacts(art, "samples/step_10")
    outbox.set_status("FINISHED")
    saved = tmp_path / "pending"
    assert outbox.save_pending(saved) == 4
    outbox.abandon()
    header = json.loads((saved / OPS_FILE).read_text().splitlines()[0])
    assert header == {"format": "clipsynth-tracking-pending/1", "run_id": "run", "ops": 4}

    later = FakeClient()
    resumed = TrackingOutbox(later, "run", FAST, logged_through={})
    loaded = resumed.load_pending(saved, statuses=False)  # the later attempt sets its own status
    assert [type(op) for op in loaded] == [MetricsOp, ParamsOp, ArtifactsOp]
    assert loaded[0] == MetricsOp(10, 1234, {"loss": 0.5})
    assert resumed.close(10)
    assert later.metrics == [("loss", 10, 0.5)] and later.params == {"lr": "0.1"}
    assert ("log_artifacts", "samples/step_10", ("mels.png",), "png") in later.calls
    assert not any(call[0] == "set_terminated" for call in later.calls)

    completion = TrackingOutbox(FakeClient(), "run", FAST, logged_through={})
    assert any(isinstance(op, StatusOp) for op in completion.load_pending(saved))  # the later command ends the run
    completion.abandon()
    other = TrackingOutbox(FakeClient(), "another-run", FAST)
    assert other.load_pending(saved) == [] and other.pending() == []
    other.abandon()


@pytest.fixture(autouse=True)
def _no_leaked_threads():
    before = set(threading.enumerate())
    yield
    threading.Event().wait(0.2)
    assert not [t for t in threading.enumerate() if t not in before and "outbox" in t.name]  # every sender stopped
