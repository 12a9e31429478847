"""The built-in sample corpus: files, streams and durations (ffprobe), audible audio whose pitch follows the
score (a YIN pitch tracker on audio decoded by the ffmpeg CLI, against the MIDI files read by a parser
written here), pictures in the class colour, the MUSIC label index (and the ingestion job's parser of it),
determinism from the seed, idempotent rebuilds, and clear errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clipsynth_platform.datasets.corpus import CorpusConfig, CorpusManifest, CorpusToolError, build_corpus
from clipsynth_platform.datasets.corpus.config import INSTRUMENTS, LABEL_INDEX_FILE, MANIFEST_FILE, SPLIT_INDEX_FILE

REPO = Path(__file__).resolve().parents[1]
FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
FFPROBE = shutil.which("ffprobe") or "ffprobe"
# Two low and two high classes (tuba's and xylophone's ranges do not overlap); 10-12 s keeps the test fast.
SETTINGS = {
    "classes": ("tuba", "cello", "violin", "xylophone"),
    "videos_per_class": 2,
    "min_seconds": 10.0,
    "max_seconds": 12.0,
    "seed": 7,
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> CorpusManifest:
    return build_corpus(CorpusConfig(out=str(tmp_path_factory.mktemp("corpus") / "music"), **SETTINGS))


@pytest.fixture(scope="module")
def twin(tmp_path_factory, corpus) -> CorpusManifest:
    """A second build of the same config, one worker instead of one per core."""
    return build_corpus(CorpusConfig(out=str(tmp_path_factory.mktemp("twin") / "music"), workers=1, **SETTINGS))


# ----------------------------------------------------------------------------- independent readers


def ffprobe(path: Path) -> dict:
    cmd = [FFPROBE, "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)]
    return json.loads(subprocess.run(cmd, capture_output=True, check=True, text=True).stdout)


def decode_audio(path: Path, rate: int = 16_000) -> np.ndarray:
    cmd = [FFMPEG, "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-ac", "1", "-ar", str(rate)]
    out = subprocess.run([*cmd, "-f", "f32le", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(out, dtype=np.float32)


def decode_frame(path: Path, seconds: float, width: int, height: int) -> np.ndarray:
    cmd = [FFMPEG, "-nostdin", "-v", "error", "-ss", str(seconds), "-i", str(path), "-frames:v", "1"]
    out = subprocess.run([*cmd, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(out, dtype=np.uint8).reshape(height, width, 3)


def _varlen(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    while True:
        byte = data[pos]
        pos += 1
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, pos


def parse_midi(data: bytes) -> dict:
    """A single-track Standard MIDI File -> {"programs", "tempo_us", "notes": [(start_s, end_s, pitch)],
    "end_s"}. Handles only what a format-0 melody needs (no running status, one tempo)."""
    assert data[:4] == b"MThd" and int.from_bytes(data[8:10], "big") == 0, "not a format-0 MIDI file"
    division = int.from_bytes(data[12:14], "big")
    assert data[14:18] == b"MTrk"
    pos, end = 22, 22 + int.from_bytes(data[18:22], "big")
    tick, tempo, programs, sounding, notes, end_tick = 0, 500_000, [], {}, [], None
    while pos < end:
        delta, pos = _varlen(data, pos)
        tick += delta
        status = data[pos]
        if status == 0xFF:
            kind = data[pos + 1]
            length, pos = _varlen(data, pos + 2)
            if kind == 0x51:
                tempo = int.from_bytes(data[pos : pos + length], "big")
            if kind == 0x2F:
                end_tick = tick
            pos += length
            continue
        kind = status & 0xF0
        if kind in (0xC0, 0xD0):
            if kind == 0xC0:
                programs.append(data[pos + 1])
            pos += 2
            continue
        pitch, velocity = data[pos + 1], data[pos + 2]
        pos += 3
        seconds = tick * tempo / 1e6 / division
        if kind == 0x90 and velocity > 0:
            sounding[pitch] = seconds
        elif kind in (0x80, 0x90):
            notes.append((sounding.pop(pitch), seconds, pitch))
    assert end_tick is not None, "no end-of-track event"
    return {"programs": programs, "tempo_us": tempo, "notes": notes, "end_s": end_tick * tempo / 1e6 / division}


def yin_pitches(x: np.ndarray, rate: int = 16_000, frame: int = 2048, hop: int = 512) -> np.ndarray:
    """Per-frame fundamental frequencies (Hz) of the audible frames by YIN (de Cheveigné & Kawahara 2002):
    the first dip of the cumulative-mean-normalised difference function below 0.15, for 35-2200 Hz."""
    tau_min, tau_max = rate // 2200, rate // 35
    found = []
    for start in range(0, len(x) - frame - tau_max, hop):
        seg = x[start : start + frame + tau_max].astype(np.float64)
        head = seg[:frame]
        if np.sqrt(np.mean(head**2)) < 0.02:
            continue
        # d(tau) = sum_j (x_j - x_{j+tau})^2 = E(head) + E(shifted window) - 2 * cross-correlation
        cum = np.concatenate([[0.0], np.cumsum(seg**2)])
        taus = np.arange(tau_max + 1)
        n_fft = 1 << int(np.ceil(np.log2(len(seg) + frame)))
        corr = np.fft.irfft(np.fft.rfft(seg, n_fft) * np.conj(np.fft.rfft(head, n_fft)), n_fft)[: tau_max + 1]
        diff = cum[frame] + (cum[taus + frame] - cum[taus]) - 2 * corr
        cmnd = np.ones_like(diff)
        cmnd[1:] = diff[1:] * taus[1:] / np.maximum(np.cumsum(diff[1:]), 1e-12)
        below = np.nonzero(cmnd[tau_min:] < 0.15)[0]
        if len(below) == 0:
            continue
        tau = int(below[0]) + tau_min
        while tau < tau_max and cmnd[tau + 1] < cmnd[tau]:
            tau += 1
        found.append(rate / tau)
    return np.array(found)


def midi_of_hz(hz: np.ndarray | float) -> np.ndarray | float:
    return 69 + 12 * np.log2(np.asarray(hz) / 440.0)


def file_bytes(manifest: CorpusManifest, kind: str) -> dict[str, bytes]:
    return {v.id: manifest.path(getattr(v, kind)).read_bytes() for v in manifest.videos}


# ----------------------------------------------------------------------------- the corpus


def test_videos_per_class_streams_and_durations(corpus):
    root = Path(corpus.root)
    for label in SETTINGS["classes"]:
        assert sorted(p.name for p in (root / label).glob("*.mp4")) == [f"{label}_{i:03d}.mp4" for i in (1, 2)]
    assert len(corpus.videos) == 8
    for v in corpus.videos:
        probe = ffprobe(root / v.video)
        streams = {s["codec_type"]: s for s in probe["streams"]}
        assert sorted(s["codec_type"] for s in probe["streams"]) == ["audio", "video"]
        assert streams["video"]["codec_name"] == "h264"
        assert (streams["video"]["width"], streams["video"]["height"]) == (320, 240)
        assert streams["video"]["avg_frame_rate"] == "10/1"
        assert int(streams["video"]["nb_frames"]) == round(v.seconds * 10)
        assert streams["audio"]["codec_name"] == "aac"
        assert int(streams["audio"]["sample_rate"]) == 16_000
        duration = float(probe["format"]["duration"])
        assert duration == pytest.approx(v.seconds, abs=0.1)
        assert 10.0 - 0.1 <= duration <= 12.0 + 0.1
    # Durations are drawn per video, not one for all.
    assert len({v.seconds for v in corpus.videos}) > 1


def test_label_index_is_music_json_matching_the_files(corpus):
    root = Path(corpus.root)
    index = json.loads((root / LABEL_INDEX_FILE).read_text())
    assert list(index) == ["videos"]
    assert sorted(index["videos"]) == sorted(SETTINGS["classes"])
    listed = {f"{label}/{vid}.mp4" for label, ids in index["videos"].items() for vid in ids}
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*.mp4")}
    assert listed == on_disk
    assert all(len(ids) == 2 and all(i.startswith(f"{label}_") for i in ids) for label, ids in index["videos"].items())


def test_ingestion_label_parser_maps_each_video_to_its_class(corpus):
    from clipsynth_platform.ingest.config import DEFAULT_VIDEO_EXTENSIONS
    from clipsynth_platform.ingest.inputs import list_inputs
    from clipsynth_platform.ingest.labels import load_label_index
    from clipsynth_platform.ingest.sources import plan_sources

    root = Path(corpus.root)
    labels = load_label_index(str(root / LABEL_INDEX_FILE))
    assert labels.format == "music" and not labels.conflicts
    sources = plan_sources(list_inputs([str(root)], DEFAULT_VIDEO_EXTENSIONS), {}, 0.1, labels)
    # Only the videos are listed (not the MIDI/WAV renders), each with the class of its folder.
    assert sorted(s.relative_path for s in sources) == sorted(v.video for v in corpus.videos)
    assert all(s.label == s.relative_path.split("/")[0] for s in sources)


def test_midi_and_wav_follow_the_config(corpus):
    for v in corpus.videos:
        midi = parse_midi(corpus.path(v.midi).read_bytes())
        inst = INSTRUMENTS[v.label]
        assert midi["programs"] == [inst.program]
        assert 60e6 / midi["tempo_us"] == pytest.approx(v.tempo_bpm, rel=1e-3)
        pitches = [p for _, _, p in midi["notes"]]
        assert len(pitches) == v.notes >= 8
        assert inst.low <= min(pitches) and max(pitches) <= inst.high
        assert midi["end_s"] == pytest.approx(v.seconds, abs=0.01)
        assert max(end for _, end, _ in midi["notes"]) <= v.seconds - 0.5
        raw = corpus.path(v.wav).read_bytes()
        assert raw[:4] == b"RIFF" and int.from_bytes(raw[22:24], "little") == 1  # mono
        assert int.from_bytes(raw[24:28], "little") == 16_000
        assert (len(raw) - 44) // 2 == round(v.seconds * 16_000)


def test_audio_is_audible_and_its_pitch_follows_the_score(corpus):
    estimated, scored = {}, {}
    for v in corpus.videos:
        audio = decode_audio(corpus.path(v.video))
        assert np.sqrt(np.mean(audio**2)) > 0.02, f"{v.id} is nearly silent"
        assert np.max(np.abs(audio)) > 0.3
        f0 = yin_pitches(audio)
        assert len(f0) > 50, f"{v.id}: too few pitched frames ({len(f0)})"
        estimated[v.id] = float(np.median(midi_of_hz(f0)))
        notes = parse_midi(corpus.path(v.midi).read_bytes())["notes"]
        weights = [max(1, round((end - start) * 100)) for start, end, _ in notes]  # by sounding time
        scored[v.id] = float(np.median(np.repeat([p for _, _, p in notes], weights)))
        inst = INSTRUMENTS[v.label]
        # The sounding pitch sits in the instrument's register and near the score (no octave or program slip).
        assert inst.low - 3 <= estimated[v.id] <= inst.high + 3, (v.id, estimated[v.id])
        assert abs(estimated[v.id] - scored[v.id]) < 6, (v.id, estimated[v.id], scored[v.id])
    ids = sorted(estimated)
    assert np.corrcoef([estimated[i] for i in ids], [scored[i] for i in ids])[0, 1] > 0.9
    by_label = {lab: [estimated[v.id] for v in corpus.videos if v.label == lab] for lab in SETTINGS["classes"]}
    assert max(by_label["tuba"]) + 12 < min(by_label["xylophone"])


def test_frames_show_the_class_picture(corpus):
    frames = {}
    for v in corpus.videos:
        frame = decode_frame(corpus.path(v.video), 1.0, 320, 240).astype(np.int32)
        frames[v.id] = frame
        colour = np.array(INSTRUMENTS[v.label].colour)
        # Backgrounds are light tints (every channel >= 105), so these saturated class colours come from the icon.
        share = np.mean(np.abs(frame - colour).sum(axis=-1) < 60)
        assert share > 0.01, f"{v.id}: {share:.4f} of the frame in the class colour"
    # Two videos of a class look different (background, size, tilt, placement).
    assert np.mean(np.abs(frames["violin_001"] - frames["violin_002"])) > 5


def test_same_seed_gives_identical_files(corpus, twin):
    assert twin.config_hash == corpus.config_hash
    assert (Path(twin.root) / LABEL_INDEX_FILE).read_bytes() == (Path(corpus.root) / LABEL_INDEX_FILE).read_bytes()
    for kind in ("midi", "wav", "video"):
        assert file_bytes(twin, kind) == file_bytes(corpus, kind), kind
    assert [v.sha256 for v in twin.videos] == [v.sha256 for v in corpus.videos]


def test_second_build_reuses_and_repairs_only_what_changed(corpus):
    root = Path(corpus.root)
    config = CorpusConfig(out=str(root), **SETTINGS)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    stamps = {p: p.stat().st_mtime_ns for p in files}
    again = build_corpus(config)
    assert again.built == [] and sorted(again.reused) == sorted(v.id for v in corpus.videos)
    indexes = (LABEL_INDEX_FILE, SPLIT_INDEX_FILE)  # rewritten on every build (same bytes)
    assert {p: p.stat().st_mtime_ns for p in files if p.name not in indexes} == {
        p: t for p, t in stamps.items() if p.name not in indexes
    }
    assert CorpusManifest.read(root).status == "complete"

    # A deleted video and an altered WAV are rebuilt, byte for byte as before; the rest is left alone.
    cello, tuba = corpus.path("cello/cello_002.mp4"), corpus.path("_render/tuba/tuba_001.wav")
    originals = {cello: cello.read_bytes(), tuba: tuba.read_bytes()}
    cello.unlink()
    tuba.write_bytes(originals[tuba][:-2] + b"\x00\x01")
    repaired = build_corpus(config)
    assert repaired.built == ["cello_002", "tuba_001"]
    assert len(repaired.reused) == 6
    assert {p: p.read_bytes() for p in originals} == originals


def test_interrupted_build_resumes(corpus):
    root = Path(corpus.root)
    # What an interrupted build leaves: a "building" manifest without digests, a half-written hidden file.
    state = json.loads((root / MANIFEST_FILE).read_text())
    state["status"] = "building"
    for v in state["videos"]:
        v["sha256"] = {}
    (root / MANIFEST_FILE).write_text(json.dumps(state))
    video = corpus.path("cello/cello_001.mp4")
    original = video.read_bytes()
    video.unlink()
    partial = video.with_name(".cello_001.mp4.partial")
    partial.write_bytes(original[:1000])
    resumed = build_corpus(CorpusConfig(out=str(root), **SETTINGS))
    assert resumed.built == ["cello_001"] and len(resumed.reused) == 7
    assert video.read_bytes() == original and not partial.exists()
    final = CorpusManifest.read(root)
    assert final.status == "complete"
    assert [v.sha256 for v in final.videos] == [v.sha256 for v in corpus.videos]


def test_split_is_stratified_and_read_by_the_ingestion_job(corpus):
    from clipsynth_platform.datasets.corpus import assign_splits, plan_videos
    from clipsynth_platform.ingest.config import DEFAULT_VIDEO_EXTENSIONS
    from clipsynth_platform.ingest.inputs import list_inputs
    from clipsynth_platform.ingest.labels import load_label_index
    from clipsynth_platform.ingest.sources import plan_sources

    root = Path(corpus.root)
    labels = load_label_index(str(root / SPLIT_INDEX_FILE), input_root=str(root))
    assert labels.format == "csv" and not labels.conflicts
    sources = plan_sources(list_inputs([str(root)], DEFAULT_VIDEO_EXTENSIONS), {}, 0.5, labels)
    by_split = {(s.label, s.split) for s in sources}
    # Every class is in both splits, with exactly test_per_class (default 1) test videos of its 2.
    assert by_split == {(c, split) for c in SETTINGS["classes"] for split in ("train", "test")}
    assert all(sum(s.split == "test" and s.label == c for s in sources) == 1 for c in SETTINGS["classes"])
    assert {s.relative_path: s.split for s in sources} == {v.video: v.split for v in corpus.videos}
    # Deterministic, and stratified at any size.
    bigger = [v for v, _ in plan_videos(CorpusConfig(out="x", **{**SETTINGS, "videos_per_class": 6}))]
    twice = [v for v, _ in plan_videos(CorpusConfig(out="x", **{**SETTINGS, "videos_per_class": 6}))]
    assert [v.split for v in bigger] == [v.split for v in twice]
    assert all(sum(v.split == "test" and v.label == c for v in bigger) == 1 for c in SETTINGS["classes"])
    assign_splits(bigger, CorpusConfig(out="x", **{**SETTINGS, "videos_per_class": 6, "test_per_class": 2}))
    assert all(sum(v.split == "test" and v.label == c for v in bigger) == 2 for c in SETTINGS["classes"])
    with pytest.raises(ValueError, match="leaves no train video"):
        CorpusConfig(out="x", videos_per_class=2, test_per_class=2).validate()


def test_new_config_replaces_the_old_files(corpus, twin):
    # Runs after test_same_seed_gives_identical_files (which reads `twin` as built).
    root = Path(twin.root)
    violin_only = build_corpus(
        CorpusConfig(out=str(root), **{**SETTINGS, "classes": ("violin",), "videos_per_class": 1, "test_per_class": 0})
    )
    assert violin_only.built == ["violin_001"] and violin_only.reused == []
    assert json.loads((root / LABEL_INDEX_FILE).read_text()) == {"videos": {"violin": ["violin_001"]}}
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == sorted(
        [
            "_render/violin/violin_001.mid",
            "_render/violin/violin_001.wav",
            SPLIT_INDEX_FILE,
            LABEL_INDEX_FILE,
            MANIFEST_FILE,
            "violin/violin_001.mp4",
        ]
    )
    # A video depends on (seed, class, index) only: the same bytes as in the four-class corpus.
    before = next(v for v in corpus.videos if v.id == "violin_001")
    for kind in ("midi", "wav", "video"):
        assert file_bytes(violin_only, kind)["violin_001"] == corpus.path(getattr(before, kind)).read_bytes()
    seed7_midi = file_bytes(violin_only, "midi")
    other_seed = build_corpus(
        CorpusConfig(
            out=str(root),
            **{**SETTINGS, "classes": ("violin",), "videos_per_class": 1, "test_per_class": 0, "seed": 8},
        )
    )
    assert other_seed.built == ["violin_001"]
    assert file_bytes(other_seed, "midi") != seed7_midi


# ----------------------------------------------------------------------------- errors and the CLI


def test_missing_tools_name_the_package_to_install(tmp_path, monkeypatch):
    config = CorpusConfig(out=str(tmp_path / "c"), classes=("violin",), videos_per_class=1, test_per_class=0)
    fluidsynth = shutil.which("fluidsynth")
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(CorpusToolError, match=r"apt-get install -y fluidsynth"):
        build_corpus(config)
    (empty / "fluidsynth").symlink_to(fluidsynth)
    with pytest.raises(CorpusToolError, match=r"apt-get install -y ffmpeg"):
        build_corpus(config)
    monkeypatch.undo()
    missing_sf = CorpusConfig(out=str(tmp_path / "c"), soundfont=str(tmp_path / "none.sf2"))
    with pytest.raises(CorpusToolError, match=r"timgm6mb-soundfont"):
        build_corpus(missing_sf)
    assert not (tmp_path / "c").exists()


def test_bad_config_and_foreign_directory_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"unknown classes \['erhu'\]"):
        build_corpus(CorpusConfig(out=str(tmp_path / "a"), classes=("violin", "erhu")))
    with pytest.raises(ValueError, match=r"min_seconds 20.0 is above max_seconds 12.0"):
        build_corpus(CorpusConfig(out=str(tmp_path / "a"), min_seconds=20.0, max_seconds=12.0))
    with pytest.raises(ValueError, match=r"even"):
        build_corpus(CorpusConfig(out=str(tmp_path / "a"), width=321))
    with pytest.raises(ValueError, match=r"videos_per_class"):
        build_corpus(CorpusConfig(out=str(tmp_path / "a"), videos_per_class=0))
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    with pytest.raises(ValueError, match=r"not empty and holds no corpus_manifest.json"):
        build_corpus(CorpusConfig(out=str(foreign), classes=("violin",), videos_per_class=1, test_per_class=0))
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]


def test_cli_help_reuse_and_errors(corpus, tmp_path):
    job = str(REPO / "jobs" / "build_corpus.py")
    helped = subprocess.run([sys.executable, job, "--help"], capture_output=True, text=True, check=True)
    for flag in ("--out", "--classes", "--videos-per-class", "--min-seconds", "--max-seconds", "--seed"):
        assert flag in helped.stdout
    args = [job, "--out", corpus.root, "--classes", "tuba", "cello", "violin", "xylophone", "--videos-per-class", "2"]
    args += ["--min-seconds", "10", "--max-seconds", "12", "--seed", "7"]
    ran = subprocess.run([sys.executable, *args], capture_output=True, text=True, check=True)
    summary = json.loads(ran.stdout.strip().splitlines()[-1])
    assert (summary["videos"], summary["built"], summary["reused"]) == (8, 0, 8)
    assert summary["config_hash"] == corpus.config_hash
    env = {**os.environ, "PATH": str(tmp_path)}
    failed = subprocess.run(
        [sys.executable, job, "--out", str(tmp_path / "x")], capture_output=True, text=True, env=env
    )
    assert failed.returncode == 2
    assert "apt-get install -y fluidsynth" in failed.stderr
