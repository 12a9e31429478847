"""A tracking server killed mid-run for longer than MLflow's client will wait (issue 28, item 1), through the
step loop's pieces as the training loops run them (clipsynth_platform.train.loop, .checkpoints) and RunTracker against a real MLflow server process,
killed with SIGKILL and started again on the same port:

attempt A logs a few steps, the server dies; A goes on, checkpoints at step 40 while the server is away (what
MLflow has not taken goes into the checkpoint), then crashes at step 47. Attempt B resumes from that checkpoint
while the server is still away, sends A's kept operations, and the server comes back mid-run. MLflow ends with
every logged step once. Then the server dies again at the end of a run: registration retries, keeps the bundle
in storage and prints the command; that command, run once the server is back, sends and registers everything.

MLflow's HTTP client is told to give up after about two seconds (by default it tries for minutes): each outage
here outlasts it, which is the case the issue measured (training restarted from step 0). The step loop's
throughput through a long outage is measured in benchmarks/faults/tracking_outage.py.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
import torch
from fault_record import record_fault
from tracking_server import TrackingServer

from clipsynth_platform.tracking.outbox import OPS_FILE, PENDING_DIR, OutboxLimits
from clipsynth_platform.train.checkpoints import Resumption, TrainingState, resume, save_checkpoint
from clipsynth_platform.train.config import HiFiGANTrainConfig
from clipsynth_platform.train.loop import IntervalSums, StepLoop
from clipsynth_platform.train.registration import (
    BundleRegistration,
    RunCompletionConfig,
    complete_run,
    register_bundle,
)
from clipsynth_platform.train.tracking import RUN_RECORD, RunTracker
from clipsynth_platform.train.worker import WorkerPlace

CPU = WorkerPlace(rank=0, world=1, device=torch.device("cpu"))
JOB = {"storage_path": "unused", "run_name": "unused", "global_batch_size": 2}  # the fault drill is off
QUICK = OutboxLimits(first_retry_s=0.2, max_retry_s=1.0)  # the back-off caps at 1 s: the test waits less


class Crash(Exception):
    """The worker dying between two checkpoints."""


@pytest.fixture
def server(tmp_path, monkeypatch):
    for name, value in {"MAX_RETRIES": "1", "BACKOFF_FACTOR": "1", "TIMEOUT": "20"}.items():
        monkeypatch.setenv(f"MLFLOW_HTTP_REQUEST_{name}", value)
    work = tmp_path / "mlflow"
    work.mkdir()
    s = TrackingServer(work)
    s.start()
    yield s
    s.kill()


@pytest.fixture
def lines():
    """The platform's log lines (its loggers may not propagate to pytest's capture)."""
    got: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: got.append(record.getMessage())  # type: ignore[method-assign]
    root = logging.getLogger("clipsynth")
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield got
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def checkpoints(monkeypatch, tmp_path) -> dict[int, Path]:
    """Checkpoints as save_checkpoint hands them to Ray Train, copied to where Ray Train would keep them; a worker
    that resumes is handed the newest (ray.train.get_checkpoint)."""
    import pyarrow.fs as pafs
    import ray.train

    made: dict[int, Path] = {}

    def report(metrics, checkpoint, checkpoint_dir_name):
        step = int(checkpoint_dir_name.rpartition("_")[2])
        made[step] = tmp_path / "checkpoints" / checkpoint_dir_name
        shutil.copytree(checkpoint.path, made[step])

    def newest():
        return ray.train.Checkpoint(str(made[max(made)]), filesystem=pafs.LocalFileSystem()) if made else None

    monkeypatch.setattr(ray.train, "report", report)
    monkeypatch.setattr(ray.train, "get_checkpoint", newest)
    return made


def _sample(tracker: RunTracker, step: int, tmp_path: Path) -> None:
    out = tmp_path / "sample"
    out.mkdir(exist_ok=True)
    (out / "mels.png").write_text(f"step {step}")
    tracker.log_artifacts(out, f"samples/step_{step:08d}")


def interval_mean(step: int, scale: float, every: int = 5) -> float:
    """What the loop logs at `step`: the mean of the interval's losses, scale / k for each step k in it."""
    return sum(scale / k for k in range(step - every + 1, step + 1)) / every


