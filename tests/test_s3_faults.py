"""S3 that throttles, resets and stalls (issue 28, item 2): ingestion and training through a fault proxy in front
of a moto server (tests/s3_faults.py). A share of requests is answered 503 SlowDown, a share of connections is
reset (before the request reaches the server, or halfway through a GET's body), and a share of responses is
sent slowly. The platform's retries (runtime/uri.py: botocore's standard mode, then s3fs's retries of a call)
must carry every stage through with nothing lost or half-committed:

- ingestion: every input accounted for, every committed shard listed by a manifest and every manifest's
  shard present, no row twice, nothing left in staging;
- fetching (`run_fetch`, yt-dlp actors from a loopback site into S3): every clip written once and whole, the
  ledger and summary in S3, and a re-run that reads the ledger back through the faults and downloads nothing;
- training (`jobs/train_music.py`, one Ray Train worker): shards streamed from S3 by Ray Data, checkpoints
  saved to S3 by Ray Train, and a second run of the same command that resumes from S3, skipping a checkpoint
  whose model file was cut short (item 3) for the whole one before it.

The proxy counts what it injected; the driver counts botocore's attempts and retries (runtime/s3_requests.py).
Each test gives its account to tests/fault_record.py (`make faults` writes benchmarks/results/faults_cpu.json).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fault_record import record_fault
from loopback_videos import LoopbackServer, tone_seconds, tone_video
from media import H264, run_ffmpeg, time_coded_input, tone_input
from s3_faults import FaultPlan, S3FaultProxy, s3_env, start_moto

from clipsynth_platform.datasets.manifest import MANIFEST_FILE
from clipsynth_platform.datasets.schema import validate_table
from clipsynth_platform.fetch import LEDGER_FILE, SUMMARY_FILE, FetchConfig, Ledger, run_fetch
from clipsynth_platform.ingest import IngestConfig, run_ingest
from clipsynth_platform.ingest.store import MANIFEST_DIR, STAGING_DIR
from clipsynth_platform.runtime.s3_requests import s3_request_counts
from clipsynth_platform.runtime.uri import fsspec_filesystem, pyarrow_filesystem

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
FAULTS = FaultPlan(slowdown=0.1, reset=0.05, cut_body=0.05, slow=0.1, slow_seconds=0.3, seed=28)
# Three 15 s videos (two chunks each) and an empty file.
VIDEOS = {"violin/a 01.mp4": 440.0, "cello/b02.mp4": 220.0, "flute/c03.mp4": 880.0}
EMPTY = "bad/empty.mp4"
CHUNKS_PER_VIDEO = 2


@pytest.fixture(scope="module")
def object_store():
    """moto on loopback and the fault proxy in front of it (no faults until a test sets its plan)."""
    moto = start_moto()
    proxy = S3FaultProxy(moto.port)
    proxy.start()
    old = {k: os.environ.get(k) for k in s3_env("")}
    os.environ.update(s3_env(proxy.endpoint))  # this process (the drivers) talks to S3 through the proxy
    try:
        yield proxy
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proxy.stop()
        moto.stop()


@pytest.fixture(scope="module")
def ingested(object_store, ray_cluster, tmp_path_factory):
    """Videos uploaded cleanly, then ingested to s3://faults/shards while the proxy injects faults."""
    root = tmp_path_factory.mktemp("videos")
    for rel, freq in VIDEOS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        run_ffmpeg(*time_coded_input(15), *tone_input(freq, 15), *H264, "-c:a", "aac", "-shortest", str(root / rel))
    fs = fsspec_filesystem("s3://faults")
    fs.mkdir("faults")
    for rel in VIDEOS:
        fs.put_file(str(root / rel), f"faults/videos/{rel}")
    fs.pipe_file(f"faults/videos/{EMPTY}", b"")
    labels = "path,label\n" + "".join(f"{rel},{rel.split('/')[0]}\n" for rel in VIDEOS)
    fs.pipe_file("faults/labels.csv", labels.encode())

    object_store.set_plan(FAULTS)
    before = s3_request_counts()
    config = IngestConfig(
        input="s3://faults/videos",
        output="s3://faults/shards",
        labels="s3://faults/labels.csv",
        clip_model="tiny",
        clip_pretrained="none",
        clip_batch_size=2,
        shard_rows=2,  # several commits, each a manifest after its shards
        decode_concurrency=1,
        test_fraction=0.0,
    )
    summary = run_ingest(config, worker_env=s3_env(object_store.endpoint))
    after = s3_request_counts()
    counts = object_store.counts.to_dict()
    object_store.set_plan(FaultPlan())
    driver = after.since(before).to_dict()
    return summary, counts, driver


