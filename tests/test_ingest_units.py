"""Ingestion without Ray: sampling maths, label indexes, splits, the commit protocol, one video's decode, the CLI."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from media import ffmpeg_audio_16k_mono, luma_at, rgb_gray_of_luma, run_ffmpeg, time_coded_input, tone_input
from PIL import Image

from clipsynth_core import MelFrontend
from clipsynth_platform.datasets.schema import CHUNK_SCHEMA, audio_of, mel_of, pcm16
from clipsynth_platform.ingest import IngestConfig, hashed_split, plan_sources, video_id_of
from clipsynth_platform.ingest.config import TEST_HOOKS_ENV
from clipsynth_platform.ingest.decode import chunk_bounds, frame_targets, process_video
from clipsynth_platform.ingest.failures import short_error
from clipsynth_platform.ingest.frames import frame_size, select_frames
from clipsynth_platform.ingest.inputs import list_inputs
from clipsynth_platform.ingest.labels import (
    detect_format,
    load_label_index,
    parse_music_json,
    parse_path_label_csv,
    parse_vggsound_csv,
)
from clipsynth_platform.ingest.records import to_chunk_table
from clipsynth_platform.ingest.settings import DecodeSettings
from clipsynth_platform.ingest.store import MANIFEST_DIR, STAGING_DIR, OutputStore, VideoOutcome

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ chunks, frames


def test_chunk_bounds_keep_a_trailing_chunk_only_with_a_full_window():
    # 25 s: two full chunks and a 5 s tail (80,000 >= 66,560 samples): kept.
    assert chunk_bounds(400_000, 160_000, 66_560) == [(0, 160_000), (160_000, 320_000), (320_000, 400_000)]
    # A tail one sample short of the window is dropped; exactly the window is kept.
    assert chunk_bounds(160_000 + 66_559, 160_000, 66_560) == [(0, 160_000)]
    assert chunk_bounds(160_000 + 66_560, 160_000, 66_560)[-1] == (160_000, 226_560)
    # Shorter than one window: nothing.
    assert chunk_bounds(66_559, 160_000, 66_560) == []


def test_frame_targets_are_interval_midpoints():
    np.testing.assert_allclose(frame_targets(10.0, 1.0), np.arange(10) + 0.5)
    np.testing.assert_allclose(frame_targets(5.0, 2.0), (np.arange(10) + 0.5) / 2)
    assert len(frame_targets(4.16, 1.0)) == 4
    assert len(frame_targets(0.3, 1.0)) == 1  # never zero frames


def test_select_frames_exact_and_keyframe_on_variable_frame_rate():
    starts = np.array([0.0, 0.04, 0.08, 0.5, 0.9, 2.0, 2.1])  # irregular: a VFR stream
    targets = np.array([-0.1, 0.05, 0.5, 1.5, 3.0])
    # Exact: the frame on screen at the time (last start <= t; the first frame before the stream starts).
    assert select_frames(starts, targets).tolist() == [0, 1, 3, 4, 6]
    # Keyframe: nearest keyframe start; keyframes at 0.0 and 2.0.
    assert select_frames(starts, targets, key_indices=np.array([5, 0])).tolist() == [0, 0, 0, 5, 5]
    with pytest.raises(ValueError, match="no frames"):
        select_frames(np.array([]), targets)


def test_frame_size_scales_the_shorter_side():
    assert frame_size(3840, 2160, 224) == (398, 224)
    assert frame_size(160, 120, 224) == (299, 224)
    assert frame_size(720, 1280, 224) == (224, 398)  # portrait
    with pytest.raises(ValueError, match="invalid frame size"):
        frame_size(0, 120, 224)


def test_short_error_strips_decoder_source_locations():
    msg = "SingleStreamDecoder, /__w/x/src/SingleStreamDecoder.cpp:41, Could not open input file: a.mp4 Invalid data"
    assert short_error(RuntimeError(msg)) == "Could not open input file: a.mp4 Invalid data"
    msg = "[03:50:39] /github/workspace/src/video/video_reader.cc:151: Check failed: st_nb >= 0 ERROR cannot find"
    assert short_error(RuntimeError(msg)) == "st_nb >= 0 ERROR cannot find"


# ------------------------------------------------------------------------------------------- label indexes


def test_vggsound_csv_keys_and_split():
    text = '---g-f_I2yQ,1,"people marching, loudly",test\nabc_def,30,dog barking,train\n'
    index = parse_vggsound_csv(text)
    assert index.lookup("/x/---g-f_I2yQ_000001.mp4", "---g-f_I2yQ_000001.mp4").label == "people marching, loudly"
    entry = index.lookup("s3://b/v/abc_def_000030.mp4", "v/abc_def_000030.mp4")
    assert (entry.label, entry.split) == ("dog barking", "train")
    assert index.lookup("/x/abc_def_000031.mp4", "abc_def_000031.mp4") is None
    with pytest.raises(ValueError, match="line 1: expected youtube_id,start_seconds,label,split"):
        parse_vggsound_csv("a,1,dog\n")
    with pytest.raises(ValueError, match="split 'val' is not one of"):
        parse_vggsound_csv("a,1,dog,val\n")
    with pytest.raises(ValueError, match="start_seconds 'x' is not a number"):
        parse_vggsound_csv("a,x,dog,train\n")


def test_music_json_and_per_class_folders():
    index = parse_music_json(json.dumps({"videos": {"accordion": ["aaa", "bbb"], "violin": ["ccc", "aaa"]}}))
    assert index.lookup("/d/accordion/aaa.mp4", "accordion/aaa.mp4").label == "accordion"
    assert index.lookup("/d/ccc.webm", "ccc.webm").label == "violin"
    assert index.conflicts == ["aaa"]  # listed under two classes: the first is kept and the conflict counted
    assert index.labels == ["accordion", "violin"]
    assert parse_music_json(json.dumps({"cello": ["x"]})).lookup("/x.mp4", "x.mp4").label == "cello"
    with pytest.raises(ValueError, match="must look like"):
        parse_music_json(json.dumps({"videos": ["a", "b"]}))
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_music_json("{oops")


def test_path_label_csv_relative_absolute_and_header(tmp_path):
    text = f"path,label,split\nsub/a b.mp4,cat,test\n{tmp_path}/c.mp4,dog,\n./d.mp4,bird,train\n"
    index = parse_path_label_csv(text, str(tmp_path))
    assert index.lookup(f"{tmp_path}/sub/a b.mp4", "sub/a b.mp4") == index.entries["sub/a b.mp4"]
    assert index.entries["sub/a b.mp4"].split == "test"
    assert index.lookup(f"{tmp_path}/c.mp4", "c.mp4").label == "dog"
    assert index.lookup(f"{tmp_path}/d.mp4", "d.mp4").label == "bird"
    with pytest.raises(ValueError, match="line 2: expected path,label"):
        parse_path_label_csv("a.mp4,cat\nb.mp4\n")


def test_label_format_detection_and_loading(tmp_path):
    assert detect_format("x.json", "{}") == "music"
    assert detect_format("vggsound.csv", "abc,10,dog,train\n") == "vggsound"
    assert detect_format("labels.csv", "path,label\na.mp4,dog\n") == "csv"
    (tmp_path / "v.csv").write_text("abc,10,dog,train\n")
    assert load_label_index(str(tmp_path / "v.csv")).format == "vggsound"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_label_index(str(tmp_path / "missing.csv"))
    (tmp_path / "empty.json").write_text('{"videos": {}}')
    with pytest.raises(ValueError, match="has no entries"):
        load_label_index(str(tmp_path / "empty.json"))


# -------------------------------------------------------------------------------------------------- splits


def test_hashed_split_is_deterministic_and_near_the_fraction():
    ids = [video_id_of(f"/videos/{i}.mp4") for i in range(4000)]
    splits = [hashed_split(v, 0.1) for v in ids]
    assert splits == [hashed_split(v, 0.1) for v in ids]
    share = splits.count("test") / len(splits)
    # Binomial(4000, 0.1): sd 0.0047; 4 sd either side.
    assert abs(share - 0.1) < 0.019
    assert set(hashed_split(v, 0.0) for v in ids) == {"train"}
    assert video_id_of("/videos/0.mp4") == __import__("hashlib").sha1(b"/videos/0.mp4").hexdigest()[:16]


def test_plan_sources_lists_videos_and_uses_the_index_split(tmp_path):
    for rel in ("a/x_000010.mp4", "b/y_000000.webm", ".hidden/z_000000.mp4", "notes.txt", "out/o.mp4"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "vgg.csv").write_text("x,10,dog,test\ny,0,cat,train\n")
    index = load_label_index(str(tmp_path / "vgg.csv"))
    files = list_inputs([str(tmp_path)], IngestConfig().extensions, exclude=str(tmp_path / "out"))
    sources = plan_sources(files, {}, 0.1, index)
    assert [(s.relative_path, s.label, s.split, s.label_from, s.split_from) for s in sources] == [
        ("a/x_000010.mp4", "dog", "test", "index", "index"),
        ("b/y_000000.webm", "cat", "train", "index", "index"),
    ]
    assert sources[0].video_id == video_id_of(str(tmp_path / "a/x_000010.mp4"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_inputs([str(tmp_path / "nope")], (".mp4",))


def test_config_validation_messages():
    IngestConfig(input="a", output="b").validate()
    for kwargs, message in [
        ({"frames_per_second": 0}, "--fps"),
        ({"chunk_seconds": 4.0}, "--chunk-seconds"),
        ({"frame_sampling": "nearest"}, "--frame-sampling"),
        ({"test_fraction": 1.0}, "--test-fraction"),
        ({"clip_template": "a photo"}, "{query}"),
        ({"shard_rows": 0}, "--shard-rows"),
    ]:
        with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
            IngestConfig(input="a", output="b", **kwargs).validate()
    with pytest.raises(ValueError, match="--input is required"):
        IngestConfig(output="b").validate()


# ---------------------------------------------------------------------------------------- commit protocol


def _chunk_rows(video_id: str, n: int, split: str = "train") -> pa.Table:
    rows = [
        {
            "chunk_id": f"{video_id}:{i:04d}",
            "video_id": video_id,
            "source_uri": f"/v/{video_id}.mp4",
            "chunk_index": i,
            "start_seconds": 10.0 * i,
            "duration_seconds": 10.0,
            "split": split,
            "label": None,
            "mel": [0.0] * 4,
            "n_mels": 2,
            "mel_frames": 2,
            "frames_jpeg": [b"x"],
            "frame_times": [0.5],
            "image_embeddings": [1.0, 0.0],
            "embed_dim": 2,
            "text_embedding": None,
            "clip_model": "tiny/none",
            "audio_decoder": "torchcodec",
            "video_decoder": "decord",
            "audio": None,
        }
        for i in reversed(range(n))
    ]
    return pa.Table.from_pylist(rows, schema=CHUNK_SCHEMA)


def test_store_commits_atomically_and_recovers_from_an_interrupted_commit(tmp_path):
    store = OutputStore(str(tmp_path))
    store.check_settings({"fps": 1.0})
    ok = VideoOutcome("/v/a.mp4", "a", "train", None, "ok", chunks=2)
    bad = VideoOutcome("/v/b.mp4", "b", "test", None, "failed", "decode", "no audio track")
    table = pa.concat_tables([_chunk_rows("a", 2), _chunk_rows("t", 1, "test")])
    result = store.commit([ok, bad], to_chunk_table(table))
    assert result.rows == {"train": 2, "test": 1}
    train = pq.read_table(tmp_path / "train" / f"part-{result.name}.parquet")
    assert train.schema.equals(CHUNK_SCHEMA, check_metadata=False)
    assert train["chunk_index"].to_pylist() == [0, 1]  # sorted by video and chunk
    # An interrupted commit: a shard without a manifest, and a staging file. Recovery removes both.
    (tmp_path / "train" / "part-0123456789abcdef.parquet").write_bytes(b"partial")
    (tmp_path / STAGING_DIR).mkdir(exist_ok=True)
    (tmp_path / STAGING_DIR / "junk").write_bytes(b"x")
    latest, info = store.recover()
    assert info == {"manifests": 1, "uncommitted_shards_removed": 1}
    assert not (tmp_path / "train" / "part-0123456789abcdef.parquet").exists()
    assert not (tmp_path / STAGING_DIR).exists()
    assert latest["/v/b.mp4"]["reason"] == "no audio track" and latest["/v/a.mp4"]["chunks"] == 2
    # A later manifest supersedes an earlier one for the same video (--retry-failed).
    store.commit([VideoOutcome("/v/b.mp4", "b", "test", None, "ok", chunks=1)], None)
    assert store.recover()[0]["/v/b.mp4"]["status"] == "ok"
    assert len(list((tmp_path / MANIFEST_DIR).glob("*.json"))) == 2
    # Rows made with other settings are never mixed in.
    with pytest.raises(ValueError, match=r"other settings .*\"fps\""):
        store.check_settings({"fps": 2.0})


# --------------------------------------------------------------------------------------- one video's decode


@pytest.fixture(scope="module")
def coded_video(tmp_path_factory) -> str:
    """15 s, time-coded luma, a keyframe every 3 s, stereo 44.1 kHz AAC."""
    path = str(tmp_path_factory.mktemp("one") / "coded video é.mp4")
    run_ffmpeg(*time_coded_input(15), *tone_input(440, 15), "-c:v", "libx264", "-preset", "ultrafast", "-g", "75", "-keyint_min", "75",
        "-sc_threshold", "0", "-c:a", "aac", "-ac", "2", "-shortest", path)  # fmt: skip
    return path


def _decode(path: str, **settings) -> tuple[list[dict], dict]:
    src = {"uri": path, "video_id": "v", "split": "train", "label": None}
    table = pa.concat_tables(list(process_video(src, DecodeSettings(**settings))))
    chunks = table.filter(pc.equal(table["record"], "chunk"))
    video = table.filter(pc.equal(table["record"], "video")).to_pylist()
    assert len(video) == 1
    return to_chunk_table(chunks).to_pylist(), video[0]


def test_decode_exact_frames_mel_and_audio_against_independent_decoding(coded_video):
    rows, video = _decode(coded_video)
    assert (video["status"], video["video_chunks"], video["audio_decoder"], video["video_decoder"]) == (
        "ok",
        2,
        "torchcodec",
        "decord",
    )
    reference = ffmpeg_audio_16k_mono(coded_video)
    mel = MelFrontend()
    for row, (a, b) in zip(rows, chunk_bounds(len(reference), 160_000, 66_560)):
        assert row["start_seconds"] == pytest.approx(a / 16_000) and row["duration_seconds"] == (b - a) / 16_000
        np.testing.assert_array_equal(np.asarray(row["audio"], dtype=np.int16), pcm16(reference[a:b]))
        expected = mel(torch.from_numpy(reference[a:b].copy())[None])[0].numpy()
        assert mel_of(row).shape == (64, 155 if b - a == 160_000 else (b - a - 2048) // 1024 + 1)
        np.testing.assert_allclose(mel_of(row), expected, atol=1e-5)
        assert np.abs(audio_of(row) - reference[a:b]).max() <= 1 / 32767
        # Exact frames: one per second at the interval midpoints, showing the picture of their own time.
        targets = frame_targets(row["duration_seconds"], 1.0)
        times = np.asarray(row["frame_times"])
        assert len(row["frames_jpeg"]) == len(targets)
        assert np.all(times <= targets + 1e-6) and np.all(targets - times < 0.04 + 1e-3)
        for jpeg, t in zip(row["frames_jpeg"], times):
            im = Image.open(io.BytesIO(jpeg))
            assert im.size == (299, 224)
            gray = np.asarray(im.convert("L"), dtype=np.float64).mean()
            assert abs(gray - rgb_gray_of_luma(luma_at(row["start_seconds"] + t))) < 4


def test_decode_keyframe_mode_returns_keyframes_only(coded_video):
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time,flags", "-of", "csv=p=0", coded_video],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    key_times = sorted(float(line.split(",")[0]) for line in probe.split() if "K" in line.split(",")[1])
    assert key_times == pytest.approx([0.0, 3.0, 6.0, 9.0, 12.0])
    rows, video = _decode(coded_video, frame_sampling="keyframe")
    info = json.loads(video["info_json"])
    # decord's index picks the keyframes, torchcodec decodes them (it stops at the frame asked for).
    assert (info["frame_sampling"], video["video_decoder"], info["notes"]) == ("keyframe", "torchcodec", [])
    first = np.asarray(rows[0]["frame_times"]) + rows[0]["start_seconds"]
    # Targets 0.5..9.5 s snap to the nearest keyframe: 0, 3, 6, 9 (each once).
    np.testing.assert_allclose(first, [0.0, 3.0, 6.0, 9.0], atol=1e-3)
    # The second chunk (10 s..15 s: targets 10.5..14.5) snaps to 9 and 12: keyframe 9 s serves both chunks.
    second = np.asarray(rows[1]["frame_times"]) + rows[1]["start_seconds"]
    np.testing.assert_allclose(second, [9.0, 12.0], atol=1e-3)
    assert rows[1]["frames_jpeg"][0] == rows[0]["frames_jpeg"][3]  # decoded and encoded once
    for row in rows:
        for jpeg, t in zip(row["frames_jpeg"], np.asarray(row["frame_times"]) + row["start_seconds"]):
            image = Image.open(io.BytesIO(jpeg))
            assert image.size == (299, 224)
            gray = np.asarray(image.convert("L"), dtype=np.float64).mean()
            assert abs(gray - rgb_gray_of_luma(luma_at(t))) < 4


def test_decode_keyframe_mode_falls_back_to_decord_pixels(coded_video, monkeypatch):
    from clipsynth_platform.ingest import frames

    reference, _ = _decode(coded_video, frame_sampling="keyframe")  # torchcodec's pixels

    class BrokenDecoder:
        def get_frames_played_at(self, seconds):
            raise RuntimeError("simulated torchcodec failure")

    monkeypatch.setattr(
        frames.DecordIndexedKeyframes, "_open_keyframe_decoder", lambda self: setattr(self, "_keys", BrokenDecoder())
    )
    rows, video = _decode(coded_video, frame_sampling="keyframe")
    info = json.loads(video["info_json"])
    assert (video["status"], video["video_decoder"]) == ("ok", "decord")
    assert info["notes"] == ["keyframes fallback to decord after: simulated torchcodec failure"]
    for got, want in zip(rows, reference, strict=True):
        np.testing.assert_allclose(got["frame_times"], want["frame_times"], atol=1e-6)
        for a, b in zip(got["frames_jpeg"], want["frames_jpeg"], strict=True):
            x, y = (np.asarray(Image.open(io.BytesIO(j)).convert("L"), dtype=np.float64) for j in (a, b))
            assert x.shape == y.shape and np.abs(x - y).mean() < 3  # two scalers, the same picture


@pytest.mark.parametrize("frame_sampling", ["exact", "keyframe"])
def test_decode_frames_keep_their_time_when_the_stream_starts_late(tmp_path, frame_sampling):
    # MPEG-TS streams start at about 1.4 s; decord counts from the video's first frame, torchcodec and the audio
    # from the container's clock. A frame must show the picture of its own time on the container's clock.
    path = str(tmp_path / "broadcast.ts")
    run_ffmpeg(*time_coded_input(12), *tone_input(440, 12), "-c:v", "libx264", "-preset", "ultrafast", "-g", "50",
        "-keyint_min", "50", "-sc_threshold", "0", "-c:a", "aac", "-f", "mpegts", path)  # fmt: skip
    starts = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,start_time", "-of", "csv=p=0", path],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    video_start = next(float(line.split(",")[1]) for line in starts if line.startswith("video"))
    assert video_start > 1.0
    rows, video = _decode(path, frame_sampling=frame_sampling)
    info = json.loads(video["info_json"])
    assert (video["status"], info["notes"]) == ("ok", [])
    assert info["streams"]["video_start"] == pytest.approx(video_start, abs=1e-5)
    assert video["video_decoder"] == ("decord" if frame_sampling == "exact" else "torchcodec")
    assert rows[0]["start_seconds"] == pytest.approx(video_start, abs=0.05)  # the audio starts with the video
    for row in rows:
        times = np.asarray(row["frame_times"]) + row["start_seconds"]
        assert len(times) > 1
        for jpeg, t in zip(row["frames_jpeg"], times):
            gray = np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"), dtype=np.float64).mean()
            assert abs(gray - rgb_gray_of_luma(luma_at(t - video_start))) < 4, (t, gray)


def test_decode_without_audio_column_and_other_fps(coded_video):
    rows, _ = _decode(coded_video, with_audio=False, frames_per_second=2.0, image_size=64)
    assert all(r["audio"] is None for r in rows)
    assert [len(r["frames_jpeg"]) for r in rows] == [20, 10]
    assert Image.open(io.BytesIO(rows[0]["frames_jpeg"][0])).size == (85, 64)


# ---------------------------------------------------------------------------------------------------- CLI


def _load_job():
    spec = importlib.util.spec_from_file_location("preprocess_job", ROOT / "jobs" / "preprocess.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_parses_every_option_into_the_config(monkeypatch):
    from clipsynth_platform.ingest.job import main, parse
    from clipsynth_platform.runtime.options import build_parser

    monkeypatch.delenv(TEST_HOOKS_ENV, raising=False)
    job = _load_job()
    assert job.main is main  # the job is the platform's main(), nothing of its own
    config = parse(
        ["--input", "s3://b/v", "--output", "o", "--labels", "l.json", "--clip-model", "tiny", "--clip-pretrained", "none",
         "--fps", "2", "--chunk-seconds", "8", "--no-audio", "--num-cpus", "4", "--num-gpus", "1", "--shard-rows", "10",
         "--frame-sampling", "keyframe", "--extensions", "mp4", "MKV", "--videos-per-task", "3"]
    )  # fmt: skip
    assert (config.input, config.labels, config.clip_model, config.clip_pretrained) == (
        ("s3://b/v",),
        "l.json",
        "tiny",
        "none",
    )
    assert (config.frames_per_second, config.chunk_seconds, config.with_audio, config.num_gpus) == (2.0, 8.0, False, 1)
    assert (config.shard_rows, config.frame_sampling, config.extensions, config.videos_per_task) == (
        10,
        "keyframe",
        (".mp4", ".mkv"),
        3,
    )
    assert config.num_cpus == 4 and config.limit is None and config.address is None
    assert config.test_hooks is False
    # the test hooks have no flag: only the environment turns them on
    with pytest.raises(SystemExit):
        parse(["--input", "i", "--output", "o", "--test-hooks"])
    monkeypatch.setenv(TEST_HOOKS_ENV, "1")
    assert parse(["--input", "i", "--output", "o"]).test_hooks is True
    help_text = build_parser(IngestConfig, None).format_help()
    for option in (
        "--input",
        "--labels",
        "--clip-pretrained",
        "--fps",
        "--chunk-seconds",
        "--num-cpus",
        "--num-gpus",
        "--shard-rows",
        "--no-audio",
    ):
        assert option in help_text


def test_cli_fails_with_the_clip_weights_message_and_writes_nothing(tmp_path, capsys):
    job = _load_job()
    (tmp_path / "in").mkdir()
    code = job.main(
        [
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(tmp_path / "out"),
            "--clip-model",
            "tiny",
            "--clip-pretrained",
            "openai",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "CLIP weights for 'tiny' (pretrained='openai') are not available" in err and "--clip-pretrained none" in err
    assert not (tmp_path / "out").exists()
    assert (
        job.main(
            [
                "--input",
                str(tmp_path / "missing"),
                "--output",
                str(tmp_path / "o"),
                "--clip-model",
                "tiny",
                "--clip-pretrained",
                "none",
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
