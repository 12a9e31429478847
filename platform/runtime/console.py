"""What a person sees in the terminal: the platform's own `[component] message` lines, a progress bar with the
time left for each long stage, the warnings that mean trouble, and the final summary.

Everything else goes to a log file whose path is printed first: Ray's driver and worker chatter (Ray Data's
progress tables, Ray Train's "Moving model to device", deprecation warnings raised inside Ray), MLflow's and
other libraries' INFO lines, and Python warnings. Errors from libraries still reach the terminal. `-v` on any
job (or CLIPSYNTH_VERBOSE=1) turns the filtering off and shows everything, as before.

    log_path = open_console("ingest")        # at an entry point, once; returns the log file (None with -v)
    connect_ray(...)                         # routes the workers' output the same way (attach_ray)
    with progress_bar(160, "corpus", "video") as bar:
        ... bar.update(1)

Progress bars are tqdm's: live on a terminal; elsewhere (a pipe, `ray job logs`, CI) a line every 30 s and one
at the end, with the same counts, rate and time left.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .logs import ROOT, LogFn, configure_logging, get_logger

VERBOSE_ENV = "CLIPSYNTH_VERBOSE"
LOG_DIR_ENV = "CLIPSYNTH_LOG_DIR"
# The platform's own lines, as _ComponentFormatter writes them (also from Ray workers): shown on the console.
PLATFORM_LINE = re.compile(r"^\[[\w. -]+\] ")  # "[train] ...", "[fault drill] ..."
NON_TTY_INTERVAL_S = 30.0
# Libraries whose INFO lines are chatter to a person at the terminal; their errors still reach it.
QUIETED_LOGGERS = ("ray", "ray.data", "ray.train", "ray.serve", "mlflow", "alembic", "urllib3", "py.warnings")
_FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal control sequences (tqdm's cursor moves)


class _Console:
    """What open_console changed in this process, so that close_console puts it back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = logging.FileHandler(path, encoding="utf-8")
        self.file.setFormatter(logging.Formatter(_FILE_FORMAT))
        self.file.setLevel(logging.DEBUG)
        self.saved_handlers: dict[str, tuple[list[logging.Handler], bool]] = {}  # logger -> (handlers, propagate)
        self.saved_levels: list[tuple[logging.Handler | logging.Logger, int]] = []
        self.ray_hook: Any = None  # Ray's own worker-output handler, while ours replaces it

    def set_level(self, target: logging.Handler | logging.Logger, level: int) -> None:
        self.saved_levels.append((target, target.level))
        target.setLevel(level)

    def replace_handlers(self, logger: logging.Logger, handlers: list[logging.Handler]) -> None:
        self.saved_handlers.setdefault(logger.name, (list(logger.handlers), logger.propagate))
        logger.handlers = handlers
        logger.propagate = False


_console: _Console | None = None