def test_ingestion_under_faults_accounts_for_every_input_and_commits_whole_shards(ingested):
    summary, counts, driver = ingested
    assert counts["slowdown"] > 0 and counts["reset"] > 0 and counts["slow"] > 0, counts
    assert (summary["videos_in"], summary["videos_ok"], summary["videos_failed"]) == (4, 3, 1)
    assert summary["failures_by_stage"] == {"read": 1}
    fs = fsspec_filesystem("s3://faults")
    assert not fs.exists(f"faults/shards/{STAGING_DIR}")  # nothing half-written left behind
    manifests = [json.loads(fs.cat_file(p)) for p in fs.glob(f"faults/shards/{MANIFEST_DIR}/*.json")]
    listed = {f"faults/shards/{f}" for m in manifests for files in m["files"].values() for f in files}
    present = set(fs.glob("faults/shards/train/*.parquet")) | set(fs.glob("faults/shards/test/*.parquet"))
    assert listed == present and len(manifests) == summary["runs"][-1]["commits"] >= 2
    pfs, _ = pyarrow_filesystem("s3://faults")
    table = pa.concat_tables([pq.read_table(p, filesystem=pfs) for p in sorted(present)])
    validate_table(table)
    assert table.num_rows == summary["chunks_written"] == len(VIDEOS) * CHUNKS_PER_VIDEO
    assert len(set(table["chunk_id"].to_pylist())) == table.num_rows  # no row twice
    per_video = {}
    for uri in table["source_uri"].to_pylist():
        per_video[uri] = per_video.get(uri, 0) + 1
    assert per_video == {f"s3://faults/videos/{rel}": CHUNKS_PER_VIDEO for rel in VIDEOS}
    rows_in_manifests = sum(sum(m["rows"].values()) for m in manifests)
    assert rows_in_manifests == table.num_rows
    assert driver["retried"] > 0 and driver["attempts"] > driver["retried"]
    # the summary reports the driver's own counts: all of them but what came after it (writing the summary)
    reported = summary["runs"][-1]["s3_requests_driver"]
    assert 0 < reported["retried"] <= driver["retried"] and 0 < reported["attempts"] <= driver["attempts"]
    record_fault(
        "s3_ingestion",
        injected={"plan": FAULTS.to_dict(), "proxy_counts": counts},
        platform={
            "driver_botocore_counts": driver,
            "reported_in_summary": reported,
            "commits": len(manifests),
            "summary": {k: summary[k] for k in ("videos_in", "videos_ok", "videos_failed", "chunks_written")},
        },
        lost={"rows_missing": 0, "rows_duplicated": 0, "uncommitted_shards": 0, "staging_left": False},
        command="pytest -q tests/test_s3_faults.py -k ingestion",
    )


