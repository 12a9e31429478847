"""The built-in sample corpus: real, labelled instrument videos made offline, for demos, smoke runs and tests.

Each video is a melody written here as a Standard MIDI File (varied tempo, key, scale, register, rhythm and
articulation, all drawn from the seed), rendered to audio by FluidSynth with a General MIDI soundfont
(Debian packages), and muxed by ffmpeg with frames drawn by PIL (the instrument's picture in its class
colour and the class name, with a per-video background, size, tilt and placement) into an H.264 + AAC mp4.

    from clipsynth_platform.corpus import CorpusConfig, build_corpus
    manifest = build_corpus(CorpusConfig(out="corpus/"))

Layout under `out` (MUSIC's layout, so the ingestion job reads it with `--labels out/music_solo_videos.json`):

    <out>/<class>/<id>.mp4                  the videos, ids like "violin_003"
    <out>/music_solo_videos.json            {"videos": {"<class>": ["<id>", ...], ...}} (MUSIC21 JSON format)
    <out>/_render/<class>/<id>.mid|.wav     the MIDI written and the mono 16-bit audio muxed into the video
    <out>/corpus_manifest.json              the config, its hash, and every file with its SHA-256

The same config (seed included) gives byte-identical MIDI, WAV and label index; the mp4 files are encoded
with ffmpeg's bitexact flags and one thread so they are reproducible too with the same ffmpeg build.
Building is idempotent: a second build with the same config hash checks the files against the manifest and
rebuilds only missing or altered ones; an interrupted build resumes; a new config replaces the old files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
import subprocess
import tempfile
import time
import wave
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MANIFEST_FILE = "corpus_manifest.json"
LABEL_INDEX_FILE = "music_solo_videos.json"
RENDER_DIR = "_render"
DEFAULT_SOUNDFONT = "/usr/share/sounds/sf2/TimGM6mb.sf2"  # 5.4 MB, loads fast; FluidR3_GM.sf2 sounds better
TICKS_PER_BEAT = 480
SAMPLE_RATES = (16_000, 22_050, 32_000, 44_100, 48_000)
# Debian packages that provide what the builder runs, named in the errors when something is missing.
APT_PACKAGES = {
    "fluidsynth": "fluidsynth",
    "ffmpeg": "ffmpeg",
    "ffprobe": "ffmpeg",
    "soundfont": "timgm6mb-soundfont (TimGM6mb.sf2) or fluid-soundfont-gm (FluidR3_GM.sf2)",
}


@dataclass(frozen=True)
class Instrument:
    """A MUSIC class General MIDI can play: its program (0-based), playable range, playing style and looks."""

    program: int
    low: int  # lowest MIDI note used
    high: int  # highest MIDI note used
    style: str  # "sustained" (bowed, wind, reed) or "plucked" (decaying: guitar, xylophone, piano)
    icon: str  # which picture to draw
    colour: tuple[int, int, int]


# MUSIC21's classes that General MIDI has a program for (erhu, guzheng, pipa, ukulele, congas and drum have none).
# Ranges are the instruments' comfortable registers, so that low and high classes sound apart.
INSTRUMENTS: dict[str, Instrument] = {
    "accordion": Instrument(21, 53, 81, "sustained", "accordion", (200, 40, 60)),
    "acoustic_guitar": Instrument(24, 40, 76, "plucked", "guitar", (205, 133, 63)),
    "bagpipe": Instrument(109, 55, 74, "sustained", "bagpipe", (30, 110, 60)),
    "banjo": Instrument(105, 48, 79, "plucked", "banjo", (230, 200, 120)),
    "bassoon": Instrument(70, 34, 72, "sustained", "bassoon", (120, 70, 30)),
    "cello": Instrument(42, 36, 67, "sustained", "cello", (140, 60, 20)),
    "clarinet": Instrument(71, 50, 84, "sustained", "clarinet", (25, 25, 30)),
    "electric_bass": Instrument(33, 28, 55, "plucked", "bass", (60, 90, 200)),
    "flute": Instrument(73, 60, 93, "sustained", "flute", (190, 195, 205)),
    "piano": Instrument(0, 36, 96, "plucked", "piano", (15, 15, 15)),
    "saxophone": Instrument(65, 49, 80, "sustained", "sax", (218, 165, 32)),
    "trumpet": Instrument(56, 54, 82, "sustained", "trumpet", (240, 190, 40)),
    "tuba": Instrument(58, 28, 58, "sustained", "tuba", (184, 134, 11)),
    "violin": Instrument(40, 55, 93, "sustained", "violin", (170, 80, 30)),
    "xylophone": Instrument(13, 65, 96, "plucked", "xylophone", (150, 40, 160)),
}
DEFAULT_CLASSES = ("acoustic_guitar", "cello", "clarinet", "flute", "trumpet", "tuba", "violin", "xylophone")

SCALES = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "pentatonic": (0, 2, 4, 7, 9),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
}


class CorpusToolError(RuntimeError):
    """A program or file the builder needs is missing; the message names the Debian package to install."""


@dataclass
class CorpusConfig:
    """What to build. Defaults: 8 classes x 3 videos of 10-15 s, 320x240 at 10 fps (builds in well under a
    minute on 2 cores with the TimGM6mb soundfont)."""

    out: str = ""  # local directory (created); ffmpeg writes files, so no s3:// here
    classes: tuple[str, ...] = DEFAULT_CLASSES
    videos_per_class: int = 3
    min_seconds: float = 10.0  # durations are drawn uniformly in [min, max] per video, whole frames
    max_seconds: float = 15.0
    seed: int = 0
    soundfont: str = DEFAULT_SOUNDFONT
    sample_rate: int = 16_000  # the paper's rate; audio is rendered and muxed at it
    gain: float = 0.8  # FluidSynth's master gain (-g) before peak normalisation
    width: int = 320
    height: int = 240
    fps: int = 10
    crf: int = 28  # x264 quality: the pictures are flat drawings, so a high CRF still looks clean
    audio_bitrate_kbps: int = 64
    workers: int = 0  # videos built at once; 0: one per CPU core (not part of the config hash)

    def validate(self) -> None:
        if not self.out:
            raise ValueError("CorpusConfig.out: an output directory is required")
        if str(self.out).startswith("s3://"):
            raise ValueError("CorpusConfig.out must be a local directory (build locally, then upload the folder)")
        if not self.classes:
            raise ValueError("CorpusConfig.classes: at least one class is required")
        unknown = [c for c in self.classes if c not in INSTRUMENTS]
        if unknown:
            raise ValueError(f"unknown classes {unknown}; available: {', '.join(sorted(INSTRUMENTS))}")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"CorpusConfig.classes lists a class twice: {list(self.classes)}")
        _check_range("videos_per_class", self.videos_per_class, 1, 1000)
        _check_range("min_seconds", self.min_seconds, 2.0, 600.0)
        _check_range("max_seconds", self.max_seconds, 2.0, 600.0)
        if self.min_seconds > self.max_seconds:
            raise ValueError(f"min_seconds {self.min_seconds} is above max_seconds {self.max_seconds}")
        _check_range("seed", self.seed, 0, 2**63 - 1)
        if self.sample_rate not in SAMPLE_RATES:
            raise ValueError(f"sample_rate {self.sample_rate} is not one of {SAMPLE_RATES}")
        _check_range("gain", self.gain, 0.01, 5.0)
        _check_range("width", self.width, 64, 1920)
        _check_range("height", self.height, 64, 1080)
        if self.width % 2 or self.height % 2:
            raise ValueError(f"width and height must be even for yuv420p H.264, got {self.width}x{self.height}")
        _check_range("fps", self.fps, 1, 60)
        _check_range("crf", self.crf, 0, 51)
        _check_range("audio_bitrate_kbps", self.audio_bitrate_kbps, 16, 320)
        _check_range("workers", self.workers, 0, 256)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["classes"] = list(self.classes)
        return d


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"CorpusConfig.{name} must be a number in [{low}, {high}], got {value!r}")


@dataclass
class CorpusVideo:
    """One video of the corpus; paths are relative to the corpus root, "/"-separated."""

    id: str
    label: str
    video: str
    midi: str
    wav: str
    seconds: float
    program: int
    tempo_bpm: int
    tonic: int  # pitch class 0-11 (C = 0)
    scale: str
    lowest_note: int
    highest_note: int
    notes: int
    sha256: dict[str, str] = field(default_factory=dict)  # "video", "midi", "wav" -> hex digest (once built)


@dataclass
class CorpusManifest:
    """What a build made (or found): the config and its hash, every video, and what this run built or reused."""

    root: str
    config: dict
    config_hash: str
    status: str  # "building" until every video is written, then "complete"
    videos: list[CorpusVideo]
    label_index: str = LABEL_INDEX_FILE
    tools: dict[str, str] = field(default_factory=dict)
    built: list[str] = field(default_factory=list)  # ids written by this run
    reused: list[str] = field(default_factory=list)  # ids found complete and unchanged
    elapsed_seconds: float = 0.0

    def by_label(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for v in self.videos:
            out.setdefault(v.label, []).append(v.id)
        return out

    def path(self, relative: str) -> Path:
        return Path(self.root) / relative

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("root")  # the folder may move; the manifest describes what is inside it
        return json.dumps(d, indent=1, sort_keys=True)

    @classmethod
    def read(cls, root: str | os.PathLike) -> CorpusManifest:
        path = Path(root) / MANIFEST_FILE
        try:
            d = json.loads(path.read_text())
            videos = [CorpusVideo(**v) for v in d.pop("videos")]
            return cls(root=str(Path(root).resolve()), videos=videos, **d)
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f"{path} is not a corpus manifest this builder can read: {exc}") from None


# ----------------------------------------------------------------------------------------------- tools


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


def config_hash(config: CorpusConfig, tools: dict[str, str]) -> tuple[str, dict[str, str]]:
    """SHA-256 over everything that shapes the files: the config (less `out`, `workers`), this module's
    source (any change to the generator rebuilds rather than mixing old and new videos), the soundfont's
    identity, and the fluidsynth/ffmpeg versions. Returns (hash, identity)."""
    content = config.to_dict()
    content.pop("out")
    content.pop("workers")
    sf = Path(tools["soundfont"])
    identity = {
        "generator": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16],
        "soundfont": f"{sf.name} ({sf.stat().st_size} bytes)",
        "fluidsynth": _tool_version(tools["fluidsynth"], "--version"),
        "ffmpeg": _tool_version(tools["ffmpeg"], "-version"),
    }
    blob = json.dumps({"config": content, "identity": identity}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest(), identity


# ----------------------------------------------------------------------------------------------- music


@dataclass(frozen=True)
class Note:
    start: float  # seconds
    end: float
    pitch: int  # MIDI note number
    velocity: int


@dataclass(frozen=True)
class Melody:
    notes: tuple[Note, ...]
    tempo_bpm: int
    tonic: int
    scale: str
    seconds: float


def video_rng(seed: int, label: str, index: int) -> np.random.Generator:
    """A generator for one video that depends only on (seed, class, index): adding or removing classes, or
    changing how many videos a class has, leaves the other videos as they were."""
    digest = hashlib.sha256(f"clipsynth-corpus:{seed}:{label}:{index}".encode()).digest()
    return np.random.default_rng([int.from_bytes(digest[i : i + 8], "little") for i in range(0, 32, 8)])


def video_seconds(rng: np.random.Generator, config: CorpusConfig) -> float:
    """A duration in [min, max] rounded to whole video frames."""
    seconds = rng.uniform(config.min_seconds, config.max_seconds)
    frames = round(seconds * config.fps)
    frames = min(max(frames, math.ceil(config.min_seconds * config.fps)), math.floor(config.max_seconds * config.fps))
    return frames / config.fps


def compose_melody(rng: np.random.Generator, instrument: Instrument, seconds: float) -> Melody:
    """A phrase-structured melody: a random walk on a scale inside a register window of the instrument's
    range, with rests between phrases; it ends 0.8 s before `seconds` so the last note can ring out."""
    tempo = int(rng.integers(66, 156))
    beat = 60.0 / tempo
    tonic = int(rng.integers(0, 12))
    scale_name = str(rng.choice(sorted(SCALES)))
    intervals = SCALES[scale_name]
    # A register window of about an octave and a half somewhere in the range: videos of one class differ.
    span = min(19, instrument.high - instrument.low)
    window_low = int(rng.integers(instrument.low, instrument.high - span + 1))
    pitches = [p for p in range(window_low, window_low + span + 1) if (p - tonic) % 12 in intervals]
    if instrument.style == "plucked":
        durations, weights = (0.25, 0.5, 1.0, 1.5), (0.25, 0.45, 0.2, 0.1)
        articulation = 1.0  # plucked and struck notes decay on their own; let them ring to the next one
    else:
        durations, weights = (0.5, 1.0, 1.5, 2.0, 3.0), (0.3, 0.35, 0.15, 0.15, 0.05)
        articulation = float(rng.uniform(0.7, 0.97))  # staccato .. legato, per video
    base_velocity = int(rng.integers(72, 108))
    end_by = seconds - 0.8
    degree = int(rng.integers(0, len(pitches)))
    notes: list[Note] = []
    t = float(rng.uniform(0.0, 0.3))
    while t < end_by:
        phrase_len = int(rng.integers(4, 10))
        for k in range(phrase_len):
            step = int(rng.choice((-3, -2, -1, -1, 1, 1, 2, 3, 4, -4, 0)))
            degree += step
            if degree < 0:  # reflect at the window's edges
                degree = -degree
            elif degree >= len(pitches):
                degree = 2 * (len(pitches) - 1) - degree
            degree = min(max(degree, 0), len(pitches) - 1)
            dur_beats = float(rng.choice(durations, p=weights))
            if k == phrase_len - 1:
                dur_beats *= 2  # phrases end on a longer note
            dur = dur_beats * beat
            if t + dur > end_by:
                dur = end_by - t
                if dur < 0.1:
                    break
            accent = 12 if k == 0 else 0
            velocity = int(np.clip(base_velocity + accent + rng.integers(-10, 11), 30, 127))
            notes.append(Note(round(t, 6), round(t + dur * articulation, 6), pitches[degree], velocity))
            t += dur
        t += float(rng.choice((0.5, 1.0, 1.0, 2.0))) * beat  # a breath between phrases
    return Melody(tuple(notes), tempo, tonic, scale_name, seconds)


def _varlen(value: int) -> bytes:
    """A MIDI variable-length quantity."""
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def midi_bytes(melody: Melody, program: int, name: str = "") -> bytes:
    """A format-0 Standard MIDI File: tempo, program, a little reverb, the notes on channel 0, and an end of
    track at the video's length (so FluidSynth renders the whole duration)."""
    us_per_beat = round(60_000_000 / melody.tempo_bpm)
    ticks_per_second = TICKS_PER_BEAT * melody.tempo_bpm / 60.0

    def tick(seconds: float) -> int:
        return round(seconds * ticks_per_second)

    # (tick, order, bytes): at one tick, note-offs (order 0) come before note-ons (order 1).
    events: list[tuple[int, int, bytes]] = [
        (0, -3, b"\xff\x51\x03" + us_per_beat.to_bytes(3, "big")),
        (0, -2, bytes((0xC0, program))),
        (0, -1, bytes((0xB0, 91, 40))),  # reverb send
    ]
    if name:
        raw = name.encode("ascii", "replace")[:120]
        events.insert(0, (0, -4, b"\xff\x03" + _varlen(len(raw)) + raw))
    for n in melody.notes:
        events.append((tick(n.start), 1, bytes((0x90, n.pitch, n.velocity))))
        events.append((max(tick(n.end), tick(n.start) + 1), 0, bytes((0x80, n.pitch, 64))))
    events.sort(key=lambda e: (e[0], e[1]))
    track = bytearray()
    last = 0
    for t, _, data in events:
        track += _varlen(t - last) + data
        last = t
    track += _varlen(max(tick(melody.seconds) - last, 0)) + b"\xff\x2f\x00"
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, TICKS_PER_BEAT)
    return header + b"MTrk" + struct.pack(">I", len(track)) + bytes(track)


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


