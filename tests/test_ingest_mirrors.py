"""Ingestion from the dataset mirrors' formats on the session's Ray cluster (issue 26): a folder holding a
WebDataset .tar, a .tar.gz and a Parquet file of video bytes beside a plain video, all videos made with ffmpeg;
labels joined by clip id from a vggsound.csv; corrupt, empty, short and silent members; the coverage report;
re-runs that commit nothing new, resuming a lost commit, MLflow; the same shards read from S3 (moto)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from media import run_ffmpeg, time_coded_input
from s3_loopback import moto_server

from clipsynth_platform.datasets.schema import FAILURES_FILE, validate_table
from clipsynth_platform.ingest import IngestConfig, run_ingest
from clipsynth_platform.ingest.decode import process_video
from clipsynth_platform.ingest.settings import DecodeSettings
from clipsynth_platform.ingest.store import MANIFEST_DIR
from clipsynth_platform.runtime.uri import pyarrow_filesystem

pytestmark = pytest.mark.ray

TINY = {"clip_model": "tiny", "clip_pretrained": "none"}
SMALL = {"clip_batch_size": 4, "shard_rows": 4, "decode_concurrency": 1}


@dataclass(frozen=True)
class Clip:
    """One clip of the mirror: where it is, what it holds, what the index says, what ingestion must make of it."""

    clip_id: str
    where: str  # "tar", "tar.gz", "parquet", "file"
    content: str  # "tone", "short", "silent", "corrupt", "null"
    label: str | None  # in vggsound.csv (None: not listed there)
    split: str | None
    expect: tuple[str, str | None, str | None]  # (status, stage, a substring of the reason)


OK = ("ok", None, None)
CLIPS = [
    Clip("aa_000010", "tar", "tone", "dog barking", "train", OK),
    Clip("bb_000000", "tar", "tone", "cat, purring", "test", OK),
    Clip("cc_000030", "tar", "corrupt", "dog barking", "train", ("failed", "decode", "cannot open container")),
    Clip("dd_000000", "tar", "short", "cat, purring", "train", ("failed", "hygiene", "need 4.16 s for one window")),
    Clip("ee_000005", "tar.gz", "tone", "dog barking", "test", OK),
    Clip("ff_000000", "tar.gz", "silent", "rain", "train", ("failed", "hygiene", "silent: audio level -inf")),
    Clip("gg_000000", "tar.gz", "corrupt", "rain", "test", ("failed", "decode", "cannot open container")),
    Clip("hh_000000", "tar.gz", "tone", None, None, OK),  # labelled by its own {key}.json only
    Clip("ii_000000", "parquet", "tone", "rain", "train", OK),
    Clip("jj_000020", "parquet", "tone", "rain", "train", OK),
    Clip("kk_000000", "parquet", "null", "dog barking", "train", ("failed", "read", "no video bytes")),
    Clip("ll_000000", "parquet", "corrupt", "cat, purring", "test", ("failed", "decode", "cannot open container")),
    Clip("mm_000000", "file", "tone", "rain", "test", OK),
]
# Listed in the index, found in no input.
ABSENT = [("nn_000000", "rain", "test"), ("oo_000040", "dog barking", "train")]
SIDECAR_LABEL = ("owl hooting", "test")


def _make_video(path: Path, content: str, freq: int) -> bytes:
    if content == "corrupt":
        return np.random.default_rng(freq).bytes(20_000)
    seconds = 3 if content == "short" else 5
    audio = "anullsrc=r=44100:cl=mono" if content == "silent" else f"sine=frequency={freq}:sample_rate=44100"
    run_ffmpeg(*time_coded_input(seconds, rate=10), "-f", "lavfi", "-t", str(seconds), "-i", audio,
               "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-shortest", str(path))  # fmt: skip
    return path.read_bytes()


def _tar(path: Path, members: list[tuple[str, bytes]], compressed: bool) -> None:
    with tarfile.open(path, "w:gz" if compressed else "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """The mirror folder, the clips' bytes (None for a null row) and the vggsound.csv."""
    root = tmp_path_factory.mktemp("mirror")
    work = tmp_path_factory.mktemp("videos")
    data: dict[str, bytes | None] = {}
    for i, clip in enumerate(CLIPS):
        data[clip.clip_id] = (
            None if clip.content == "null" else _make_video(work / f"{clip.clip_id}.mp4", clip.content, 300 + 60 * i)
        )
    members = {w: [(f"{c.clip_id}.mp4", data[c.clip_id]) for c in CLIPS if c.where == w] for w in ("tar", "tar.gz")}
    # The index wins over a member's own label: aa's sidecar says otherwise. hh has only its sidecar.
    members["tar"].insert(1, ("aa_000010.json", json.dumps({"label": "wrong", "split": "test"}).encode()))
    members["tar.gz"].append(("hh_000000.json", json.dumps(dict(zip(("label", "split"), SIDECAR_LABEL))).encode()))
    members["tar.gz"].append(("README.txt", b"not a video"))
    _tar(root / "vggsound_00.tar", members["tar"], compressed=False)
    _tar(root / "vggsound_01.tar.gz", members["tar.gz"], compressed=True)
    rows = [c for c in CLIPS if c.where == "parquet"]
    table = pa.table(
        {
            "clip_id": [c.clip_id for c in rows],
            "video": pa.array([{"bytes": data[c.clip_id], "path": f"{c.clip_id}.mp4"} for c in rows]),
        }
    )
    pq.write_table(table, root / "mirror.parquet", row_group_size=2)
    pq.write_table(pa.table({"clip_id": ["x"], "status": ["ok"]}), root / "_fetch_ledger.parquet")  # not an input
    (root / "mm_000000.mp4").write_bytes(data["mm_000000"])
    index = root.parent / "vggsound.csv"
    lines = [(c.clip_id, c.label, c.split) for c in CLIPS if c.label] + ABSENT
    index.write_text("".join(f'{cid[:-7]},{int(cid[-6:])},"{label}",{split}\n' for cid, label, split in lines))
    return root, data, str(index)