def test_fetching_under_faults_writes_every_clip_once_and_whole(object_store, ray_cluster, tmp_path):
    site_root = tmp_path / "site"
    site_root.mkdir()
    tone_video(site_root / "v1.mp4", seconds=25)
    tone_video(site_root / "v2.mp4", seconds=15, gray=60)
    fs = fsspec_filesystem("s3://fetchfaults")
    fs.mkdir("fetchfaults")
    fs.pipe_file("fetchfaults/vggsound.csv", b"v1,0,dog,train\nv1,10,dog,train\nv2,0,cat,test\ngone,0,owl,train\n")
    with LoopbackServer(site_root) as site:
        config = FetchConfig(
            manifest="s3://fetchfaults/vggsound.csv",
            output="s3://fetchfaults/clips",
            url_template=site.url("{id}.mp4"),
            concurrency=2,
            retries=0,
            extractors=("generic",),
        )
        object_store.set_plan(FAULTS)
        start, before = object_store.counts.to_dict(), s3_request_counts()
        summary = run_fetch(config, worker_env=s3_env(object_store.endpoint))
        downloads = site.total_requests
        rerun = run_fetch(config, worker_env=s3_env(object_store.endpoint))  # the ledger, read through the faults
        end, after = object_store.counts.to_dict(), s3_request_counts()
        object_store.set_plan(FaultPlan())
        assert site.total_requests == downloads  # the re-run downloaded nothing

    injected = {k: end[k] - start[k] for k in ("requests", "slowdown", "reset", "cut_body", "slow")}
    assert injected["slowdown"] + injected["reset"] + injected["cut_body"] > 0, injected
    assert (summary.clips_in, summary.ok, summary.failed_by_class) == (4, 3, {"unavailable": 1})
    assert (rerun.ok, rerun.run.fetched_ok, rerun.run.skipped_ok) == (3, 0, 3)
    clips = {"v1_000000": 0, "v1_000010": 10, "v2_000000": 0}
    listed = sorted(p.rsplit("/", 1)[-1] for p in fs.ls("fetchfaults/clips"))
    assert listed == sorted([LEDGER_FILE, SUMMARY_FILE, MANIFEST_FILE, *(f"{c}.mp4" for c in clips)])
    for clip, first_second in clips.items():  # each clip whole: its ten seconds of tones, in order
        (tmp_path / "c.mp4").write_bytes(fs.cat_file(f"fetchfaults/clips/{clip}.mp4"))
        assert tone_seconds(tmp_path / "c.mp4") == list(range(first_second, first_second + 10)), clip
    ledger = Ledger.read("s3://fetchfaults/clips")
    assert all(ledger.get(c).location == f"{c}.mp4" for c in clips)
    assert json.loads(fs.cat_file(f"fetchfaults/clips/{SUMMARY_FILE}"))["ok"] == 3
    driver = after.since(before).to_dict()
    # each run's summary reports the driver's counts, which are all of them but the summary's own write
    reported = [r.run.s3_requests_driver for r in (summary, rerun)]
    assert all(r["attempts"] > 0 for r in reported) and sum(r["attempts"] for r in reported) <= driver["attempts"]
    assert sum(r["retried"] for r in reported) <= driver["retried"]
    assert json.loads(fs.cat_file(f"fetchfaults/clips/{SUMMARY_FILE}"))["run"]["s3_requests_driver"] == reported[1]
    record_fault(
        "s3_fetch",
        injected={"plan": FAULTS.to_dict(), "proxy_counts": injected},
        platform={
            "driver_botocore_counts": driver,
            "first_run": summary.line(),
            "rerun": rerun.line(),
            "reported_by_the_runs": reported,
        },
        lost={"clips_missing": 0, "clips_cut": 0, "downloads_repeated": 0},
        command="pytest -q tests/test_s3_faults.py -k fetching",
    )


