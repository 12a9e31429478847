"""Relevance measured on audio: waveforms re-analysed into mels and classified, and the vocoder comparison."""

from __future__ import annotations

import wave

import numpy as np
import pytest
import torch

from clipsynth_core import GriffinLimVocoder, HiFiGANVocoder, MelFrontend, Synthesizer, SynthesizerConfig
from clipsynth_platform.evaluation.audio_relevance import (
    compare_vocoders,
    judge_wav_files,
    judge_waveforms,
    read_wav,
)
from clipsynth_platform.evaluation.mel_classifier import ClassifierFeatures, tiny_random_classifier

SR = 16_000


def tones(freqs: list[float], n: int = 66_560) -> list[np.ndarray]:
    t = np.arange(n) / SR
    return [(0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32) for f in freqs]


def write_pcm(path, x: np.ndarray, channels: int = 1) -> None:
    pcm = np.round(np.clip(x, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(np.repeat(pcm, channels).tobytes())


def test_judgements_match_the_classifier_on_the_frontends_mel():
    classifier = tiny_random_classifier(("low", "high"), seed=3)
    waves = tones([220.0, 3000.0, 440.0])
    intended = ["low", "high", "low"]
    result = judge_waveforms(classifier, waves, intended, names=["a", "b", "c"])
    # Independently: the same frontend and classifier, batched.
    mels = MelFrontend()(torch.from_numpy(np.stack(waves)))
    probs = ClassifierFeatures(classifier, "x", device="cpu").predict_proba(mels)
    labels = ["low", "high"]
    assert [j.predicted for j in result.judgements] == [labels[k] for k in probs.argmax(1)]
    expected = [probs[i, labels.index(lab)] for i, lab in enumerate(intended)]
    np.testing.assert_allclose([j.intended_probability for j in result.judgements], expected, rtol=1e-5)
    assert result.relevance == pytest.approx(np.mean([labels[k] == lab for k, lab in zip(probs.argmax(1), intended)]))
    assert result.chance == 0.5 and [j.name for j in result.judgements] == ["a", "b", "c"]


def test_wav_files_give_the_same_judgement_as_their_samples(tmp_path):
    classifier = tiny_random_classifier(("low", "high"), seed=1)
    waves = tones([330.0, 2500.0])
    files = []
    for i, w in enumerate(waves):
        files.append(tmp_path / f"{i}.wav")
        write_pcm(files[-1], w)
    back, rate = read_wav(files[0])
    assert rate == SR and np.abs(back - waves[0]).max() < 1 / 32767 + 1e-6
    from_files = judge_wav_files(classifier, files, ["low", "high"])
    quantised = [np.round(w * 32767) / 32768 for w in waves]
    from_samples = judge_waveforms(classifier, quantised, ["low", "high"])
    np.testing.assert_allclose(
        [j.intended_probability for j in from_files.judgements],
        [j.intended_probability for j in from_samples.judgements],
        rtol=1e-6,
    )
    assert [j.name for j in from_files.judgements] == ["0.wav", "1.wav"]


def test_bad_input_is_refused_with_a_reason(tmp_path):
    classifier = tiny_random_classifier(("low", "high"))
    with pytest.raises(ValueError, match="not among the classifier's"):
        judge_waveforms(classifier, tones([440.0]), ["violin"])
    with pytest.raises(ValueError, match="one intended label per waveform"):
        judge_waveforms(classifier, tones([440.0, 880.0]), ["low"])
    stereo = tmp_path / "stereo.wav"
    write_pcm(stereo, tones([440.0])[0], channels=2)
    with pytest.raises(ValueError, match="expected 16-bit mono PCM"):
        read_wav(stereo)


@pytest.mark.slow  # 20 s on 2 shared cores: out of make test-fast
def test_vocoder_comparison_judges_the_same_mels_three_ways():
    synth = Synthesizer.untrained(SynthesizerConfig.tiny(), seed=2)
    classifier = tiny_random_classifier(("low", "high"), seed=4)
    queries, intended, seeds = ["a dog", "a bell"], ["low", "high"], [7, 8]
    result = compare_vocoders(synth, classifier, queries, intended, seeds, steps=3)
    assert set(result.audio) == {"hifigan", "griffin-lim"}
    # The mel judgement, recomputed from the same seeded samples.
    mels = synth.sample_mels(synth.encode(queries), steps=3, seed=seeds)
    probs = ClassifierFeatures(classifier, "x", device="cpu").predict_proba(mels)
    np.testing.assert_allclose(
        [j.intended_probability for j in result.mel.judgements], [probs[0, 0], probs[1, 1]], rtol=1e-5
    )
    # Each vocoder's judgement, recomputed from its own audio of those mels (both are deterministic).
    for name, vocoder in (("griffin-lim", GriffinLimVocoder()), ("hifigan", HiFiGANVocoder(synth.hifigan))):
        again = judge_waveforms(classifier, list(vocoder(mels).detach().numpy()), intended)
        np.testing.assert_allclose(
            [j.intended_probability for j in result.audio[name].judgements],
            [j.intended_probability for j in again.judgements],
            rtol=1e-4,
        )
    assert result.to_dict()["audio"]["griffin-lim"]["chance"] == 0.5
