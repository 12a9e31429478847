"""Ingestion end to end on the session's local Ray cluster: a real media corpus (codecs, containers, every bad
kind, a decoder crash), checked row by row against independent decoding; interrupt-and-resume through the CLI;
S3 input and output on a loopback moto server."""

from __future__ import annotations

import importlib.util
import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from media import build_corpus, ffmpeg_audio_16k_mono, luma_at, rgb_gray_of_luma, write_music_index
from PIL import Image
from s3_loopback import moto_server

from clipsynth_core import MelFrontend
from clipsynth_platform.datasets.schema import (
    FAILURE_SCHEMA,
    FAILURES_FILE,
    SUMMARY_FILE,
    image_embeddings_of,
    mel_of,
    pcm16,
    text_embedding_of,
    validate_table,
)
from clipsynth_platform.ingest import IngestConfig, hashed_split, run_ingest
from clipsynth_platform.ingest.config import TEST_EXIT_AFTER_COMMITS_ENV, TEST_HOOKS_ENV
from clipsynth_platform.ingest.decode import chunk_bounds
from clipsynth_platform.ingest.store import MANIFEST_DIR, STAGING_DIR
from clipsynth_platform.runtime.uri import pyarrow_filesystem

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
TINY = {"clip_model": "tiny", "clip_pretrained": "none"}
# Small batches and shards so the corpus makes several commits; one decode task at a time (worker start-up,
# not decoding, dominates on this small corpus and loaded machine).
SMALL = {"clip_batch_size": 2, "shard_rows": 2, "decode_concurrency": 1}


def read_rows(root: str) -> pa.Table:
    fs, base = pyarrow_filesystem(root)
    tables = []
    for split in ("train", "test"):
        info = fs.get_file_info(pa.fs.FileSelector(f"{base}/{split}", allow_not_found=True))
        tables += [pq.read_table(f.path, filesystem=fs) for f in info if f.path.endswith(".parquet")]
    table = pa.concat_tables(tables)
    validate_table(table)
    return table.sort_by("chunk_id")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    cases = build_corpus(root)
    index = root.parent / "music.json"
    write_music_index(index, cases)
    return root, cases, str(index)


@pytest.fixture(scope="module")
def ingested(corpus, ray_cluster, tmp_path_factory):
    root, _, index = corpus
    out = str(tmp_path_factory.mktemp("shards"))
    config = IngestConfig(input=str(root), output=out, labels=index, test_hooks=True, **TINY, **SMALL)
    summary = run_ingest(config)
    return summary, out, config, read_rows(out)


def _rows_of(table: pa.Table, uri: str) -> list[dict]:
    return [r for r in table.to_pylist() if r["source_uri"] == uri]


def test_every_input_is_accounted_for_with_clear_failures(corpus, ingested):
    root, cases, _ = corpus
    summary, out, _, table = ingested
    bad = {rel: c for rel, c in cases.items() if c.expect == "failed"}
    assert summary["videos_in"] == len(cases) == summary["videos_ok"] + summary["videos_failed"]
    assert summary["videos_failed"] == len(bad) and summary["videos_crashed"] == 1
    assert summary["chunks_written"] == table.num_rows == sum(c.chunks for c in cases.values())
    assert summary["chunks_by_split"]["train"] + summary["chunks_by_split"]["test"] == table.num_rows
    assert summary["warnings"]["silent_chunks"] == 0 and summary["warnings"]["silent_videos"] == 0
    hygiene = summary["hygiene"]
    assert hygiene["rejected"] == {"too_short": 1, "silent": 1} and hygiene["silence_db"] == -60.0
    levels = hygiene["kept_audio_rms_dbfs"]  # the kept clips' tones: 0.125 amplitude sines (lavfi's default)
    assert levels is not None and -60.0 < levels["min"] <= levels["median"] <= levels["max"] < 0.0
    assert summary["decoders"]["video"] == {"decord": len(cases) - len(bad) - 1, "torchcodec": 1}
    assert summary["decoders"]["audio"] == {"torchcodec": len(cases) - len(bad) - 1, "ffmpeg": 1}
    assert summary["labels"]["videos_labelled"] == 3 and summary["labels"]["format"] == "music"
    assert summary["seconds"] > 0 and summary["throughput"]["decode"]["chunks_per_busy_second"] > 0
    assert summary["throughput"]["embed"]["frames"] == sum(len(f) for f in table["frames_jpeg"].to_pylist())
    assert json.loads(Path(out, SUMMARY_FILE).read_text()) == summary

    failures = pq.read_table(Path(out, FAILURES_FILE))
    assert failures.schema.equals(FAILURE_SCHEMA, check_metadata=False)
    by_uri = {f["uri"]: f for f in failures.to_pylist()}
    assert set(by_uri) == {str(root / rel) for rel in bad}
    for rel, case in bad.items():
        failure = by_uri[str(root / rel)]
        assert failure["stage"] == case.stage and case.reason in failure["reason"], (rel, failure)
    assert summary["failures_by_stage"] == {
        s: sum(c.stage == s for c in bad.values()) for s in {c.stage for c in bad.values()}
    }


