"""Ray Train + MLflow training of CLIPSynth's diffusion model and of its HiFi-GAN vocoder.

Entry points (jobs/train_vggsound.py, jobs/train_music.py, jobs/train_hifigan.py) parse a config and call
`run_diffusion_training` / `run_hifigan_training` (runner.py, the driver side). A worker runs one loop, written
out top to bottom, one step at a time: diffusion_loop.py, hifigan_loop.py. What they share, each a small named
piece: worker.py (where the worker runs, its device settings, random streams, DDP), loop.py (the steps of an
attempt, the time budget, device loss sums, metrics and progress), checkpoints.py (what a checkpoint holds,
saving one, resuming); data plumbing in data.py, MLflow glue in tracking.py.

Names are imported lazily: Ray Data tasks import `clipsynth_platform.train.data` for its transforms, and
should not pay for torch and MLflow imports they never use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DiffusionTrainConfig": "config",
    "HiFiGANTrainConfig": "config",
    "TrainConfig": "config",
    "build_parser": "config",
    "parse_config": "config",
    "DatasetError": "data",
    "DatasetInfo": "data",
    "inspect_dataset": "data",
    "TrainingSummary": "runner",
    "run_diffusion_training": "runner",
    "run_hifigan_training": "runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
