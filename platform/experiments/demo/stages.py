"""Resumable stages (the demo's and Table 1's): a finished stage whose settings are unchanged is not run again;
and the local MLflow store both track into."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from clipsynth_platform.runtime.logs import LogFn, progress


class Stages:
    """`stages/<name>.json` markers: a finished stage with the same settings is not run again."""

    def __init__(self, root: Path, log: LogFn | None = None) -> None:
        self.dir = root / "stages"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = log or progress("demo")

    def run(self, name: str, settings: dict, fn: Callable[[], dict]) -> dict:
        key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
        path = self.dir / f"{name}.json"
        if path.exists():
            done = json.loads(path.read_text())
            if done.get("key") == key:
                self.log(f"{name}: reusing the finished stage ({path})")
                return done["result"]
        t0 = time.perf_counter()
        self.log(f"{name}: running")
        result = fn()
        seconds = time.perf_counter() - t0
        path.write_text(
            json.dumps({"key": key, "settings": settings, "seconds": seconds, "result": result}, indent=2, default=str)
        )
        self.log(f"{name}: done in {seconds:.0f} s")
        return result


def use_local_tracking(root: Path) -> str:
    """$MLFLOW_TRACKING_URI, else a SQLite file under `root`; set for this process and the workers it starts."""
    import mlflow

    tracking = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = tracking
    mlflow.set_tracking_uri(tracking)
    return tracking
