"""Shared fixtures. One local Ray cluster per test session (starting one takes seconds), with explicit
resources: more logical CPUs than the 2 physical cores so data stages are not starved by Train workers
(Ray issue 44687 and kin, reproduced on this machine), and a bounded object store."""

from __future__ import annotations

import os

import pytest

# Tests never reach the network for model weights.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

RAY_NUM_CPUS = 8
RAY_OBJECT_STORE_BYTES = 1_000_000_000


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster shared by every test that asks for it; shut down at the end of the session."""
    import ray

    if not ray.is_initialized():
        ray.init(
            # "local": always a fresh cluster for the session, never one that `ray start` left running.
            address="local",
            num_cpus=RAY_NUM_CPUS,
            object_store_memory=RAY_OBJECT_STORE_BYTES,
            include_dashboard=False,
            log_to_driver=True,
            ignore_reinit_error=True,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_clip():
    """A tiny random CLIP (64-dim embeddings), the same in every process that builds it (seeded)."""
    from clipsynth_core import ClipConfig, ClipQueryEncoder

    return ClipQueryEncoder(ClipConfig(model_name="tiny", pretrained="none"))


# The Serve app of the service tests, started once per session (tests/serve_service.py).
from serve_service import client, registered_model, serve_http, served_bundle, service  # noqa: E402, F401
