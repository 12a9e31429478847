"""jobs/fetch.py end to end on the session's Ray cluster: a VGG-Sound-format manifest fetched from a loopback
HTTP server by yt-dlp actors into {clip_id}.mp4 files, WebDataset shards, and S3 (moto); the ledger and summary;
re-runs that make no request for finished clips; --retry-failed; MLflow."""

from __future__ import annotations

import io
import json
import os
import tarfile

import pyarrow.parquet as pq
import pytest
from loopback_videos import LoopbackServer, tone_seconds, tone_video
from s3_loopback import moto_server

from clipsynth_platform.datasets.manifest import MANIFEST_FILE, Manifest, load_manifest
from clipsynth_platform.fetch import LEDGER_FILE, SUMMARY_FILE, FetchConfig, Ledger, run_fetch
from clipsynth_platform.fetch.job import main

pytestmark = pytest.mark.ray


@pytest.fixture(autouse=True)
def _console_restored(tmp_path, monkeypatch):
    """main() opens the job's console (its log file here); later tests get this process's logging back."""
    from clipsynth_platform.runtime import console

    monkeypatch.setenv(console.LOG_DIR_ENV, str(tmp_path / "logs"))
    yield
    console.close_console()


MANIFEST = (
    'v1,30,"dog, barking",train\n'
    "v1,0,dog,train\n"
    "v2,10,cat,test\n"
    "gone,0,owl,train\n"  # 404
    "broken,0,owl,test\n"  # not a video
    "v3,0,bird,train\n"  # HTTP 429 on its first request
)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    tone_video(root / "v1.mp4", seconds=45)
    tone_video(root / "v2.mp4", seconds=25, gray=60)
    os.link(root / "v2.mp4", root / "v3.mp4")
    (root / "broken.mp4").write_bytes(b"<html>not a video</html>\n" * 40)
    with LoopbackServer(root) as server:
        yield server


def _flags(site, manifest, output, *extra: str) -> list[str]:
    return [
        "--manifest",
        str(manifest),
        "--format",
        "vggsound",
        "--output",
        str(output),
        "--url-template",
        site.url("{id}.mp4"),
        "--concurrency",
        "2",
        "--retries",
        "0",
        "--extractors",
        "generic",
        *extra,
    ]


def _requests_during(site, run) -> dict[str, int]:
    before = dict(site.requests)
    run()
    return {p: n - before.get(p, 0) for p, n in site.requests.items() if n != before.get(p, 0)}


def test_fetch_files_ledger_summary_and_reruns(site, tmp_path, ray_cluster):
    manifest, out = tmp_path / "vggsound.csv", tmp_path / "videos"
    manifest.write_text(MANIFEST)
    site.fail_first["v3.mp4"] = (1, 429)
    requested = _requests_during(site, lambda: main(_flags(site, manifest, out)))
    assert set(requested) == {"v1.mp4", "v2.mp4", "v3.mp4", "gone.mp4", "broken.mp4"}
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert (summary["clips_in"], summary["ok"], summary["failed"], summary["not_tried"]) == (6, 3, 3, 0)
    assert summary["failed_by_class"] == {"invalid_media": 1, "rate_limited": 1, "unavailable": 1}
    assert (summary["failed_permanent"], summary["failed_transient"]) == (2, 1)
    assert summary["coverage"]["test"]["cat"] == {"expected": 1, "ok": 1}
    # Two clips of one video, both kept; each file holds its own window.
    files = sorted(p.name for p in out.glob("*.mp4"))
    assert files == ["v1_000000.mp4", "v1_000030.mp4", "v2_000010.mp4"]
    assert tone_seconds(out / "v1_000030.mp4") == list(range(30, 40))
    assert tone_seconds(out / "v1_000000.mp4") == list(range(0, 10))
    ledger = {r["clip_id"]: r for r in pq.read_table(out / LEDGER_FILE).to_pylist()}
    assert set(ledger) == {"v1_000030", "v1_000000", "v2_000010", "gone_000000", "broken_000000", "v3_000000"}
    ok = ledger["v2_000010"]
    assert (ok["status"], ok["location"], ok["bytes"], ok["attempts"]) == (
        "ok",
        "v2_000010.mp4",
        os.path.getsize(out / "v2_000010.mp4"),
        1,
    )
    assert ok["tool_version"].startswith("yt-dlp 2026.") and ok["url"] == site.url("v2.mp4")
    assert abs(ok["duration"] - 10.0) < 0.1 and (ok["video_codec"], ok["audio_codec"]) == ("h264", "aac")
    gone, broken, busy = ledger["gone_000000"], ledger["broken_000000"], ledger["v3_000000"]
    assert (gone["error_class"], gone["permanent"]) == ("unavailable", True) and "HTTP Error 404" in gone["message"]
    assert (broken["error_class"], broken["permanent"]) == ("invalid_media", True)
    assert "Invalid data found" in broken["message"]
    assert (busy["error_class"], busy["permanent"]) == ("rate_limited", False) and "429" in busy["message"]
    # The manifest every later stage reads is in the output.
    assert Manifest.read(str(out / MANIFEST_FILE)).clips == load_manifest(str(manifest)).clips

    # Re-run: finished clips and permanent failures cost no request; the transient failure is tried again.
    requested = _requests_during(site, lambda: main(_flags(site, manifest, out)))
    assert set(requested) == {"v3.mp4"}
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert (summary["ok"], summary["failed_by_class"]) == (4, {"invalid_media": 1, "unavailable": 1})
    run = summary["run"]
    assert (run["run"], run["to_fetch"], run["skipped_ok"], run["skipped_permanent"]) == (2, 1, 3, 2)
    assert Ledger.read(str(out)).get("v3_000000").attempts == 2  # attempts add up over runs

    # Again, with MLflow: nothing left to fetch, not one request.
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert _requests_during(site, lambda: main(_flags(site, manifest, out, "--tracking-uri", tracking))) == {}
    import mlflow

    mlflow.set_tracking_uri(tracking)
    (logged,) = mlflow.search_runs(experiment_names=["clipsynth-fetch"], output_format="list")
    assert logged.data.metrics["clips_ok"] == 4 and logged.data.metrics["failed_unavailable"] == 1
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(logged.info.run_id, "fetch")}
    assert artifacts == {f"fetch/{MANIFEST_FILE}", f"fetch/{LEDGER_FILE}", f"fetch/{SUMMARY_FILE}"}

    # --retry-failed: the permanent failures, and only they, are asked for again.
    requested = _requests_during(site, lambda: main(_flags(site, manifest, out, "--retry-failed")))
    assert set(requested) == {"gone.mp4", "broken.mp4"} and requested["gone.mp4"] == 1
    assert Ledger.read(str(out)).get("gone_000000").attempts == 2


