"""Evaluation parts without Ray: reading splits, the statistics cache, the mel classifier (FID features and
relevance), query batching, the config CLI, and the training-run link of model URIs."""

from __future__ import annotations

import argparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from clipsynth_core.metrics import embedding_statistics
from clipsynth_platform.evaluation.cli import add_dataclass_arguments, config_from_args
from clipsynth_platform.evaluation.data import (
    column_null_count,
    dataset_fingerprint,
    gather_rows,
    iter_split_rows,
)
from clipsynth_platform.evaluation.generation import SampleSpec, make_batches
from clipsynth_platform.evaluation.mel_classifier import (
    ClassifierFeatures,
    MelClassifier,
    MelClassifierTrainConfig,
    build_mel_feature_extractor,
    mel_windows,
    train_mel_classifier,
)
from clipsynth_platform.evaluation.runner import EvalConfig
from clipsynth_platform.evaluation.stats_cache import StatsCache
from clipsynth_platform.schema import CHUNK_SCHEMA, mel_of
from clipsynth_platform.synthetic import write_synthetic_dataset

LABELS = ("violin", "cello", "flute", "trumpet")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_clip):
    root = tmp_path_factory.mktemp("parts-data")
    write_synthetic_dataset(str(root), tiny_clip, labels=LABELS, videos_per_label=3, test_every=3)
    return str(root)


def test_rows_are_read_in_a_fixed_order_and_gathered_by_index(dataset):
    rows = list(iter_split_rows(dataset, "train", ["chunk_id", "label"]))
    direct = pq.read_table(f"{dataset}/train/part-00000.parquet", columns=["chunk_id"]).column(0).to_pylist()
    assert [r["chunk_id"] for r in rows] == direct
    got = gather_rows(dataset, "train", ["chunk_id"], [5, 0, 11])
    assert {i: r["chunk_id"] for i, r in got.items()} == {0: direct[0], 5: direct[5], 11: direct[11]}
    with pytest.raises(IndexError, match="not in the train split"):
        gather_rows(dataset, "train", ["chunk_id"], [len(direct)])
    with pytest.raises(FileNotFoundError, match="no test split"):
        list(iter_split_rows(f"{dataset}/missing", "test", ["label"]))


def test_audio_null_count_with_full_empty_and_mixed_shards(tmp_path, tiny_clip):
    full, none = tmp_path / "full", tmp_path / "none"
    small = dict(labels=LABELS[:2], test_every=2, chunk_seconds=5.0)
    write_synthetic_dataset(str(full), tiny_clip, **small)
    write_synthetic_dataset(str(none), tiny_clip, **small, with_audio=False)
    assert column_null_count(str(full), "test", "audio") == (0, 4)
    assert column_null_count(str(none), "test", "audio") == (4, 4)
    # One row group holding both kinds: statistics cannot tell, so the column is read.
    rows = pq.read_table(f"{full}/test/part-00000.parquet").to_pylist()
    rows[1]["audio"] = None
    pq.write_table(pa.Table.from_pylist(rows, schema=CHUNK_SCHEMA), f"{full}/test/part-00000.parquet")
    assert column_null_count(str(full), "test", "audio") == (1, 4)


def test_fingerprint_follows_content(tmp_path, tiny_clip):
    a, b = tmp_path / "a", tmp_path / "b"
    small = dict(labels=LABELS[:2], test_every=2, chunk_seconds=5.0)
    write_synthetic_dataset(str(a), tiny_clip, **small, seed=0)
    write_synthetic_dataset(str(b), tiny_clip, **small, seed=0)
    assert dataset_fingerprint(str(a), "test") == dataset_fingerprint(str(b), "test")
    assert dataset_fingerprint(str(a), "test", "full") == dataset_fingerprint(str(b), "test", "full")
    write_synthetic_dataset(str(b), tiny_clip, **small, seed=1)
    for mode in ("footer", "full"):
        assert dataset_fingerprint(str(a), "test", mode) != dataset_fingerprint(str(b), "test", mode)


def test_stats_cache_reuses_entries_per_key(tmp_path):
    cache = StatsCache(tmp_path / "cache")
    calls = []
    x = np.random.default_rng(0).standard_normal((20, 3))

    def compute():
        calls.append(1)
        return embedding_statistics(x)

    parts = {"data": "/d", "backbone": "b1", "fingerprint": "f1"}
    first, hit1 = cache.get_or_compute(parts, compute)
    again, hit2 = StatsCache(tmp_path / "cache").get_or_compute(parts, compute)
    assert (hit1, hit2, len(calls)) == (False, True, 1)
    np.testing.assert_array_equal(first.sigma, again.sigma)
    assert again.count == 20
    for changed in ({"backbone": "b2"}, {"fingerprint": "f2"}, {"data": "/e"}):
        _, hit = cache.get_or_compute({**parts, **changed}, compute)
        assert not hit
    assert len(calls) == 4
    off = StatsCache(None)
    off.get_or_compute(parts, compute)
    off.get_or_compute(parts, compute)
    assert len(calls) == 6


