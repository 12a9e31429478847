"""Joining a Ray cluster, or starting a local one: the one place every job, the demo and Table 1 do it.

A job joins the cluster named by its `--ray-address` flag or by $RAY_ADDRESS (which `ray job submit` sets);
with neither it starts a local Ray with the resources the caller states. Local clusters get more logical CPUs
than the machine has cores when the caller asks (on 2 cores, Train workers would otherwise starve the Ray Data
stages that feed them), and a bounded object store.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from .console import attach_ray, quiet_libraries


@dataclass(frozen=True)
class LocalRay:
    """How to start a local Ray when no cluster address is given."""

    num_cpus: int = 0  # logical CPUs; 0: the machine's cores
    num_gpus: int | None = None  # None: Ray detects them
    object_store_bytes: int = 0  # 0: Ray's default (30% of memory)
    # The dashboard serves Ray's state API: without it Ray Train's placement-group watcher warns on every check
    # that it cannot see the controller (hundreds of lines per training run), so training keeps it on.
    dashboard: bool = True
    env_vars: Mapping[str, str] = field(default_factory=dict)  # for every worker (runtime_env)
    # Ray starts local workers at niceness 15 so its daemons stay responsive; they then yield to any busy process.
    # Ray Jobs run theirs at 0, and so do the demo and Table 1. None: Ray's default.
    worker_niceness: int | None = None


def connect_ray(address: str | None = None, local: LocalRay | None = None) -> str:
    """Join `address` (or $RAY_ADDRESS), else start a local Ray as `local` says; a no-op when Ray is running.

    Returns a line saying which (for the job's log)."""
    import ray

    quiet_libraries()  # Ray set up its own console handlers at import: its start-up lines go to the log file
    if ray.is_initialized():
        return "the Ray this process already runs"
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address and address != "local":
        # No runtime_env here: a submitted job's own (working dir, env vars) applies to its workers.
        ray.init(address=address)
        attach_ray()
        return f"the Ray cluster at {address}"
    local = local or LocalRay()
    if local.worker_niceness is not None:
        os.environ.setdefault("RAY_worker_niceness", str(local.worker_niceness))
    num_cpus = local.num_cpus or os.cpu_count() or 1
    kwargs: dict = {"address": "local", "num_cpus": num_cpus, "include_dashboard": local.dashboard}
    if local.num_gpus is not None:
        kwargs["num_gpus"] = local.num_gpus
    if local.object_store_bytes:
        kwargs["object_store_memory"] = local.object_store_bytes
    if local.env_vars:
        kwargs["runtime_env"] = {"env_vars": dict(local.env_vars)}
    context = ray.init(**kwargs)
    attach_ray()
    dashboard = getattr(context, "dashboard_url", None)
    return f"a local Ray ({num_cpus} logical CPUs" + (f", dashboard http://{dashboard})" if dashboard else ")")
