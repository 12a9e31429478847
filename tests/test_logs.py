"""The platform's logging: component loggers, the `[component] message` format, one handler per process."""

from __future__ import annotations

import io
import logging

from clipsynth_platform.runtime.logs import configure_logging, get_logger, progress


def test_component_lines_and_levels(monkeypatch):
    monkeypatch.delenv("CLIPSYNTH_LOG_LEVEL", raising=False)
    stream = io.StringIO()
    root = logging.getLogger("clipsynth")
    saved = list(root.handlers)
    root.handlers = []
    try:
        configure_logging(stream=stream)
        configure_logging(stream=stream)  # a second call adds no second handler
        get_logger("demo").info("corpus: %d videos", 12)
        progress("train.loop")("step 5")
        get_logger("serve").warning("slow request")
        get_logger("ingest").debug("hidden at INFO")
        assert stream.getvalue().splitlines() == [
            "[demo] corpus: 12 videos",
            "[train.loop] step 5",
            "[serve] warning: slow request",
        ]
        monkeypatch.setenv("CLIPSYNTH_LOG_LEVEL", "debug")
        configure_logging()
        get_logger("ingest").debug("shown at DEBUG")
        assert stream.getvalue().splitlines()[-1] == "[ingest] shown at DEBUG"
        assert len(root.handlers) == 1 and root.propagate is False
    finally:
        root.handlers = saved
        root.setLevel(logging.NOTSET)
        root.propagate = True


def test_default_handler_follows_sys_stdout(capsys):
    root = logging.getLogger("clipsynth")
    saved = list(root.handlers)
    root.handlers = []
    try:
        configure_logging("INFO")
        get_logger("table1").info("written")
        assert capsys.readouterr().out == "[table1] written\n"
    finally:
        root.handlers = saved
        root.setLevel(logging.NOTSET)
        root.propagate = True