def test_fetch_into_webdataset_shards(site, tmp_path, ray_cluster):
    manifest, out = tmp_path / "vggsound.csv", tmp_path / "shards"
    manifest.write_text('v1,30,"dog, barking",train\nv2,10,cat,test\ngone,0,owl,train\nv1,5,dog,train\n')
    main(_flags(site, manifest, out, "--output-format", "webdataset", "--shard-clips", "2"))
    shards = sorted(p.name for p in out.glob("*.tar"))
    assert shards == ["shard-000000.tar", "shard-000001.tar"]
    members: dict[str, bytes] = {}
    for shard in shards:
        with tarfile.open(out / shard) as tar:
            members.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
    assert sorted(members) == sorted(
        f"{c}.{ext}" for c in ("v1_000030", "v2_000010", "v1_000005") for ext in ("mp4", "json")
    )
    sidecar = json.loads(members["v1_000030.json"])
    assert {k: sidecar[k] for k in ("clip_id", "video_id", "start", "end", "label", "split")} == {
        "clip_id": "v1_000030",
        "video_id": "v1",
        "start": 30.0,
        "end": 40.0,
        "label": "dog, barking",
        "split": "train",
    }
    assert sidecar["url"] == site.url("v1.mp4") and abs(sidecar["duration"] - 10.0) < 0.1
    (tmp_path / "clip.mp4").write_bytes(members["v1_000005.mp4"])
    assert tone_seconds(tmp_path / "clip.mp4") == list(range(5, 15))
    ledger = Ledger.read(str(out))
    assert {r.location for r in ledger.rows.values() if r.ok} == set(shards)
    assert ledger.get("gone_000000").error_class == "unavailable"
    assert _requests_during(site, lambda: main(_flags(site, manifest, out, "--output-format", "webdataset"))) == {}


def test_fetch_to_s3(site, tmp_path, ray_cluster, monkeypatch):
    import s3fs

    with moto_server(monkeypatch) as env:
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir("bucket")
        fs.pipe_file("bucket/lists/vggsound.csv", b"v1,20,dog,train\nv2,0,cat,test\ngone,0,owl,train\n")
        config = FetchConfig(
            manifest="s3://bucket/lists/vggsound.csv",
            output="s3://bucket/clips",
            url_template=site.url("{id}.mp4"),
            concurrency=2,
            retries=0,
            extractors=("generic",),
        )
        summary = run_fetch(config, worker_env=env)
        assert (summary.clips_in, summary.ok, summary.failed_by_class) == (3, 2, {"unavailable": 1})
        listed = sorted(p.rsplit("/", 1)[-1] for p in fs.ls("bucket/clips"))
        assert listed == sorted([LEDGER_FILE, SUMMARY_FILE, MANIFEST_FILE, "v1_000020.mp4", "v2_000000.mp4"])
        (tmp_path / "c.mp4").write_bytes(fs.cat_file("bucket/clips/v1_000020.mp4"))
        assert tone_seconds(tmp_path / "c.mp4") == list(range(20, 30))
        assert Ledger.read("s3://bucket/clips").get("v2_000000").location == "v2_000000.mp4"
        assert json.loads(fs.cat_file(f"bucket/clips/{SUMMARY_FILE}"))["ok"] == 2
        assert pq.read_table(io.BytesIO(fs.cat_file(f"bucket/clips/{LEDGER_FILE}"))).num_rows == 3
        assert _requests_during(site, lambda: run_fetch(config, worker_env=env)) == {}