def verbose() -> bool:
    """True when the console shows everything (-v, CLIPSYNTH_VERBOSE=1)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def set_verbose(on: bool = True) -> None:
    """What `-v` does; exported to the environment so Ray workers and child jobs inherit it."""
    os.environ[VERBOSE_ENV] = "1" if on else "0"


def log_path() -> Path | None:
    """The log file this process writes (None before open_console, or with -v)."""
    return _console.path if _console else None


def default_log_path(job: str, log_dir: str | os.PathLike | None = None) -> Path:
    root = Path(log_dir or os.environ.get(LOG_DIR_ENV) or Path(tempfile.gettempdir()) / "clipsynth-logs")
    return root / f"{job}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def open_console(job: str, log_dir: str | os.PathLike | None = None) -> Path | None:
    """Set up this process's console for `job` (once; later calls return the same file). Returns the log file,
    or None with -v, where every line goes to the terminal as the libraries print it."""
    global _console
    configure_logging()
    if verbose():
        return None
    if _console is not None:
        return _console.path
    path = default_log_path(job, log_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    console = _Console(path)
    _console = console

    ours = logging.getLogger(ROOT)
    # The console handler keeps the level the user asked for (INFO by default); the file also takes DEBUG lines
    # (the full configs, per-epoch and per-video details).
    for handler in ours.handlers:
        if getattr(handler, "_clipsynth", False) and handler.level == logging.NOTSET:
            console.set_level(handler, ours.getEffectiveLevel())
    console.replace_handlers(ours, [*ours.handlers, console.file])
    console.set_level(ours, logging.DEBUG)

    root = logging.getLogger()
    for handler in root.handlers:  # e.g. basicConfig's stderr handler: errors only
        if isinstance(handler, logging.StreamHandler):
            console.set_level(handler, logging.ERROR)
    root.addHandler(console.file)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        console.set_level(root, logging.INFO)
    logging.captureWarnings(True)  # Python warnings -> "py.warnings" -> the file
    # MLflow draws a progress bar on stderr for every artifact download (a bundle is a dozen files); the
    # platform's own lines say what is loaded. Set before MLflow reads it; Ray workers inherit it.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    quiet_libraries()
    get_logger(job).info("full log: %s", path)
    return path


def close_console() -> None:
    """Undo open_console (and attach_ray): the handlers, levels and Ray's output hook as they were."""
    global _console
    console, _console = _console, None
    if console is None:
        return
    if console.ray_hook is not None:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher

        global_worker_stdstream_dispatcher.remove_handler("ray_print_logs")
        global_worker_stdstream_dispatcher.add_handler("ray_print_logs", console.ray_hook)
    for name, (handlers, propagate) in console.saved_handlers.items():
        logger = logging.getLogger(name)
        logger.handlers, logger.propagate = handlers, propagate
    for target, level in reversed(console.saved_levels):
        target.setLevel(level)
    logging.getLogger().removeHandler(console.file)
    logging.captureWarnings(False)
    console.file.close()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (a redirected job log, a test's capture)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _errors_to_console() -> logging.Handler:
    handler = _StderrHandler(sys.stderr)
    handler.setLevel(logging.ERROR)
    handler.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
    return handler


def quiet_libraries() -> None:
    """Send the chatty libraries' loggers to the log file, errors also to the console. Idempotent; run again
    after a library configured its own handlers (Ray does at import, Ray Data when it is imported)."""
    console = _console
    if console is None:
        return
    for name in QUIETED_LOGGERS:
        logger = logging.getLogger(name)
        if name in console.saved_handlers and console.file in logger.handlers:
            continue  # already quieted, and no library re-added its own handler since
        console.replace_handlers(logger, [console.file, _errors_to_console()])


def attach_ray() -> None:
    """After ray.init: Ray's driver loggers to the file, and the workers' output routed line by line: the
    platform's `[component]` lines and Ray's distributed progress bars to the console, the rest to the file (a
    traceback there is announced on the console with the file's path). A no-op with -v."""
    console = _console
    if console is None or console.ray_hook is not None:
        return
    quiet_libraries()
    try:  # Ray's per-line hook for worker output is internal API (pinned Ray 2.60); without it Ray prints as usual
        from ray._private.ray_logging import global_worker_stdstream_dispatcher
        from ray._private.worker import print_worker_logs
        from ray.experimental.tqdm_ray import RAY_TQDM_MAGIC
    except ImportError:
        return
    hooks = dict(getattr(global_worker_stdstream_dispatcher, "handlers", []))
    if "ray_print_logs" not in hooks:
        return  # ray.init(log_to_driver=False): nothing is printed to route
    log = get_logger("console")

    def route(data: dict[str, Any]) -> None:
        shown: list[str] = []
        hidden: list[str] = []
        for line in data.get("lines", []):
            (shown if RAY_TQDM_MAGIC in line or PLATFORM_LINE.match(line) else hidden).append(line)
        if shown:
            print_worker_logs({**data, "lines": shown}, sys.stdout, ignore_prefix=True)  # type: ignore[dict-item]
        if hidden:
            who = data.get("actor_name") or data.get("task_name") or "worker"
            prefix = f"({who} pid={data.get('pid')}) "
            for line in hidden:
                console.file.handle(logging.LogRecord("ray.workers", logging.INFO, "", 0, prefix + line, None, None))
            if any(line.startswith("Traceback (most recent call last)") for line in hidden):
                log.warning("%s printed a traceback: see %s", who, console.path)

    console.ray_hook = hooks["ray_print_logs"]
    global_worker_stdstream_dispatcher.remove_handler("ray_print_logs")
    global_worker_stdstream_dispatcher.add_handler("ray_print_logs", route)


class _LineWriter(io.TextIOBase):
    """A file for tqdm that turns each refresh into one log line (no carriage returns in a log)."""

    def __init__(self, log: LogFn) -> None:
        self.log = log

    def write(self, text: str) -> int:
        line = _ESCAPES.sub("", text).strip("\r\n ")
        if line:
            self.log(line)
        return len(text)

    def flush(self) -> None:
        pass


def _interactive() -> bool:
    return sys.stdout.isatty() and not verbose()


@contextmanager
def progress_bar(total: int | None, desc: str, unit: str = "it", log: LogFn | None = None) -> Iterator[tqdm]:
    """A tqdm bar for a long stage: live on a terminal (the platform's lines print above it), else a line every
    30 s and one at the end through `log` (default: the `desc` component's logger)."""
    if _interactive():
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm(loggers=[logging.getLogger(ROOT)]):
            bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stdout, dynamic_ncols=True, leave=True)
            try:
                yield bar
            finally:
                bar.close()
        return
    bar = tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=_LineWriter(log or get_logger(desc).info),
        mininterval=NON_TTY_INTERVAL_S,
        maxinterval=NON_TTY_INTERVAL_S,
        delay=NON_TTY_INTERVAL_S,  # a stage shorter than one interval prints only its final line
        position=0,  # bars running side by side each print their own lines, no cursor moves
        bar_format="{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%) in {elapsed}, {remaining} left, {rate_fmt}{postfix}",
    )
    try:
        yield bar
    finally:
        bar.close()
