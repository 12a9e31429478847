"""The step loop both training loops share (clipsynth_platform.train.steps) and what their checkpoints hold
(train.state), without Ray: the log, sample and checkpoint intervals, the interval means, the checkpoint's
state.json and rank digests, the time budget, and a save/load round trip of a training state."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import pytest
import torch

from clipsynth_core import EMA, state_digest
from clipsynth_platform.train import steps
from clipsynth_platform.train.common import Resumption, TimeBudget, WorkerPlace
from clipsynth_platform.train.config import HiFiGANTrainConfig
from clipsynth_platform.train.state import TrainingState

CPU = WorkerPlace(rank=0, world=1, device=torch.device("cpu"))
JOB = {"storage_path": "unused", "run_name": "unused"}  # the fault drill is off (fail_at_step 0)


class Tracker:
    run_id = "run-1"

    def __init__(self) -> None:
        self.logged: dict[int, dict[str, float]] = {}
        self.pending_saved_in: list[str] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.logged[step] = metrics

    def save_pending(self, directory: Path) -> int:
        self.pending_saved_in.append(directory.name)
        return 0


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
    """Checkpoint reports as run_steps makes them; rank 0's state written where Ray would take it from."""
    made = []

    def report(step, metrics, rank, write_state, rank_info):
        directory = tmp_path / f"checkpoint_{step}"
        directory.mkdir()
        write_state(directory)
        made.append({"step": step, "metrics": metrics, "rank_info": rank_info, "dir": directory})

    monkeypatch.setattr(steps, "report_checkpoint", report)
    return made


def test_step_loop_intervals_means_and_checkpoints(reports):
    cfg = HiFiGANTrainConfig(data="x", max_steps=7, log_every=3, checkpoint_every=5, sample_every=4, batch_size=2)
    state = linear_state(0)
    losses: list[float] = []
    sums = {"loss": 0.0}
    sampled: list[int] = []

    def update(step: int, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        loss = (state.model(batch["x"]) ** 2).mean()
        state.optimizer.zero_grad()
        loss.backward()
        state.optimizer.step()
        value = float(loss.detach())
        losses.append(value)
        sums["loss"] += value
        return {"loss": value}

    def interval_means(count: int) -> dict[str, float]:
        means = {"loss": sums["loss"] / count}
        sums["loss"] = 0.0
        return means

    parts = steps.StepParts(
        update=update,
        interval_means=interval_means,
        describe=lambda m: f"loss {m['loss']:.3f}",
        lr=lambda: 0.1,
        checkpoint_metrics=lambda last: {"loss": last["loss"]},
        state=state,
        kind="test",
        extra_state=lambda: {"note": "mine"},
        checkpoint_files=lambda step, d: (d / "extra.txt").write_text(str(step)),
        sample=lambda tracker, step: sampled.append(step),
    )
    tracker = Tracker()
    start = Resumption(rank_info={"resumed_from_step": 0})
    batches = itertools.repeat({"x": torch.ones(2, 3)})
    final = steps.run_steps(cfg, JOB, CPU, start, TimeBudget(0), batches, parts, tracker, logging.getLogger("t"))

    assert final == 7 and len(losses) == 7
    # logs at every 3rd step and the last, each the mean over its own interval
    assert sorted(tracker.logged) == [3, 6, 7]
    for step, interval in ((3, losses[0:3]), (6, losses[3:6]), (7, losses[6:7])):
        metrics = tracker.logged[step]
        assert metrics["loss"] == pytest.approx(sum(interval) / len(interval))
        assert metrics["lr"] == 0.1 and metrics["data_wait_s_per_step"] >= 0 and metrics["samples_per_s"] > 0
    assert sampled == [4, 7]
    # checkpoints at every 5th step and the last: the last step's loss, the digests, the resumed info
    assert [r["step"] for r in reports] == [5, 7]
    assert tracker.pending_saved_in == ["checkpoint_5", "checkpoint_7"]  # what MLflow has not taken, kept in each
    last = reports[-1]
    assert last["metrics"] == {"step": 7, "loss": losses[-1]}
    assert last["rank_info"] == {**state.digests(), "resumed_from_step": 0}
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
    assert state_digest(fresh.model) == last["rank_info"]["model_digest"]


def test_a_spent_budget_runs_no_step(reports):
    cfg = HiFiGANTrainConfig(data="x", max_steps=9, train_seconds=1e-9)
    parts = steps.StepParts(
        update=lambda step, batch: pytest.fail("no step should run"),
        interval_means=lambda count: {},
        describe=lambda m: "",
        lr=lambda: 0.0,
        checkpoint_metrics=lambda last: {},
        state=linear_state(0),
        kind="test",
    )
    start = Resumption(step=4, train_seconds=5.0)
    budget = TimeBudget(cfg.train_seconds, start.train_seconds)
    batches = iter(())  # never drawn from
    assert steps.run_steps(cfg, JOB, CPU, start, budget, batches, parts, None, logging.getLogger("t")) == 4
    assert reports == []


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
