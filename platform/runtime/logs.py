"""The platform's one logging approach: standard `logging`, one logger per component, one format.

    from clipsynth_platform.runtime.logs import get_logger
    log = get_logger("demo")          # the logger "clipsynth.demo"
    log.info("corpus: %d videos", n)  # printed as "[demo] corpus: 12 videos"

Jobs, the demo, Table 1 and the Serve app call `configure_logging()` once at start: it sends the "clipsynth"
loggers to stdout as `[component] message` lines (the progress lines users read in a terminal, in `ray job
logs` and in Serve's replica logs), at the level of $CLIPSYNTH_LOG_LEVEL (default INFO). Library code never
configures handlers: it only gets loggers. Functions that report progress take a `log` callback (a test passes
`lines.append`); its default is `progress(component)`, the component logger's `info`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

ROOT = "clipsynth"
LEVEL_ENV = "CLIPSYNTH_LOG_LEVEL"
LogFn = Callable[[str], None]


class _ComponentFormatter(logging.Formatter):
    """`[component] message`: the logger's name without the "clipsynth." prefix."""

    def format(self, record: logging.LogRecord) -> str:
        component = record.name.removeprefix(ROOT + ".") if record.name != ROOT else ROOT
        text = f"[{component}] {record.getMessage()}"
        if record.levelno >= logging.WARNING:
            text = f"[{component}] {record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (pytest's capture, a redirected job log)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def get_logger(component: str) -> logging.Logger:
    """The logger of one component ("demo", "train", "ingest", "serve", ...)."""
    return logging.getLogger(f"{ROOT}.{component}")


def progress(component: str) -> LogFn:
    """A `log` callback that writes to the component's logger at INFO."""
    return get_logger(component).info


def configure_logging(level: str | int | None = None, stream=None) -> logging.Logger:
    """Send the platform's loggers to stdout as `[component] message` (once per process; later calls only
    change the level)."""
    root = logging.getLogger(ROOT)
    level = level or os.environ.get(LEVEL_ENV, "INFO")
    root.setLevel(level.upper() if isinstance(level, str) else level)
    if not any(getattr(h, "_clipsynth", False) for h in root.handlers):
        handler = logging.StreamHandler(stream) if stream is not None else _StdoutHandler(sys.stdout)
        handler.setFormatter(_ComponentFormatter())
        handler._clipsynth = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.propagate = False  # the lines are printed once, not again by a root handler someone else set up
    return root
