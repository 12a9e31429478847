"""What the built-in corpus is made of: the instruments it can play, the build config, and the manifest that
records what a build made."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from clipsynth_platform.runtime.options import opt

MANIFEST_FILE = "corpus_manifest.json"
LABEL_INDEX_FILE = "music_solo_videos.json"
SPLIT_INDEX_FILE = "corpus_index.csv"  # path,label,split: the stratified split, for the ingestion job
RENDER_DIR = "_render"
DEFAULT_SOUNDFONT = "/usr/share/sounds/sf2/TimGM6mb.sf2"  # 5.4 MB, loads fast; FluidR3_GM.sf2 sounds better
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


class CorpusToolError(RuntimeError):
    """A program or file the builder needs is missing; the message names the Debian package to install."""


@dataclass
class CorpusConfig:
    """What to build. Defaults: 8 classes x 3 videos of 10-15 s, 320x240 at 10 fps (builds in well under a
    minute on 2 cores with the TimGM6mb soundfont). `test_per_class` videos of every class form the test split
    (stratified, so every class is in both splits)."""

    out: str = opt(
        "", "output directory (local: ffmpeg writes files, so no s3:// here); required unless --list-classes"
    )
    classes: tuple[str, ...] = opt(DEFAULT_CLASSES, "MUSIC class names, space-separated (see --list-classes)")
    videos_per_class: int = opt(3, "videos per class")
    test_per_class: int = opt(1, "videos of each class in the test split (the rest are train)")
    # durations are drawn uniformly in [min, max] per video, whole frames
    min_seconds: float = opt(10.0, "shortest video")
    max_seconds: float = opt(15.0, "longest video")
    seed: int = opt(0, "the same seed gives the same corpus")
    soundfont: str = opt(DEFAULT_SOUNDFONT, "General MIDI .sf2 file (FluidR3_GM.sf2 sounds better)")
    sample_rate: int = opt(16_000, "audio sample rate (Hz; the paper's 16 kHz: audio is rendered and muxed at it)")
    gain: float = opt(0.8, "FluidSynth master gain (-g) before peak normalisation")
    width: int = opt(320, "frame width (even)")
    height: int = opt(240, "frame height (even)")
    fps: int = opt(10, "video frame rate")
    # the pictures are flat drawings, so a high CRF still looks clean
    crf: int = opt(28, "x264 constant rate factor (lower: better, bigger)")
    audio_bitrate_kbps: int = opt(64, "AAC bitrate")
    workers: int = opt(0, "videos built at once; 0: one per CPU core (not part of the config hash)")

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
        _check_range("test_per_class", self.test_per_class, 0, 1000)
        if self.test_per_class >= self.videos_per_class:
            raise ValueError(
                f"test_per_class {self.test_per_class} leaves no train video of {self.videos_per_class} per class"
            )
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
    split: str = "train"  # "train" or "test" (stratified by class, see build.assign_splits)
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
    split_index: str = SPLIT_INDEX_FILE
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
