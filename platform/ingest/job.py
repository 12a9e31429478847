"""The ingestion job's main() (jobs/preprocess.py): flags -> IngestConfig -> run_ingest; clear errors for bad input."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from clipsynth_platform.runtime.console import open_console
from clipsynth_platform.runtime.options import parse_config

from .config import IngestConfig


def parse(argv: Sequence[str] | None, description: str | None = None) -> IngestConfig:
    """The checked config the command line describes (test hooks from the environment, never from flags)."""
    return parse_config(IngestConfig, argv, description).with_test_hooks_from_env()


def main(argv: Sequence[str] | None = None, description: str | None = None) -> int:
    from clipsynth_core import ClipWeightsError

    from .pipeline import run_ingest

    open_console("ingest")
    config = parse(argv, description)
    try:
        run_ingest(config)
    except (ClipWeightsError, ValueError, FileNotFoundError, NotADirectoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
