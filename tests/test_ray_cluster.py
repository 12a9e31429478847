"""connect_ray: which cluster a job joins, and with what resources a local one starts (ray.init recorded)."""

from __future__ import annotations

import os

import pytest
import ray

from clipsynth_platform.runtime.ray_cluster import LocalRay, connect_ray


@pytest.fixture
def recorded_init(monkeypatch):
    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_worker_niceness", raising=False)
    return calls


def test_an_address_or_ray_address_joins_that_cluster(recorded_init, monkeypatch):
    assert connect_ray("ray://head:10001", LocalRay(num_cpus=9)) == "the Ray cluster at ray://head:10001"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert connect_ray(None) == "the Ray cluster at 10.0.0.1:6379"
    # joining passes no resources and no runtime_env: a submitted job's own applies
    assert recorded_init == [{"address": "ray://head:10001"}, {"address": "10.0.0.1:6379"}]


def test_a_local_ray_gets_the_stated_resources(recorded_init, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # "local" overrides the environment
    local = LocalRay(num_cpus=6, object_store_bytes=500_000_000, env_vars={"A": "1"}, worker_niceness=0)
    assert connect_ray("local", local) == "a local Ray (6 logical CPUs)"
    assert recorded_init == [
        {
            "address": "local",
            "num_cpus": 6,
            "include_dashboard": True,
            "object_store_memory": 500_000_000,
            "runtime_env": {"env_vars": {"A": "1"}},
        }
    ]

    assert os.environ.get("RAY_worker_niceness") == "0"  # noqa: SIM112 - Ray spells it so


def test_defaults_leave_gpus_and_memory_to_ray(recorded_init, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert connect_ray("", LocalRay(num_gpus=0, dashboard=False)) == "a local Ray (2 logical CPUs)"
    assert recorded_init == [{"address": "local", "num_cpus": 2, "include_dashboard": False, "num_gpus": 0}]


def test_a_running_ray_is_kept(monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "init", lambda **kwargs: pytest.fail("ray.init called while Ray runs"))
    assert connect_ray("ray://elsewhere:10001") == "the Ray this process already runs"


def test_a_local_ray_names_its_dashboard(monkeypatch):
    import types

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: types.SimpleNamespace(dashboard_url="127.0.0.1:8265"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert connect_ray("local", LocalRay(num_cpus=3)) == "a local Ray (3 logical CPUs, dashboard http://127.0.0.1:8265)"