@pytest.mark.slow
def test_training_under_faults_reads_shards_saves_and_resumes_checkpoints(ingested, object_store, tmp_path):
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--data", "s3://faults/shards", "--model-size", "tiny", "--num-workers", "1", "--batch-size", "4"]
    args += ["--checkpoint-every", "3", "--keep-checkpoints", "5", "--log-every", "3", "--sample-every", "0"]
    args += ["--diffusion-steps", "100", "--bundle-sampling-steps", "10", "--lr", "1e-3"]
    args += ["--min-examples-per-pass", "64", "--cache-in-worker", "off"]  # streamed from S3 pass after pass
    args += ["--storage-path", "s3://faults/runs", "--run-name", "faults", "--tracking-uri", tracking]
    args += ["--experiment", "test-faults", "--register-as", "test-faults", "--local-num-cpus", "4"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({"PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", **s3_env(object_store.endpoint)})

    def train(max_steps: int) -> str:
        r = subprocess.run(
            [sys.executable, "jobs/train_music.py", *args, "--max-steps", str(max_steps)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-4000:]
        return r.stdout

    object_store.set_plan(FAULTS)
    start = object_store.counts.to_dict()
    first = train(6)
    fs = fsspec_filesystem("s3://faults")
    run = "faults/runs/faults"
    assert sorted(p.rsplit("/", 1)[1] for p in fs.glob(f"{run}/checkpoint_0*")) == [
        "checkpoint_000000003",
        "checkpoint_000000006",
    ]
    # A node lost mid-upload: the newest checkpoint's model file cut short (written without faults).
    object_store.set_plan(FaultPlan())
    model = f"{run}/checkpoint_000000006/model.safetensors"
    size = fs.size(model)
    fs.pipe_file(model, fs.cat_file(model)[: size // 3])
    second = FaultPlan(**{**FAULTS.to_dict(), "seed": 29})  # the same shares, another draw
    object_store.set_plan(second)
    again = train(8)
    end = object_store.counts.to_dict()
    object_store.set_plan(FaultPlan())

    assert "[summary]" in first and '"final_step": 6' in first
    assert f"checkpoint {run}/checkpoint_000000006 is not whole: model.safetensors has {size // 3} bytes" in again
    assert f"resuming from {run}/checkpoint_000000003, the newest whole checkpoint (1 newer skipped)" in again
    assert "resuming at step 3 of 8" in again and '"final_step": 8' in again
    rank0 = json.loads(fs.cat_file(f"{run}/checkpoint_000000008/rank_0.json"))
    assert rank0["resumed_from_step"] == 3
    injected = {k: end[k] - start[k] for k in ("requests", "slowdown", "reset", "cut_body", "slow")}
    assert injected["slowdown"] > 0 and injected["reset"] > 0, injected

    import mlflow

    client = mlflow.MlflowClient(tracking)
    run_id = json.loads(fs.cat_file(f"{run}/clipsynth_run.json"))["mlflow_run_id"]
    steps = sorted(m.step for m in client.get_metric_history(run_id, "loss"))
    assert steps == [3, 6, 8]  # each once: the second run's step 6 (a replay) is not logged again
    assert client.get_model_version("test-faults", "2").run_id == run_id
    # the worker's own S3 requests (run record, checkpoint uploads), logged with its metrics: one attempt at least
    worker_s3 = {k: client.get_metric_history(run_id, f"s3_{k}") for k in ("attempts", "retried", "calls_given_up")}
    assert all(worker_s3.values()) and max(m.value for m in worker_s3["attempts"]) > 0
    worker_s3_last = {k: max(history, key=lambda m: m.step).value for k, history in worker_s3.items()}
    record_fault(
        "s3_training_and_a_checkpoint_cut_short",
        injected={
            "plans": [FAULTS.to_dict(), second.to_dict()],
            "proxy_counts_both_runs": injected,
            "cut_short": f"checkpoint_000000006/model.safetensors truncated to {size // 3} of {size} bytes",
        },
        platform={
            "first_run": "6 steps: shards streamed from S3, checkpoints 3 and 6 saved to S3",
            "second_run": "skipped checkpoint 6 (not whole, said why), resumed from 3, trained to 8, registered v2",
            "worker_botocore_counts_at_step_8": worker_s3_last,
        },
        lost={"steps": "none: 4-6 trained again from the whole checkpoint", "metric_steps_in_mlflow": steps},
        command="pytest -q tests/test_s3_faults.py -k training",
    )