def _train(
    cfg: HiFiGANTrainConfig, start_tracking: Callable[[Resumption], RunTracker], on_step, scale: float, tmp_path: Path
) -> int:
    """One attempt of a worker, shaped as the training loops are (diffusion_loop.py): resumed from the newest
    whole checkpoint, its tracker started with what that checkpoint kept (`start_tracking`, as loop.start_tracking
    does), its losses (scale / step) summed on the device and read at log intervals, samples, checkpoints with
    what the tracker has not sent. Returns the last step done."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    state = TrainingState(model, torch.optim.SGD(model.parameters(), lr=0.1))
    start = resume(state, CPU.device, CPU.rank, logging.getLogger("t"))
    tracker = start_tracking(start)
    loop = StepLoop(cfg, JOB, CPU, start)
    sums = IntervalSums(("loss",), CPU.device)
    batches = itertools.repeat({})
    for step in loop:
        loop.next_batch(batches)
        on_step(step)
        time.sleep(0.02)  # a step's work
        sums.add({"loss": torch.tensor(scale / step)})
        loop.finish(step)
        if loop.due(cfg.log_every, step):
            loop.log(step, sums, tracker, 0.1, "", logging.getLogger("t"))
        if loop.due(cfg.sample_every, step):
            _sample(tracker, step, tmp_path)
        if loop.due(cfg.checkpoint_every, step):
            fields = loop.checkpoint_fields(tracker, "test")
            save_checkpoint(step, state, 0, metrics={"step": step}, fields=fields, rank_info={}, tracker=tracker)
    return loop.last_step


@pytest.mark.slow  # three server starts: about two minutes on a loaded 2-core machine
def test_training_goes_on_through_tracking_outages_and_mlflow_gets_every_step_once(
    server, checkpoints, lines, tmp_path
):
    record = str(tmp_path / "runs" / "r" / RUN_RECORD)
    cfg = HiFiGANTrainConfig(data="x", max_steps=100, log_every=5, checkpoint_every=20, sample_every=15)
    a = RunTracker(server.uri, "exp", "r", record, {"kind": "test"}, limits=QUICK)
    a.log_params({"lr": "0.1"})
    pending_while_down: list[int] = []
    outage: dict[str, float] = {}

    def a_step(step: int) -> None:
        if step == 21:
            assert a.flush(60)  # steps 5-20 are in MLflow
            server.kill()
            outage["killed"] = time.time()
        if step > 21:
            pending_while_down.append(len(a.outbox.pending()))
        if step == 47:
            raise Crash

    with pytest.raises(Crash):
        _train(cfg, lambda start: a if start.step == 0 else pytest.fail("resumed"), a_step, 1.0, tmp_path)
    a.outbox.abandon()  # the worker is gone: what it held in memory with it
    # The loop never waited for the dead server: what it logged piled up while it kept stepping.
    assert pending_while_down[-1] >= 5 and pending_while_down == sorted(pending_while_down)
    kept = (checkpoints[40] / PENDING_DIR / OPS_FILE).read_text().splitlines()
    kept_steps = [json.loads(x)["step"] for x in kept[1:] if json.loads(x)["op"] == "metrics"]
    assert kept_steps == [25, 30, 35, 40]
    assert any(json.loads(x).get("artifact_path") == "samples/step_00000030" for x in kept[1:])

    # Attempt B resumes from the checkpoint of step 40 while the server is still away; it comes back mid-run.
    # What A kept in that checkpoint comes out of it with the resume and goes to B's tracker.
    tracked: dict[str, RunTracker] = {}
    restart = threading.Thread(target=server.start)

    def start_b(start: Resumption) -> RunTracker:
        assert start.step == 40 and start.tracking_pending is not None
        b = RunTracker(server.uri, "exp", "r", record, {"kind": "test"}, previous=start.tracking_pending, limits=QUICK)
        assert b.resumed and b.run_id == a.run_id
        restart.start()
        tracked["b"] = b
        return b

    def b_step(step: int) -> None:
        if step == 90:
            restart.join()  # the server is back before the run's last ten steps
            outage.setdefault("back", time.time())

    assert _train(cfg, start_b, b_step, 2.0, tmp_path) == 100  # B's losses are twice A's: whose MLflow holds
    b = tracked["b"]
    assert b.finish()
    assert b.outbox.stats.outages == 1 and b.outbox.stats.failed_sends >= 1

    client = mlflow.MlflowClient(server.uri)
    history = {m.step: m.value for m in client.get_metric_history(a.run_id, "loss")}
    assert len(client.get_metric_history(a.run_id, "loss")) == len(history)  # no step twice
    assert sorted(history) == list(range(5, 101, 5))
    assert all(history[s] == pytest.approx(interval_mean(s, 1.0)) for s in range(5, 41, 5))  # A's, sent by B
    assert all(history[s] == pytest.approx(interval_mean(s, 2.0)) for s in range(45, 101, 5))  # B's replay of 45
    run = client.get_run(a.run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.1"}
    samples = sorted(x.path for x in client.list_artifacts(a.run_id, "samples"))
    assert samples == [f"samples/step_{s:08d}" for s in (15, 30, 45, 60, 75, 90, 100)]
    assert len(mlflow.search_runs(experiment_names=["exp"], output_format="list")) == 1
    text = "\n".join(lines)
    assert f"MLflow at {server.uri} is not reachable; run {a.run_id} goes on from the run record" in text
    assert (
        "operations an earlier attempt could not send to MLflow, metrics of steps 25-40, kept in the checkpoint" in text
    )
    assert "MLflow reachable again after" in text

    # The server dies again as a run ends: registration retries, then the bundle waits in storage.
    server.kill()
    c = RunTracker(server.uri, "exp", "r", record, {"kind": "test"}, wait_seconds=1.0, limits=QUICK)
    c.log_metrics({"loss": 0.001}, 101)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "bundle.json").write_text(json.dumps({"format": "test"}))
    result = register_bundle(c, bundle, BundleRegistration(101, "synth", "latest-train", "griffin-lim"), 2, 0.2)
    assert result.model_uri is None and result.kept_at == str(tmp_path / "runs" / "r" / "bundles" / "step_000000101")
    assert json.loads(Path(result.kept_at, "bundle.json").read_text()) == {"format": "test"}
    assert not c.finish()
    saved = json.loads(Path(record).read_text())
    assert saved["pending_registration"]["bundle"] == result.kept_at
    command = next(x for x in lines if "jobs/finish_tracking.py" in x)
    assert f"--storage-path {tmp_path / 'runs'} --run-name r" in command
    assert (tmp_path / "runs" / "r" / PENDING_DIR / OPS_FILE).exists()

    server.start()
    done = complete_run(RunCompletionConfig(storage_path=str(tmp_path / "runs"), run_name="r", tracking_uri=server.uri))
    assert done.unsent_ops == 0 and done.registration is not None and done.registration.version == 1
    assert client.get_model_version("synth", "1").run_id == a.run_id
    assert client.get_model_version_by_alias("synth", "latest-train").version == "1"
    assert {m.step for m in client.get_metric_history(a.run_id, "loss")} == set(range(5, 101, 5)) | {101}
    assert client.get_run(a.run_id).info.status == "FINISHED"
    after = json.loads(Path(record).read_text())
    assert after["pending_registration"] is None and after["registered_version"] == 1
    assert not (tmp_path / "runs" / "r" / PENDING_DIR).exists()
    record_fault(
        "tracking_server_killed",
        injected={
            "kill": "SIGKILL of the MLflow server at step 21 of attempt A; started again during attempt B",
            "down_s_at_least": round(outage["back"] - outage["killed"], 1),
            "client_patience": "MLFLOW_HTTP_REQUEST_MAX_RETRIES=1, BACKOFF_FACTOR=1: about 2 s",
            "crash": "attempt A raised at step 47 (after its checkpoint of step 40, server still down)",
            "second_kill": "server killed again before the end of attempt C (registration, finish)",
        },
        platform={
            "step_loop": "kept stepping; operations waiting rose to " + str(pending_while_down[-1]),
            "checkpoint_40_kept": {"metric_steps": kept_steps, "artifacts": ["samples/step_00000030"]},
            "attempt_B": "resumed while the server was down, sent A's kept operations when it came back",
            "outbox_B": b.outbox.stats.to_dict(),
            "registration": f"2 attempts failed; bundle kept at {result.kept_at}; command printed",
            "later_command": done.to_dict(),
        },
        lost={"metric_steps_missing": 0, "metric_steps_twice": 0, "artifacts_missing": 0},
        command="pytest -q tests/test_tracking_outage.py (the long outage: make tracking-outage)",
    )