def test_rows_match_independent_decoding_mel_and_clip(corpus, ingested, tiny_clip):
    root, cases, _ = corpus
    _, _, _, table = ingested
    mel = MelFrontend()
    for rel, case in cases.items():
        if case.expect != "ok":
            continue
        uri = str(root / rel)
        rows = _rows_of(table, uri)
        assert len(rows) == case.chunks, rel
        reference = ffmpeg_audio_16k_mono(uri)  # the ffmpeg CLI, not the job's decoders
        bounds = chunk_bounds(len(reference), 160_000, 66_560)
        assert len(bounds) == case.chunks, rel
        for row, (a, b) in zip(rows, bounds):
            assert row["chunk_id"] == f"{row['video_id']}:{row['chunk_index']:04d}"
            assert row["split"] == hashed_split(row["video_id"], 0.1)
            assert (row["audio_decoder"], row["video_decoder"]) == (case.audio_decoder, case.video_decoder), rel
            np.testing.assert_array_equal(np.asarray(row["audio"], dtype=np.int16), pcm16(reference[a:b]))
            expected = mel(torch.from_numpy(reference[a:b].copy())[None])[0].numpy()
            np.testing.assert_allclose(mel_of(row), expected, atol=1e-5, err_msg=rel)
            frames = [Image.open(io.BytesIO(j)).convert("RGB") for j in row["frames_jpeg"]]
            assert len(frames) == len(row["frame_times"]) == int(row["duration_seconds"] * 1.0)
            assert all(min(f.size) == case.frame_short_side for f in frames)
            if case.time_coded:
                for frame, t in zip(frames, row["frame_times"]):
                    gray = np.asarray(frame.convert("L"), dtype=np.float64).mean()
                    assert abs(gray - rgb_gray_of_luma(luma_at(row["start_seconds"] + t))) < 4, (rel, t)
            # Embeddings: a direct tiny-CLIP call on the stored JPEGs.
            direct = tiny_clip.encode_image([np.asarray(f) for f in frames]).numpy()
            np.testing.assert_allclose(image_embeddings_of(row), direct, atol=1e-5, err_msg=rel)
            assert row["clip_model"] == "tiny/none" and row["embed_dim"] == 64
            assert row["label"] == case.label
            if case.label is None:
                assert row["text_embedding"] is None
            else:
                text = tiny_clip.encode_text([case.label]).numpy()[0]
                np.testing.assert_allclose(text_embedding_of(row), text, atol=1e-6)
    assert Image.open(io.BytesIO(_rows_of(table, str(root / "misc/uhd.mp4"))[0]["frames_jpeg"][0])).size == (398, 224)


def test_rerun_is_idempotent(ingested):
    summary, out, config, table = ingested
    manifests = sorted(os.listdir(Path(out, MANIFEST_DIR)))
    again = run_ingest(config)
    assert (
        again["runs"][-1]["videos_processed"] == 0
        and again["runs"][-1]["videos_skipped_as_done"] == summary["videos_in"]
    )
    for key in ("videos_in", "videos_ok", "videos_failed", "videos_crashed", "chunks_written", "chunks_by_split"):
        assert again[key] == summary[key]
    assert sorted(os.listdir(Path(out, MANIFEST_DIR))) == manifests
    assert read_rows(out).equals(table)


