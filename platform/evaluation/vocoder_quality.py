"""How good a vocoder is here: what a listener hears of generated mels, and how close it comes to real audio.

Any vocoder (normalised mels [B, n_mels, T] -> whole clips [B, (T - 1) * hop + n_fft]: the HiFi-GAN being
trained, a bundle's, Griffin-Lim) is scored on
- generated mels (a diffusion bundle's, for "playing {class}" of every class): the relevance of its audio, the
  waveform re-analysed by the project's mel and classified by the mel classifier (the judge), as the demo's
  listening stage measures the served audio; and the judge's mean probability of the intended class;
- real test audio: 4.16 s windows of the test split (`reference_windows`), their mels vocoded and compared with
  the real audio: log-spectral distance (dB), multi-resolution STFT distance (clipsynth_core.spectral_distance),
  ln-mel L1 (the HiFi-GAN mel loss's view), and the relevance of those reconstructions.
benchmarks/vocoder/ draws these against training time; jobs/vocoder.py scores the trained vocoder with them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from clipsynth_core import MelConfig, MelFrontend, Synthesizer
from clipsynth_core.spectral_distance import log_spectral_distance, multi_resolution_stft_distance
from clipsynth_platform.datasets.splits import iter_split_rows

from .audio_relevance import judge_waveforms
from .mel_classifier import MelClassifier

Vocode = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ReferenceWindows:
    """Real audio windows of a split and the project's mels of them, with their labels."""

    audio: torch.Tensor  # [W, (frames - 1) * hop + n_fft] float32
    mels: torch.Tensor  # [W, n_mels, frames], normalised
    labels: list[str]


def reference_windows(
    data: str, split: str = "test", windows_per_chunk: int = 2, mel: MelConfig | None = None
) -> ReferenceWindows:
    """`windows_per_chunk` windows of `mel.segment_frames` frames from every labelled chunk with audio, spread
    evenly over the chunk (the first starts at its beginning, the last ends at its end): the same every call."""
    if windows_per_chunk < 1:
        raise ValueError(f"windows_per_chunk must be >= 1, got {windows_per_chunk}")
    mel = mel or MelConfig()
    length = mel.samples_for_frames(mel.segment_frames)
    waves, labels = [], []
    for row in iter_split_rows(data, split, ["audio", "label"]):
        if row["audio"] is None or row["label"] is None:
            continue
        pcm = np.asarray(row["audio"], np.int16).astype(np.float32) / 32768.0
        last = mel.frames_for_samples(len(pcm)) - mel.segment_frames
        if last < 0:
            continue
        for k in range(windows_per_chunk):
            start = (last * k // max(1, windows_per_chunk - 1)) * mel.hop_length
            waves.append(pcm[start : start + length])
            labels.append(row["label"])
    if not waves:
        raise ValueError(f"the {split} split of {data} has no labelled audio of {length} samples or more")
    audio = torch.from_numpy(np.stack(waves))
    with torch.no_grad():
        mels = MelFrontend(mel)(audio)
    return ReferenceWindows(audio, mels, labels)


def class_queries(labels: Sequence[str], per_class: int) -> tuple[list[str], list[str]]:
    """("playing {class}" x per_class for every class, the class each asks for): the demo's text queries."""
    queries = [f"playing {label.replace('_', ' ')}" for label in labels for _ in range(per_class)]
    return queries, [label for label in labels for _ in range(per_class)]


@torch.no_grad()
def generated_class_mels(
    synth: Synthesizer, labels: Sequence[str], per_class: int, steps: int, seed: int
) -> tuple[torch.Tensor, list[str]]:
    """The synthesizer's mels [G, n_mels, frames] for `class_queries`, example i seeded seed + 10,000 + i."""
    queries, intended = class_queries(labels, per_class)
    seeds = [seed + 10_000 + i for i in range(len(queries))]
    return synth.sample_mels(synth.encode(queries), steps=steps, seed=seeds).cpu(), intended


@dataclass(frozen=True)
class VocoderQuality:
    relevance: float  # generated mels' audio heard as the intended class (judge accuracy)
    relevance_prob: float  # the judge's mean probability of the intended class on that audio
    lsd_db: float  # real windows: log-spectral distance of the reconstructions to the real audio
    mrstft: float  # real windows: multi-resolution STFT log-magnitude distance
    mel_l1: float  # real windows: ln-mel L1 of reconstruction and real audio
    recon_relevance: float  # real windows: the reconstructions heard as their labels
    seconds_per_clip: float  # vocoding time per clip, in this process

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _vocoded(vocode: Vocode, mels: torch.Tensor, batch: int = 16) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([vocode(mels[i : i + batch]).float().cpu().clamp(-1, 1) for i in range(0, len(mels), batch)])


def score_vocoder(
    vocode: Vocode,
    judge: MelClassifier,
    generated: torch.Tensor,
    intended: Sequence[str],
    reference: ReferenceWindows,
) -> VocoderQuality:
    """The vocoder's quality on generated mels and on the reference windows (see the module docstring). With no
    generated mels (a run that has no diffusion model yet) their two figures are NaN."""
    t0 = time.perf_counter()
    heard_waves = _vocoded(vocode, generated) if len(generated) else torch.zeros(0, reference.audio.shape[-1])
    recon_waves = _vocoded(vocode, reference.mels)
    seconds = time.perf_counter() - t0
    nan = float("nan")
    heard = judge_waveforms(judge, list(heard_waves.numpy()), list(intended)) if len(generated) else None
    recon = judge_waveforms(judge, list(recon_waves.numpy()), reference.labels)
    frontend = MelFrontend()
    with torch.no_grad():
        mel_l1 = (frontend.log_mel(recon_waves) - frontend.log_mel(reference.audio)).abs().mean()
    return VocoderQuality(
        relevance=heard.relevance if heard else nan,
        relevance_prob=heard.mean_intended_probability if heard else nan,
        lsd_db=float(log_spectral_distance(recon_waves, reference.audio).mean()),
        mrstft=float(multi_resolution_stft_distance(recon_waves, reference.audio).mean()),
        mel_l1=float(mel_l1),
        recon_relevance=recon.relevance,
        seconds_per_clip=seconds / (len(heard_waves) + len(recon_waves)),
    )
