"""Relevance of what a listener hears: a waveform re-analysed into the project's mel, then classified.

The evaluation's relevance scores the generated mel; this scores the audio after the vocoder, so a vocoder
that smears every mel into the same timbre shows up here and not there. The waveform goes through the same
`MelFrontend` as the dataset (normalised log-mel), and the mel classifier that judges the samples judges it.
"""

from __future__ import annotations

import wave
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from clipsynth_core import MelFrontend, Synthesizer
from clipsynth_core.vocoder import VOCODERS, build_vocoder

from .mel_classifier import ClassifierFeatures, MelClassifier


@dataclass(frozen=True)
class AudioJudgement:
    """One waveform: the class it was asked for, the class the judge hears, and the judge's belief in the former."""

    name: str
    intended: str
    predicted: str
    intended_probability: float


@dataclass(frozen=True)
class AudioRelevance:
    relevance: float  # share of waveforms classified as their intended class
    mean_intended_probability: float
    chance: float  # 1 / classes
    judgements: tuple[AudioJudgement, ...]

    def to_dict(self) -> dict:
        return asdict(self)


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A 16-bit mono PCM wav as float32 in [-1, 1], and its sample rate."""
    with wave.open(str(path)) as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(f"{path}: expected 16-bit mono PCM, got {8 * w.getsampwidth()}-bit x{w.getnchannels()}")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return pcm.astype(np.float32) / 32768.0, w.getframerate()


def judge_waveforms(
    classifier: MelClassifier,
    waves: Sequence[np.ndarray],
    intended: Sequence[str],
    names: Sequence[str] | None = None,
    sample_rate: int = 16_000,
    frontend: MelFrontend | None = None,
) -> AudioRelevance:
    """Classify each waveform's mel (all its whole classifier windows, softmax averaged)."""
    if len(waves) != len(intended) or not waves:
        raise ValueError(f"need one intended label per waveform, got {len(waves)} waveforms, {len(intended)} labels")
    labels = list(classifier.config.labels)
    unknown = sorted(set(intended) - set(labels))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classifier's {labels}")
    frontend = frontend or MelFrontend()
    judge = ClassifierFeatures(classifier, "audio-judge", device="cpu")
    rows = []
    with torch.no_grad():
        for i, (w, label) in enumerate(zip(waves, intended)):
            mel = frontend(torch.as_tensor(np.asarray(w, np.float32)), sample_rate=sample_rate)  # [1, n_mels, T]
            probs = judge.predict_proba(mel)[0]
            name = names[i] if names else str(i)
            rows.append(AudioJudgement(name, label, labels[int(probs.argmax())], float(probs[labels.index(label)])))
    return _summarise(rows, len(labels))


def _summarise(rows: Sequence[AudioJudgement], classes: int) -> AudioRelevance:
    return AudioRelevance(
        relevance=float(np.mean([r.predicted == r.intended for r in rows])),
        mean_intended_probability=float(np.mean([r.intended_probability for r in rows])),
        chance=1.0 / classes,
        judgements=tuple(rows),
    )


def judge_wav_files(classifier: MelClassifier, files: Sequence[str | Path], intended: Sequence[str]) -> AudioRelevance:
    """`judge_waveforms` on wav files (all at one sample rate)."""
    waves, rates = zip(*(read_wav(f) for f in files)) if files else ((), ())
    if len(set(rates)) > 1:
        raise ValueError(f"the wav files have different sample rates: {sorted(set(rates))}")
    return judge_waveforms(
        classifier,
        list(waves),
        intended,
        names=[Path(f).name for f in files],
        sample_rate=rates[0] if rates else 16_000,
    )


@dataclass(frozen=True)
class VocoderComparison:
    """The same generated mels judged as mels, and as the audio of each vocoder: what each vocoder keeps."""

    mel: AudioRelevance  # the generated mels themselves (no vocoder)
    audio: dict[str, AudioRelevance]  # vocoder name -> its audio, re-analysed

    def to_dict(self) -> dict:
        return {"mel": self.mel.to_dict(), "audio": {k: v.to_dict() for k, v in self.audio.items()}}


def compare_vocoders(
    synth: Synthesizer,
    classifier: MelClassifier,
    queries: Sequence[str],
    intended: Sequence[str],
    seeds: Sequence[int],
    steps: int | None = None,
) -> VocoderComparison:
    """Sample mels for `queries` once, then judge them directly and through the bundle's HiFi-GAN and Griffin-Lim."""
    mels = synth.sample_mels(synth.encode(list(queries)), steps=steps, seed=list(seeds))
    judge = ClassifierFeatures(classifier, "mel-judge", device="cpu")
    labels = list(classifier.config.labels)
    probs = judge.predict_proba(mels.float().cpu())
    mel_rows = tuple(
        AudioJudgement(q, label, labels[int(p.argmax())], float(p[labels.index(label)]))
        for q, label, p in zip(queries, intended, probs)
    )
    mel = _summarise(mel_rows, len(labels))
    audio = {}
    with torch.no_grad():
        for name in VOCODERS:
            vocoder = build_vocoder(name, synth.hifigan, synth.config.mel).to(synth.device).eval()
            waves = vocoder(mels.to(synth.device)).float().cpu().numpy()
            audio[name] = judge_waveforms(classifier, list(waves), intended, names=list(queries))
    return VocoderComparison(mel, audio)
