"""Ray Train + MLflow training of CLIPSynth's diffusion model and of its HiFi-GAN vocoder.

Entry points (jobs/train_vggsound.py, jobs/train_music.py, jobs/train_hifigan.py) parse a config and call
`run_diffusion_training` / `run_hifigan_training`; the worker loops live in diffusion_loop.py and
hifigan_loop.py, data plumbing in data.py, MLflow glue in tracking.py.
"""

from .config import DiffusionTrainConfig, HiFiGANTrainConfig, TrainConfig, build_parser, parse_config
from .data import DatasetError, DatasetInfo, inspect_dataset
from .runner import TrainingSummary, run_diffusion_training, run_hifigan_training

__all__ = [
    "DatasetError",
    "DatasetInfo",
    "DiffusionTrainConfig",
    "HiFiGANTrainConfig",
    "TrainConfig",
    "TrainingSummary",
    "build_parser",
    "inspect_dataset",
    "parse_config",
    "run_diffusion_training",
    "run_hifigan_training",
]
