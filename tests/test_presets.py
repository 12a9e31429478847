"""Named presets (clipsynth_platform.presets): each names real config fields, the jobs and the demo build
their configs from them, and the caller's values win."""

from __future__ import annotations

import dataclasses

import pytest

from clipsynth_platform.datasets.corpus import CorpusConfig
from clipsynth_platform.evaluation.mel_classifier import MelClassifierTrainConfig
from clipsynth_platform.evaluation.runner import EvalConfig
from clipsynth_platform.experiments.demo import DemoConfig, stage_configs
from clipsynth_platform.experiments.table1 import Table1Config
from clipsynth_platform.ingest import IngestConfig
from clipsynth_platform.presets import DEMO, PRESETS, preset
from clipsynth_platform.runtime.ray_cluster import LocalRay
from clipsynth_platform.train.config import DiffusionTrainConfig, HiFiGANTrainConfig

CONFIGS = {c.__name__: c for c in (CorpusConfig, IngestConfig, DiffusionTrainConfig, HiFiGANTrainConfig,
                                   MelClassifierTrainConfig, EvalConfig, LocalRay, Table1Config, DemoConfig)}  # fmt: skip


def test_every_preset_names_real_fields():
    assert {"music", "vggsound", "demo", "table1", "tiny"} <= set(PRESETS)
    for p in PRESETS.values():
        for cls_name, values in p.settings.items():
            fields = {f.name for f in dataclasses.fields(CONFIGS[cls_name])}
            assert set(values) <= fields, (p.name, cls_name, set(values) - fields)


def test_build_applies_the_preset_then_the_callers_values():
    cfg = preset("music").build(DiffusionTrainConfig, data="d", max_steps=7)
    assert (cfg.max_steps, cfg.register_as, cfg.clip_template) == (7, "clipsynth-music", "a photo of playing {query}")
    assert cfg.lr == DiffusionTrainConfig().lr  # what the preset leaves alone keeps the paper's default
    with pytest.raises(ValueError, match=r"preset 'music': DiffusionTrainConfig has no fields \['stepz'\]"):
        preset("music").build(DiffusionTrainConfig, stepz=1)
    with pytest.raises(ValueError, match="no preset 'audioset'; presets: demo, music"):
        preset("audioset")


def test_demo_stage_configs_are_the_preset_with_the_demo_knobs_on_top(tmp_path):
    demo = DemoConfig(out=str(tmp_path), diffusion_train_steps=9, lr=0.01, seed=5, vocoder_size="small")
    diff = stage_configs.diffusion_config(demo, "sqlite:///x.db", "vocoder.pt")
    assert (diff.run_name, diff.variant, diff.ema_warmup, diff.log_every) == ("demo-diffusion-image", "image", True, 50)
    assert (diff.max_steps, diff.checkpoint_every, diff.sample_every, diff.lr, diff.seed) == (9, 3, 9, 0.01, 5)
    assert (diff.data, diff.vocoder, diff.tracking_uri) == (str(tmp_path / "shards"), "vocoder.pt", "sqlite:///x.db")
    assert diff.sample_queries == tuple(q for q, _ in demo.query_list()[:4])
    voc = stage_configs.hifigan_config(demo, "sqlite:///x.db")
    assert (voc.model_size, voc.max_steps, voc.checkpoint_every, voc.seed) == ("small", 1_000_000, 1_000_000, 5)
    ev = stage_configs.eval_config(demo, "models:/m/1", retriever=True)
    assert (ev.queries, ev.retriever, ev.batch_size, ev.fad_backbone) == (
        "text",
        True,
        8,
        DEMO.settings["EvalConfig"]["fad_backbone"],
    )
    ray = stage_configs.local_ray(demo, "t")
    assert (ray.num_cpus, ray.object_store_bytes, ray.env_vars) == (6, 1_500_000_000, {"MLFLOW_TRACKING_URI": "t"})
