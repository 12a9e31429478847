"""Melodies for the corpus: a phrase-structured random walk per video, written as a Standard MIDI File."""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass

import numpy as np

from .config import CorpusConfig, Instrument

TICKS_PER_BEAT = 480

SCALES = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "pentatonic": (0, 2, 4, 7, 9),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
}


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
        durations: tuple[float, ...] = (0.25, 0.5, 1.0, 1.5)
        weights: tuple[float, ...] = (0.25, 0.45, 0.2, 0.1)
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
