"""The pieces both training loops share (clipsynth_platform.train.loop, .checkpoints), run as a loop runs them
but without Ray: the log, sample and checkpoint intervals, the interval means (device sums read at log
intervals), the checkpoint's state.json and rank digests, the time budget, and a save/load round trip of a
training state."""

from __future__ import annotations

import itertools
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from clipsynth_core import EMA, state_digest
from clipsynth_platform.tracking.outbox import PENDING_DIR
from clipsynth_platform.train.checkpoints import Resumption, TrainingState, resume, save_checkpoint
from clipsynth_platform.train.config import HiFiGANTrainConfig
from clipsynth_platform.train.loop import IntervalSums, StepLoop, start_tracking
from clipsynth_platform.train.tracking import RUN_RECORD
from clipsynth_platform.train.whole_checkpoints import MANIFEST_FILE, check_whole
from clipsynth_platform.train.worker import WorkerPlace

CPU = WorkerPlace(rank=0, world=1, device=torch.device("cpu"))
JOB = {"storage_path": "unused", "run_name": "unused", "global_batch_size": 2}  # the fault drill is off


class Tracker:
    run_id = "run-1"

    def __init__(self) -> None:
        self.logged: dict[int, dict[str, float]] = {}
        self.pending_saves = 0

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.logged[step] = metrics

    def save_pending(self, directory: Path) -> int:
        self.pending_saves += 1
        (directory / PENDING_DIR).mkdir()
        (directory / PENDING_DIR / "ops.jsonl").write_text(f"save {self.pending_saves}\n")
        return 1


def linear_state(seed: int) -> TrainingState:
    torch.manual_seed(seed)
    model, critic = torch.nn.Linear(3, 1), torch.nn.Linear(1, 1)
    return TrainingState(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        ema=EMA(model, 0.5),
        modules={"critic": critic},
        optimizers={"critic": torch.optim.SGD(critic.parameters(), lr=0.1)},
    )


@pytest.fixture
def reports(monkeypatch, tmp_path):
    """What save_checkpoint hands ray.train.report: the metrics and a copy of the checkpoint directory."""
    import ray.train

    made = []

    def report(metrics, checkpoint, checkpoint_dir_name):
        directory = tmp_path / checkpoint_dir_name
        shutil.copytree(checkpoint.path, directory)
        made.append({"metrics": metrics, "dir": directory})

    monkeypatch.setattr(ray.train, "report", report)
    return made


def test_a_loop_of_the_shared_pieces_logs_samples_and_checkpoints(reports):
    cfg = HiFiGANTrainConfig(data="x", max_steps=7, log_every=3, checkpoint_every=5, sample_every=4, batch_size=2)
    state = linear_state(0)
    start = Resumption(rank_info={"resumed_from_step": 0})
    tracker, losses, sampled = Tracker(), [], []
    batches = itertools.repeat({"x": torch.ones(2, 3)})

    loop = StepLoop(cfg, JOB, CPU, start)
    sums = IntervalSums(("loss",), CPU.device)
    for step in loop:
        batch = loop.next_batch(batches)
        loss = (state.model(batch["x"]) ** 2).mean()
        state.optimizer.zero_grad()
        loss.backward()
        state.optimizer.step()
        losses.append(float(loss.detach()))
        sums.add({"loss": loss})
        loop.finish(step)
        if loop.due(cfg.log_every, step):
            loop.log(step, sums, tracker, 0.1, "loss {loss:.3f}", logging.getLogger("t"))
        if loop.due(cfg.sample_every, step):
            sampled.append(step)
        if loop.due(cfg.checkpoint_every, step):
            save_checkpoint(
                step,
                state,
                CPU.rank,
                metrics={"step": step, "loss": losses[-1]},
                fields={**loop.checkpoint_fields(tracker, "test"), "note": "mine"},
                rank_info=start.rank_info,
                files=lambda d, step=step: (d / "extra.txt").write_text(str(step)),
                tracker=tracker,
            )

    assert loop.last_step == 7 and len(losses) == 7
    # logs at every 3rd step and the last, each the mean over its own interval
    assert sorted(tracker.logged) == [3, 6, 7]
    for step, interval in ((3, losses[0:3]), (6, losses[3:6]), (7, losses[6:7])):
        metrics = tracker.logged[step]
        assert metrics["loss"] == pytest.approx(sum(interval) / len(interval))
        assert metrics["lr"] == 0.1 and metrics["data_wait_s_per_step"] >= 0 and metrics["samples_per_s"] > 0
    assert sampled == [4, 7]
    # checkpoints at every 5th step and the last: the last step's loss, the digests, the resumed info
    assert [r["dir"].name for r in reports] == ["checkpoint_000000005", "checkpoint_000000007"]
    # what MLflow has not taken is kept in each (rank 0's tracker), and the manifest, written last, lists it
    assert [(r["dir"] / PENDING_DIR / "ops.jsonl").read_text() for r in reports] == ["save 1\n", "save 2\n"]
    for r in reports:
        assert check_whole(r["dir"]).whole
        assert f"{PENDING_DIR}/ops.jsonl" in json.loads((r["dir"] / MANIFEST_FILE).read_text())["files"]
    last = reports[-1]
    assert last["metrics"] == {"step": 7, "loss": losses[-1]}
    rank_file = json.loads((last["dir"] / "rank_0.json").read_text())
    assert rank_file == {"rank": 0, "step": 7, **state.digests(), "resumed_from_step": 0}
    assert set(state.digests()) == {"model_digest", "ema_digest", "critic_digest"}
    saved = json.loads((last["dir"] / "state.json").read_text())
    assert (saved["step"], saved["kind"], saved["mlflow_run_id"], saved["note"]) == (7, "test", "run-1", "mine")
    assert saved["config"] == cfg.to_dict() and saved["train_seconds"] > 0
    assert (last["dir"] / "extra.txt").read_text() == "7"

    # What the checkpoint saved is what a resumed worker loads: the same weights, bit for bit.
    fresh = linear_state(1)
    assert fresh.digests() != state.digests()
    assert fresh.load(last["dir"], CPU.device)["step"] == 7
    assert fresh.digests() == state.digests()
    assert state_digest(fresh.model) == rank_file["model_digest"]


