"""Serve places each model on the GPU Ray assigned its replica (issue 14, fault 4), whatever ServeConfig says:
serve_config.yaml and infra/kuberay/rayservice.yaml give GPU fractions through ray_actor_options only."""

from __future__ import annotations

import json

import pytest
import ray
import torch

from clipsynth_platform.runtime.devices import resolve_device
from serve.config import ServeConfig
from serve.deployments import _prepare


class _Context:
    def __init__(self, resources: dict[str, float]) -> None:
        self.resources = resources

    def get_assigned_resources(self) -> dict[str, float]:
        return self.resources


@pytest.fixture
def bundle(tmp_path):
    (tmp_path / "bundle.json").write_text(json.dumps({}))  # _prepare only resolves the directory
    return str(tmp_path)


def test_a_replica_given_a_gpu_fraction_runs_on_it(bundle, monkeypatch):
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [3])
    monkeypatch.setattr(ray, "get_runtime_context", lambda: _Context({"CPU": 1.0, "GPU": 0.5}))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # Ray narrows the visible GPUs to the assigned one
    config = ServeConfig(model_uri=bundle)  # sampler.num_gpus stays 0, as the app's defaults
    assert config.sampler.num_gpus == 0
    _, _, device = _prepare(config, config.sampler, "DiffusionSampler")
    assert device == torch.device("cuda", 0)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")  # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES: the id itself
    assert resolve_device("auto", ray.get_gpu_ids()) == torch.device("cuda", 3)


def test_a_cpu_replica_uses_the_cpus_ray_assigned(bundle, monkeypatch):
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])
    monkeypatch.setattr(ray, "get_runtime_context", lambda: _Context({"CPU": 3.0}))
    before = torch.get_num_threads()
    try:
        config = ServeConfig(model_uri=bundle)  # sampler.num_cpus is 1.0; the yaml gave the replica 3
        _, _, device = _prepare(config, config.sampler, "DiffusionSampler")
        assert device == torch.device("cpu") and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    assert resolve_device("cpu", [0]) == torch.device("cpu")  # an explicit device wins
