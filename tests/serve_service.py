"""The Serve app for the service tests (test_serve_app, test_serve_fuzz, test_serve_auth), started once per test
session on the session's Ray (a deployment takes most of a minute here): a tiny random bundle registered in a
temporary MLflow registry (SQLite) and served by its models:/ URI. tests/conftest.py makes these fixtures
visible to every test module.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path

import httpx
import pytest

from clipsynth_core import Synthesizer, SynthesizerConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the `serve` package lives at the repo root

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Small CPU reservations: the session cluster is shared with other tests on a 2-core machine.
SMALL_REPLICAS = {f"{part}.num_cpus": "0.25" for part in ("encoder", "sampler", "vocoder", "ingress")}
# The app's settings, what the tests rely on.
SERVICE_ARGS = {
    "default_steps": "2",
    # Beyond this many steps the service refuses (422), below the model's 100: it bounds the fuzz's runs.
    "max_steps": "16",
    # A long batching window so that concurrent test requests meet in one batch on a busy machine.
    "sampler_batch_wait_s": "0.3",
    "sampler_max_batch_size": "4",
    "sampler.max_ongoing_requests": "4",
    # Serve counts a request as queued until a replica takes it, so a simultaneous burst of n requests
    # needs a queue of n even when the replica has room: 5 covers the concurrency test's burst.
    "sampler.max_queued_requests": "5",
    "retry_after_s": "2",
    **SMALL_REPLICAS,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_tracking(uri: str):
    """Point MLflow (its global and MLFLOW_TRACKING_URI, which it sets too) at `uri`, then back."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # None unsets both


@pytest.fixture(scope="session")
def served_bundle(tmp_path_factory) -> Path:
    synth = Synthesizer.untrained(SynthesizerConfig.tiny())
    return synth.save(tmp_path_factory.mktemp("serve_app") / "bundle")


@pytest.fixture(scope="session")
def serve_http(ray_cluster):
    """Serve on a free port for the session; shut down at its end."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(scope="session")
def registered_model(served_bundle, tmp_path_factory) -> tuple[str, str]:
    """The tiny bundle registered as version 1 of a model in a temporary SQLite MLflow."""
    import mlflow

    from clipsynth_platform.tracking.registry import ensure_experiment, log_bundle_model

    root = tmp_path_factory.mktemp("mlflow")
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    with mlflow_tracking(tracking), mlflow.start_run(experiment_id=ensure_experiment("serve", root / "artifacts")):
        info = log_bundle_model(served_bundle, registered_name="clipsynth-serve-test")
    assert int(info.registered_model_version) == 1
    return tracking, "models:/clipsynth-serve-test/1"


@pytest.fixture(scope="session")
def service(serve_http, registered_model) -> str:
    """The app "clipsynth" at /, loaded from the MLflow registry, with a small sampler queue (for the overload
    test) and no access token."""
    from ray import serve

    from serve import app_builder

    tracking, model_uri = registered_model
    args = {"model_uri": model_uri, "mlflow_tracking_uri": tracking, **SERVICE_ARGS}
    serve.run(app_builder(args), name="clipsynth", route_prefix="/", blocking=False)
    return serve_http


@pytest.fixture(scope="session")
def client(service):
    with httpx.Client(base_url=service, timeout=120) as c:
        yield c


@contextlib.contextmanager
def chromium_page(url: str, requested: list[str] | None = None):
    """A headless Chromium page opened at `url`, closed afterwards; the URL of every request it makes is appended
    to `requested` when given."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            if requested is not None:
                page.on("request", lambda request: requested.append(request.url))
            page.goto(url)
            yield page
        finally:
            browser.close()
