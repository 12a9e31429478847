"""Pre-flight checks that know autoscaling (issue 14, fault 2): the documented from-zero cluster
(infra/aws/cluster.yaml: head with 0 CPUs, worker types from zero) accepts what its node types can hold,
with a warning; what no node type can hold is refused, as on a fixed cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clipsynth_platform.ingest import IngestConfig
from clipsynth_platform.ingest.pipeline import plan_clip_stage
from clipsynth_platform.runtime.logs import configure_logging
from clipsynth_platform.runtime.preflight import ClusterView, NodeType, check_request
from clipsynth_platform.train.config import DiffusionTrainConfig
from clipsynth_platform.train.runner import check_cluster_resources

ROOT = Path(__file__).resolve().parents[1]
HEAD_ONLY = ({"CPU": 0.0, "memory": 1e10},)  # what a from-zero cluster has when the job starts


@pytest.fixture(scope="module")
def from_zero() -> ClusterView:
    config = yaml.safe_load((ROOT / "infra" / "aws" / "cluster.yaml").read_text())
    return ClusterView.from_launcher_config(config, nodes=HEAD_ONLY)


def test_the_documented_gpu_training_is_accepted_before_any_worker_exists(from_zero, capsys):
    # The README's command: 8 workers, one GPU each. Nothing is present; 8 p4d nodes of 8 GPUs can come.
    configure_logging()  # as the training jobs' main does: the preflight lines go to stdout
    cfg = DiffusionTrainConfig(data="s3://d", num_workers=8, use_gpu=True)
    result = check_cluster_resources(cfg, from_zero)
    assert not result.fits_now and result.fits_after_scale_up
    out = capsys.readouterr().out
    assert "[preflight] " in out and "the autoscaler has to start nodes first" in out


def test_requests_beyond_every_node_type_are_refused(from_zero):
    # 8 gpu_a100 nodes x 8 GPUs = 64: a 65th GPU worker can never be placed.
    with pytest.raises(RuntimeError, match=r"cannot run on this cluster .*at most .* 64 GPUs with its node types"):
        check_cluster_resources(DiffusionTrainConfig(data="s3://d", num_workers=65, use_gpu=True), from_zero)
    # A worker larger than any node (p4d: 96 CPUs) fits no node type, however many.
    with pytest.raises(RuntimeError, match="cannot run on this cluster"):
        check_cluster_resources(DiffusionTrainConfig(data="s3://d", num_workers=1, cpus_per_worker=97), from_zero)


def test_bundles_are_packed_per_node_not_summed():
    # Two nodes of 1.5 CPUs: 3 CPUs in all, but one 1-CPU bundle per node, so 3 workers never fit.
    view = ClusterView(nodes=({"CPU": 1.5}, {"CPU": 1.5}))
    assert check_request(view, {"CPU": 1.0}, 2, spare_cpus=1.0, what="t").fits_now
    assert check_request(view, {"CPU": 1.0}, 3, spare_cpus=0.0, what="t").refused
    unlimited = ClusterView(nodes=(), node_types=(NodeType("cpu", {"CPU": 4.0}, -1),))
    late = check_request(unlimited, {"CPU": 1.0}, 1000, spare_cpus=1.0, what="t")
    assert not late.fits_now and late.fits_after_scale_up


def test_ingest_clip_stage_plans_gpus_the_node_types_can_add(from_zero):
    # Before: CLIP on one CPU actor, because no GPU was present when the job started.
    plan = plan_clip_stage(IngestConfig(input="s3://v", output="s3://o"), from_zero)
    assert (plan.gpu, plan.min_actors, plan.max_actors) == (True, 1, 64)
    assert "autoscaler starts GPU nodes" in plan.note
    cpu_only = ClusterView(nodes=({"CPU": 8.0},))
    plan = plan_clip_stage(IngestConfig(input="i", output="o", clip_actors=3), cpu_only)
    assert (plan.gpu, plan.min_actors, plan.max_actors) == (False, 1, 3) and "no GPU" in plan.note
    assert plan_clip_stage(IngestConfig(input="i", output="o", num_gpus=2), cpu_only).max_actors == 2


@pytest.mark.ray
def test_node_types_are_read_from_the_autoscalers_config_in_the_gcs(ray_cluster):
    """The config the autoscaler publishes (ClusterConfig protobuf in the GCS KV), read through Ray's reader."""
    import ray._raylet
    from ray.core.generated import autoscaler_pb2
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

    config = autoscaler_pb2.ClusterConfig()
    group = config.node_group_configs.add()
    group.name, group.min_count, group.max_count = "gpu_a100", 0, 8
    group.resources["CPU"], group.resources["GPU"] = 96, 8
    key, ns = ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE
    _internal_kv_put(key, config.SerializeToString(), namespace=ns)
    try:
        view = ClusterView.from_ray()
    finally:
        _internal_kv_del(key, namespace=ns)
    assert view.node_types == (NodeType("gpu_a100", {"CPU": 96.0, "GPU": 8.0}, 8),)
    assert view.total_now("CPU") == ray_cluster.cluster_resources()["CPU"]
    assert view.total_at_most("GPU") == 64 and ClusterView.from_ray().node_types == ()
