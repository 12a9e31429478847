"""A vocoder's quality (clipsynth_platform.evaluation.vocoder_quality): the real test windows it is measured on,
and its figures for a vocoder that returns the real audio exactly, for one that does not, and for none."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from clipsynth_core import GriffinLimVocoder, MelFrontend
from clipsynth_platform.evaluation.audio_relevance import judge_waveforms
from clipsynth_platform.evaluation.mel_classifier import tiny_random_classifier
from clipsynth_platform.evaluation.vocoder_quality import class_queries, reference_windows, score_vocoder


def _write_split(root, chunks: list[tuple[np.ndarray | None, str | None]]) -> None:
    (root / "test").mkdir(parents=True)
    audio = [None if a is None else a.tolist() for a, _ in chunks]
    table = pa.table({"audio": pa.array(audio, pa.list_(pa.int16())), "label": [lab for _, lab in chunks]})
    pq.write_table(table, root / "test" / "part-0.parquet")


def _pcm(seconds: float, freq: float, seed: int) -> np.ndarray:
    t = np.arange(int(seconds * 16_000)) / 16_000
    noise = np.random.default_rng(seed).standard_normal(t.shape)
    return np.round((0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * noise) * 32767).astype(np.int16)


def test_reference_windows_are_spread_over_each_chunk(tmp_path):
    long, short = _pcm(5.0, 330.0, 0), _pcm(2.0, 440.0, 1)  # 2 s is shorter than one 4.16 s window
    _write_split(tmp_path, [(long, "low"), (short, "high"), (None, "low"), (_pcm(4.5, 880.0, 2), None)])
    windows = reference_windows(str(tmp_path), "test", windows_per_chunk=2)
    # 80,000 samples: 77 frames, so the windows start at frames 0 and 13 (the last ends at the chunk's last frame)
    assert windows.labels == ["low", "low"] and windows.audio.shape == (2, 66_560)
    wave = long.astype(np.float32) / 32768.0
    np.testing.assert_array_equal(windows.audio[0].numpy(), wave[:66_560])
    np.testing.assert_array_equal(windows.audio[1].numpy(), wave[13 * 1024 : 13 * 1024 + 66_560])
    torch.testing.assert_close(windows.mels, MelFrontend()(windows.audio))
    with pytest.raises(ValueError, match="windows_per_chunk must be >= 1"):
        reference_windows(str(tmp_path), "test", windows_per_chunk=0)


def test_scores_of_an_exact_vocoder_an_inexact_one_and_no_generated_mels(tmp_path):
    _write_split(tmp_path, [(_pcm(4.5, 330.0, 0), "low"), (_pcm(4.5, 2500.0, 1), "high")])
    windows = reference_windows(str(tmp_path), "test", windows_per_chunk=1)
    judge = tiny_random_classifier(("low", "high"), seed=3)
    generated = torch.rand(3, 64, 64) * 2 - 1
    intended = ["low", "high", "high"]

    def exact(mels: torch.Tensor) -> torch.Tensor:
        """The real audio of a reference mel; Griffin-Lim for the others."""
        out = GriffinLimVocoder(n_iter=4)(mels)
        for i, m in enumerate(mels):
            for mel, audio in zip(windows.mels, windows.audio):
                if torch.equal(m, mel):
                    out[i] = audio
        return out

    q = score_vocoder(exact, judge, generated, intended, windows)
    assert q.lsd_db == pytest.approx(0.0, abs=1e-4) and q.mrstft == pytest.approx(0.0, abs=1e-6)
    assert q.mel_l1 == pytest.approx(0.0, abs=1e-6)
    assert q.recon_relevance == judge_waveforms(judge, list(windows.audio.numpy()), windows.labels).relevance
    heard = judge_waveforms(judge, list(GriffinLimVocoder(n_iter=4)(generated).numpy()), intended)
    assert q.relevance == heard.relevance and q.relevance_prob == pytest.approx(heard.mean_intended_probability)
    # half as loud: 6.02 dB, |ln 0.5| in every STFT and mel magnitude (none of them near the floors here)
    half = score_vocoder(lambda m: 0.5 * exact(m), judge, generated, intended, windows)
    assert half.lsd_db == pytest.approx(20 * math.log10(2), rel=1e-3)
    assert half.mrstft == pytest.approx(math.log(2), rel=1e-3) and half.mel_l1 == pytest.approx(math.log(2), rel=1e-3)
    none = score_vocoder(exact, judge, torch.zeros(0, 64, 64), [], windows)
    assert math.isnan(none.relevance) and math.isnan(none.relevance_prob) and none.lsd_db == q.lsd_db


def test_class_queries_ask_for_every_class_per_class_times():
    queries, intended = class_queries(["acoustic_guitar", "cello"], 2)
    assert queries == ["playing acoustic guitar"] * 2 + ["playing cello"] * 2
    assert intended == ["acoustic_guitar", "acoustic_guitar", "cello", "cello"]
