"""The demo's pieces that run without the demo: which CLIP it picks (what tests/test_demo.py expects from it)."""

from __future__ import annotations

import pytest
from safetensors.torch import save_file

from clipsynth_core.clip_encoder import build_local_clip
from clipsynth_platform.experiments.demo import DemoClip, DemoConfig, pretrained_clip_missing, resolve_clip
from clipsynth_platform.experiments.demo import clip as demo_clip


@pytest.fixture
def tiny_weights(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in build_local_clip("tiny", seed=3).state_dict().items()}, str(path))
    return path


def test_pretrained_clip_missing_is_none_when_the_weights_load(tiny_weights):
    assert pretrained_clip_missing(DemoConfig(clip_model="tiny", clip_pretrained=str(tiny_weights)), False) is None


def test_pretrained_clip_missing_says_why(tmp_path):
    absent = tmp_path / "absent.safetensors"
    reason = pretrained_clip_missing(DemoConfig(clip_model="tiny", clip_pretrained=str(absent)), False)
    assert reason is not None and "no file" in reason and "tiny" in reason


def test_resolve_clip_takes_the_pretrained_weights_it_finds(tiny_weights, monkeypatch):
    monkeypatch.setattr(demo_clip, "_hub_reachable", lambda *a, **k: False)
    logged: list[str] = []
    clip = resolve_clip(DemoConfig(clip_model="tiny", clip_pretrained=str(tiny_weights)), log=logged.append)
    assert clip == DemoClip("tiny", str(tiny_weights), "pretrained")
    assert clip.tags()["clip_encoder"] == "pretrained" and clip.tags()["clip_random"] == "false"
    assert any("pretrained weights found" in line for line in logged)


def test_resolve_clip_none_is_random_and_says_so():
    clip = resolve_clip(DemoConfig(clip_pretrained="none"))
    assert clip.kind == "random" and clip.tags()["clip_random"] == "true"


def test_diffusion_time_is_what_the_demo_budget_leaves_within_the_cap():
    from clipsynth_platform.experiments.demo.budget import diffusion_train_seconds

    config = DemoConfig(
        diffusion_train_seconds=480.0, demo_seconds=870.0, after_diffusion_seconds=175.0, min_diffusion_seconds=120.0
    )
    # a first run (the offline CLIP trained): 310 s in, 870 - 310 - 175 = 385 s are left
    assert diffusion_train_seconds(config, 310.0) == pytest.approx(385.0)
    # the CLIP cached: 150 s in, 545 s would be left, more than the cap
    assert diffusion_train_seconds(config, 150.0) == 480.0
    # a slow machine: nothing would be left; the floor keeps a model worth serving
    assert diffusion_train_seconds(config, 800.0) == 120.0
    # no demo budget: the cap alone
    assert diffusion_train_seconds(DemoConfig(diffusion_train_seconds=300.0, demo_seconds=0.0), 999.0) == 300.0
    # a floor above the cap never raises the time past the cap
    floor = DemoConfig(diffusion_train_seconds=60.0, min_diffusion_seconds=120.0)
    assert diffusion_train_seconds(floor, 800.0) == 60.0
    with pytest.raises(ValueError, match="elapsed"):
        diffusion_train_seconds(config, -1.0)
