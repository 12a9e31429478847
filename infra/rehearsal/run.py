"""A multi-node rehearsal on one machine: the users' commands, as the README writes them, on real parts.

    make rehearsal                        # the whole one (about 10 minutes on 2 cores); writes
                                          # benchmarks/results/rehearsal.json
    python infra/rehearsal/run.py --slice # the CI slice: cluster, S3, MLflow, the code-origin job, a refusal

Parts (services.py): a Ray cluster of `ray start` processes (a head with 0 CPUs and two worker nodes, each in
its own working directory), a moto S3 server holding the corpus, shards, checkpoints and MLflow's artifacts,
and an MLflow tracking server. Steps:
  1. `ray job submit --working-dir . -- python infra/rehearsal/probe_origin.py`: both packages load from the
     uploaded working dir, on the driver and on every worker node;
  2. a training submit with a driver-local --storage-path is refused (nothing may live on the driver only);
  3. `ray job submit ... jobs/preprocess.py --input s3://... --output s3://...` (CLIP stage on CPU actors);
  4. `ray job submit ... jobs/train_vggsound.py --num-workers 2 --storage-path s3://...`; once a checkpoint
     is committed and training has gone past it, one worker node is killed (its whole process group): the
     run resumes on the remaining node from its last checkpoint, in the same MLflow run, every step once;
  5. `ray job submit ... jobs/evaluate.py --model models:/NAME@latest-train --promote-alias champion`;
  6. `serve run` of serve/serve_config.yaml (two sampler replicas) serving models:/NAME@champion; one request,
     then a bounded burst of concurrent requests during which one sampler replica is killed; the count of
     every outcome is recorded, and the service answers again by itself.
Tiny budgets throughout (tiny U-Net and random tiny CLIP, a few videos, a few dozen steps).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from services import (
    Services,
    base_env,
    free_port,
    marker_resource,
    start_cluster,
    start_mlflow,
    start_moto,
)

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "rehearsal"
MODEL = "clipsynth-rehearsal"
RUN_NAME = "rehearsal-image"
TRAIN_STEPS = 30
CHECKPOINT_EVERY = 10
KILL_AFTER_STEP = 15  # a checkpoint at 10 is committed, steps 11-15 will be replayed after the kill
BURST_REQUESTS = 16
BURST_CONCURRENCY = 4


class RehearsalError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"[rehearsal {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Rehearsal:
    def __init__(self, work: Path, slice_only: bool) -> None:
        self.work = work
        self.slice_only = slice_only
        self.summary: dict = {"slice": slice_only, "jobs": {}}
        self.t0 = time.perf_counter()

    # ------------------------------------------------------------------------------------------ parts
    def up(self) -> None:
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        mlflow_port = free_port()
        self.services = Services(self.work)
        self.services.env = base_env(self.work, 0, mlflow_port)
        s3_port = start_moto(self.services)
        self.services.env = base_env(self.work, s3_port, mlflow_port)
        import s3fs

        env = self.services.env  # moto's throwaway credentials, the same the nodes get
        credentials = {"key": env["AWS_ACCESS_KEY_ID"], "secret": env["AWS_SECRET_ACCESS_KEY"]}
        self.s3 = s3fs.S3FileSystem(client_kwargs={"endpoint_url": f"http://127.0.0.1:{s3_port}"}, **credentials)
        self.s3.mkdir(BUCKET)
        start_mlflow(self.services, mlflow_port, f"s3://{BUCKET}/mlartifacts")
        self.cluster = start_cluster(self.services, workers=2, cpus_per_worker=4, object_store_mb=300)
        import ray

        ray.init(address=self.cluster.gcs, namespace="rehearsal", log_to_driver=False)
        self.node_ids = self._node_ids()
        self.summary["nodes"] = [
            {"name": name, "node_id": nid, "CPU": cpus} for name, (nid, cpus) in self.node_ids.items()
        ]
        self.summary["services"] = {
            "s3": f"http://127.0.0.1:{s3_port}",
            "mlflow": self.services.env["MLFLOW_TRACKING_URI"],
        }
        log(f"cluster up: {self.summary['nodes']}")

    def _node_ids(self) -> dict[str, tuple[str, float]]:
        """Node name -> (Ray node id, CPUs), by the marker resource each node was started with."""
        import ray

        out = {}
        for name in self.cluster.nodes:  # head, worker-1, worker-2
            for n in ray.nodes():
                if n["Alive"] and n["Resources"].get(marker_resource(name)):
                    out[name] = (n["NodeID"], float(n["Resources"].get("CPU", 0)))
        return out

    def down(self) -> None:
        import ray

        ray.shutdown()
        if hasattr(self, "services"):
            self.services.stop_all()

    # --------------------------------------------------------------------------------------- jobs
    def submit(self, key: str, entrypoint: list[str], wait: bool = True, timeout_s: float = 900) -> dict:
        """`ray job submit --working-dir . -- ENTRYPOINT`, run from the repository root as the README says."""
        job_id = f"rehearsal-{key}-{int(time.time())}"
        cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", self.cluster.dashboard,
               "--submission-id", job_id, "--working-dir", ".", "--no-wait", "--", *entrypoint]  # fmt: skip
        log(f"submit {key}: {' '.join(entrypoint)}")
        for _ in range(20):  # a head's job agent can still be starting (seen on a loaded machine)
            r = subprocess.run(cmd, cwd=ROOT, env=self.services.env, capture_output=True, text=True, timeout=900)
            if r.returncode == 0 or "No available agent to submit job" not in r.stdout + r.stderr:
                break
            time.sleep(10)
        if r.returncode != 0:
            raise RehearsalError(f"ray job submit {key} failed: {r.stdout[-2000:]} {r.stderr[-2000:]}")
        record = {"job_id": job_id, "entrypoint": " ".join(entrypoint)}
        self.summary["jobs"][key] = record
        if wait:
            self.wait(key, timeout_s)
        return record

    def client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.cluster.dashboard)

    def wait(self, key: str, timeout_s: float) -> str:
        from ray.job_submission import JobStatus

        record = self.summary["jobs"][key]
        deadline = time.time() + timeout_s
        while True:
            status = self.client().get_job_status(record["job_id"])
            if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                break
            if time.time() > deadline:
                self.client().stop_job(record["job_id"])
                raise RehearsalError(f"job {key} did not finish within {timeout_s:.0f} s")
            time.sleep(2)
        logs = self.client().get_job_logs(record["job_id"])
        (self.work / "logs" / f"job-{key}.log").write_text(logs)
        record["status"] = str(status.value)
        record["logs"] = logs
        log(f"job {key} {record['job_id']}: {status.value}")
        return str(status.value)

    def require_success(self, key: str) -> str:
        record = self.summary["jobs"][key]
        if record.get("status") != "SUCCEEDED":
            raise RehearsalError(f"job {key} ended {record.get('status')}:\n{record['logs'][-4000:]}")
        return record["logs"]

    # -------------------------------------------------------------------------------------- steps
    def code_origin(self) -> None:
        self.submit("probe", ["python", "infra/rehearsal/probe_origin.py"], timeout_s=1200)
        logs = self.require_success("probe")
        origin = json.loads(next(line for line in logs.splitlines() if line.startswith("ORIGIN "))[7:])
        places = [origin["driver"], *origin["tasks"]]
        workers = {self.node_ids[n][0] for n in self.node_ids if n != "head"}
        ok = all(p["consistent"] and p["platform_root"] == p["cwd"] for p in places)
        ok &= all(str(ROOT) not in p["platform_root"] for p in places)
        ok &= {t["node"] for t in origin["tasks"]} == workers
        self.summary["code_origin"] = {
            "driver_platform_root": origin["driver"]["platform_root"],
            "task_nodes": sorted({t["node"] for t in origin["tasks"]}),
            "every_place_runs_the_uploaded_code": ok,
        }
        if not ok:
            raise RehearsalError(f"mixed or installed code inside the job: {origin}")

    def refuses_driver_paths(self) -> None:
        """A job that names a path on the driver's machine is refused before it writes anything."""
        self.s3.pipe_file(f"{BUCKET}/probe/a.mp4", b"listed, never decoded")
        local = self.work / "nodes" / "head" / "shards"
        self.submit(
            "refused",
            ["python", "jobs/preprocess.py", "--input", f"s3://{BUCKET}/probe", "--output", str(local),
             "--clip-model", "tiny", "--clip-pretrained", "none"],
            timeout_s=1200,
        )  # fmt: skip
        record = self.summary["jobs"]["refused"]
        refused = record["status"] == "FAILED" and "exist only on the driver's machine" in record["logs"]
        self.summary["driver_local_path_refused"] = refused and not local.exists()
        if not self.summary["driver_local_path_refused"]:
            raise RehearsalError(f"a driver-local --output was not refused:\n{record['logs'][-3000:]}")

    def corpus(self) -> None:
        corpus = self.work / "corpus"
        r = subprocess.run(
            [sys.executable, "jobs/build_corpus.py", "--out", str(corpus), "--classes", "violin", "cello",
             "--videos-per-class", "3", "--min-seconds", "10.5", "--max-seconds", "12", "--workers", "2"],
            cwd=ROOT, env=self.services.env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if r.returncode != 0:
            raise RehearsalError(f"build_corpus failed: {r.stderr[-2000:]}")
        self.s3.put(str(corpus) + "/", f"{BUCKET}/corpus/", recursive=True)
        videos = [p for p in self.s3.find(f"{BUCKET}/corpus") if p.endswith(".mp4")]
        self.summary["corpus"] = {"videos": len(videos), "uri": f"s3://{BUCKET}/corpus"}

    def preprocess(self) -> None:
        self.submit(
            "preprocess",
            ["python", "jobs/preprocess.py", "--input", f"s3://{BUCKET}/corpus", "--output", f"s3://{BUCKET}/shards",
             "--labels", f"s3://{BUCKET}/corpus/corpus_index.csv", "--clip-model", "tiny", "--clip-pretrained",
             "none", "--num-gpus", "0", "--shard-rows", "2", "--clip-batch-size", "2"],
            timeout_s=1800,
        )  # fmt: skip
        self.require_success("preprocess")
        summary = json.loads(self.s3.cat_file(f"{BUCKET}/shards/_summary.json"))
        accounted = summary["videos_ok"] + summary["videos_failed"] == summary["videos_in"]
        self.summary["ingest"] = {
            k: summary[k] for k in ("videos_in", "videos_ok", "videos_failed", "videos_crashed", "chunks_written")
        } | {"every_input_accounted": accounted, "commits": summary["runs"][-1]["commits"]}
        if not accounted or summary["videos_ok"] == 0:
            raise RehearsalError(f"ingestion: {self.summary['ingest']}")

    def train(self) -> None:
        self.submit(
            "train",
            ["python", "jobs/train_vggsound.py", "--data", f"s3://{BUCKET}/shards", "--variant", "image",
             "--num-workers", "2", "--cpus-per-worker", "1", "--placement-strategy", "SPREAD",
             "--storage-path", f"s3://{BUCKET}/checkpoints",
             "--experiment", "rehearsal", "--run-name", RUN_NAME, "--model-size", "tiny", "--batch-size", "4",
             "--max-steps", str(TRAIN_STEPS), "--checkpoint-every", str(CHECKPOINT_EVERY), "--log-every", "1",
             "--sample-every", "0", "--diffusion-steps", "100", "--bundle-sampling-steps", "4",
             "--min-examples-per-pass", "64", "--register-as", MODEL, "--serving-vocoder", "griffin-lim",
             "--max-failures", "3"],
            wait=False,
        )  # fmt: skip
        job_id = self.summary["jobs"]["train"]["job_id"]
        deadline = time.time() + 1800
        checkpoint = f"{BUCKET}/checkpoints/{RUN_NAME}/checkpoint_{CHECKPOINT_EVERY:09d}"
        while True:  # kill a worker node once a checkpoint is committed and training went past it
            logs = self.client().get_job_logs(job_id)
            steps = [int(s) for s in re.findall(r"\[train\] step (\d+)/", logs)]
            self.s3.invalidate_cache()
            if steps and max(steps) >= KILL_AFTER_STEP and self.s3.exists(checkpoint):
                break
            if time.time() > deadline or self.client().get_job_status(job_id).is_terminal():
                raise RehearsalError(f"training never reached step {KILL_AFTER_STEP}:\n{logs[-3000:]}")
            time.sleep(1)
        victim = "worker-2"
        log(f"training at step {max(steps)}: killing node {victim} ({self.node_ids[victim][0]})")
        self.cluster.nodes[victim].kill()
        self.summary["killed_node"] = {"name": victim, "node_id": self.node_ids[victim][0], "at_step": max(steps)}
        self.wait("train", 1800)
        logs = self.require_success("train")
        resumed = [int(s) for s in re.findall(r"resumed from the checkpoint at step (\d+)", logs)]
        result = json.loads(logs.split("[summary] ", 1)[1].splitlines()[0])
        self.summary["training"] = {
            "resumed_from_step": max(resumed) if resumed else None,
            "final_step": result["final_step"],
            "mlflow_run_id": result["mlflow_run_id"],
            "registered_alias": result["record"].get("registered_alias"),
            "registered_version": result["record"].get("registered_version"),
        }
        self._check_mlflow_run(result["mlflow_run_id"])
        if not resumed:
            raise RehearsalError("training did not resume from a checkpoint after the node was killed")

    def _check_mlflow_run(self, run_id: str) -> None:
        from mlflow import MlflowClient

        client = MlflowClient(self.services.env["MLFLOW_TRACKING_URI"])
        steps = sorted(m.step for m in client.get_metric_history(run_id, "loss"))
        runs = client.search_runs([client.get_experiment_by_name("rehearsal").experiment_id])
        duplicates = [s for s, n in Counter(steps).items() if n > 1]
        self.summary["training"] |= {
            "mlflow_runs_in_experiment": len(runs),
            "loss_steps_logged": len(steps),
            "duplicate_steps": duplicates,
            "steps_continuous": steps == list(range(1, TRAIN_STEPS + 1)),
        }
        if duplicates or len(runs) != 1 or steps != list(range(1, TRAIN_STEPS + 1)):
            raise RehearsalError(f"MLflow run: {self.summary['training']}")

    def evaluate(self) -> None:
        self.submit(
            "evaluate",
            ["python", "jobs/evaluate.py", "--model", f"models:/{MODEL}@latest-train", "--data",
             f"s3://{BUCKET}/shards", "--num-samples", "4", "--steps", "2", "--batch-size", "4", "--num-workers",
             "1", "--fad-backbone", "tiny-random", "--fid-backbone", "none", "--mel-classifier", "tiny-random",
             "--stats-cache", "none", "--max-reference-clips", "4", "--num-audio-artifacts", "0",
             "--promote-alias", "champion"],
            timeout_s=1800,
        )  # fmt: skip
        logs = self.require_success("evaluate")
        self.summary["evaluation"] = {"promoted": f"models:/{MODEL}@champion" in logs}
        if not self.summary["evaluation"]["promoted"]:
            raise RehearsalError(f"evaluation did not promote @champion:\n{logs[-3000:]}")

    def serve(self) -> None:
        import requests

        config = yaml.safe_load((ROOT / "serve" / "serve_config.yaml").read_text())
        http_port = free_port()
        config["http_options"] = {"host": "127.0.0.1", "port": http_port}
        config["grpc_options"]["port"] = free_port()
        app = config["applications"][0]
        app["runtime_env"] = {"env_vars": {"CLIPSYNTH_MODEL_URI": f"models:/{MODEL}@champion"}}
        for d in app["deployments"]:
            if d["name"] == "DiffusionSampler":
                d["num_replicas"] = 2
        path = self.work / "serve_config.yaml"
        path.write_text(yaml.safe_dump(config))
        r = subprocess.run(
            [str(Path(sys.executable).parent / "serve"), "run", str(path), "--address", self.cluster.gcs,
             "--working-dir", ".", "--non-blocking"],
            cwd=ROOT, env=self.services.env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if r.returncode != 0:
            raise RehearsalError(f"serve run failed: {r.stdout[-2000:]} {r.stderr[-2000:]}")
        url = f"http://127.0.0.1:{http_port}"
        deadline = time.time() + 900
        while True:
            try:
                health = requests.get(f"{url}/healthz", timeout=5)
                if health.status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline:
                raise RehearsalError("the Serve app never became healthy")
            time.sleep(2)
        t0 = time.perf_counter()
        answer = requests.post(f"{url}/synthesize", json={"query": "violin", "steps": 2, "seed": 1}, timeout=120)
        self.summary["serve"] = {
            "model_uri": f"models:/{MODEL}@champion",
            "healthz": health.json(),
            "request": {"query": "violin", "steps": 2, "status": answer.status_code,
                        "content_type": answer.headers.get("content-type"), "bytes": len(answer.content),
                        "seconds": round(time.perf_counter() - t0, 2)},
        }  # fmt: skip
        if answer.status_code != 200 or not answer.content.startswith(b"RIFF"):
            raise RehearsalError(f"the service did not answer with audio: {answer.status_code} {answer.text[:300]}")
        self._burst(url)

    def _burst(self, url: str) -> None:
        """A bounded burst of concurrent requests; one sampler replica is killed once a few have completed."""
        import ray
        import requests

        outcomes: list[tuple[int, float]] = []
        lock = threading.Lock()
        killed: dict = {}

        def one(i: int) -> None:
            t0 = time.perf_counter()
            try:
                status = requests.post(
                    f"{url}/synthesize", json={"query": "cello", "steps": 2, "seed": i}, timeout=180
                ).status_code
            except requests.RequestException:
                status = -1
            with lock:
                outcomes.append((status, time.perf_counter() - t0))
                if len(outcomes) == 4 and not killed:
                    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                             if "DiffusionSampler" in a["name"] and a["name"].startswith("SERVE_REPLICA")]  # fmt: skip
                    killed["replica"] = sorted(names)[0]
                    killed["after_responses"] = len(outcomes)
                    ray.kill(ray.get_actor(killed["replica"], namespace="serve"), no_restart=True)
                    log(f"killed Serve replica {killed['replica']}")

        with ThreadPoolExecutor(BURST_CONCURRENCY) as pool:
            list(pool.map(one, range(BURST_REQUESTS)))
        counts = Counter(str(s) for s, _ in outcomes)
        five_xx = sum(n for s, n in counts.items() if s.startswith("5") or s == "-1")
        recovered_at = None
        deadline = time.time() + 180
        while time.time() < deadline:  # the service recovers by itself: the controller replaces the replica
            names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                     if "DiffusionSampler" in a["name"] and a["name"].startswith("SERVE_REPLICA")]  # fmt: skip
            if len(names) == 2 and killed["replica"] not in names:
                recovered_at = time.time()
                break
            time.sleep(1)
        after = [requests.post(f"{url}/synthesize", json={"query": "violin", "steps": 2, "seed": 100 + i}, timeout=120).status_code for i in range(4)]  # fmt: skip
        self.summary["burst"] = {
            "requests": BURST_REQUESTS,
            "concurrency": BURST_CONCURRENCY,
            "killed_replica": killed.get("replica"),
            "killed_after_responses": killed.get("after_responses"),
            "outcomes": dict(sorted(counts.items())),
            "errors_5xx": five_xx,
            "bound_in_flight_on_killed_replica": BURST_CONCURRENCY,
            "replica_replaced": recovered_at is not None,
            "after_recovery": dict(Counter(str(s) for s in after)),
        }
        if five_xx > BURST_CONCURRENCY or after != [200] * 4 or recovered_at is None:
            raise RehearsalError(f"Serve did not recover cleanly: {self.summary['burst']}")

    # ----------------------------------------------------------------------------------------- all
    def run(self) -> dict:
        steps = [self.code_origin, self.refuses_driver_paths]
        if not self.slice_only:
            steps += [self.corpus, self.preprocess, self.train, self.evaluate, self.serve]
        try:
            self.up()
            for step in steps:
                t0 = time.perf_counter()
                step()
                self.summary.setdefault("step_seconds", {})[step.__name__] = round(time.perf_counter() - t0, 1)
            self.summary["ok"] = True
        except Exception as exc:
            self.summary["ok"] = False
            self.summary["error"] = f"{type(exc).__name__}: {exc}"[:4000]
            raise
        finally:
            self.summary["seconds"] = round(time.perf_counter() - self.t0, 1)
            for record in self.summary["jobs"].values():
                record.pop("logs", None)
            (self.work / "rehearsal.json").write_text(json.dumps(self.summary, indent=2, default=str))
            self.down()
        return self.summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slice", action="store_true", help="only the CI slice (cluster, S3, MLflow, steps 1-2)")
    p.add_argument("--work-dir", default="/tmp/clipsynth-rehearsal/run", help="scratch directory (wiped)")
    p.add_argument("--out", default="", help="also write the summary here (e.g. benchmarks/results/rehearsal.json)")
    args = p.parse_args(argv)
    summary = Rehearsal(Path(args.work_dir), args.slice).run()
    text = json.dumps(summary, indent=2, default=str)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    jobs = ", ".join(f"{k}={v.get('status')}" for k, v in summary["jobs"].items())
    print(
        f"[rehearsal] {'slice' if args.slice else 'full'} ok in {summary['seconds']} s: {len(summary['nodes'])} nodes; {jobs}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
