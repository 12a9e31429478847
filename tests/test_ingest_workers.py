"""Ingestion written by the workers (issue 14, fault 3): decoders isolated in a child process, shards staged by
the write stage, and the driver's commits from bookkeeping rows only, with exactly-once accounting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from media import run_ffmpeg, time_coded_input, tone_input

from clipsynth_platform.ingest import IngestConfig
from clipsynth_platform.ingest.commit import LOST_REASON, Committer, RunStats
from clipsynth_platform.ingest.decode import decode_videos, process_video
from clipsynth_platform.ingest.readers import ReadUnit
from clipsynth_platform.ingest.records import (
    CRASHED_REASON,
    RECORD_CHUNK,
    RECORD_CHUNK_FAILED,
    RECORD_WRITTEN,
    VideoRecord,
    record_table,
    video_row,
)
from clipsynth_platform.ingest.settings import DecodeSettings
from clipsynth_platform.ingest.sources import VideoSource
from clipsynth_platform.ingest.store import MANIFEST_DIR, STAGED_DIR, OutputStore
from clipsynth_platform.ingest.write import BOOKKEEPING, rewrite_without, write_staged

SETTINGS = DecodeSettings(chunk_samples=160_000, min_chunk_samples=66_560, frames_per_second=1.0, test_hooks=True)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("v") / "clip.mp4")
    run_ffmpeg(*time_coded_input(15), *tone_input(440, 15), "-c:v", "libx264", "-preset", "ultrafast",
               "-c:a", "aac", "-shortest", path)  # fmt: skip
    return path


def _source(uri: str, vid: str, split: str = "train") -> dict:
    return {"uri": uri, "video_id": vid, "split": split, "label": None}


@pytest.mark.slow  # 12 s on 2 shared cores: out of make test-fast
def test_a_native_crash_fails_one_video_and_the_task_goes_on(video, tmp_path):
    crash = tmp_path / "x__segfault__.mp4"
    crash.write_bytes(Path(video).read_bytes())
    sources = [VideoSource(uri, Path(uri).name, vid, "train", None) for uri, vid in [(video, "a"), (str(crash), "b")]]
    units = [
        ReadUnit("video", None, tuple(sources)),
        ReadUnit("video", None, (VideoSource(video, "c", "c", "train", None),)),
    ]
    batch = pa.Table.from_pylist([{"unit": u.to_json()} for u in units])
    tables = list(decode_videos(batch, SETTINGS.to_dict()))  # in this process: a crash here would kill pytest
    rows = pa.concat_tables(tables).to_pylist()
    videos = {r["video_id"]: r for r in rows if r["record"] == "video"}
    assert (videos["a"]["status"], videos["c"]["status"]) == ("ok", "ok")
    assert (videos["b"]["status"], videos["b"]["fail_stage"], videos["b"]["fail_reason"]) == (
        "failed",
        "decode",
        CRASHED_REASON,
    )
    # The child's rows are those of the in-process decoder, after the crash too (a fresh child).
    direct = pa.concat_tables(list(process_video(_source(video, "c"), SETTINGS))).to_pylist()
    got = [r for r in rows if r["video_id"] == "c"]
    assert len(got) == len(direct) == 3  # 2 chunks (10 s, 5 s) and the video row
    for g, d in zip(got, direct):
        assert g["frames_jpeg"] == d["frames_jpeg"] and g["audio"] == d["audio"]
        if g["mel"] is not None:  # other thread counts: equal up to float rounding
            np.testing.assert_allclose(g["mel"], d["mel"], atol=1e-5)


def _chunks(vid: str, n: int, split: str = "train", start: int = 0) -> list[dict]:
    mel = np.zeros(64 * 10, np.float32)
    return [
        {"record": RECORD_CHUNK, "chunk_id": f"{vid}:{i:04d}", "video_id": vid, "source_uri": f"/v/{vid}.mp4",
         "chunk_index": i, "start_seconds": 10.0 * i, "duration_seconds": 10.0, "split": split, "label": None,
         "mel": mel, "n_mels": 64, "mel_frames": 10, "frames_jpeg": [b"\xff" * 5000] * 10,
         "frame_times": np.zeros(10, np.float32), "image_embeddings": np.zeros(640, np.float32), "embed_dim": 64,
         "clip_model": "tiny", "audio_decoder": "torchcodec", "video_decoder": "decord", "audio": [0] * 20_000,
         "info_json": json.dumps({"embed_seconds": 0.5})}
        for i in range(start, start + n)
    ]  # fmt: skip


def _video(vid: str, chunks: int, split: str = "train") -> dict:
    record = VideoRecord(status="ok", chunks=chunks, info={"timings": {"read": 0.1}})
    return video_row(_source(f"/v/{vid}.mp4", vid, split), record)


def test_the_write_stage_stages_shards_and_returns_only_bookkeeping(tmp_path):
    store = OutputStore(str(tmp_path))
    batch = record_table([*_chunks("a", 2), *_chunks("b", 1, "test"), _video("a", 2), _video("b", 1, "test")])
    out = write_staged(batch, str(tmp_path))
    assert out.column_names == batch.column_names  # the same schema, heavy columns empty
    for name in set(out.column_names) - set(BOOKKEEPING):
        assert out[name].null_count == out.num_rows, name
    assert out.nbytes * 20 < batch.nbytes
    written = [json.loads(r["info_json"]) for r in out.to_pylist() if r["record"] == RECORD_WRITTEN]
    assert sorted((w["split"], w["rows"], w["frames"]) for w in written) == [("test", 1, 10), ("train", 2, 20)]
    for w in written:
        assert w["file"].startswith(STAGED_DIR + "/")
        staged = store.read_staged(w["file"])
        assert staged.num_rows == w["rows"] and set(staged["split"].to_pylist()) == {w["split"]}
    assert sum(r["record"] == "video" for r in out.to_pylist()) == 2


def _committer(tmp_path, shard_rows: int = 1):
    store = OutputStore(str(tmp_path))
    config = IngestConfig(input="i", output=str(tmp_path), shard_rows=shard_rows)
    rewrites: list[tuple[str, list[str]]] = []

    def rewrite(relative: str, drop: list[str]) -> dict:
        rewrites.append((relative, drop))
        return rewrite_without(str(tmp_path), relative, drop)

    return Committer(store, config, RunStats(), 4, lambda m: None, rewrite), store, rewrites


def _written(tmp_path, rows: list[dict]) -> pa.Table:
    return write_staged(record_table(rows), str(tmp_path))


def test_files_shared_by_videos_commit_together_and_failed_rows_are_removed(tmp_path):
    committer, store, rewrites = _committer(tmp_path)
    # File 1 holds a's first chunk and b's chunk; file 2 a's second chunk. a completes only with file 2.
    committer.add_batch(_written(tmp_path, [*_chunks("a", 1), *_chunks("b", 1), _video("b", 1)]))
    assert store.manifests() == []  # b is complete but shares file 1 with a, which is not
    committer.add_batch(_written(tmp_path, [*_chunks("a", 1, start=1), _video("a", 2)]))
    [first] = store.manifests()
    assert sorted(v["video_id"] for v in first["videos"]) == ["a", "b"] and first["rows"] == {"train": 3}
    # c: one chunk staged, then its CLIP batch fails for the other: its staged row must not be committed.
    committer.add_batch(_written(tmp_path, [*_chunks("c", 1), *_chunks("d", 1), _video("d", 1)]))
    failed = {**_chunks("c", 1, start=1)[0], "record": RECORD_CHUNK_FAILED, "fail_reason": "CLIP embedding failed"}
    committer.add_batch(_written(tmp_path, [failed, _video("c", 2)]))
    committer.lost(
        [VideoSource(f"/v/{v}.mp4", f"{v}.mp4", v, "train", None) for v in "abcde"]
    )  # e: nothing ever arrived
    committer.maybe_commit(final=True)
    latest, _ = store.recover()
    status = {v["video_id"]: (v["status"], v["stage"], v["reason"]) for v in latest.values()}
    assert status == {
        "a": ("ok", None, None),
        "b": ("ok", None, None),
        "c": ("failed", "embed", "CLIP embedding failed"),
        "d": ("ok", None, None),
        "e": ("failed", "decode", LOST_REASON),
    }
    assert len(rewrites) == 1 and rewrites[0][1] == ["c"]
    rows = pa.concat_tables([pq.read_table(p) for p in sorted((tmp_path / "train").glob("part-*.parquet"))])
    assert sorted(rows["chunk_id"].to_pylist()) == ["a:0000", "a:0001", "b:0000", "d:0000"]  # each once, no c
    assert committer.stats.videos_committed == 5 and len(list((tmp_path / MANIFEST_DIR).glob("*.json"))) == 3
    assert pc.sum(rows["embed_dim"]).as_py() == 64 * 4
