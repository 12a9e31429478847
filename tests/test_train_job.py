"""`ray job submit` of the diffusion job against a Ray cluster that the test starts: two data-parallel
workers, one of which crashes mid-run; the job resumes from the last checkpoint and registers its model.
Then the same command, submitted again with more steps, resumes from the last checkpoint in the same MLflow run.

The cluster gets its own temp dir (so no other process on the machine mistakes it for "the" local cluster)
and free ports; token authentication is switched off for this loopback-only cluster (RAY_AUTH_MODE), and
the test stops exactly the processes it started.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
import torch

from clipsynth_core import EMA, ConditionalUNet, Synthesizer, load_training_state, state_digest, unet_config
from clipsynth_platform.datasets.synthetic import write_synthetic_dataset
from clipsynth_platform.tracking.registry import ensure_experiment, resolve_bundle

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
LABELS = ("violin", "cello", "flute", "trumpet")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), to tell it from a later process with a reused id."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def descendants(root: int) -> dict[int, int | None]:
    """{pid: start time} of the processes below `root`, so that teardown stops only what this test started."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    found: dict[int, int | None] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found[child] = _start_time(child)
                todo.append(child)
    return found


class RayHead:
    """`ray start --head --block` in its own session; stop() ends it and every process it spawned."""

    def __init__(self, tmp: Path, env: dict) -> None:
        gcs, dash, agent_http, agent_grpc, runtime_env, metrics, client = free_ports(7)
        self.temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must stay short
        self.dashboard = f"http://127.0.0.1:{dash}"
        self.log = open(tmp / "ray-head.log", "w")  # noqa: SIM115 - closed in stop()
        cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--num-cpus", "8", "--disable-usage-stats"]
        cmd += ["--port", str(gcs), "--temp-dir", self.temp_dir, "--include-dashboard", "true"]
        cmd += ["--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash)]
        cmd += ["--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc)]
        cmd += ["--runtime-env-agent-port", str(runtime_env), "--metrics-export-port", str(metrics)]
        cmd += ["--ray-client-server-port", str(client), "--object-store-memory", "500000000"]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(1)
        raise TimeoutError(f"the Ray dashboard at {self.dashboard} did not come up; see {self.log.name}")

    def stop(self) -> None:
        procs = {**descendants(self.proc.pid), self.proc.pid: _start_time(self.proc.pid)}

        def alive() -> list[int]:
            return [p for p, started in procs.items() if started is not None and _start_time(p) == started]

        for sig, grace in ((signal.SIGTERM, 4), (signal.SIGKILL, 5)):
            for pid in alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.time() + grace
            while time.time() < deadline and alive():
                self.proc.poll()  # reap our direct child
                time.sleep(0.2)
        self.proc.wait(timeout=10)
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _rank_files(checkpoint: Path) -> list[dict]:
    return [json.loads((checkpoint / f"rank_{r}.json").read_text()) for r in (0, 1)]


def _history(client, run_id: str, key: str) -> list:
    """A metric's values in the order they were logged (a restarted attempt logs some steps again)."""
    return sorted(client.get_metric_history(run_id, key), key=lambda m: (m.timestamp, m.step))


def test_submitted_job_survives_a_crash_and_resumes_on_rerun(tmp_path, tiny_clip):
    data = tmp_path / "data"
    runs = tmp_path / "runs"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--data", str(data), "--model-size", "tiny", "--num-workers", "2", "--batch-size", "4", "--lr", "1e-3"]
    args += ["--checkpoint-every", "3", "--keep-checkpoints", "10", "--log-every", "4", "--sample-every", "8"]
    args += ["--diffusion-steps", "100", "--sample-steps", "3", "--bundle-sampling-steps", "10"]
    # streamed from Ray Data pass after pass (the path of datasets too large to cache in the workers)
    args += ["--min-examples-per-pass", "128", "--cache-in-worker", "off"]
    args += ["--storage-path", str(runs), "--run-name", "ddp"]
    args += ["--experiment", "test-diffusion", "--register-as", "test-clipsynth", "--max-failures", "2"]

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        {"PATH": f"{VENV_BIN}:{env.get('PATH', '')}", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    )
    head = RayHead(tmp_path, env)
    try:
        write_synthetic_dataset(str(data), tiny_clip, labels=LABELS, videos_per_label=1, chunks_per_video=2)
        mlflow.set_tracking_uri(tracking)
        ensure_experiment("test-diffusion")  # the tracking database, created while the cluster starts
        head.wait_ready()
        runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": tracking, "RAY_USAGE_STATS_ENABLED": "0"}}
        submit = [str(VENV_BIN / "ray"), "job", "submit", "--address", head.dashboard, "--working-dir", str(REPO)]
        submit += ["--runtime-env-json", json.dumps(runtime_env), "--", "python", "jobs/train_music.py", *args]
        # Rank 1 dies before step 5, after the checkpoint of step 3.
        first = subprocess.run(
            [*submit, "--max-steps", "8", "--fail-at-step", "5"], env=env, capture_output=True, text=True, timeout=600
        )
        assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
        assert "[fault drill] rank 1 exits at step 5" in first.stdout
        assert '[summary] {"run_name": "ddp"' in first.stdout
        # The same command again with more steps: it resumes from the last checkpoint, in the same MLflow run.
        again = subprocess.run([*submit, "--max-steps", "9"], env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
        assert "resuming at step 8 of 9" in again.stdout
    finally:
        head.stop()

    run_dir = runs / "ddp"
    assert (run_dir / "fault_drill_step_5.done").exists()
    assert sorted(p.name for p in run_dir.glob("checkpoint_0*")) == [
        "checkpoint_000000003",
        "checkpoint_000000006",
        "checkpoint_000000008",
        "checkpoint_000000009",
    ]
    run_id = json.loads((run_dir / "clipsynth_run.json").read_text())["mlflow_run_id"]

    # DDP replicas are bit-identical at every checkpoint, and the saved state is exactly the live state.
    digests = {}
    for step in (3, 6, 8, 9):
        ckpt = run_dir / f"checkpoint_{step:09d}"
        rank0, rank1 = _rank_files(ckpt)
        assert rank0["model_digest"] == rank1["model_digest"] and rank0["ema_digest"] == rank1["ema_digest"]
        model = ConditionalUNet(unet_config("tiny", cond_dim=64))
        ema = EMA(model, 0.9999)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        state = load_training_state(ckpt, model=model, ema=ema, optimizer=optimizer)
        assert state["step"] == step and state["mlflow_run_id"] == run_id
        assert state_digest(model) == rank0["model_digest"] and state_digest(ema.model) == rank0["ema_digest"]
        assert optimizer.state_dict()["state"][0]["step"].item() == step
        digests[step] = rank0
    # The restarted workers resumed from the step-3 checkpoint and restored it bit for bit; so did the re-run
    # from the step-8 checkpoint.
    for step, resumed_from in ((6, 3), (8, 3), (9, 8)):
        for rank_file in _rank_files(run_dir / f"checkpoint_{step:09d}"):
            assert rank_file["resumed_from_step"] == resumed_from
            assert rank_file["resumed_digest"] == digests[resumed_from]["model_digest"]

    # One MLflow run across the crash and the re-run: params, tags, a falling loss, samples, registered bundles.
    client = mlflow.tracking.MlflowClient(tracking)
    experiment = client.get_experiment_by_name("test-diffusion")
    runs_found = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs_found] == [run_id]
    run = runs_found[0]
    assert run.info.status == "FINISHED"
    params, tags = run.data.params, run.data.tags
    assert (params["unet.cond_dim"], params["diffusion.num_steps"], params["variant"], params["lr"]) == (
        "64",
        "100",
        "image",
        "0.001",
    )
    assert params["max_steps"] == "8" and tags["resumed_with.max_steps"] == "9"
    assert params["data.cache_in_worker"] == "False"  # --cache-in-worker off: the streamed path
    assert (tags["variant"], tags["clip_model"], tags["clip_weights"], tags["dataset"]) == (
        "image",
        "tiny",
        "none",
        str(data),
    )
    assert tags["sample_vocoder"] == "griffin-lim" and tags["git_commit"]
    mse = _history(client, run_id, "mse")
    # Step 4 once: the restart replays it from the checkpoint of step 3, and the first attempt's value stands.
    assert [m.step for m in mse] == [4, 8, 9]
    assert mse[1].value < 0.85 * mse[0].value, [m.value for m in mse]  # L_simple falls within 8 steps at lr 1e-3
    for key in ("loss", "vb", "grad_norm", "lr", "samples_per_s"):
        assert all(math.isfinite(m.value) for m in _history(client, run_id, key)), key
    names = sorted(a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run_id, "samples/step_00000008"))
    assert names == ["00_cello.wav", "01_flute.wav", "02_trumpet.wav", "03_violin.wav", "mels.png"]
    assert client.get_model_version("test-clipsynth", "1").run_id == run_id
    assert client.get_model_version("test-clipsynth", "2").run_id == run_id
    assert str(client.get_model_version_by_alias("test-clipsynth", "latest-train").version) == "2"  # the newest
    bundle = Synthesizer.load(resolve_bundle("models:/test-clipsynth/1", tmp_path / "dl"))
    assert state_digest(bundle.unet) == digests[8]["ema_digest"]  # the bundle carries the EMA weights
    assert (
        bundle.config.metadata["mlflow_run_id"] == run_id
        and bundle.config.clip.template == "a photo of playing {query}"
    )
    assert bundle.synthesize(["violin"], steps=2, seed=0).shape == (1, 66_560)
