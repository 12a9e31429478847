"""Evaluation parts without Ray: reading splits, the statistics cache and what invalidates it, the mel
classifier (its features, relevance, and its audio embedding as the offline FAD), the choice of backbones,
query batching, the config CLI, and the training-run link of model URIs."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from clipsynth_core import MelFrontend, Synthesizer, SynthesizerConfig
from clipsynth_core.metrics import embedding_statistics
from clipsynth_platform.datasets.schema import CHUNK_SCHEMA, audio_of, image_embeddings_of, mel_of
from clipsynth_platform.datasets.splits import (
    column_null_count,
    dataset_fingerprint,
    gather_rows,
    iter_split_rows,
)
from clipsynth_platform.datasets.synthetic import write_synthetic_dataset
from clipsynth_platform.evaluation import embedders, inception_fid, mel_classifier
from clipsynth_platform.evaluation.embedders import BackboneWeightsError, source_digest
from clipsynth_platform.evaluation.generation import SampleSpec, conditions_for, make_batches
from clipsynth_platform.evaluation.mel_classifier import (
    ClassifierAudioEmbedder,
    ClassifierFeatures,
    MelClassifierTrainConfig,
    build_mel_feature_extractor,
    mel_windows,
    tiny_random_classifier,
)
from clipsynth_platform.evaluation.queries import plan_queries
from clipsynth_platform.evaluation.runner import METRICS_VERSION, METRICS_VERSION_TAG, EvalConfig, Evaluation
from clipsynth_platform.evaluation.stats_cache import StatsCache
from clipsynth_platform.runtime.options import parse_config

LABELS = ("violin", "cello", "flute", "trumpet")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_clip):
    root = tmp_path_factory.mktemp("parts-data")
    # 2 labels x 3 videos x 2 chunks of 5 s: 8 train rows, 4 test rows (every third video).
    write_synthetic_dataset(
        str(root), tiny_clip, labels=LABELS[:2], videos_per_label=3, chunk_seconds=5.0, test_every=3
    )
    return str(root)


def test_rows_are_read_in_a_fixed_order_and_gathered_by_index(dataset):
    rows = list(iter_split_rows(dataset, "train", ["chunk_id", "label"]))
    direct = pq.read_table(f"{dataset}/train/part-00000.parquet", columns=["chunk_id"]).column(0).to_pylist()
    assert [r["chunk_id"] for r in rows] == direct
    got = gather_rows(dataset, "train", ["chunk_id"], [5, 0, 7])
    assert {i: r["chunk_id"] for i, r in got.items()} == {0: direct[0], 5: direct[5], 7: direct[7]}
    with pytest.raises(IndexError, match="not in the train split"):
        gather_rows(dataset, "train", ["chunk_id"], [len(direct)])
    with pytest.raises(FileNotFoundError, match="no test split"):
        list(iter_split_rows(f"{dataset}/missing", "test", ["label"]))


def rewrite_test_shard(root: Path, change) -> None:
    path = root / "test" / "part-00000.parquet"
    rows = pq.read_table(path).to_pylist()
    change(rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=CHUNK_SCHEMA), path)


def test_audio_null_count_with_full_empty_and_mixed_shards(dataset, tmp_path):
    assert column_null_count(dataset, "test", "audio") == (0, 4)
    empty, mixed = tmp_path / "empty", tmp_path / "mixed"
    shutil.copytree(dataset, empty)
    shutil.copytree(dataset, mixed)
    rewrite_test_shard(empty, lambda rows: [r.update(audio=None) for r in rows])
    assert column_null_count(str(empty), "test", "audio") == (4, 4)
    # One row group holding both kinds: statistics cannot tell, so the column is read.
    rewrite_test_shard(mixed, lambda rows: rows[1].update(audio=None))
    assert column_null_count(str(mixed), "test", "audio") == (1, 4)


def test_fingerprint_follows_content(dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    for mode in ("footer", "full"):
        assert dataset_fingerprint(dataset, "test", mode) == dataset_fingerprint(str(copy), "test", mode)

    def louder(rows):
        rows[0]["audio"] = [min(32767, 2 * v) for v in rows[0]["audio"]]

    rewrite_test_shard(copy, louder)
    for mode in ("footer", "full"):
        assert dataset_fingerprint(dataset, "test", mode) != dataset_fingerprint(str(copy), "test", mode)


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


def test_mel_classifier_round_trips_and_scores_windows(tmp_path):
    model = tiny_random_classifier(LABELS, seed=1)
    model.save(tmp_path / "clf", training={"note": "random"})
    extractor = build_mel_feature_extractor(str(tmp_path / "clf"), device="cpu")
    assert isinstance(extractor, ClassifierFeatures) and extractor.identity.startswith("mel-classifier/")
    assert extractor.labels == LABELS
    mels = torch.randn(3, 64, 130).clamp(-1, 1)  # two 64-frame windows each (the last 2 frames unused)
    with torch.no_grad():
        windows = torch.cat([mels[:, :, :64], mels[:, :, 64:128]]).view(2, 3, 64, 64).transpose(0, 1)
        flat = windows.reshape(6, 64, 64)
        expected = model.embed(flat).double().numpy()
        probs = torch.softmax(model(flat), -1).view(3, 2, -1).mean(1).numpy()
    np.testing.assert_allclose(extractor.features(mels), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(extractor.predict_proba(mels), probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(extractor.predict_proba(mels).sum(1), 1.0, rtol=1e-6)
    with pytest.raises(FileNotFoundError, match="train_mel_classifier"):
        build_mel_feature_extractor(str(tmp_path / "absent-dir"))


def test_missing_classifier_explains_the_options(monkeypatch):
    monkeypatch.delenv("CLIPSYNTH_MEL_CLASSIFIER", raising=False)
    with pytest.raises(FileNotFoundError, match="--mel-classifier none"):
        build_mel_feature_extractor("mel-classifier")


def test_batches_never_mix_condition_kinds():
    specs = [SampleSpec(index=i, seed=i, text="a" if i < 5 else None) for i in range(8)]
    for s in specs[5:]:
        s.embedding = np.ones(4, dtype=np.float32)
    batches = make_batches(specs, 2)
    assert [len(b) for b in batches] == [2, 2, 1, 2, 1]
    assert all(len({s.kind for s in b}) == 1 for b in batches)
    assert [s.index for b in batches for s in b] == list(range(8))


def test_cli_flags_come_from_the_config_dataclass(capsys):
    argv = ["--model", "m", "--data", "d", "--num-samples", "16", "--steps", "5", "--retriever", "--queries", "both"]
    config = parse_config(EvalConfig, argv, None)
    assert (config.num_samples, config.steps, config.retriever, config.queries) == (16, 5, True, "both")
    assert config.sampler is None and config.recon_metric is True and config.template == "playing {label}"
    assert config.query_types == ("text", "image")
    with pytest.raises(SystemExit):
        parse_config(EvalConfig, ["--model", "m", "--data", "d", "--queries", "audio"], None)
    for missing in (["--data", "d"], ["--model", "m"]):  # --model and --data must be given
        with pytest.raises(SystemExit):
            parse_config(EvalConfig, missing, None)
        assert "required" in capsys.readouterr().err
    with pytest.raises(ValueError, match="num_samples"):
        EvalConfig(model="m", data="d", num_samples=1).check()
    with pytest.raises(ValueError, match="lacks '\\{label\\}'"):
        EvalConfig(model="m", data="d", query_template="a photo").check()
    assert EvalConfig(model="m", data="d", dataset="vggsound").template == "{label}"
    # The mel classifier's training flags come the same way; its --data is required, tuples take several values.
    trained = parse_config(MelClassifierTrainConfig, ["--data", "d", "--channels", "8", "16", "--epochs", "2"], None)
    assert (trained.data, trained.channels, trained.epochs, trained.window_frames) == ("d", (8, 16), 2, 64)
    with pytest.raises(SystemExit):
        parse_config(MelClassifierTrainConfig, ["--epochs", "2"], None)


def test_dataset_names_are_case_insensitive(tmp_path):
    for name, expected, template in (
        ("MUSIC", "music", "playing {label}"),
        ("Music", "music", "playing {label}"),
        ("VGG-Sound", "vggsound", "{label}"),
        ("VGGSound", "vggsound", "{label}"),
        ("AudioSet", "audioset", "{label}"),
    ):
        config = EvalConfig(model="m", data="d", dataset=name)
        assert (config.dataset, config.template) == (expected, template)
    # Before the Inception FID, --fid-backbone named the mel classifier: such a directory still means it.
    tiny_random_classifier(LABELS).save(tmp_path / "clf")
    legacy = EvalConfig(model="m", data="d", fid_backbone=str(tmp_path / "clf"))
    assert (legacy.mel_classifier, legacy.fid_backbone) == (str(tmp_path / "clf"), "inception")


def jpeg(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 32), color).save(buf, format="JPEG")
    return buf.getvalue()


def test_query_plan_pairs_modalities_and_reads_frames_or_stored_embeddings(dataset, tmp_path, tiny_clip):
    bundle = Synthesizer(SynthesizerConfig.tiny()).save(tmp_path / "bundle")
    common = dict(
        model=str(bundle),
        num_samples=6,
        fad_backbone="tiny-random",
        fid_backbone="none",
        mel_classifier="none",
        stats_cache="none",
    )
    # Shards embedded with the model's CLIP: image conditions are the stored frame embeddings.
    ev = Evaluation.load(EvalConfig(data=dataset, **common))
    try:
        text, image = plan_queries(ev.context, "text"), plan_queries(ev.context, "image")
        rows = pq.read_table(f"{dataset}/test/part-00000.parquet").to_pylist()
    finally:
        ev.close()
    assert [(s.row, s.frame, s.seed, s.label) for s in text] == [(s.row, s.frame, s.seed, s.label) for s in image]
    assert all(s.text == f"playing {s.label}" and s.label == rows[s.row]["label"] for s in text)
    for s in image:
        np.testing.assert_array_equal(s.embedding, image_embeddings_of(rows[s.row])[s.frame])
    # Shards embedded with another CLIP but carrying frames: the frames are decoded and encoded.
    other = tmp_path / "other-clip"
    shutil.copytree(dataset, other)
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]

    def other_clip(rows):
        for k, r in enumerate(rows):
            r["clip_model"] = "ViT-B-32/openai"
            r["frames_jpeg"] = [jpeg(colors[(k + f) % 4]) for f in range(len(r["frame_times"]))]

    rewrite_test_shard(other, other_clip)
    ev = Evaluation.load(EvalConfig(data=str(other), **common))
    try:
        image = plan_queries(ev.context, "image")
        rows = pq.read_table(other / "test" / "part-00000.parquet").to_pylist()
        assert all(s.embedding is None and s.jpeg == rows[s.row]["frames_jpeg"][s.frame] for s in image)
        cond = conditions_for(ev.context.synth, image[:3])
        decoded = [Image.open(io.BytesIO(s.jpeg)).convert("RGB") for s in image[:3]]
        torch.testing.assert_close(cond, tiny_clip.encode_image(decoded))
    finally:
        ev.close()
    with pytest.raises(ValueError, match="embedded with CLIP"):
        ev = Evaluation.load(EvalConfig(data=str(other), image_queries="stored", **common))
        try:
            plan_queries(ev.context, "image")
        finally:
            ev.close()


# ------------------------------------------------------------------------------- backbones and references
@pytest.fixture
def bundle(tmp_path):
    return Synthesizer(SynthesizerConfig.tiny()).save(tmp_path / "bundle")


@pytest.fixture
def no_released_weights(tmp_path, monkeypatch):
    """Neither VGGish's nor the FID Inception's weights on this machine, whatever its caches hold."""
    monkeypatch.delenv(embedders.VGGISH_ENV, raising=False)
    monkeypatch.delenv(inception_fid.FID_INCEPTION_ENV, raising=False)
    monkeypatch.setattr(embedders, "DEFAULT_VGGISH_PATHS", (tmp_path / "no-vggish.pth",))
    monkeypatch.setattr(inception_fid, "DEFAULT_FID_INCEPTION_PATHS", (tmp_path / "no-inception.pth",))


def test_offline_fad_is_the_mel_classifiers_audio_embedding(dataset, bundle, tmp_path, no_released_weights):
    model = tiny_random_classifier(LABELS[:2], seed=4)
    model.save(tmp_path / "clf")
    common = dict(model=str(bundle), data=dataset, num_samples=4, stats_cache="none")
    ev = Evaluation.load(EvalConfig(mel_classifier=str(tmp_path / "clf"), **common))  # the defaults: auto, inception
    try:
        assert isinstance(ev.backbones.embedder, ClassifierAudioEmbedder) and ev.backbones.fad_metric == "fad_melclf"
        assert ev.backbones.fid is None and ev.backbones.fid_absent == "no FID Inception weights"
        tags = ev.tags("text")
        assert tags["fad_metric"] == "fad_melclf" and tags["fad_backbone"].startswith("melclf-audio/mel-classifier/")
        assert "no VGGish weights" in tags["fad_fallback"] and tags["fid_absent"] == "no FID Inception weights"
        assert tags["fid_backbone"] == "absent" and tags["random_backbones"] == "none"
        assert tags[METRICS_VERSION_TAG] == METRICS_VERSION
        ref, _ = ev.references.audio_reference("audio")
        synth_mel = ev.context.synth.config.mel
    finally:
        ev.close()
    # Independently: each test clip's audio through the project's mel front end, cut into 64-frame windows,
    # through the classifier's penultimate layer.
    rows = pq.read_table(f"{dataset}/test/part-00000.parquet").to_pylist()
    with torch.no_grad():
        mels = MelFrontend(synth_mel)(torch.from_numpy(np.stack([audio_of(r) for r in rows])))
        windows, _ = mel_windows(mels, 64)
        feats = model.embed(windows).double().numpy()
    expected = embedding_statistics(feats)
    assert ref.count == len(feats)
    np.testing.assert_allclose(ref.mu, expected.mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ref.sigma, expected.sigma, rtol=1e-4, atol=1e-6)
    # Without a classifier there is nothing trained on the data to fall back on: an error, never a random net.
    with pytest.raises(BackboneWeightsError, match="no mel classifier to fall back on") as info:
        Evaluation.load(EvalConfig(mel_classifier="none", **common))
    assert embedders.VGGISH_WEIGHTS_URL in str(info.value)
    # Asked for by name, a missing weights file is an error, not an absent metric.
    with pytest.raises(BackboneWeightsError, match="the path given"):
        Evaluation.load(
            EvalConfig(mel_classifier="none", fad_backbone="tiny-random", fid_backbone="x/none.pth", **common)
        )


def test_random_backbones_only_by_name_and_tagged(dataset, bundle):
    random = dict(fad_backbone="tiny-random", fid_backbone="tiny-random", mel_classifier="tiny-random")
    ev = Evaluation.load(EvalConfig(model=str(bundle), data=dataset, num_samples=4, stats_cache="none", **random))
    try:
        tags = ev.tags("text")
    finally:
        ev.close()
    assert tags["random_backbones"] == "fad,fid,fd_melclf,relevance"
    assert tags["fad_backbone"].startswith("tiny-random") and tags["fid_backbone"].startswith("tiny-random")


@pytest.mark.slow  # 7 s on 2 shared cores: out of make test-fast
def test_reference_statistics_are_keyed_by_backbone_versions(dataset, bundle, tmp_path, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    config = EvalConfig(
        model=str(bundle), data=str(data), num_samples=4, stats_cache=str(tmp_path / "cache"),
        fad_backbone="tiny-random", fid_backbone="tiny-random", mel_classifier="tiny-random",
    )  # fmt: skip

    def references(**changes) -> list[bool]:
        """Whether the FAD, FID and fd_melclf references came from the cache."""
        ev = Evaluation.load(EvalConfig(**{**config.__dict__, **changes}))
        try:
            return [
                ev.references.audio_reference("audio")[1],
                ev.references.mel_reference(ev.backbones.fid)[1],
                ev.references.mel_reference(ev.backbones.extractor)[1],
            ]
        finally:
            ev.close()

    assert references() == [False, False, False]
    assert references() == [True, True, True]
    # A new version of one embedder's code invalidates its statistics only.
    monkeypatch.setattr(embedders, "VGGISH_CODE_VERSION", "vggish/test-next")
    assert references() == [False, True, True]
    monkeypatch.setattr(inception_fid, "MEL_IMAGE_FID_VERSION", "mel-image-fid/test-next")
    assert references() == [True, False, True]
    monkeypatch.setattr(mel_classifier, "MEL_FEATURES_VERSION", "melclf-features/test-next")
    assert references() == [True, True, False]
    # So do other weights, another clip limit, and new content at the same path.
    assert references(fad_backbone="tiny-random:1") == [False, True, True]
    assert references(max_reference_clips=2) == [False, False, False]
    rewrite_test_shard(data, lambda rows: rows[0].update(label="cello"))
    assert references() == [False, False, False]
    # The statistics themselves: the test mels' windows through the classifier, as computed independently.
    rows = pq.read_table(f"{data}/test/part-00000.parquet").to_pylist()
    windows, _ = mel_windows(torch.from_numpy(np.stack([mel_of(r) for r in rows])), 64)
    ev = Evaluation.load(config)
    try:
        stats, hit = ev.references.mel_reference(ev.backbones.extractor)
        expected = embedding_statistics(ev.backbones.extractor.features(windows.numpy()))
        parts = ev.references.key_parts("fad", "audio", ev.backbones.embedder)
    finally:
        ev.close()
    assert hit and stats.count == len(windows) == 4
    np.testing.assert_allclose(stats.mu, expected.mu, rtol=1e-9)
    assert {"backbone", "backbone_version", "fingerprint", "reference", "max_reference_clips"} <= parts.keys()


def test_source_digest_follows_the_code(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("x = 1\n")
    b.write_text("x = 1\n")
    assert source_digest(a) == source_digest(b)
    b.write_text("x = 2\n")
    assert source_digest(a) != source_digest(b)
    vggish = embedders.build_audio_embedder("tiny-random", device="cpu")
    assert source_digest(embedders.__file__) in vggish.version and embedders.VGGISH_CODE_VERSION in vggish.version