def read_rows(root: str) -> pa.Table:
    fs, base = pyarrow_filesystem(root)
    tables = []
    for split in ("train", "test"):
        info = fs.get_file_info(pa.fs.FileSelector(f"{base}/{split}", allow_not_found=True))
        tables += [pq.read_table(f.path, filesystem=fs) for f in info if f.path.endswith(".parquet")]
    table = pa.concat_tables(tables)
    validate_table(table)
    return table.sort_by([("source_uri", "ascending"), ("chunk_index", "ascending")])


def clip_of(uri: str) -> str:
    return Path(uri.split("#")[-1]).stem


@pytest.fixture(scope="module")
def ingested(mirror, ray_cluster, tmp_path_factory):
    root, _, index = mirror
    out = str(tmp_path_factory.mktemp("shards"))
    config = IngestConfig(input=str(root), output=out, labels=index, **TINY, **SMALL)
    lines: list[str] = []
    summary = run_ingest(config, log=lines.append)
    return summary, out, config, read_rows(out), lines


def test_every_member_is_accounted_for_with_its_reason(mirror, ingested):
    root, _, _ = mirror
    summary, out, _, table, _ = ingested
    ok = [c for c in CLIPS if c.expect[0] == "ok"]
    assert (summary["videos_in"], summary["videos_ok"], summary["videos_failed"]) == (
        len(CLIPS),
        len(ok),
        len(CLIPS) - len(ok),
    )
    assert summary["inputs"]["containers"] == {"tar": 1, "tar.gz": 1, "parquet": 1} and summary["inputs"]["files"] == 1
    assert summary["inputs"]["videos_by_kind"] == {"parquet": 4, "tar": 4, "tar.gz": 4, "video": 1}
    assert summary["inputs"]["container_other_files"] == 1  # README.txt
    assert summary["hygiene"]["rejected"] == {"too_short": 1, "silent": 1}
    assert summary["split_leaks"] == {"videos_in_both_splits": 0, "their_clips": 0, "examples": []}
    failures = {clip_of(f["uri"]): f for f in pq.read_table(Path(out, FAILURES_FILE)).to_pylist()}
    for clip in CLIPS:
        if clip.expect[0] == "ok":
            assert clip.clip_id not in failures
            continue
        f = failures[clip.clip_id]
        assert (f["stage"], clip.expect[2] in f["reason"]) == (clip.expect[1], True), (clip, f)
    assert failures["kk_000000"]["uri"] == f"{root / 'mirror.parquet'}#kk_000000"
    # Each ok clip: one 5 s chunk, with the index's label and split (hh: its sidecar's).
    assert table.num_rows == summary["chunks_written"] == len(ok)
    got = {clip_of(r["source_uri"]): (r["label"], r["split"]) for r in table.to_pylist()}
    expected = {c.clip_id: (c.label, c.split) if c.label else SIDECAR_LABEL for c in ok}
    assert got == expected


