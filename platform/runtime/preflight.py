"""Pre-flight checks that know autoscaling: what the cluster has now, and what its node types can add.

A cluster that scales from zero (infra/aws/cluster.yaml: a head with 0 CPUs, GPU workers `min_workers: 0`)
has nothing to run on when a job starts; Ray's autoscaler starts nodes for the resources that pending tasks
and placement groups ask for. A request is refused only when no combination of present nodes and node types
can hold it; when it fits only after scale-up, the job says so and goes on.

The node types come from the autoscaler's cluster config in the GCS (`ray._private.state.state.
get_cluster_config()`, what Ray Data's own autoscaling reads), or from a cluster-launcher YAML.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

UNLIMITED = -1


@dataclass(frozen=True)
class NodeType:
    """A kind of node the autoscaler can start: its resources and how many of it at most (-1: no limit)."""

    name: str
    resources: Mapping[str, float]
    max_count: int


@dataclass(frozen=True)
class ClusterView:
    """The resources of the alive nodes, and the node types the autoscaler may add."""

    nodes: tuple[Mapping[str, float], ...]
    node_types: tuple[NodeType, ...] = ()

    @property
    def autoscaling(self) -> bool:
        return any(t.max_count != 0 and t.resources for t in self.node_types)

    def total_now(self, resource: str) -> float:
        return sum(float(n.get(resource, 0)) for n in self.nodes)

    def total_at_most(self, resource: str) -> float:
        """The most of `resource` the cluster can hold: now, or with every node type at its maximum count."""
        scaled = 0.0
        for t in self.node_types:
            per_node = float(t.resources.get(resource, 0))
            if per_node and t.max_count == UNLIMITED:
                return math.inf
            scaled += per_node * max(t.max_count, 0)
        return max(self.total_now(resource), scaled)

    @classmethod
    def from_ray(cls) -> ClusterView:
        import ray

        nodes = tuple(dict(n["Resources"]) for n in ray.nodes() if n.get("Alive"))
        return cls(nodes, _node_types_from_gcs())

    @classmethod
    def from_launcher_config(cls, config: Mapping, nodes: tuple[Mapping[str, float], ...] = ()) -> ClusterView:
        """A cluster-launcher YAML (as loaded): `available_node_types` with `resources` and `max_workers`."""
        types = []
        for name, spec in config.get("available_node_types", {}).items():
            count = 1 if name == config.get("head_node_type") else int(spec.get("max_workers", 0))
            types.append(NodeType(name, dict(spec.get("resources", {})), count))
        return cls(tuple(nodes), tuple(types))


def _node_types_from_gcs() -> tuple[NodeType, ...]:
    try:
        import ray._private.state

        config = ray._private.state.state.get_cluster_config()
    except Exception:  # no autoscaler config published (a fixed cluster), or an API that moved
        return ()
    if config is None:
        return ()
    return tuple(
        NodeType(g.name, dict(g.resources), int(g.max_count) if g.max_count >= 0 else UNLIMITED)
        for g in config.node_group_configs
    )


def _fits(capacity: Mapping[str, float], bundle: Mapping[str, float]) -> float:
    """How many `bundle`s one node of `capacity` holds."""
    counts = [float(capacity.get(r, 0)) / need for r, need in bundle.items() if need > 0]
    return math.floor(min(counts)) if counts else math.inf


@dataclass
class Preflight:
    """The verdict on a request: refused (with the reason), fits now, or fits once the autoscaler adds nodes."""

    fits_now: bool
    fits_after_scale_up: bool
    messages: list[str] = field(default_factory=list)

    @property
    def refused(self) -> bool:
        return not (self.fits_now or self.fits_after_scale_up)


def check_request(
    view: ClusterView, bundle: Mapping[str, float], count: int, spare_cpus: float, what: str
) -> Preflight:
    """Whether `count` bundles (one per Train worker or actor) plus `spare_cpus` CPUs (the data pipeline)
    can run on the cluster now, or after scale-up through its node types."""
    now = sum(_fits(n, bundle) for n in view.nodes) if view.nodes else 0
    scaled = 0.0
    for t in view.node_types:
        per_node = _fits(t.resources, bundle)
        if per_node and t.max_count == UNLIMITED:
            scaled = math.inf
            break
        scaled += per_node * max(t.max_count, 0)
    need_cpus = float(bundle.get("CPU", 0)) * count + spare_cpus
    fits_now = now >= count and view.total_now("CPU") >= need_cpus
    fits_later = max(now, scaled) >= count and view.total_at_most("CPU") >= need_cpus
    shown = ", ".join(f"{k} {v:g}" for k, v in bundle.items())
    result = Preflight(fits_now, fits_later)
    if result.refused:
        have = f"{view.total_now('CPU'):g} CPUs and {view.total_now('GPU'):g} GPUs now"
        most = f"at most {view.total_at_most('CPU'):g} CPUs and {view.total_at_most('GPU'):g} GPUs"
        where = f"{most} with its node types" if view.autoscaling else "no autoscaling node types"
        result.messages.append(
            f"{what}: {count} x ({shown}) plus {spare_cpus:g} CPU(s) for the data pipeline cannot run on this "
            f"cluster ({have}; {where})"
        )
    elif not fits_now:
        result.messages.append(
            f"{what}: {count} x ({shown}) does not fit the {len(view.nodes)} node(s) present; the autoscaler has to "
            "start nodes first (the job waits for them)"
        )
    return result


SHARED_PATHS_ENV = "CLIPSYNTH_SHARED_PATHS"  # "1": local paths are on a filesystem every node mounts (NFS)


def is_node_local(uri: str) -> bool:
    """A location only this machine can read: a plain path, file:, or a SQLite file (`sqlite:///...`)."""
    return "://" not in uri or uri.startswith(("file:", "sqlite:"))


def require_shared_locations(view: ClusterView, **locations: str) -> None:
    """On a cluster of several nodes (or one that can add nodes) every location must be shared storage: a
    Train worker or task on another node would read (or create) its own, empty copy of a driver-local path."""
    import os

    if (len(view.nodes) <= 1 and not view.autoscaling) or os.environ.get(SHARED_PATHS_ENV) == "1":
        return
    local = {name: uri for name, uri in locations.items() if uri and is_node_local(uri)}
    if local:
        listed = "; ".join(f"{name.replace('_', '-')} {uri}" for name, uri in local.items())
        raise RuntimeError(
            f"this cluster has {len(view.nodes)} nodes{' and can add more' if view.autoscaling else ''}, but "
            f"these locations exist only on the driver's machine: {listed}. Use s3:// (or another shared store) "
            "for data and checkpoints and an MLflow server (--tracking-uri / MLFLOW_TRACKING_URI http://...) for "
            f"tracking; set {SHARED_PATHS_ENV}=1 if these paths are on a filesystem every node mounts."
        )
