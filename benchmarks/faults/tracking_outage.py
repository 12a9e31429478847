"""Benchmark: a training run whose MLflow server is killed for longer than MLflow's client waits (issue 28).

    .venv/bin/python benchmarks/faults/tracking_outage.py [--outage-s 300] [--before-s 120] [--after-s 120]

A real `mlflow server` (SQLite store, proxied artifacts) on a free loopback port; the diffusion job
(`jobs/train_music.py`, tiny U-Net, one Ray Train worker, a synthetic dataset) trains against it with MLflow's
default client settings (seven retries with back-off: a few minutes of patience). `--before-s` seconds after
the first progress line the server is killed (SIGKILL, its whole process group); `--outage-s` seconds later it
is started again on the same port and store; the run ends by its time budget `--after-s` seconds after that
(plus the server's start-up).

Measured, per log interval (by the time it was logged) before the kill, during the outage, and after the
server answered again (medians): the step loop's samples/s of wall time, its samples per CPU second of the
worker process (the run's `process_cpu_seconds`), the worker's CPU share of the wall time, and the share of
the loop's time spent inside tracking calls (`tracking_seconds`); the ratio during/before (the issue asks for
at least 0.8). On a machine shared with other jobs the wall-clock ratio moves with their load, the per-CPU-second
one does not: PASS uses the latter, both are reported with the load averages. Also: whether MLflow ends with
every logged step exactly once, and what the job said (the outbox's outage and recovery lines). Before this
change the same kill for 300 s failed the worker after the client's retries and training began again from
step 0 (issue 28). Prints a JSON object and a one-line summary;
writes benchmarks/results/tracking_outage_cpu.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import benchmark_parser, emit

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
STEP_LINE = re.compile(r"\[train\] step (\d+)/")
BATCH = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` in its own process group; `kill()` ends the group with SIGKILL, `start()` again."""

    def __init__(self, work: Path) -> None:
        self.work, self.port = work, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 900) -> float:
        args = [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        args += ["--backend-store-uri", f"sqlite:///{self.work / 'mlflow.db'}"]
        args += ["--artifacts-destination", str(self.work / "artifacts")]
        t0 = time.time()
        with open(self.work / "server.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        while time.time() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.proc.returncode}); see {self.work / 'server.log'}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                if r.status == 200:
                    return time.time()
            time.sleep(0.5)
        raise TimeoutError("mlflow server did not answer")

    def kill(self) -> float:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)
        return time.time()


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--outage-s", type=float, default=300.0)
    parser.add_argument("--before-s", type=float, default=120.0)
    parser.add_argument("--after-s", type=float, default=120.0)
    parser.add_argument("--warmup-s", type=float, default=30.0, help="training seconds left out of 'before'")
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from clipsynth_core import ClipConfig, ClipQueryEncoder
    from clipsynth_platform.datasets.synthetic import write_synthetic_dataset

    work = Path(tempfile.mkdtemp(prefix="clipsynth-outage-"))
    (work / "artifacts").mkdir()
    data = work / "data"
    write_synthetic_dataset(str(data), ClipQueryEncoder(ClipConfig(model_name="tiny", pretrained="none")))
    server = MlflowServer(work)
    t_server = time.time()
    server.start()
    server_start_s = time.time() - t_server

    budget = args.before_s + args.outage_s + args.after_s + server_start_s
    cmd = [sys.executable, "jobs/train_music.py", "--data", str(data), "--model-size", "tiny", "--num-workers", "1"]
    cmd += ["--batch-size", str(BATCH), "--max-steps", "1000000", "--train-seconds", str(round(budget))]
    cmd += ["--log-every", str(args.log_every), "--checkpoint-every", "500", "--sample-every", "1000"]
    cmd += ["--sample-steps", "3", "--diffusion-steps", "100", "--bundle-sampling-steps", "10"]
    cmd += ["--storage-path", str(work / "runs"), "--run-name", "outage", "--experiment", "outage"]
    cmd += ["--register-as", "outage", "--min-examples-per-pass", "256", "--tracking-uri", server.uri]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MLFLOW_HTTP"))}
    env.update({"PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"})
    events: dict[str, float] = {}
    lines: list[str] = []
    job = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    loads: dict[str, list[float]] = {"start": list(os.getloadavg())}

    def read() -> None:
        assert job.stdout is not None
        with open(work / "job.log", "w") as log:
            for line in job.stdout:
                log.write(line)
                log.flush()
                lines.append(line.rstrip())
                if "first_step" not in events and STEP_LINE.search(line):
                    events["first_step"] = time.time()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while "first_step" not in events:
        if job.poll() is not None:
            reader.join(timeout=30)
            server.kill()
            raise SystemExit(f"the job exited ({job.returncode}) before its first step:\n" + "\n".join(lines[-40:]))
        time.sleep(0.5)
    time.sleep(args.before_s)
    events["killed"] = server.kill()
    loads["kill"] = list(os.getloadavg())
    time.sleep(args.outage_s)
    events["restart_begun"] = time.time()
    events["answering"] = server.start()
    loads["answering"] = list(os.getloadavg())
    code = job.wait(timeout=budget + 1800)
    reader.join(timeout=30)
    events["job_ended"] = time.time()
    loads["end"] = list(os.getloadavg())

    import mlflow

    client = mlflow.MlflowClient(server.uri)
    run_id = json.loads((work / "runs" / "outage" / "clipsynth_run.json").read_text())["mlflow_run_id"]
    rates = client.get_metric_history(run_id, "samples_per_s")
    cpu = {m.step: m.value for m in client.get_metric_history(run_id, "process_cpu_seconds")}
    in_tracker = {m.step: m.value for m in client.get_metric_history(run_id, "tracking_seconds")}
    losses = client.get_metric_history(run_id, "loss")
    steps = [m.step for m in losses]
    final = max(steps) if steps else 0
    expected = sorted(set(range(args.log_every, final + 1, args.log_every)) | {final})
    samples_per_interval = args.log_every * BATCH

    def segment(lo: float, hi: float) -> dict:
        """Medians over the log intervals logged in [lo, hi): samples/s of wall time and of the worker's CPU
        time, the worker's CPU share of the wall time, and the share of it spent in the tracker."""
        picked = [m for m in rates if lo <= m.timestamp / 1000 < hi and m.step in cpu and m.step % args.log_every == 0]
        wall = {m.step: samples_per_interval / m.value for m in picked if m.value > 0}
        return {
            "intervals": len(picked),
            "samples_per_s": median([m.value for m in picked]),
            "samples_per_cpu_s": median([samples_per_interval / cpu[s] for s in wall if cpu[s] > 0]),
            "cpu_share": median([cpu[s] / wall[s] for s in wall]),
            "in_tracker_share": median([in_tracker.get(s, 0.0) / wall[s] for s in wall]),
        }

    before = segment(events["first_step"] + args.warmup_s, events["killed"])
    during = segment(events["killed"], events["answering"])
    after = segment(events["answering"], events["job_ended"])
    ratio = (during["samples_per_s"] or 0) / (before["samples_per_s"] or 1)
    cpu_ratio = (during["samples_per_cpu_s"] or 0) / (before["samples_per_cpu_s"] or 1)
    said = [x for x in lines if "[tracking]" in x or "registering the bundle" in x or "synthesizer bundle" in x]
    result = {
        "outage": {
            "killed_after_first_step_s": round(events["killed"] - events["first_step"], 1),
            "server_down_s": round(events["answering"] - events["killed"], 1),
            "of_which_restart_s": round(events["answering"] - events["restart_begun"], 1),
            "client_settings": "MLflow defaults (MLFLOW_HTTP_REQUEST_MAX_RETRIES=7, BACKOFF_FACTOR=2, TIMEOUT=120)",
        },
        "job": {"exit_code": code, "seconds": round(events["job_ended"] - events["first_step"], 1)},
        "throughput": {
            "before": before,
            "during_outage": during,
            "after": after,
            "during_over_before_wall": round(ratio, 3),
            "during_over_before_per_cpu_second": round(cpu_ratio, 3),
            "within_20_percent_wall": ratio >= 0.8,
            "within_20_percent_per_cpu_second": cpu_ratio >= 0.8,
            "note": "samples/s of wall time moves with the machine's load; per CPU second of the worker it does "
            "not; in_tracker_share is the step loop's time inside tracking calls",
        },
        "mlflow": {
            "final_step": final,
            "loss_steps_logged": len(steps),
            "loss_steps_expected": len(expected),
            "every_step_once": sorted(steps) == expected,
            "duplicates": len(steps) - len(set(steps)),
            "run_status": client.get_run(run_id).info.status,
            "registered_versions": [v.version for v in client.search_model_versions("name='outage'")],
        },
        "job_said": said[:40],
        "load_average_1_5_15_min": loads,
        "machine_note": "2-core machine shared with other helpers' builds and tests",
        "work_dir": str(work),
        "command": "make tracking-outage",
    }
    ok = code == 0 and result["mlflow"]["every_step_once"] and cpu_ratio >= 0.8
    emit(
        result,
        "tracking_outage_cpu",
        f"server down {result['outage']['server_down_s']:.0f} s; step loop during/before {ratio:.2f} of wall-clock "
        f"samples/s ({during['samples_per_s']} vs {before['samples_per_s']}), {cpu_ratio:.2f} per CPU second, "
        f"{during['in_tracker_share']} of its time in tracking; MLflow every step once: "
        f"{result['mlflow']['every_step_once']} ({len(steps)} steps); job exit {code}; {'PASS' if ok else 'FAIL'}",
        args.out,
    )
    with contextlib.suppress(Exception):
        server.kill()


if __name__ == "__main__":
    main()