def test_a_members_rows_are_those_of_the_same_video_as_a_file(mirror, ingested, tmp_path):
    _, data, _ = mirror
    _, _, _, table, _ = ingested
    for clip_id in ("aa_000010", "ee_000005", "ii_000000"):  # from the .tar, the .tar.gz, the Parquet file
        path = tmp_path / f"{clip_id}.mp4"
        path.write_bytes(data[clip_id])
        source = {"uri": str(path), "video_id": "x", "split": "train", "label": None}
        direct = [
            r
            for r in pa.concat_tables(list(process_video(source, DecodeSettings()))).to_pylist()
            if r["record"] == "chunk"
        ]
        [row] = [r for r in table.to_pylist() if clip_of(r["source_uri"]) == clip_id]
        assert len(direct) == 1
        for key in ("audio", "frames_jpeg", "frame_times", "start_seconds", "duration_seconds"):
            assert row[key] == direct[0][key], (clip_id, key)
        np.testing.assert_allclose(row["mel"], direct[0]["mel"], atol=1e-5)


def test_the_coverage_report_matches_the_tests_own_count(ingested):
    summary, *_ = ingested
    coverage = summary["coverage"]
    listed = [(c.clip_id, c.label, c.split) for c in CLIPS if c.label] + ABSENT
    found = {c.clip_id for c in CLIPS if c.label}
    kept = {c.clip_id for c in CLIPS if c.label and c.expect[0] == "ok"}
    assert (coverage["expected"], coverage["found"], coverage["ok"]) == (len(listed), len(found), len(kept))
    assert coverage["inputs_not_in_index"] == 1 and coverage["repeated_inputs"] == 0  # hh
    for split in ("train", "test"):
        for label in {lab for _, lab, _ in listed}:
            cell = coverage["by_split_class"][split].get(label, {"expected": 0, "found": 0, "ok": 0})
            mine = [cid for cid, lab, sp in listed if (lab, sp) == (label, split)]
            assert (cell["expected"], cell["found"], cell["ok"]) == (
                len(mine),
                len(set(mine) & found),
                len(set(mine) & kept),
            ), (split, label)
    assert coverage["classes_without_clips"] == []


def test_a_rerun_commits_nothing_and_lists_nothing_again_and_logs_to_mlflow(ingested, tmp_path):
    summary, out, config, table, _ = ingested
    manifests = sorted(os.listdir(Path(out, MANIFEST_DIR)))
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    lines: list[str] = []
    again = run_ingest(IngestConfig(**{**config.to_dict(), "tracking_uri": tracking}), log=lines.append)
    assert again["runs"][-1]["videos_processed"] == 0 and again["runs"][-1]["videos_skipped_as_done"] == len(CLIPS)
    assert not any(line.startswith("listing") for line in lines)  # the shards' member lists were kept
    assert sorted(os.listdir(Path(out, MANIFEST_DIR))) == manifests and read_rows(out).equals(table)
    for key in ("videos_in", "videos_ok", "videos_failed", "chunks_written", "coverage", "hygiene"):
        assert again[key] == summary[key], key
    mlflow.set_tracking_uri(tracking)
    [run] = mlflow.search_runs(experiment_names=["clipsynth-ingest"], output_format="list")
    metrics = run.data.metrics
    assert metrics["coverage.expected"] == again["coverage"]["expected"] and metrics["hygiene.silent"] == 1
    assert metrics["coverage.test.ok"] == again["coverage"]["by_split"]["test"]["ok"]
    coverage_csv = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/coverage.csv").splitlines()
    assert coverage_csv[0] == "split,label,expected,found,ok,ok_share" and len(coverage_csv) == 1 + sum(
        len(v) for v in again["coverage"]["by_split_class"].values()
    )


