"""Ray Train + MLflow training of CLIPSynth's diffusion model and of its HiFi-GAN vocoder.

Entry points (jobs/train_vggsound.py, jobs/train_music.py, jobs/train_hifigan.py) parse a config and call
`run_diffusion_training` / `run_hifigan_training`; the worker loops live in diffusion_loop.py and
hifigan_loop.py (the step loop they share in steps.py, what their checkpoints hold in state.py), data plumbing
in data.py, MLflow glue in tracking.py.

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