# ----------------------------------------------------------------------------------------------- pictures


def _icon_layer(icon: str, colour: tuple[int, int, int], size: int) -> Image.Image:
    """The instrument drawn with PIL primitives on a transparent square (a recognisable sketch, not art)."""
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    s = size

    def box(x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
        return (round(x0 * s), round(y0 * s), round(x1 * s), round(y1 * s))

    def pts(*xy: float) -> list[tuple[int, int]]:
        return [(round(xy[i] * s), round(xy[i + 1] * s)) for i in range(0, len(xy), 2)]

    dark = tuple(max(c - 90, 0) for c in colour)
    light = tuple(min(c + 70, 255) for c in colour)
    w = max(2, s // 40)
    if icon in ("violin", "cello"):  # two bouts, waist, f-holes, neck, scroll, strings, a bow
        # The cello is drawn wider, standing on its endpin, with the bow across lower down.
        k = 1.25 if icon == "cello" else 1.0

        def wide(x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
            return box(0.5 - (0.5 - x0) * k, y0, 0.5 + (x1 - 0.5) * k, y1)

        d.ellipse(wide(0.32, 0.28, 0.68, 0.55), fill=colour)
        d.ellipse(wide(0.27, 0.48, 0.73, 0.86), fill=colour)
        d.rectangle(wide(0.36, 0.48, 0.64, 0.58), fill=colour)
        d.arc(wide(0.38, 0.52, 0.46, 0.70), 100, 260, fill=dark, width=w)
        d.arc(wide(0.54, 0.52, 0.62, 0.70), -80, 80, fill=dark, width=w)
        d.rectangle(box(0.475, 0.06, 0.525, 0.50), fill=dark)
        d.ellipse(box(0.45, 0.02, 0.55, 0.10), fill=dark)
        for x in (0.48, 0.495, 0.505, 0.52):
            d.line(pts(x, 0.08, x, 0.80), fill=(235, 235, 220), width=1)
        if icon == "cello":
            d.line(pts(0.5, 0.86, 0.5, 0.99), fill=(120, 120, 120), width=w)
            d.line(pts(0.05, 0.62, 0.95, 0.74), fill=(90, 60, 30), width=w)
        else:
            d.line(pts(0.12, 0.70, 0.90, 0.40), fill=(90, 60, 30), width=w)
    elif icon in ("guitar", "banjo", "bass"):
        if icon == "guitar":
            d.ellipse(box(0.22, 0.48, 0.78, 0.95), fill=colour)
            d.ellipse(box(0.30, 0.30, 0.70, 0.62), fill=colour)
            d.ellipse(box(0.42, 0.55, 0.58, 0.71), fill=(30, 20, 10))
        elif icon == "banjo":
            d.ellipse(box(0.20, 0.45, 0.80, 0.98), fill=dark)
            d.ellipse(box(0.24, 0.49, 0.76, 0.94), fill=(245, 240, 225))
        else:
            d.polygon(pts(0.30, 0.45, 0.70, 0.50, 0.76, 0.90, 0.50, 0.96, 0.24, 0.88, 0.36, 0.66), fill=colour)
        d.rectangle(box(0.46, 0.04, 0.54, 0.62), fill=(90, 55, 25))
        d.rectangle(box(0.43, 0.0, 0.57, 0.08), fill=(60, 35, 15))
        for x in (0.475, 0.49, 0.51, 0.525):
            d.line(pts(x, 0.05, x, 0.85), fill=(230, 230, 230), width=1)
    elif icon == "flute":  # a long silver tube, diagonal, with tone holes
        d.line(pts(0.08, 0.80, 0.92, 0.20), fill=colour, width=max(4, s // 12))
        d.line(pts(0.08, 0.80, 0.92, 0.20), fill=light, width=max(1, s // 40))
        for k in range(7):
            x = 0.30 + 0.08 * k
            y = 0.80 - (x - 0.08) * (0.60 / 0.84)
            d.ellipse(box(x - 0.018, y - 0.018, x + 0.018, y + 0.018), fill=(80, 80, 90))
    elif icon in ("clarinet", "bassoon"):  # a vertical reed tube; the clarinet flares into a bell
        d.rectangle(box(0.44, 0.06, 0.56, 0.82), fill=colour)
        if icon == "clarinet":
            d.polygon(pts(0.44, 0.80, 0.56, 0.80, 0.66, 0.96, 0.34, 0.96), fill=colour)
            d.polygon(pts(0.46, 0.0, 0.54, 0.0, 0.56, 0.06, 0.44, 0.06), fill=(60, 60, 60))
        else:
            d.line(pts(0.50, 0.10, 0.36, 0.02, 0.28, 0.10), fill=(170, 170, 175), width=w)  # the bocal
            d.rectangle(box(0.40, 0.40, 0.44, 0.96), fill=dark)
        for k in range(6):
            y = 0.20 + 0.10 * k
            d.ellipse(box(0.48, y, 0.52, y + 0.04), fill=(200, 200, 210))
    elif icon == "trumpet":  # horizontal tube, three valves, flared bell
        d.rectangle(box(0.10, 0.46, 0.70, 0.54), fill=colour)
        d.polygon(pts(0.66, 0.46, 0.92, 0.30, 0.92, 0.70, 0.66, 0.54), fill=colour)
        d.ellipse(box(0.88, 0.30, 0.96, 0.70), fill=dark)
        for x in (0.34, 0.42, 0.50):
            d.rectangle(box(x, 0.30, x + 0.05, 0.62), fill=dark)
        d.rounded_rectangle(box(0.24, 0.54, 0.62, 0.70), radius=max(2, s // 30), outline=colour, width=w)
        d.rectangle(box(0.04, 0.47, 0.12, 0.53), fill=(160, 160, 160))
    elif icon == "tuba":  # big coiled body and a wide bell pointing up
        d.ellipse(box(0.20, 0.40, 0.80, 0.95), outline=colour, width=max(6, s // 10))
        d.polygon(pts(0.40, 0.45, 0.60, 0.45, 0.80, 0.08, 0.20, 0.08), fill=colour)
        d.ellipse(box(0.18, 0.02, 0.82, 0.14), fill=dark)
        for x in (0.40, 0.47, 0.54):
            d.rectangle(box(x, 0.55, x + 0.05, 0.75), fill=dark)
    elif icon == "sax":  # a J: neck, body down, curve, bell up
        wide = max(6, s // 9)
        d.line(pts(0.30, 0.06, 0.42, 0.12, 0.42, 0.70), fill=colour, width=wide)
        d.arc(box(0.42 - 0.14, 0.56, 0.70, 0.92), 0, 180, fill=colour, width=wide)
        d.polygon(pts(0.62, 0.74, 0.78, 0.74, 0.86, 0.44, 0.58, 0.44), fill=colour)
        d.ellipse(box(0.56, 0.40, 0.88, 0.50), fill=dark)
        for k in range(5):
            d.ellipse(box(0.39, 0.20 + 0.09 * k, 0.45, 0.26 + 0.09 * k), fill=light)
    elif icon == "accordion":  # two end boxes, pleated bellows, a keyboard on the right end
        d.rectangle(box(0.10, 0.15, 0.28, 0.85), fill=colour)
        d.rectangle(box(0.72, 0.15, 0.90, 0.85), fill=colour)
        for k in range(8):
            x0 = 0.28 + 0.055 * k
            pleat = pts(x0, 0.20, x0 + 0.0275, 0.15, x0 + 0.055, 0.20, x0 + 0.055, 0.80, x0 + 0.0275, 0.85, x0, 0.80)
            d.polygon(pleat, fill=(40, 40, 40) if k % 2 else (230, 230, 230))
        for k in range(8):
            y = 0.18 + 0.08 * k
            d.rectangle(box(0.76, y, 0.88, y + 0.06), fill=(250, 250, 250))
    elif icon == "piano":  # a keyboard
        d.rectangle(box(0.04, 0.30, 0.96, 0.74), fill=colour)
        for k in range(10):
            d.rectangle(box(0.06 + 0.088 * k, 0.44, 0.06 + 0.088 * k + 0.08, 0.72), fill=(250, 250, 250))
        for k in (0, 1, 3, 4, 5, 7, 8):
            x = 0.06 + 0.088 * k + 0.058
            d.rectangle(box(x, 0.44, x + 0.05, 0.60), fill=(10, 10, 10))
    elif icon == "xylophone":  # bars of decreasing length on two rails, two mallets
        d.line(pts(0.06, 0.30, 0.94, 0.40), fill=(90, 60, 30), width=w)
        d.line(pts(0.06, 0.82, 0.94, 0.72), fill=(90, 60, 30), width=w)
        for k in range(8):
            x = 0.08 + 0.105 * k
            inset = 0.012 * k
            d.rectangle(box(x, 0.24 + inset, x + 0.08, 0.88 - inset), fill=colour if k % 2 else light)
        for x0, x1 in ((0.20, 0.40), (0.80, 0.60)):
            d.line(pts(x0, 0.02, x1, 0.22), fill=(60, 40, 20), width=w)
            d.ellipse(box(x1 - 0.04, 0.18, x1 + 0.04, 0.26), fill=(230, 60, 60))
    elif icon == "bagpipe":  # a bag with three drones and a chanter
        d.ellipse(box(0.20, 0.35, 0.75, 0.85), fill=colour)
        for x, top in ((0.35, 0.02), (0.48, 0.08), (0.60, 0.14)):
            d.line(pts(x, 0.45, x + 0.10, top), fill=(40, 30, 20), width=w)
        d.line(pts(0.45, 0.82, 0.42, 0.98), fill=(40, 30, 20), width=w)
    else:
        raise ValueError(f"no picture for icon {icon!r}")
    return img


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled font: the same glyphs on every machine (system fonts would make frames machine-specific).
    return ImageFont.load_default(size=size)


@dataclass(frozen=True)
class Scene:
    """A video's look: everything drawn from its generator once, then animated per frame."""

    background: np.ndarray  # [H, W, 3] uint8, a vertical gradient of a per-video tint
    icon: Image.Image  # RGBA, tilted
    icon_xy: tuple[int, int]
    title: str
    title_xy: tuple[int, int]
    title_size: int
    text_colour: tuple[int, int, int]
    accent: tuple[int, int, int]


def make_scene(rng: np.random.Generator, label: str, config: CorpusConfig) -> Scene:
    w, h = config.width, config.height
    instrument = INSTRUMENTS[label]
    tint = rng.uniform(0.55, 0.95, size=3)
    shade = rng.uniform(0.75, 1.0)
    rows = np.linspace(1.0, shade, h)[:, None] * tint[None, :] * 255
    background = np.broadcast_to(rows[:, None, :], (h, w, 3)).round().astype(np.uint8).copy()
    icon_size = int(min(w, h) * rng.uniform(0.48, 0.62))
    icon = _icon_layer(instrument.icon, instrument.colour, icon_size)
    icon = icon.rotate(float(rng.uniform(-15, 15)), resample=Image.BICUBIC, expand=True)
    title_size = max(10, int(h * rng.uniform(0.08, 0.11)))
    title = label.replace("_", " ")
    title_w = _font(title_size).getbbox(title)[2]
    title_top = bool(rng.integers(0, 2))
    title_y = int(h * 0.04) if title_top else int(h - title_size * 1.3 - h * 0.06)
    title_x = int(rng.uniform(0.04 * w, max(0.04 * w, w - title_w - 0.04 * w)))
    free_top = title_size * 1.4 + h * 0.04 if title_top else 0
    free_bottom = h - (0 if title_top else title_size * 1.4 + h * 0.06)
    ix = int(rng.uniform(0, max(1, w - icon.width)))
    iy = int(rng.uniform(free_top, max(free_top + 1, free_bottom - icon.height)))
    luma = float(tint @ np.array([0.299, 0.587, 0.114]))
    text_colour = (20, 20, 20) if luma > 0.6 else (250, 250, 250)
    return Scene(background, icon, (ix, iy), title, (title_x, title_y), title_size, text_colour, instrument.colour)


def iter_frames(scene: Scene, melody: Melody, instrument: Instrument, fps: int) -> Iterator[bytes]:
    """Raw RGB frames, one at a time (long or large videos never sit in memory): the static scene, the
    instrument bobbing with the beat, sound-wave arcs at each note onset and a marker whose height follows
    the sounding pitch (picture and sound move together)."""
    base = Image.fromarray(scene.background)
    ImageDraw.Draw(base).text(scene.title_xy, scene.title, fill=scene.text_colour, font=_font(scene.title_size))
    h = base.height
    n_frames = round(melody.seconds * fps)
    onsets = np.array([n.start for n in melody.notes])
    for i in range(n_frames):
        t = i / fps
        frame = base.copy()
        bob = round(3 * math.sin(2 * math.pi * t * melody.tempo_bpm / 120.0))
        x, y = scene.icon_xy
        frame.paste(scene.icon, (x, y + bob), scene.icon)
        d = ImageDraw.Draw(frame)
        k = int(np.searchsorted(onsets, t, side="right")) - 1
        if k >= 0:
            note = melody.notes[k]
            cx, cy = x + scene.icon.width, y + scene.icon.height // 3
            age = t - note.start
            if age < 0.4:  # sound waves spreading from the instrument for a moment after each onset
                for r in range(1, 4):
                    rad = int(8 * r + 30 * age)
                    d.arc((cx - rad, cy - rad, cx + rad, cy + rad), -40, 40, fill=scene.accent, width=2)
            if t < note.end + 0.15:
                frac = (note.pitch - instrument.low) / max(instrument.high - instrument.low, 1)
                my = int(h * 0.9 - frac * h * 0.8)
                d.rectangle((4, my - 3, 14, my + 3), fill=scene.accent, outline=scene.text_colour)
        yield frame.tobytes()


# ----------------------------------------------------------------------------------------------- video


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


# ----------------------------------------------------------------------------------------------- build


def plan_videos(config: CorpusConfig) -> list[tuple[CorpusVideo, Melody]]:
    """Every video of the config with its melody; cheap (no rendering), deterministic from the seed."""
    planned = []
    for label in config.classes:
        instrument = INSTRUMENTS[label]
        for index in range(1, config.videos_per_class + 1):
            rng = video_rng(config.seed, label, index)
            seconds = video_seconds(rng, config)
            melody = compose_melody(rng, instrument, seconds)
            vid = f"{label}_{index:03d}"
            pitches = [n.pitch for n in melody.notes]
            entry = CorpusVideo(
                id=vid,
                label=label,
                video=f"{label}/{vid}.mp4",
                midi=f"{RENDER_DIR}/{label}/{vid}.mid",
                wav=f"{RENDER_DIR}/{label}/{vid}.wav",
                seconds=seconds,
                program=instrument.program,
                tempo_bpm=melody.tempo_bpm,
                tonic=melody.tonic,
                scale=melody.scale,
                lowest_note=min(pitches),
                highest_note=max(pitches),
                notes=len(pitches),
            )
            planned.append((entry, melody))
    return planned


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _partial(path: Path) -> Path:
    """Where a file is written before its atomic rename: hidden and with a non-video suffix, so that an
    interrupted build never leaves something the ingestion job would list."""
    return path.with_name(f".{path.name}.partial")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = _partial(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build_video(root: Path, entry: CorpusVideo, melody: Melody, config: CorpusConfig, tools: dict[str, str]) -> dict:
    """Write one video's MIDI, WAV and mp4 (each atomically; the mp4 last, so its presence means done)."""
    instrument = INSTRUMENTS[entry.label]
    midi_path, wav_path, video_path = root / entry.midi, root / entry.wav, root / entry.video
    midi_path.parent.mkdir(parents=True, exist_ok=True)
    video_path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(midi_path, midi_bytes(melody, instrument.program, name=entry.id))
    pcm = render_audio(midi_path, tools, config, entry.seconds)
    tmp_wav = _partial(wav_path)
    write_wav(tmp_wav, pcm, config.sample_rate)
    os.replace(tmp_wav, wav_path)
    # The scene draws from its own stream so that the music above and the picture never shift each other.
    picture_rng = video_rng(config.seed, entry.label + "/picture", int(entry.id.rsplit("_", 1)[1]))
    scene = make_scene(picture_rng, entry.label, config)
    frames = iter_frames(scene, melody, instrument, config.fps)
    tmp_video = _partial(video_path)
    encode_video(tmp_video, frames, wav_path, tools, config)
    os.replace(tmp_video, video_path)
    return {"video": _sha256(video_path), "midi": _sha256(midi_path), "wav": _sha256(wav_path)}


def _is_complete(root: Path, entry: CorpusVideo, recorded: CorpusVideo | None) -> dict | None:
    """The entry's SHA-256 digests if its three files exist and match what the manifest recorded (files of an
    interrupted build have no record; they are whole, since each appeared by an atomic rename)."""
    paths = {"video": root / entry.video, "midi": root / entry.midi, "wav": root / entry.wav}
    if not all(p.is_file() for p in paths.values()):
        return None
    digests = {k: _sha256(p) for k, p in paths.items()}
    if recorded is not None and recorded.sha256 and recorded.sha256 != digests:
        return None
    return digests


def _remove_files(root: Path, videos: Sequence[CorpusVideo]) -> None:
    """Delete a previous build's files (only the ones its manifest names) and the folders left empty."""
    dirs = set()
    for v in videos:
        for rel in (v.video, v.midi, v.wav):
            p = root / rel
            for candidate in (p, _partial(p)):
                if candidate.is_file():
                    candidate.unlink()
            dirs.add(p.parent)
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        for parent in (d, *d.parents):
            if parent == root or root not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:
                break


def write_label_index(root: Path, manifest: CorpusManifest) -> Path:
    """MUSIC's JSON format: {"videos": {"<class>": ["<id>", ...]}}; files are `<root>/<class>/<id>.mp4`."""
    path = root / LABEL_INDEX_FILE
    _write_atomic(path, (json.dumps({"videos": manifest.by_label()}, indent=1) + "\n").encode())
    return path


def _write_manifest(root: Path, manifest: CorpusManifest) -> None:
    _write_atomic(root / MANIFEST_FILE, (manifest.to_json() + "\n").encode())


def build_corpus(
    config: CorpusConfig,
    rebuild: bool = False,
    progress: Callable[[str], None] | None = None,
) -> CorpusManifest:
    """Build (or reuse) the corpus under `config.out` and return its manifest.

    With a manifest of the same config hash in `out`, every video whose files are present and match the
    recorded SHA-256 is reused; the rest are built. A manifest of another config: its files are removed first.
    A non-empty `out` without a manifest is refused (it is not a corpus this builder made). `rebuild=True`
    builds everything again.
    """
    started = time.perf_counter()
    config.validate()
    say = progress or (lambda _msg: None)
    tools = find_tools(config)
    digest, identity = config_hash(config, tools)
    root = Path(config.out).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"corpus output {root} exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)

    previous: CorpusManifest | None = None
    if (root / MANIFEST_FILE).is_file():
        previous = CorpusManifest.read(root)
    elif any(root.iterdir()):
        shown = ", ".join(sorted(p.name for p in root.iterdir())[:5])
        raise ValueError(
            f"corpus output {root} is not empty and holds no {MANIFEST_FILE} ({shown}...): "
            "give an empty or new directory, or one this builder wrote"
        )
    planned = plan_videos(config)
    if previous is not None and (previous.config_hash != digest or rebuild):
        say(f"config changed or rebuild asked: removing the {len(previous.videos)} videos of the previous build")
        _remove_files(root, previous.videos)
        (root / LABEL_INDEX_FILE).unlink(missing_ok=True)
        previous = None
    recorded = {v.id: v for v in previous.videos} if previous is not None else {}

    manifest = CorpusManifest(
        root=str(root),
        config=config.to_dict(),
        config_hash=digest,
        status="building",
        videos=[entry for entry, _ in planned],
        tools=identity,
    )
    manifest.config.pop("out")  # the folder may move
    manifest.config.pop("workers")  # changes speed, not content
    # Written before any video, so an interrupted build is recognised (and resumed) by the next one.
    _write_manifest(root, manifest)
    todo = []
    for entry, melody in planned:
        digests = _is_complete(root, entry, recorded.get(entry.id))
        if digests is not None:
            entry.sha256 = digests
            manifest.reused.append(entry.id)
        else:
            todo.append((entry, melody))
    workers = config.workers or os.cpu_count() or 1
    say(
        f"corpus {root}: {len(planned)} videos ({len(config.classes)} classes x {config.videos_per_class}), "
        f"{len(manifest.reused)} reused, {len(todo)} to build"
        + (f" with {min(workers, len(todo))} workers" if todo else "")
    )
    if todo:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(build_video, root, e, m, config, tools): e for e, m in todo}
            for done, future in enumerate(as_completed(futures), start=1):
                entry = futures[future]
                entry.sha256 = future.result()
                manifest.built.append(entry.id)
                say(
                    f"[{done}/{len(todo)}] {entry.video}: {entry.seconds:.1f} s, {entry.tempo_bpm} bpm, "
                    f"notes {entry.lowest_note}-{entry.highest_note}"
                )
    manifest.built.sort()
    write_label_index(root, manifest)
    manifest.status = "complete"
    manifest.elapsed_seconds = round(time.perf_counter() - started, 3)
    _write_manifest(root, manifest)
    total = sum(v.seconds for v in manifest.videos)
    say(
        f"done in {manifest.elapsed_seconds:.1f} s: {len(manifest.built)} built, {len(manifest.reused)} reused, "
        f"{total:.0f} s of video; labels: {root / LABEL_INDEX_FILE}"
    )
    return manifest