def _load_job():
    spec = importlib.util.spec_from_file_location("preprocess_job", ROOT / "jobs" / "preprocess.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_interrupted_cli_run_resumes_to_the_same_rows(corpus, ingested, tmp_path, monkeypatch):
    root, cases, _ = corpus
    _, _, _, full = ingested
    subset = root / "misc"  # same files (same URIs, same ids) as in the full run
    out = tmp_path / "resumed"
    args = ["--input", str(subset), "--output", str(out), "--clip-model", "tiny", "--clip-pretrained", "none"]
    args += ["--shard-rows", "2", "--clip-batch-size", "2", "--decode-concurrency", "1"]
    monkeypatch.setenv(TEST_HOOKS_ENV, "1")
    monkeypatch.setenv(TEST_EXIT_AFTER_COMMITS_ENV, "1")  # the job is interrupted right after its first commit
    with pytest.raises(KeyboardInterrupt):
        _load_job().main(args)
    committed = os.listdir(out / MANIFEST_DIR)
    assert len(committed) == 1 and not (out / SUMMARY_FILE).exists()
    first = read_rows(str(out))
    n_listed = sum(rel.startswith("misc/") for rel in cases)
    assert 0 < first.num_rows < n_listed
    # What a kill in the middle of the next commit leaves: a shard without its manifest, a staging file.
    # The first commit may have held test rows only (the split hashes the source URI, which differs between
    # machines), so the split folder of the orphan may not exist yet.
    (out / "train").mkdir(exist_ok=True)
    pq.write_table(first, out / "train" / "part-00000000deadbeef.parquet")
    (out / STAGING_DIR).mkdir(exist_ok=True)
    (out / STAGING_DIR / "partial").write_bytes(b"x")

    monkeypatch.setenv(TEST_EXIT_AFTER_COMMITS_ENV, "")
    assert _load_job().main(args) == 0
    summary = json.loads((out / SUMMARY_FILE).read_text())
    done_before = len(json.loads((out / MANIFEST_DIR / committed[0]).read_text())["videos"])
    assert summary["runs"][-1]["videos_skipped_as_done"] == done_before
    assert summary["runs"][-1]["videos_processed"] == n_listed - done_before
    assert summary["videos_in"] == n_listed == summary["videos_ok"] + summary["videos_failed"]
    assert not (out / "train" / "part-00000000deadbeef.parquet").exists() and not (out / STAGING_DIR).exists()
    resumed = read_rows(str(out))
    expected = full.filter(pa.compute.starts_with(full["source_uri"], str(subset) + "/"))
    assert resumed.num_rows == expected.num_rows == summary["chunks_written"]
    for name in resumed.column_names:
        if name == "image_embeddings":  # CLIP batches differ between the runs: equal up to float rounding
            for x, y in zip(resumed[name].to_pylist(), expected[name].to_pylist()):
                np.testing.assert_allclose(x, y, atol=1e-5)
        else:
            assert resumed[name].equals(expected[name]), name


@pytest.fixture
def moto_s3(monkeypatch):
    with moto_server(monkeypatch) as env:
        yield env


def test_s3_input_and_output(corpus, ingested, moto_s3, ray_cluster):
    import s3fs

    root, _, _ = corpus
    _, _, _, full = ingested
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("bucket")
    picks = {"cello/vc01.webm": "videos/c/vc 01.webm", "bad/zero.mp4": "videos/zero.mp4"}
    for src, dst in picks.items():
        fs.put_file(str(root / src), f"bucket/{dst}")
    fs.pipe_file("bucket/labels.csv", b"path,label\nc/vc 01.webm,cello\nzero.mp4,guitar\n")
    config = IngestConfig(
        input="s3://bucket/videos", output="s3://bucket/out", labels="s3://bucket/labels.csv", **TINY, **SMALL
    )
    summary = run_ingest(config, worker_env=moto_s3)
    assert (summary["videos_in"], summary["videos_ok"], summary["videos_failed"]) == (2, 1, 1)
    assert json.loads(fs.cat_file("bucket/out/_summary.json")) == summary
    pfs, _ = pyarrow_filesystem("s3://bucket/out")
    failures = pq.read_table(f"bucket/out/{FAILURES_FILE}", filesystem=pfs).to_pylist()
    assert failures == [{"uri": "s3://bucket/videos/zero.mp4", "stage": "read", "reason": "empty file (0 bytes)"}]
    rows = read_rows("s3://bucket/out")
    assert set(rows["source_uri"].to_pylist()) == {"s3://bucket/videos/c/vc 01.webm"}
    for src, dst in picks.items():
        if src.startswith("bad/"):
            continue
        got = _rows_of(rows, f"s3://bucket/{dst}")
        local = _rows_of(full, str(root / src))
        assert len(got) == len(local) > 0
        for g, x in zip(got, local):
            assert g["label"] == "cello" and g["split"] == hashed_split(g["video_id"], 0.1)
            for key in ("mel", "audio", "frames_jpeg", "frame_times", "start_seconds", "duration_seconds"):
                assert g[key] == x[key], key
