"""The shared main() of the training jobs: parse, print, run, summarise; clear errors for bad input."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from clipsynth_platform.runtime.console import open_console
from clipsynth_platform.runtime.logs import get_logger

from .config import DiffusionTrainConfig, HiFiGANTrainConfig, parse_config
from .data import DatasetError

if TYPE_CHECKING:
    from .runner import TrainingSummary


def main_diffusion(argv: list[str] | None, description: str, defaults: dict[str, Any]) -> int:
    from .runner import run_diffusion_training

    cfg = parse_config(DiffusionTrainConfig, argv, description, defaults)
    return _run(lambda: run_diffusion_training(cfg))


def main_hifigan(argv: list[str] | None, description: str, defaults: dict[str, Any] | None = None) -> int:
    from .runner import run_hifigan_training

    cfg = parse_config(HiFiGANTrainConfig, argv, description, defaults)
    return _run(lambda: run_hifigan_training(cfg))


def _run(fn: Callable[[], TrainingSummary]) -> int:
    from clipsynth_platform.runtime.origin import require_consistent_origin

    open_console("train")
    get_logger("train").info(f"code from {require_consistent_origin().platform_root}")
    try:
        summary = fn()
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)  # the command's error, not a progress line
        return 2
    get_logger("summary").info(json.dumps(summary.to_dict(), default=str))
    return 0