@pytest.mark.slow  # 6 s on 2 shared cores: out of make test-fast
def test_a_resumed_worker_sends_what_its_checkpoint_kept_for_mlflow(reports, monkeypatch, tmp_path):
    """An attempt whose MLflow went away keeps its unsent operations in the checkpoint; the worker that resumes
    from it gets them out of the checkpoint (resume) into its tracker (start_tracking), which sends them once and
    removes the copy resume made."""
    import mlflow
    import pyarrow.fs as pafs
    import ray.train

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = {**JOB, "run_name": "r", "tracking_uri": uri, "record_uri": str(tmp_path / "r" / RUN_RECORD)}
    job |= {"tags": {}, "params": {"lr": "0.1"}, "batch": {"per_worker": 2, "global": 2, "microbatch": 2}}
    cfg = HiFiGANTrainConfig(data="x", max_steps=10)
    log = logging.getLogger("t")
    first = start_tracking(cfg, job, Resumption(), 1, log)
    assert first.flush(60)
    first.outbox.abandon()  # the server is away from here on: what the attempt logs waits
    first.log_metrics({"loss": 0.5}, 4)
    save_checkpoint(4, linear_state(0), 0, metrics={"step": 4}, fields={}, rank_info={}, tracker=first)
    kept = reports[-1]["dir"]
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: ray.train.Checkpoint(str(kept), pafs.LocalFileSystem()))

    start = resume(linear_state(1), CPU.device, 0, log)
    assert start.step == 4 and start.tracking_pending is not None
    assert (start.tracking_pending / "ops.jsonl").read_text() == (kept / PENDING_DIR / "ops.jsonl").read_text()
    again = start_tracking(cfg, job, start, 1, log)
    assert not start.tracking_pending.exists()
    assert again.run_id == first.run_id and again.finish()
    history = mlflow.MlflowClient(uri).get_metric_history(again.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(4, 0.5)]


def test_the_worker_s_s3_requests_go_with_its_metrics_when_it_made_any(monkeypatch):
    from clipsynth_platform.runtime.s3_requests import S3RequestCounts
    from clipsynth_platform.train import loop as loop_module

    cfg = HiFiGANTrainConfig(data="x", max_steps=2, log_every=1)
    tracker = Tracker()
    loop = StepLoop(cfg, JOB, CPU, Resumption())
    sums = IntervalSums(("loss",), CPU.device)
    made = [S3RequestCounts(), S3RequestCounts(attempts=12, retried=3, failed_attempts=3, calls_given_up=0)]
    for step in loop:
        monkeypatch.setattr(loop_module, "s3_request_counts", lambda step=step: made[step - 1])
        sums.add({"loss": 1.0})
        loop.finish(step)
        loop.log(step, sums, tracker, 0.1, "", logging.getLogger("t"))
    assert not any(k.startswith("s3_") for k in tracker.logged[1])  # local storage: no S3 metrics
    s3 = {k: v for k, v in tracker.logged[2].items() if k.startswith("s3_")}
    assert s3 == {"s3_attempts": 12.0, "s3_retried": 3.0, "s3_failed_attempts": 3.0, "s3_calls_given_up": 0.0}


def test_a_spent_budget_runs_no_step():
    cfg = HiFiGANTrainConfig(data="x", max_steps=9, train_seconds=1e-9)
    loop = StepLoop(cfg, JOB, CPU, Resumption(step=4, train_seconds=5.0))
    assert list(loop) == [] and loop.last_step == 4


def test_a_lone_worker_decides_its_budget_on_the_host(monkeypatch):
    """No tensor crosses to the device for the time budget of a single worker (it did, every step)."""
    cfg = HiFiGANTrainConfig(data="x", max_steps=1000, train_seconds=3600.0)
    loop = StepLoop(cfg, JOB, CPU, Resumption())
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: pytest.fail("the budget made a tensor"))
    assert not loop.finish(1) and not loop.last
    assert 0 <= loop.budget.agreed < 60


def test_training_state_saves_every_object(tmp_path: Path):
    state = linear_state(0)
    state.save(tmp_path, 3, {"kind": "test"})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "critic.optimizer.pt",
        "critic.safetensors",
        "ema.safetensors",
        "model.safetensors",
        "optimizer.pt",
        "state.json",
    ]
    assert json.loads((tmp_path / "state.json").read_text()) == {"step": 3, "kind": "test"}
