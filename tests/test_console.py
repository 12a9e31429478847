"""The console a person reads: the platform's lines on stdout, library chatter and warnings in the log file,
library errors still on the console, -v showing everything, progress bars as lines where there is no terminal,
and the Ray workers' output routed line by line."""

from __future__ import annotations

import logging
import time
import warnings

import pytest

from clipsynth_platform.runtime import console
from clipsynth_platform.runtime.logs import get_logger
from clipsynth_platform.runtime.options import build_parser


@pytest.fixture
def quiet_console(tmp_path, monkeypatch):
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    monkeypatch.delenv("CLIPSYNTH_LOG_LEVEL", raising=False)
    path = console.open_console("unit", tmp_path)
    yield path
    console.close_console()


def test_platform_lines_on_stdout_library_chatter_in_the_file(quiet_console, capsys):
    path = quiet_console
    assert path is not None and path.parent.exists() and path.name.startswith("unit-")
    get_logger("demo").info("stage one done")
    get_logger("demo").debug("the whole config")
    logging.getLogger("mlflow.store.db.utils").info("Creating initial MLflow database tables...")
    logging.getLogger("ray.data").info("Execution plan of Dataset ...")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("exclude_resources is deprecated", DeprecationWarning, stacklevel=1)
    logging.getLogger("ray").error("a worker died")
    out, err = capsys.readouterr()
    assert out.splitlines() == ["[demo] stage one done"]
    assert err.splitlines() == ["ray: ERROR: a worker died"]
    text = path.read_text()
    for line in ("stage one done", "the whole config", "Creating initial MLflow", "Execution plan", "a worker died"):
        assert line in text, line
    assert "exclude_resources is deprecated" in text


def test_close_console_restores_every_logger(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    mlflow_logger = logging.getLogger("mlflow")
    before = (list(mlflow_logger.handlers), mlflow_logger.propagate, logging.getLogger("clipsynth").level)
    path = console.open_console("unit", tmp_path)
    assert capsys.readouterr().out == f"[unit] full log: {path}\n"
    assert console.log_path() == path
    console.close_console()
    assert console.log_path() is None
    assert (list(mlflow_logger.handlers), mlflow_logger.propagate, logging.getLogger("clipsynth").level) == before
    logging.getLogger("mlflow").warning("after close")
    assert "after close" not in next(tmp_path.iterdir()).read_text()


def test_verbose_writes_no_file_and_filters_nothing(tmp_path, monkeypatch):
    # setenv, not delenv: monkeypatch then removes the variable that -v sets below when the test ends, so later
    # tests (and the jobs they start, such as the demo's) do not run verbose
    monkeypatch.setenv(console.VERBOSE_ENV, "0")
    build_parser(type("Empty", (), {"__dataclass_fields__": {}}), None).parse_args(["-v"])
    assert console.verbose()
    assert console.open_console("unit", tmp_path) is None
    assert list(tmp_path.iterdir()) == []
    console.set_verbose(False)
    assert not console.verbose()


def test_progress_bar_without_a_terminal_logs_counts_and_time_left(monkeypatch):
    lines: list[str] = []
    monkeypatch.setattr(console, "NON_TTY_INTERVAL_S", 0.0)
    with console.progress_bar(4, "corpus", "videos", lines.append) as bar:
        for _ in range(4):
            time.sleep(0.01)
            bar.update(1)
        bar.set_postfix(loss="0.500", refresh=False)
    assert lines[0].startswith("corpus: 0/4 videos (0%)")
    assert lines[-1].startswith("corpus: 4/4 videos (100%)") and lines[-1].endswith("loss=0.500")
    assert all("\r" not in line for line in lines)
    assert " left, " in lines[-1] and "videos/s" in lines[-1]


@pytest.mark.ray
def test_worker_output_routed_line_by_line(ray_cluster, quiet_console, capsys):
    import ray

    console.attach_ray()

    @ray.remote
    def chatty() -> int:
        print("[train] step 10/100 loss 0.5")
        print("[fault drill] rank 1 exits at step 5")  # a component named in words is the platform's too
        print("Moving model to device: cpu")
        return 1

    assert ray.get(chatty.remote()) == 1
    deadline = time.time() + 20
    out = ""
    while time.time() < deadline and "step 10/100" not in out:
        time.sleep(0.5)
        out += capsys.readouterr().out
    assert "[train] step 10/100 loss 0.5" in out.splitlines()  # without Ray's "(chatty pid=...)" prefix
    assert "[fault drill] rank 1 exits at step 5" in out.splitlines()
    assert "Moving model to device" not in out
    deadline = time.time() + 10
    while time.time() < deadline and "Moving model to device" not in quiet_console.read_text():
        time.sleep(0.5)
    assert "(chatty pid=" in quiet_console.read_text() and "Moving model to device: cpu" in quiet_console.read_text()


def test_mlflow_registration_notes_go_to_the_log_file(quiet_console, tmp_path, monkeypatch, capfd):
    """MLflow prints "Registered model ... already exists" / "Created version" and its artifact progress bars to
    stderr itself, and warns about the input example: none of it reaches the console, the notes reach the file."""
    import json

    import mlflow

    from clipsynth_platform.tracking.registry import log_bundle_model, resolve_bundle

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "bundle.json").write_text(json.dumps({"format": "test"}))
    mlflow.set_experiment("quiet")
    capfd.readouterr()
    for _ in range(2):  # the second registration is the one MLflow notes as "already exists"
        with mlflow.start_run():
            info = log_bundle_model(bundle, registered_name="quiet-synth")
    resolve_bundle(f"models:/quiet-synth/{info.registered_model_version}", tmp_path / "dl")
    out, err = capfd.readouterr()
    assert "Registered model" not in err and "Downloading artifacts" not in err and "input example" not in err
    assert "Registered model" not in out and "Downloading artifacts" not in out
    text = quiet_console.read_text()
    assert "Registered model 'quiet-synth' already exists" in text and "Created version '2'" in text
