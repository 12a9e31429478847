"""The external tools of the corpus (FluidSynth, ffmpeg, a soundfont) and the audio they render."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from .config import APT_PACKAGES, CorpusConfig, CorpusToolError


def find_tools(config: CorpusConfig) -> dict[str, str]:
    """Paths of fluidsynth and ffmpeg and the soundfont; a CorpusToolError names the apt package if missing."""
    tools = {}
    for name in ("fluidsynth", "ffmpeg"):
        path = shutil.which(name)
        if path is None:
            raise CorpusToolError(
                f"{name} is not installed (not on PATH): install it with `apt-get install -y {APT_PACKAGES[name]}`"
            )
        tools[name] = path
    soundfont = Path(config.soundfont).expanduser()
    if not soundfont.is_file():
        raise CorpusToolError(
            f"soundfont {config.soundfont} does not exist: install a General MIDI soundfont with "
            f"`apt-get install -y {APT_PACKAGES['soundfont']}` or pass --soundfont PATH to an .sf2 file"
        )
    tools["soundfont"] = str(soundfont.resolve())
    return tools


def _tool_version(path: str, flag: str) -> str:
    proc = subprocess.run([path, flag], capture_output=True, text=True, check=False)
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def render_audio(midi_path: Path, tools: dict[str, str], config: CorpusConfig, seconds: float) -> np.ndarray:
    """FluidSynth -> mono int16 at the config's rate, exactly `seconds` long, peak-normalised to -2 dBFS."""
    with tempfile.TemporaryDirectory(prefix="clipsynth-fs-") as tmp:
        raw = Path(tmp) / "render.wav"
        cmd = [
            tools["fluidsynth"],
            "-ni",
            "-q",
            "-g",
            f"{config.gain}",
            "-r",
            str(config.sample_rate),
            "-F",
            str(raw),
            tools["soundfont"],
            str(midi_path),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not raw.is_file():
            raise RuntimeError(f"fluidsynth failed on {midi_path} (exit {proc.returncode}): {proc.stderr[-1000:]}")
        with wave.open(str(raw), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            data = w.readframes(w.getnframes())
    if width != 2 or rate != config.sample_rate:
        raise RuntimeError(f"fluidsynth wrote {8 * width}-bit audio at {rate} Hz, expected 16-bit {config.sample_rate}")
    audio = np.frombuffer(data, dtype="<i2").astype(np.float64).reshape(-1, channels).mean(axis=1) / 32768.0
    n = round(seconds * config.sample_rate)
    audio = np.pad(audio[:n], (0, max(n - len(audio), 0)))
    peak = float(np.max(np.abs(audio)))
    if peak < 1e-3:
        raise RuntimeError(
            f"fluidsynth rendered silence for {midi_path}: does soundfont {tools['soundfont']} hold General MIDI "
            "program(s) for this instrument?"
        )
    audio *= 0.8 / peak
    fade = min(len(audio), int(0.05 * config.sample_rate))  # no click where the video cuts the reverb tail
    audio[len(audio) - fade :] *= np.linspace(1.0, 0.0, fade)
    return np.round(audio * 32767).astype("<i2")


def write_wav(path: Path, pcm: np.ndarray, sample_rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.astype("<i2").tobytes())
