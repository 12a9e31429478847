"""The fetch job's main() (jobs/fetch.py): flags -> FetchConfig -> run_fetch; clear errors for bad input."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from clipsynth_platform.runtime.console import open_console
from clipsynth_platform.runtime.options import parse_config

from .config import FetchConfig


def main(argv: Sequence[str] | None = None, description: str | None = None) -> int:
    from .pipeline import run_fetch

    open_console("fetch")
    config = parse_config(FetchConfig, argv, description)
    try:
        run_fetch(config)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
