"""The rehearsal's real parts on one machine: a Ray cluster of `ray start` processes (a head with no CPUs and
worker nodes, each in its own working directory), an S3 endpoint (moto server) and an MLflow tracking server
(SQLite backend, artifacts on that S3). Every process is started here, in its own process group, and ended
by that group: nothing else on the machine is touched."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout_s: float = 90.0) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout_s:.0f} s")


@dataclass
class Process:
    name: str
    proc: subprocess.Popen
    log: Path

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (a `ray start --block` node: its raylet and every worker on it)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):  # whatever of the group is still there (a raylet's workers)
            os.killpg(self.proc.pid, signal.SIGKILL)


@dataclass
class Services:
    work: Path
    env: dict[str, str] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)

    def start(self, name: str, args: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> Process:
        cwd.mkdir(parents=True, exist_ok=True)
        log = self.work / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                args,
                cwd=cwd,
                env={**self.env, **(extra_env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, ended as one
                preexec_fn=lambda: os.nice(19),
            )
        p = Process(name, proc, log)
        self.processes.append(p)
        return p

    def stop_all(self) -> None:
        for p in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                p.kill(signal.SIGTERM)


def base_env(work: Path, s3_port: int, mlflow_port: int) -> dict[str, str]:
    """The environment every node starts with (as infra/aws/cluster.yaml exports ~/clipsynth.env before
    `ray start`): jobs, Train workers and Serve replicas inherit it. Dummy keys for the local moto server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_", "MLFLOW_"))}
    env.update(
        {
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAY_AUTH_MODE": "disabled",  # loopback only; infra/ docs keep token authentication on clusters
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_DEDUP_LOGS": "0",
            # Ray's dashboard gets 60 s to start by default: too short on a loaded 2-core machine at nice 19.
            "RAY_DASHBOARD_STARTUP_TIMEOUT_S": "600",
            "HF_HUB_OFFLINE": "1",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
            "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
            "AWS_ACCESS_KEY_ID": "rehearsal",
            "AWS_SECRET_ACCESS_KEY": "rehearsal",
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
            "CLIPSYNTH_CACHE": str(work / "cache"),
        }
    )
    return env


@dataclass
class Cluster:
    """Ports of the head and the node processes by name."""

    gcs_port: int
    dashboard_port: int
    nodes: dict[str, Process]

    @property
    def gcs(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"


def marker_resource(node: str) -> str:
    """A custom resource (one unit) each node starts with, so the rehearsal can tell the nodes apart."""
    return f"rehearsal_{node.replace('-', '_')}"


def start_cluster(
    services: Services, workers: int, cpus_per_worker: int, object_store_mb: int, wait_s: float = 900
) -> Cluster:
    """`ray start --block` for a head with 0 CPUs and `workers` worker nodes, each in its own directory.

    Nodes start one after another, each once the previous one registered. Ray gives a raylet 30 s to register
    with the GCS; on a loaded machine that can pass, and `ray start` then exits: such a node is started again.
    """
    gcs, dash = free_port(), free_port()
    store = str(object_store_mb * 1024 * 1024)
    ray_bin = str(VENV_BIN / "ray")
    common = ["--block", "--num-gpus=0", f"--object-store-memory={store}", "--disable-usage-stats"]
    commands = {
        "head": [ray_bin, "start", "--head", f"--port={gcs}", "--num-cpus=0", "--include-dashboard=true",
                 "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", *common],
    }  # fmt: skip
    for i in range(1, workers + 1):
        commands[f"worker-{i}"] = [
            ray_bin,
            "start",
            f"--address=127.0.0.1:{gcs}",
            f"--num-cpus={cpus_per_worker}",
            *common,
        ]
    nodes: dict[str, Process] = {}
    for name, command in commands.items():
        # Nodes on one machine must not share the per-node ports that default to fixed numbers: the second
        # dashboard agent on 52365 fails to bind, and a head without its agent cannot take job submissions.
        ports = [
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
        ]
        # Each node its own Ray temp dir: nodes sharing one would share runtime_resources/, and a worker node's
        # runtime-env agent, unpacking the job's working dir there again, deletes the one the job's driver runs
        # in. (A short path: Ray's socket paths must stay under the OS limit.)
        ports.append(f"--temp-dir={tempfile.gettempdir()}/ray-{gcs}-{name}")
        command = [*command, *ports, f"--resources={json.dumps({marker_resource(name): 1})}"]
        for attempt in range(3):
            nodes[name] = services.start(f"ray-{name}-{attempt}", command, services.work / "nodes" / name)
            if name == "head":
                if _listening(dash, nodes[name].proc, wait_s) and _registered(
                    gcs, marker_resource(name), nodes[name].proc, wait_s
                ):
                    break
                nodes[name].kill()  # its dashboard missed Ray's start-up deadline: a fresh head
                continue
            if _registered(gcs, marker_resource(name), nodes[name].proc, wait_s):
                break
        else:
            raise RuntimeError(f"Ray node {name} did not start (see {nodes[name].log})")
    return Cluster(gcs, dash, nodes)


def _listening(port: int, proc: subprocess.Popen, wait_s: float) -> bool:
    try:
        wait_for_port(port, proc, "the Ray head's dashboard", wait_s)
        return True
    except RuntimeError:
        return False


def _registered(gcs: int, marker: str, proc: subprocess.Popen, wait_s: float) -> bool:
    """Whether the node with `marker` shows up alive in the GCS before its `ray start` process exits."""
    probe = (
        "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
        "print(any(n['Alive'] and n['Resources'].get(sys.argv[2]) for n in ray.nodes()))"
    )
    deadline = time.time() + wait_s
    while time.time() < deadline and proc.poll() is None:
        r = subprocess.run([sys.executable, "-c", probe, f"127.0.0.1:{gcs}", marker], capture_output=True,
                           text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"}, timeout=wait_s)  # fmt: skip
        if r.stdout.strip().endswith("True"):
            return True
        time.sleep(2)
    return False


def start_moto(services: Services) -> int:
    port = free_port()
    p = services.start("moto", [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], services.work)
    wait_for_port(port, p.proc, "moto_server", 600)
    return port


def start_mlflow(services: Services, port: int, artifacts: str) -> None:
    """`mlflow server`: SQLite backend on this machine, artifacts proxied to S3 (clients need no S3 rights)."""
    p = services.start(
        "mlflow",
        [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{services.work / 'mlflow' / 'mlflow.db'}",
         "--artifacts-destination", artifacts],
        services.work / "mlflow",
    )  # fmt: skip
    wait_for_port(port, p.proc, "mlflow server", 900)