def test_a_lost_commit_is_redone_for_its_members_only(mirror, ingested):
    summary, out, config, table, _ = ingested
    # Remove the commit that holds the .tar.gz's good member: its shards become orphans, its videos pending.
    manifests = [json.loads(p.read_text()) for p in Path(out, MANIFEST_DIR).glob("*.json")]
    [lost] = [m for m in manifests if any(v["uri"].endswith("#ee_000005.mp4") for v in m["videos"])]
    Path(out, MANIFEST_DIR, f"{lost['name']}.json").unlink()
    again = run_ingest(config)
    assert again["runs"][-1]["videos_processed"] == len(lost["videos"])
    assert again["runs"][-1]["videos_skipped_as_done"] == len(CLIPS) - len(lost["videos"])
    assert (again["videos_ok"], again["videos_failed"]) == (summary["videos_ok"], summary["videos_failed"])
    redone = read_rows(out)
    assert redone.num_rows == table.num_rows
    for name in ("chunk_id", "audio", "mel", "frames_jpeg", "label", "split"):
        assert redone[name].equals(table[name]), name


def test_the_same_shards_from_s3(mirror, ingested, ray_cluster, monkeypatch):
    import s3fs

    root, _, index = mirror
    _, _, _, local, _ = ingested
    with moto_server(monkeypatch) as env:
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir("bucket")
        fs.put_file(str(root / "vggsound_00.tar"), "bucket/mirror/a/vggsound_00.tar")
        for name in ("vggsound_01.tar.gz", "mirror.parquet"):
            fs.put_file(str(root / name), f"bucket/mirror/b/{name}")
        fs.put_file(index, "bucket/vggsound.csv")
        # a file and a prefix
        inputs = ("s3://bucket/mirror/a/vggsound_00.tar", "s3://bucket/mirror/b")
        config = IngestConfig(
            input=inputs, output="s3://bucket/out", labels="s3://bucket/vggsound.csv", **TINY, **SMALL
        )
        summary = run_ingest(config, worker_env=env)
        in_s3 = [c for c in CLIPS if c.where != "file"]
        assert (summary["videos_in"], summary["videos_ok"]) == (len(in_s3), sum(c.expect[0] == "ok" for c in in_s3))
        rows = read_rows("s3://bucket/out")
        assert summary["coverage"]["ok"] == sum(1 for c in in_s3 if c.label and c.expect[0] == "ok")
    local_rows = {clip_of(r["source_uri"]): r for r in local.to_pylist()}
    for row in rows.to_pylist():
        assert row["source_uri"].startswith("s3://bucket/mirror/")
        twin = local_rows[clip_of(row["source_uri"])]
        for key in ("audio", "mel", "frames_jpeg", "label", "split"):
            assert row[key] == twin[key], key
    assert rows.num_rows == sum(c.expect[0] == "ok" for c in in_s3)


def test_on_a_cluster_ray_tasks_list_the_containers_as_the_driver_does(mirror, ray_cluster):
    from clipsynth_platform.ingest.inputs import list_inputs
    from clipsynth_platform.ingest.pipeline import container_lister

    root, _, _ = mirror
    config = IngestConfig(input=str(root), output="unused")
    containers = [f for f in list_inputs(config.input, config.extensions) if f.kind != "video"]
    by_ray = container_lister(config, None, use_ray=True)(containers)
    here = container_lister(config, None, use_ray=False)(containers)
    strip = lambda indexes: [{**i.to_dict(), "seconds": 0} for i in indexes]  # noqa: E731
    assert strip(by_ray) == strip(here) and [len(i.members) for i in here] == [4, 4, 4]
