"""A small corpus of real media files made with ffmpeg, for the ingestion tests: several codecs and containers,
every kind of bad input the job must survive, and names with spaces and non-ASCII characters.

Most videos encode time in their picture: the luma of every frame is 20 + 14 * floor(t) (t = the frame's
time in seconds), so a test can check that a stored frame is the one shown at its recorded time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
SIZE = "160x120"


def luma_at(seconds: float) -> float:
    """The luma (Y, 16-235 video range) that the time-coded videos show at `seconds`."""
    return 20.0 + 14.0 * np.floor(seconds + 1e-6)


def rgb_gray_of_luma(y: float) -> float:
    """Y (video range) -> the gray level an RGB decoder shows."""
    return (y - 16.0) * 255.0 / 219.0


@dataclass(frozen=True)
class Case:
    """One file of the corpus and what the job must make of it."""

    path: str  # relative to the corpus root
    expect: str  # "ok" | "failed"
    stage: str | None = None  # failure stage
    reason: str | None = None  # a substring of the failure reason
    chunks: int = 0  # expected chunk rows when ok
    label: str | None = None
    time_coded: bool = False  # luma encodes time (see module doc)
    video_decoder: str = "decord"
    audio_decoder: str = "torchcodec"
    frame_short_side: int = 224


def run_ffmpeg(*args: str) -> None:
    proc = subprocess.run(
        [FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(args)} failed: {proc.stderr[-2000:]}")


def time_coded_input(seconds: float, rate: int = 25) -> list[str]:
    return ["-f", "lavfi", "-i", f"color=c=gray:s={SIZE}:r={rate}:d={seconds},geq=lum='20+14*floor(T)':cb=128:cr=128"]


def tone_input(freq: float, seconds: float, rate: int = 44100) -> list[str]:
    return ["-f", "lavfi", "-i", f"sine=frequency={freq}:sample_rate={rate}:duration={seconds}"]


def _write(root: Path, rel: str) -> str:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path)


H264 = ["-c:v", "libx264", "-preset", "ultrafast", "-g", "250", "-pix_fmt", "yuv420p"]


def build_corpus(root: str | os.PathLike, with_segfault: bool = True) -> dict[str, Case]:
    """Write the corpus under `root`; returns {relative path: Case}. Takes a few seconds."""
    root = Path(root)
    cases: dict[str, Case] = {}

    def add(case: Case) -> str:
        cases[case.path] = case
        return _write(root, case.path)

    # Good files: codecs and containers. 15 s -> a 10 s chunk and a 5 s trailing one (>= 4.16 s, kept).
    out = add(Case("violin/vln01.mp4", "ok", chunks=2, label="violin", time_coded=True))
    run_ffmpeg(*time_coded_input(15), *tone_input(440, 15), *H264, "-c:a", "aac", "-ac", "2", "-shortest", out)
    out = add(Case("cello/vc01.webm", "ok", chunks=1, label="cello", time_coded=True))
    run_ffmpeg(
        *time_coded_input(6),
        *tone_input(220, 6, 48000),
        "-c:v",
        "libvpx-vp9",
        "-deadline",
        "realtime",
        "-cpu-used",
        "8",
        "-c:a",
        "libopus",
        "-shortest",
        out,
    )
    # AV1: decord's bundled FFmpeg has no AV1 decoder, so torchcodec must serve the frames.
    out = add(Case("flute/fl01.mkv", "ok", chunks=1, label="flute", time_coded=True, video_decoder="torchcodec"))
    run_ffmpeg(
        *time_coded_input(6),
        *tone_input(660, 6),
        "-c:v",
        "libsvtav1",
        "-preset",
        "12",
        "-c:a",
        "flac",
        "-shortest",
        out,
    )
    # 12 s -> one chunk; the 2 s tail is dropped.
    out = add(Case("misc/old.avi", "ok", chunks=1, time_coded=True))
    run_ffmpeg(
        *time_coded_input(12),
        *tone_input(330, 12, 22050),
        "-c:v",
        "mpeg4",
        "-q:v",
        "3",
        "-c:a",
        "libmp3lame",
        "-shortest",
        out,
    )
    out = add(Case("misc/clip.mov", "ok", chunks=1, time_coded=True))
    run_ffmpeg(
        *time_coded_input(6),
        *tone_input(550, 6, 32000),
        "-c:v",
        "libx265",
        "-preset",
        "ultrafast",
        "-x265-params",
        "log-level=error",
        "-c:a",
        "pcm_s16le",
        "-shortest",
        out,
    )
    out = add(Case("misc/a name with spaces – ünïcødé 音.mp4", "ok", chunks=1, time_coded=True))
    run_ffmpeg(*time_coded_input(6), *tone_input(880, 6), *H264, "-c:a", "aac", "-shortest", out)
    # 5.1 audio at 48 kHz, a different tone per channel: the job downmixes to mono.
    out = add(Case("misc/surround51.mp4", "ok", chunks=1, time_coded=True))
    expr = "|".join(f"0.2*sin({f}*2*PI*t)" for f in (200, 300, 400, 500, 60, 700))
    run_ffmpeg(
        *time_coded_input(6),
        "-f",
        "lavfi",
        "-i",
        f"aevalsrc={expr}:s=48000:c=5.1:d=6",
        *H264,
        "-c:a",
        "aac",
        "-shortest",
        out,
    )
    # Variable frame rate: all frames for 2 s, then 3 of every 10.
    out = add(Case("misc/vfr.mp4", "ok", chunks=1, time_coded=True))
    run_ffmpeg(
        *time_coded_input(6),
        *tone_input(500, 6),
        "-vf",
        "select='lt(t\\,2)+lt(mod(n\\,10)\\,3)'",
        "-fps_mode",
        "vfr",
        *H264,
        "-c:a",
        "aac",
        "-shortest",
        out,
    )
    # Very large resolution: 3840x2160 at 1 fps for 5 s (frames are scaled inside the decoder).
    out = add(Case("misc/uhd.mp4", "ok", chunks=1))
    run_ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=3840x2160:rate=1:duration=5",
        *tone_input(300, 5),
        *H264,
        "-c:a",
        "aac",
        "-shortest",
        out,
    )
    # Digital silence: a readable clip that teaches nothing, rejected by the hygiene rule (--silence-db).
    out = add(Case("misc/silent.mp4", "failed", "hygiene", "silent: audio level -inf dBFS (RMS) is below"))
    run_ffmpeg(
        *time_coded_input(6),
        "-f",
        "lavfi",
        "-i",
        "anullsrc=r=44100:cl=mono",
        "-t",
        "6",
        *H264,
        "-c:a",
        "aac",
        "-shortest",
        out,
    )
    # A file torchcodec is told (test hook) not to read: the ffmpeg subprocess serves its audio.
    good = add(
        Case("misc/fallback__no_torchcodec_audio__.mp4", "ok", chunks=1, time_coded=True, audio_decoder="ffmpeg")
    )
    run_ffmpeg(*time_coded_input(6), *tone_input(770, 6), *H264, "-c:a", "aac", "-shortest", good)
    data = Path(good).read_bytes()  # a valid mp4 with its index (moov atom) at the end

    # Bad files.
    Path(add(Case("bad/zero.mp4", "failed", "read", "empty file"))).write_bytes(b"")
    rng = np.random.default_rng(0)
    Path(add(Case("bad/corrupt.mp4", "failed", "decode", "cannot open container"))).write_bytes(rng.bytes(50_000))
    # Cut in half: the index at the end is gone.
    Path(add(Case("bad/truncated.mp4", "failed", "decode", "cannot open container"))).write_bytes(
        data[: len(data) // 2]
    )
    out = add(Case("bad/noaudio.mp4", "failed", "decode", "no audio track"))
    run_ffmpeg(*time_coded_input(6), *H264, out)
    out = add(Case("bad/audio_only.mp4", "failed", "decode", "no video track"))
    run_ffmpeg(*tone_input(440, 6), "-c:a", "aac", out)
    out = add(Case("bad/short.mp4", "failed", "hygiene", "s of audio, need 4.16 s for one window"))
    run_ffmpeg(*time_coded_input(3), *tone_input(440, 3), *H264, "-c:a", "aac", "-shortest", out)
    if with_segfault:
        # Listed last, so the worker that replaces the crashed one is not on the test's critical path.
        # A valid file: the test hook crashes the decode worker on its name.
        Path(add(Case("zz/crash__segfault__.mp4", "failed", "decode", "worker crashed (native)"))).write_bytes(data)
    # Not listed: not a video, and a hidden file.
    (root / "notes.txt").write_text("not a video\n")
    (root / "misc" / ".hidden.mp4").write_bytes(data)
    return cases


def write_music_index(path: str | os.PathLike, cases: dict[str, Case]) -> None:
    """A MUSIC21-style JSON index of the labelled cases (files named {youtube_id}.{ext})."""
    videos: dict[str, list[str]] = {}
    for rel, case in cases.items():
        if case.label:
            videos.setdefault(case.label, []).append(Path(rel).stem)
    Path(path).write_text(json.dumps({"videos": videos}, indent=1))


def ffmpeg_audio_16k_mono(path: str) -> np.ndarray:
    """The file's first audio stream at 16 kHz mono float32, decoded by the ffmpeg CLI (independent of the job)."""
    cmd = [
        FFMPEG,
        "-nostdin",
        "-v",
        "error",
        "-i",
        path,
        "-map",
        "0:a:0",
        "-ac",
        "1",
        "-ar",
        "16000",
        "-f",
        "f32le",
        "-",
    ]
    return np.frombuffer(subprocess.run(cmd, capture_output=True, check=True).stdout, dtype=np.float32).copy()
