"""Checkpoints that prove they are whole (issue 28, item 3): the manifest a checkpoint report writes last, and a
resume that skips a checkpoint with a file cut short, missing, changed or without its manifest, for the newest
whole one before it, and says so. Ray Train checkpoints on the local filesystem, no cluster; the same code
reads them from S3 in tests/test_s3_faults.py."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch
from fault_record import record_fault
from ray.train import Checkpoint

from clipsynth_core import state_digest
from clipsynth_platform.train.checkpoints import TrainingState, save_checkpoint
from clipsynth_platform.train.whole_checkpoints import (
    MANIFEST_FILE,
    check_whole,
    restore_whole,
    write_manifest,
)

CPU = torch.device("cpu")


def make_state(seed: int) -> TrainingState:
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    return TrainingState(model, torch.optim.AdamW(model.parameters(), lr=0.1))


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """checkpoint_000000003, _6 and _9 of one run, each a different state, each with its manifest."""
    root = tmp_path / "run"
    for step in (3, 6, 9):
        d = root / f"checkpoint_{step:09d}"
        make_state(step).save(d, step, {"kind": "test"})
        (d / "rank_0.json").write_text(json.dumps({"rank": 0, "step": step}))
        write_manifest(d)
    return root


def ray_checkpoint(run_dir: Path, step: int) -> Checkpoint:
    return Checkpoint(str(run_dir / f"checkpoint_{step:09d}"), filesystem=pafs.LocalFileSystem())


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def resume_from(run_dir: Path, latest: int, carry: tuple[str, ...] = ()):
    """What a worker resumes with when Ray Train hands it the checkpoint of step `latest`."""
    log = logging.getLogger("test-whole-checkpoints")
    lines = Lines()
    log.addHandler(lines)
    state = make_state(100)
    try:
        restored = restore_whole(ray_checkpoint(run_dir, latest), lambda d, path: state.load(d, CPU), log, carry)
    finally:
        log.removeHandler(lines)
    return restored, state, lines.lines


def test_the_manifest_lists_every_file_with_size_and_checksum(run_dir):
    d = run_dir / "checkpoint_000000009"
    manifest = json.loads((d / MANIFEST_FILE).read_text())
    names = {"model.safetensors", "optimizer.pt", "state.json", "rank_0.json"}
    assert set(manifest["files"]) == names
    for name, entry in manifest["files"].items():
        data = (d / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert check_whole(d).whole


def test_a_truncated_file_is_skipped_for_the_previous_whole_checkpoint(run_dir):
    model = run_dir / "checkpoint_000000009" / "model.safetensors"
    size = model.stat().st_size
    model.write_bytes(model.read_bytes()[: size // 2])  # cut short, as an upload interrupted by a lost node
    restored, state, lines = resume_from(run_dir, 9)
    assert restored.saved["step"] == 6 and restored.path.endswith("checkpoint_000000006")
    assert state_digest(state.model) == state_digest(make_state(6).model)  # the state of step 6, bit for bit
    assert lines[0] == (
        f"checkpoint {run_dir}/checkpoint_000000009 is not whole: model.safetensors has {size // 2} bytes, "
        f"the manifest says {size}; skipping it"
    )
    assert lines[1] == f"resuming from {run_dir}/checkpoint_000000006, the newest whole checkpoint (1 newer skipped)"
    record_fault(
        "checkpoint_file_truncated",
        injected={"truncated": f"checkpoint_000000009/model.safetensors cut from {size} to {size // 2} bytes"},
        platform={"said": lines, "resumed_from_step": 6},
        lost={"steps": "those after step 6 (trained again); nothing loaded from the cut file"},
        command="pytest -q tests/test_whole_checkpoints.py -k truncated",
    )


def test_a_missing_file_and_a_missing_manifest_are_skipped_too(run_dir):
    (run_dir / "checkpoint_000000009" / "optimizer.pt").unlink()
    (run_dir / "checkpoint_000000006" / MANIFEST_FILE).unlink()  # cut short before the manifest, written last
    restored, state, lines = resume_from(run_dir, 9)
    assert restored.saved["step"] == 3 and restored.skipped == [
        f"{run_dir}/checkpoint_000000009",
        f"{run_dir}/checkpoint_000000006",
    ]
    assert "optimizer.pt is missing" in lines[0] and "no checkpoint_manifest.json (written last" in lines[1]
    assert state_digest(state.model) == state_digest(make_state(3).model)
    record_fault(
        "checkpoint_file_removed",
        injected={"removed": ["checkpoint_000000009/optimizer.pt", "checkpoint_000000006/checkpoint_manifest.json"]},
        platform={"said": lines, "resumed_from_step": 3},
        lost={"steps": "those after step 3 (trained again)"},
        command="pytest -q tests/test_whole_checkpoints.py -k missing",
    )


def test_a_changed_byte_fails_the_checksum_and_no_whole_checkpoint_starts_over(run_dir):
    for step in (3, 6, 9):
        state_json = run_dir / f"checkpoint_{step:09d}" / "state.json"
        text = state_json.read_text()
        state_json.write_text(text.replace('"test"', '"tesT"'))  # same size, other bytes
    restored, state, lines = resume_from(run_dir, 9)
    assert restored is None
    assert all("state.json does not match its sha256 in the manifest" in line for line in lines[:3])
    assert lines[3].startswith("no whole checkpoint among 3") and lines[3].endswith("training starts from step 0")
    assert state_digest(state.model) == state_digest(make_state(100).model)  # nothing was loaded


def test_named_folders_are_carried_out_of_the_checkpoint(run_dir):
    d = run_dir / "checkpoint_000000006"
    (d / "tracking_pending").mkdir()
    (d / "tracking_pending" / "ops.jsonl").write_text("kept\n")
    write_manifest(d)
    (run_dir / "checkpoint_000000009" / MANIFEST_FILE).unlink()
    restored, _, _ = resume_from(run_dir, 9, carry=("tracking_pending", "absent"))
    assert set(restored.carried) == {"tracking_pending"}
    assert (restored.carried["tracking_pending"] / "ops.jsonl").read_text() == "kept\n"
    assert restored.carried["tracking_pending"] != d / "tracking_pending"  # a copy, which outlives the download


def test_a_checkpoint_report_writes_the_manifest_last(monkeypatch, tmp_path):
    import ray.train

    seen = {}

    def report(metrics, checkpoint, checkpoint_dir_name):
        d = Path(checkpoint.path)
        seen["files"] = sorted(p.name for p in d.iterdir())
        seen["whole"] = check_whole(d)
        if (d / MANIFEST_FILE).exists():
            seen["listed"] = sorted(json.loads((d / MANIFEST_FILE).read_text())["files"])

    monkeypatch.setattr(ray.train, "report", report)
    state = make_state(1)
    save_checkpoint(5, state, 0, metrics={"step": 5}, fields={}, rank_info={"resumed_from_step": 0})
    assert seen["whole"].whole
    assert seen["listed"] == ["model.safetensors", "optimizer.pt", "rank_0.json", "state.json"]
    assert seen["files"] == sorted([*seen["listed"], MANIFEST_FILE])
    save_checkpoint(5, state, 1, metrics={"step": 5}, fields={}, rank_info={})  # other ranks: their rank file only
    assert seen["files"] == ["rank_1.json"] and not seen["whole"].whole
