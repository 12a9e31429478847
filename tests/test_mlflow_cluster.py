"""MLflow shaped for a cluster (issue 14, fault 5): no driver-local store or path on a multi-node cluster,
models registered with a signature and an alias and served by it, and no metric step logged twice when a
run resumes from its last checkpoint."""

from __future__ import annotations

import json

import mlflow
import pytest

from clipsynth_platform.runtime.preflight import ClusterView, NodeType, require_shared_locations
from clipsynth_platform.tracking.registry import log_bundle_model, model_version_of, resolve_bundle, set_alias
from clipsynth_platform.train.tracking import RunTracker, resolve_tracking_uri

THREE_NODES = ClusterView(nodes=({"CPU": 0.0}, {"CPU": 2.0}, {"CPU": 2.0}))


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return uri


def test_driver_local_locations_are_refused_on_a_multi_node_cluster(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = resolve_tracking_uri("")  # what a job without a tracking URI would use: sqlite in its cwd
    assert default.startswith("sqlite:///")
    with pytest.raises(RuntimeError, match=r"3 nodes, but these locations exist only on the driver's machine: "):
        require_shared_locations(THREE_NODES, tracking_uri=default, storage_path="s3://b/ckpt")
    with pytest.raises(RuntimeError, match=r"storage-path /home/me/runs"):
        require_shared_locations(THREE_NODES, tracking_uri="http://mlflow:5000", storage_path="/home/me/runs")
    from_zero = ClusterView(nodes=({"CPU": 0.0},), node_types=(NodeType("gpu", {"GPU": 8.0}, 4),))
    with pytest.raises(RuntimeError, match="and can add more"):
        require_shared_locations(from_zero, data="./shards")
    require_shared_locations(THREE_NODES, tracking_uri="http://mlflow:5000", data="s3://b/shards", vocoder="")
    require_shared_locations(ClusterView(nodes=({"CPU": 8.0},)), tracking_uri=default, data=str(tmp_path))
    monkeypatch.setenv("CLIPSYNTH_SHARED_PATHS", "1")  # an NFS mount every node has
    require_shared_locations(THREE_NODES, data="/mnt/nfs/shards")


def test_a_resumed_run_logs_each_step_once(tracking, tmp_path):
    record = str(tmp_path / "runs" / "r" / "clipsynth_run.json")
    first = RunTracker(tracking, "exp", "r", record, {"kind": "diffusion"})
    for step in (10, 20, 30):  # the first attempt logs through step 30, then dies; its checkpoint is at 20
        first.log_metrics({"loss": 1.0 / step, "lr": 1e-3}, step)
    assert first.flush(60)  # sent from a background thread: MLflow has them once the outbox is empty
    first.outbox.abandon()
    again = RunTracker(tracking, "exp", "r", record, {"kind": "diffusion"})
    assert again.resumed and again.run_id == first.run_id
    # the tracker's own metrics (time in the tracker, CPU time) go with each log
    assert again.logged_through == dict.fromkeys(("loss", "lr", "tracking_seconds", "process_cpu_seconds"), 30)
    for step in (30, 40):  # the restart replays step 30 from the checkpoint at 20, then goes on
        again.log_metrics({"loss": 2.0 / step, "lr": 1e-3}, step)
    assert again.finish()
    history = mlflow.MlflowClient().get_metric_history(first.run_id, "loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [10, 20, 30, 40]
    assert {m.step: m.value for m in history}[30] == pytest.approx(1.0 / 30)  # the first value stands
    assert len(mlflow.search_runs(experiment_names=["exp"])) == 1


def test_the_bundle_is_registered_with_a_signature_and_served_by_alias(tracking, tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "bundle.json").write_text(json.dumps({"format": "test"}))
    mlflow.set_experiment("exp")
    with mlflow.start_run():
        info = log_bundle_model(bundle, registered_name="synth")
    version = str(info.registered_model_version)
    signature = mlflow.models.get_model_info(info.model_uri).signature
    assert signature.inputs.input_names() == ["query", "steps", "seed"]
    assert [c.required for c in signature.inputs.inputs] == [True, False, False]
    assert signature.outputs.inputs[0].type.name == "float32"
    assert set_alias(f"models:/synth/{version}", "latest-train") == "models:/synth@latest-train"
    assert set_alias("models:/synth@latest-train", "champion") == "models:/synth@champion"
    assert model_version_of("models:/synth@champion") == ("synth", version)
    served = resolve_bundle("models:/synth@champion", tmp_path / "dl")
    assert json.loads((served / "bundle.json").read_text()) == {"format": "test"}
    with pytest.raises(ValueError, match="not a registered model URI"):
        set_alias("runs:/abc/synthesizer", "champion")
