"""Named presets: the one place that says what the MUSIC and VGG-Sound trainings, the demo, Table 1 and the tiny
test runs set differently from the configs' (paper) defaults.

A preset is data: for each config class it touches (by class name, so this module imports none of them), the
fields it overrides. A job hands a preset's overrides to clipsynth_platform.runtime.options as its defaults (so
`--help` shows them), and the demo and Table 1 build each stage's config from theirs:

    from clipsynth_platform.presets import preset
    preset("music").overrides("DiffusionTrainConfig")      # {"max_steps": 100_000, ...}
    preset("demo").build(HiFiGANTrainConfig, data=shards)  # the demo's HiFi-GAN stage
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Preset:
    name: str
    about: str
    settings: Mapping[str, Mapping[str, Any]]  # config class name -> {field: value}

    def overrides(self, cls: type | str) -> dict[str, Any]:
        """The fields this preset sets on `cls` (none: an empty dict)."""
        return dict(self.settings.get(cls if isinstance(cls, str) else cls.__name__, {}))

    def build(self, cls: type[T], **values: Any) -> T:
        """`cls` with this preset's overrides, then `values` (the caller's, which win)."""
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted((set(self.overrides(cls)) | set(values)) - known)
        if unknown:
            raise ValueError(f"preset {self.name!r}: {cls.__name__} has no fields {unknown}")
        return cls(**{**self.overrides(cls), **values})


def _diffusion_job(dataset: str, steps: int, template: str) -> dict[str, Any]:
    return {"experiment": f"clipsynth-{dataset}", "max_steps": steps, "register_as": f"clipsynth-{dataset}",
            "clip_template": template}  # fmt: skip


MUSIC = Preset(
    "music",
    "jobs/train_music.py: 100K steps (MUSIC converges by then), queries 'a photo of playing {query}'",
    {"DiffusionTrainConfig": _diffusion_job("music", 100_000, "a photo of playing {query}")},
)

VGGSOUND = Preset(
    "vggsound",
    "jobs/train_vggsound.py: the paper's 500K steps, queries 'a photo of {query}'",
    {"DiffusionTrainConfig": _diffusion_job("vggsound", 500_000, "a photo of {query}")},
)

# The demo's stage settings that no demo flag changes; DemoConfig's knobs (budgets, sizes, seeds) go on top.
DEMO = Preset(
    "demo",
    "make demo: every stage on the built-in corpus, on one machine, in about 15 CPU minutes",
    {
        "IngestConfig": {"clip_allow_download": False, "num_gpus": 0},
        "HiFiGANTrainConfig": {
            "run_name": "demo-hifigan",
            "max_steps": 1_000_000,  # the time budget ends the run
            "checkpoint_every": 1_000_000,  # the final checkpoint only
            "log_every": 10,
            "sample_every": 1_000_000,  # samples at the final step only
        },
        "DiffusionTrainConfig": {
            "run_name": "demo-diffusion-image",
            "variant": "image",
            "ema_warmup": True,
            "log_every": 50,
        },
        "EvalConfig": {
            "dataset": "music",
            "batch_size": 8,
            "num_workers": 1,
            # released backbones when their weights are here; else FAD on the mel classifier, FID absent
            "fad_backbone": "auto",
            "fid_backbone": "inception",
        },
        # as Ray Jobs: the Train worker does not yield to every other busy process
        "LocalRay": {"object_store_bytes": 1_500_000_000, "worker_niceness": 0},
    },
)

# make vocoder: the demo's HiFi-GAN trained to the CPU recipe (platform/demo/vocoder.py); the recipe's knobs are
# CpuRunConfig's, its time budget the job's.
VOCODER = Preset(
    "vocoder",
    "make vocoder: the demo's HiFi-GAN for the recipe's 20 CPU minutes, then its bundle, measured and registered",
    {
        "HiFiGANTrainConfig": {
            "run_name": "demo-vocoder",
            "num_workers": 1,
            "max_steps": 1_000_000,  # the time budget ends the run
            "checkpoint_every": 2_000,
            "log_every": 100,
            "sample_every": 1_000_000,  # samples at the final step only
        },
    },
)

TABLE1 = Preset(
    "table1",
    "make table1: the three variants on one step budget, the HiFi-GAN once, then evaluation and the table",
    {
        "HiFiGANTrainConfig": {"run_name": "table1-hifigan", "num_workers": 1, "log_every": 10},
        "DiffusionTrainConfig": {"num_workers": 1, "ema_warmup": True, "log_every": 50},
        "EvalConfig": {"batch_size": 8, "num_workers": 1},
        "LocalRay": {"object_store_bytes": 500_000_000, "worker_niceness": 0},
    },
)

# Seconds, not minutes: the smallest models and budgets that still run every stage (tests/test_table1.py).
TINY = Preset(
    "tiny",
    "end-to-end tests: tiny models, a few steps, random evaluation backbones",
    {
        "Table1Config": {
            "model_size": "tiny",
            "diffusion_train_steps": 3,
            "diffusion_steps": 50,
            "batch_size": 4,
            "vocoder_train_steps": 2,
            "vocoder_batch_size": 2,
            "vocoder_segment_frames": 8,
            "examples_per_pass": 16,
            "shuffle_buffer": 16,
            "prior_steps": 20,
            "eval_samples": 4,
            "eval_steps": 2,
            "fad_backbone": "tiny-random",
            "fid_backbone": "tiny-random",
            "classifier_epochs": 2,
            "cpus_per_worker": 1,
        },
    },
)

PRESETS: dict[str, Preset] = {p.name: p for p in (MUSIC, VGGSOUND, DEMO, VOCODER, TABLE1, TINY)}


def preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"no preset {name!r}; presets: {', '.join(sorted(PRESETS))}") from None
