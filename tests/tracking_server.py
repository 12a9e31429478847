"""An MLflow tracking server for tests, in its own process so that a test can kill it (SIGKILL) and start it
again on the same port with the same store: MLflow's Flask app (`mlflow.server.app`, the REST API and proxied
artifacts) under werkzeug, which starts in seconds where `mlflow server` (FastAPI, job runner) takes a minute
on a loaded 2-core machine. benchmarks/faults/tracking_outage.py kills a real `mlflow server` instead.

    python tests/tracking_server.py --port PORT --store sqlite:///DB --artifacts DIR
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TrackingServer:
    """The server process: `start()`, `kill()` (SIGKILL, as a crash), `start()` again on the same port."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.store = f"sqlite:///{work / 'mlflow.db'}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout_s: float = 300) -> None:
        args = [sys.executable, __file__, "--port", str(self.port), "--store", self.store]
        args += ["--artifacts", str(self.work / "artifacts")]
        self.starts += 1
        log = open(self.work / f"server-{self.starts}.log", "wb")  # noqa: SIM115 - the child holds it
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the tracking server exited ({self.proc.returncode}); see {log.name}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                if r.status == 200:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"the tracking server did not answer within {timeout_s:.0f} s; see {log.name}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def serve(port: int, store: str, artifacts: str) -> None:
    # What `mlflow server` hands its app through the environment, set before the app is imported.
    os.environ["_MLFLOW_SERVER_FILE_STORE"] = store
    os.environ["_MLFLOW_SERVER_REGISTRY_STORE"] = store
    os.environ["_MLFLOW_SERVER_SERVE_ARTIFACTS"] = "true"
    os.environ["_MLFLOW_SERVER_ARTIFACT_DESTINATION"] = artifacts
    os.environ["_MLFLOW_SERVER_ARTIFACT_ROOT"] = "mlflow-artifacts:/"
    from mlflow.server import app
    from werkzeug.serving import make_server

    make_server("127.0.0.1", port, app, threaded=True).serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--artifacts", required=True)
    a = parser.parse_args()
    Path(a.artifacts).mkdir(parents=True, exist_ok=True)
    serve(a.port, a.store, a.artifacts)
