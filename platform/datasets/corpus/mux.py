"""Frames and audio into an mp4 with ffmpeg (H.264 + AAC, bitexact, reproducible)."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .config import CorpusConfig


def encode_video(
    out_path: Path, frames: Iterable[bytes], wav_path: Path, tools: dict[str, str], config: CorpusConfig
) -> None:
    """Raw RGB frames (stdin) + the WAV -> H.264/AAC mp4, bitexact and single-threaded for reproducibility."""
    cmd = [
        tools["ffmpeg"],
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{config.width}x{config.height}",
        "-r",
        str(config.fps),
        "-i",
        "pipe:0",
        "-i",
        str(wav_path),
        "-map",
        "0:v:0",
        "-map",
        "1:a:0",
        "-map_metadata",
        "-1",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-crf",
        str(config.crf),
        "-g",
        str(2 * config.fps),
        "-pix_fmt",
        "yuv420p",
        "-threads",
        "1",
        "-c:a",
        "aac",
        "-b:a",
        f"{config.audio_bitrate_kbps}k",
        "-fflags",
        "+bitexact",
        "-flags:v",
        "+bitexact",
        "-flags:a",
        "+bitexact",
        "-movflags",
        "+faststart",
        "-f",
        "mp4",
        str(out_path),
    ]
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors)
        assert proc.stdin is not None
        try:
            for frame in frames:
                proc.stdin.write(frame)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # ffmpeg stopped early; its exit code and message tell why
        code = proc.wait()
        if code != 0:
            errors.seek(0)
            message = errors.read().decode(errors="replace")[-1500:]
            raise RuntimeError(f"ffmpeg failed writing {out_path} (exit {code}): {message}")