def test_mel_windows_are_the_non_overlapping_slices():
    mels = torch.arange(2 * 3 * 10, dtype=torch.float32).view(2, 3, 10)
    windows, per = mel_windows(mels, frames=4)
    assert per == 2 and tuple(windows.shape) == (4, 3, 4)
    torch.testing.assert_close(windows[1], mels[0, :, 4:8])
    torch.testing.assert_close(windows[2], mels[1, :, 0:4])
    with pytest.raises(ValueError, match="shorter than the 64-frame window"):
        mel_windows(torch.zeros(1, 3, 10))


def test_mel_classifier_learns_the_labels_and_round_trips(dataset, tmp_path):
    config = MelClassifierTrainConfig(
        data=dataset, epochs=8, batch_size=8, lr=1e-2, channels=(4, 8), feature_dim=16, dropout=0.0
    )
    model, metrics = train_mel_classifier(config)
    assert model.config.labels == tuple(sorted(LABELS))
    # Four tones of distinct pitch: a working classifier separates them.
    assert metrics["train_window_accuracy"] >= 0.9
    assert metrics["test_window_accuracy"] >= 0.9 and metrics["num_test_clips"] == 8
    model.save(tmp_path / "clf", training=metrics)
    extractor = build_mel_feature_extractor(str(tmp_path / "clf"), device="cpu")
    assert isinstance(extractor, ClassifierFeatures) and extractor.identity.startswith("mel-classifier/")
    test_rows = list(iter_split_rows(dataset, "test", ["mel", "n_mels", "mel_frames", "label"]))
    mels = np.stack([mel_of(r) for r in test_rows])
    reloaded = MelClassifier.load(tmp_path / "clf")
    with torch.no_grad():
        windows, per = mel_windows(torch.from_numpy(mels), 64)
        expected = reloaded.embed(windows).double().numpy()
        probs = torch.softmax(reloaded(windows), -1).view(len(mels), per, -1).mean(1).numpy()
    np.testing.assert_allclose(extractor.features(mels), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(extractor.predict_proba(mels), probs, rtol=1e-5, atol=1e-6)
    predicted = [extractor.labels[i] for i in extractor.predict_proba(mels).argmax(1)]
    assert np.mean([p == r["label"] for p, r in zip(predicted, test_rows)]) >= 0.9
    with pytest.raises(FileNotFoundError, match="train_mel_classifier"):
        build_mel_feature_extractor(str(tmp_path / "absent-dir"))


def test_missing_classifier_explains_the_options(monkeypatch):
    monkeypatch.delenv("CLIPSYNTH_MEL_CLASSIFIER", raising=False)
    with pytest.raises(FileNotFoundError, match="--fid-backbone none"):
        build_mel_feature_extractor("mel-classifier")


def test_batches_never_mix_condition_kinds():
    specs = [SampleSpec(index=i, seed=i, text="a" if i < 5 else None) for i in range(8)]
    for s in specs[5:]:
        s.embedding = np.ones(4, dtype=np.float32)
    batches = make_batches(specs, 2)
    assert [len(b) for b in batches] == [2, 2, 1, 2, 1]
    assert all(len({s.kind for s in b}) == 1 for b in batches)
    assert [s.index for b in batches for s in b] == list(range(8))


def test_cli_flags_come_from_the_config_dataclass():
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, EvalConfig, required=("model", "data"))
    args = parser.parse_args(
        ["--model", "m", "--data", "d", "--num-samples", "16", "--steps", "5", "--retriever", "--queries", "both"]
    )
    config = config_from_args(EvalConfig, args)
    assert (config.num_samples, config.steps, config.retriever, config.queries) == (16, 5, True, "both")
    assert config.sampler is None and config.recon_metric is True and config.template == "playing {label}"
    assert config.query_types == ("text", "image")
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "m", "--data", "d", "--queries", "audio"])
    with pytest.raises(ValueError, match="num_samples"):
        EvalConfig(model="m", data="d", num_samples=1).validate()
    with pytest.raises(ValueError, match="lacks '\\{label\\}'"):
        EvalConfig(model="m", data="d", query_template="a photo").validate()
    assert EvalConfig(model="m", data="d", dataset="vggsound").template == "{label}"
