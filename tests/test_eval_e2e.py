"""End to end on the session's Ray cluster: a tiny registered model, a synthetic dataset, a mel classifier
trained by its job, evaluation runs in MLflow (text and image queries, CLIPRetriever, HiFi-GAN
reconstructions; the offline FAD fallback), and the Table 1 comparison built from those runs. Metric values
are checked against independent recomputations from the shards (the mel FID against pytorch-fid's own
Fréchet distance on the same activations)."""

from __future__ import annotations

import csv
import runpy
from pathlib import Path

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from clipsynth_core import MelFrontend, Synthesizer, SynthesizerConfig, unet_config
from clipsynth_core.metrics import embedding_statistics, frechet_distance_features
from clipsynth_platform.datasets.schema import audio_of, image_embeddings_of, mel_of
from clipsynth_platform.datasets.synthetic import write_synthetic_dataset
from clipsynth_platform.evaluation import embedders, inception_fid
from clipsynth_platform.evaluation.compare import compare_experiment, format_value
from clipsynth_platform.evaluation.embedders import build_audio_embedder
from clipsynth_platform.evaluation.inception_fid import build_mel_image_fid
from clipsynth_platform.evaluation.mel_classifier import MelClassifier, build_mel_feature_extractor, mel_windows
from clipsynth_platform.evaluation.runner import EvalConfig, run_evaluation
from clipsynth_platform.tracking.registry import ensure_experiment, log_bundle_model

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
LABELS = ("violin", "cello", "flute", "trumpet")
EXPERIMENT = "table1-test"
STEPS = 3


def isolate_mlflow(mp: pytest.MonkeyPatch, uri: str) -> None:
    """Point MLflow at `uri` until `mp` is undone (the environment and MLflow's module global, which
    set_tracking_uri writes both)."""
    from mlflow.tracking._tracking_service import utils

    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.setattr(utils, "_tracking_uri", uri)


def job_main(name: str):
    """A job's main(argv), loaded from its file (in this process: no second interpreter start-up)."""
    return runpy.run_path(str(REPO / "jobs" / name), run_name="clipsynth_job")["main"]


def tiny_bundle(directory: Path) -> Path:
    config = SynthesizerConfig.tiny(
        # Narrower than the "tiny" preset and without attention: a few seconds per evaluation on a busy CPU.
        unet=unet_config("tiny", cond_dim=64, model_channels=16, attention_resolutions=(), num_head_channels=16),
        metadata={"train_query_type": "image", "model_name": "CLIPSynth-tiny"},
    )
    return Synthesizer.untrained(config).save(directory)


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_clip, ray_cluster):
    root = tmp_path_factory.mktemp("eval-e2e")
    with pytest.MonkeyPatch.context() as mp:
        isolate_mlflow(mp, f"sqlite:///{root / 'mlflow.db'}")
        data = root / "data"
        # 4 labels x 3 videos x 2 chunks: 16 train rows, 8 test rows (every third video).
        write_synthetic_dataset(str(data), tiny_clip, labels=LABELS, videos_per_label=3, test_every=3)
        bundle = tiny_bundle(root / "bundle")
        with mlflow.start_run(experiment_id=ensure_experiment("training")) as run:
            info = log_bundle_model(bundle, registered_name="tiny-clipsynth")
        assert info.registered_model_version == 1
        # The classifier for FID and relevance, trained by its job.
        argv = ["--data", str(data), "--out", str(root / "classifier"), "--epochs", "8", "--batch-size", "8",
                "--lr", "0.01", "--channels", "4", "8", "--feature-dim", "16", "--dropout", "0",
                "--experiment", "mel-classifier"]  # fmt: skip
        assert job_main("train_mel_classifier.py")(argv) == 0
        yield {
            "root": root,
            "data": str(data),
            "bundle": bundle,
            "model_uri": "models:/tiny-clipsynth/1",
            "training_run_id": run.info.run_id,
            "classifier": str(root / "classifier"),
        }


@pytest.fixture(scope="module")
def evaluations(env):
    common = dict(
        data=env["data"],
        fad_backbone="tiny-random",  # random networks, asked for by name: the runs are tagged as such
        fid_backbone="tiny-random",
        mel_classifier=env["classifier"],
        stats_cache=str(env["root"] / "stats-cache"),
        experiment=EXPERIMENT,
        num_samples=8,
    )
    generative = run_evaluation(
        EvalConfig(model=env["model_uri"], queries="both", steps=STEPS, batch_size=4, num_workers=2, **common)
    )
    # Dataset names are case-insensitive: this run lands in the same "music" column.
    retriever = run_evaluation(EvalConfig(model=str(env["bundle"]), retriever=True, dataset="MUSIC", **common))
    recon = run_evaluation(EvalConfig(model=str(env["bundle"]), hifigan_recon=True, **common))
    return {"generative": generative, "retriever": retriever[0], "recon": recon[0]}


@pytest.fixture(scope="module")
def test_split(env):
    rows = pq.read_table(f"{env['data']}/test/part-00000.parquet").to_pylist()
    return {
        "audio": np.stack([audio_of(r) for r in rows]),
        "mels": np.stack([mel_of(r) for r in rows]),
        "labels": [r["label"] for r in rows],
    }


def test_mel_classifier_job_learns_the_labels(env, test_split):
    (run,) = mlflow.search_runs(experiment_names=["mel-classifier"], output_format="list")
    metrics = run.data.metrics
    # Four tones of distinct pitch: a working classifier separates them.
    assert metrics["train_window_accuracy"] >= 0.9 and metrics["num_train_clips"] == 16
    assert metrics["test_window_accuracy"] >= 0.9 and metrics["num_test_clips"] == 8
    assert len(mlflow.MlflowClient().list_artifacts(run.info.run_id, "mel_classifier")) == 2
    classifier = build_mel_feature_extractor(env["classifier"], device="cpu")
    assert classifier.labels == tuple(sorted(LABELS))
    predicted = [classifier.labels[i] for i in classifier.predict_proba(test_split["mels"]).argmax(1)]
    assert np.mean([p == label for p, label in zip(predicted, test_split["labels"])]) >= 0.9


def test_generative_runs_follow_the_protocol_and_land_in_mlflow(env, evaluations):
    text, image = evaluations["generative"]
    assert (text.test_query_type, image.test_query_type) == ("text", "image")
    # Paired queries: the same test rows, labels and noise seeds for both modalities.
    for a, b in zip(text.generated.specs, image.generated.specs):
        assert (a.row, a.label, a.seed) == (b.row, b.label, b.seed)
        assert a.text == f"playing {a.label}" and b.embedding is not None
    synth = Synthesizer.load(env["bundle"])
    assert synth.encoder.format_queries([text.generated.specs[0].text])[0].startswith("a photo of playing ")
    client = mlflow.MlflowClient()
    for result in (text, image):
        run = client.get_run(result.run_id)
        tags, metrics = run.data.tags, run.data.metrics
        assert tags["training_run_id"] == env["training_run_id"]
        expected_tags = {
            "model_name": "CLIPSynth-tiny",
            "variant": "image",
            "dataset": "music",
            "train_query_type": "image",
            "test_query_type": result.test_query_type,
            "generative": "true",
            "unlabeled_only": "true",
            "fad_reference": "audio",
            "fad_metric": "fad",
            "random_backbones": "fad,fid",
            "clipsynth.metrics_version": "2",
        }
        assert {k: tags[k] for k in expected_tags} == expected_tags
        assert tags["fid_backbone"].startswith("tiny-random-image-cnn/")
        assert tags["melclf_backbone"].startswith("mel-classifier/")
        names = ("fad", "fid", "fd_melclf", "relevance", "fad_hifigan_recon", "num_samples")
        gaps = ("modality_gap_fad", "modality_gap_fid", "modality_gap_fd_melclf")
        for name in names + gaps:
            assert metrics[name] == pytest.approx(result.metrics[name], rel=1e-12)
        assert metrics["num_samples"] == 8
        assert run.data.params["steps_used"] == str(STEPS)
        wavs = client.list_artifacts(result.run_id, "eval/samples")
        assert len(wavs) == 4
        names = {a.path for a in client.list_artifacts(result.run_id, "eval")}
        assert {"eval/mel_grid.png", "eval/queries.json"} <= names
    local = Path(client.download_artifacts(text.run_id, wavs[0].path))
    wave, rate = sf.read(local)
    assert rate == 16_000 and wave.shape == (66_560,)  # 4.16 s: 64 frames of the mel
    for k in ("fad", "fid", "fd_melclf"):
        assert metrics[f"modality_gap_{k}"] == pytest.approx(text.metrics[k] - image.metrics[k], rel=1e-9)
    assert image.cache_hits > 0  # the second run reused the reference statistics of the first


def test_ray_samples_equal_local_sampling_with_the_same_seeds(env, evaluations):
    text = evaluations["generative"][0]
    synth = Synthesizer.load(env["bundle"])
    specs = text.generated.specs[:4]  # the first batch, as an actor ran it: 4 samples on 1 thread
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mels = synth.sample_mels(synth.encode([s.text for s in specs]), steps=STEPS, seed=[s.seed for s in specs])
        waves = synth.vocode(mels).numpy()
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(text.generated.mels[:4], mels.numpy(), atol=1e-4)
    np.testing.assert_allclose(text.generated.waves[:4], waves, atol=1e-4)


def test_metrics_match_independent_computations(env, evaluations, test_split):
    from pytorch_fid.fid_score import calculate_frechet_distance

    embedder = build_audio_embedder("tiny-random", device="cpu")
    ref_audio = embedder.embed(test_split["audio"])
    classifier = build_mel_feature_extractor(env["classifier"], device="cpu")
    ref_windows, _ = mel_windows(torch.from_numpy(test_split["mels"]), 64)
    ref_feats = classifier.features(ref_windows.numpy())
    image_fid = build_mel_image_fid("tiny-random", device="cpu")
    ref_images = image_fid.features(ref_windows.numpy())
    synth = Synthesizer.load(env["bundle"])
    recon = synth.vocode(torch.from_numpy(test_split["mels"])).numpy()
    recon_fad = frechet_distance_features(embedder.embed(recon), ref_audio)
    for result in evaluations["generative"]:
        gen = result.generated
        assert result.metrics["fad"] == pytest.approx(
            frechet_distance_features(embedder.embed(gen.waves), ref_audio), rel=1e-6
        )
        assert result.metrics["fd_melclf"] == pytest.approx(
            frechet_distance_features(classifier.features(gen.mels), ref_feats), rel=1e-6
        )
        gen_images = image_fid.features(gen.mels)
        theirs = calculate_frechet_distance(
            gen_images.mean(0), np.cov(gen_images, rowvar=False), ref_images.mean(0), np.cov(ref_images, rowvar=False)
        )
        print(f"[equivalence] e2e fid {result.metrics['fid']:.6g} vs pytorch-fid's distance {theirs:.6g}")
        assert result.metrics["fid"] == pytest.approx(float(theirs), rel=1e-5)
        predicted = [classifier.labels[i] for i in classifier.predict_proba(gen.mels).argmax(1)]
        assert result.metrics["relevance"] == pytest.approx(
            np.mean([p == s.label for p, s in zip(predicted, gen.specs)])
        )
        assert result.metrics["fad_hifigan_recon"] == pytest.approx(recon_fad, rel=1e-6)
    assert evaluations["recon"].metrics["fad"] == pytest.approx(recon_fad, rel=1e-6)
    assert evaluations["recon"].tags["variant"] == "hifigan-recon"


def test_retriever_returns_the_nearest_train_frame_audio(env, evaluations, tiny_clip):
    result = evaluations["retriever"]
    assert result.tags["variant"] == "retriever" and result.tags["generative"] == "false"
    assert result.tags["model_name"] == "CLIPRetriever"
    assert result.cache_misses == 0  # every reference came from the cache the generative runs filled
    train = pq.read_table(f"{env['data']}/train/part-00000.parquet").to_pylist()
    index = [(r, e, t) for r in train for e, t in zip(image_embeddings_of(r), r["frame_times"])]
    matrix = np.stack([e / np.linalg.norm(e) for _, e, _ in index])
    queries = tiny_clip.encode_text([s.text for s in result.generated.specs]).numpy()
    for k, q in enumerate(queries):
        row, _, t = index[int(np.argmax(matrix @ q))]
        start = int(min(max(round(t * 16_000 / 1024) - 32, 0), row["mel_frames"] - 64))
        np.testing.assert_array_equal(result.generated.waves[k], audio_of(row)[start * 1024 : (start + 64) * 1024])
        np.testing.assert_array_equal(result.generated.mels[k], mel_of(row)[:, start : start + 64])


def test_compare_builds_table1_from_the_runs(env, evaluations):
    out = env["root"] / "table"
    result = compare_experiment(EXPERIMENT, out)
    runs = [*evaluations["generative"], evaluations["retriever"], evaluations["recon"]]
    with open(out / "table.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["variant"], r["test_query_type"]) for r in rows] == [
        ("image", "text"),
        ("image", "image"),
        ("retriever", "text"),
        ("hifigan-recon", "n/a"),
    ]
    markdown = (out / "table.md").read_text()
    for row, run in zip(rows, runs):
        assert row["music_run_id"] == run.run_id
        for k in ("fad", "fid", "fd_melclf"):
            if k in run.metrics:
                assert float(row[f"music_{k}"]) == run.metrics[k]
                assert row[f"music_{k}_backbone"] == run.tags[{"fd_melclf": "melclf_backbone"}.get(k, f"{k}_backbone")]
        assert f"| {format_value(run.metrics['fad'])} |" in markdown
    assert "| CLIPSynth-tiny | ✓ | ✓ | Image | Text |" in markdown
    assert "| HiFi-GAN reconstructions | × | - | - | - |" in markdown
    # Every run here used random FAD and FID networks: one table, said to be meaningless, with its footnotes.
    assert len(result.tables) == 1 and "RANDOM backbones" in markdown
    assert "FD-melclf↓ (fd_melclf" in markdown and "mel classifier trained on the dataset (mel-classifier/" in markdown
    with open(out / "modality_gap.csv") as f:
        gap_rows = {g["metric"]: g for g in csv.DictReader(f)}
    for k in ("fad", "fid", "fd_melclf"):
        gap = evaluations["generative"][0].metrics[f"modality_gap_{k}"]
        assert float(gap_rows[k]["modality_gap"]) == pytest.approx(gap, rel=1e-12)
    assert (out / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id, "comparison")}
    assert {"comparison/table.md", "comparison/table.csv", "comparison/table.png"} <= logged
    # The job gives the same table (the comparison run it logged above is not an evaluation row).
    assert job_main("compare.py")(["--experiment", EXPERIMENT, "--out", str(out / "cli"), "--no-mlflow"]) == 0
    assert (out / "cli" / "table.md").read_text() == markdown


def test_evaluate_job_help_and_bad_arguments(capsys):
    main = job_main("evaluate.py")
    with pytest.raises(SystemExit) as helped:
        main(["--help"])
    assert helped.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--model", "--data", "--num-samples", "--steps", "--queries", "--fad-backbone", "--fid-backbone",
                 "--mel-classifier", "--experiment", "--retriever"):  # fmt: skip
        assert flag in text
    # Where the released weights come from, and what each metric name means.
    assert "vggish-10086976.pth" in text and "pt_inception-2015-12-05-6726825d.pth" in text
    assert "BEFORE the final ReLU" in text and "fad_melclf" in text and "fd_melclf" in text
    with pytest.raises(SystemExit) as bad:
        main(["--model", "m", "--data", "d", "--num-samples", "1"])
    assert bad.value.code == 2 and "num_samples must be in [2, 100000]" in capsys.readouterr().err


def test_offline_evaluation_measures_fad_with_the_mel_classifier(env, test_split, tmp_path, monkeypatch):
    """No VGGish and no Inception weights: FAD falls back to the classifier trained on the data (fad_melclf),
    fid is absent with its reason, and Table 1 says which backbone each column used."""
    monkeypatch.delenv(embedders.VGGISH_ENV, raising=False)
    monkeypatch.delenv(inception_fid.FID_INCEPTION_ENV, raising=False)
    monkeypatch.setattr(embedders, "DEFAULT_VGGISH_PATHS", (tmp_path / "no-vggish.pth",))
    monkeypatch.setattr(inception_fid, "DEFAULT_FID_INCEPTION_PATHS", (tmp_path / "no-inception.pth",))
    (result,) = run_evaluation(
        EvalConfig(
            model=str(env["bundle"]),
            data=env["data"],
            retriever=True,
            num_samples=8,
            mel_classifier=env["classifier"],
            experiment="offline-eval",
            stats_cache="none",
        )  # the defaults otherwise: --fad-backbone auto, --fid-backbone inception
    )
    m, tags = result.metrics, result.tags
    assert {"fad_melclf", "fad_melclf_hifigan_recon", "fd_melclf", "relevance"} <= m.keys()
    assert "fad" not in m and "fid" not in m
    assert tags["fid_absent"] == "no FID Inception weights" and "no VGGish weights" in tags["fad_fallback"]
    assert tags["random_backbones"] == "none"
    # Independently: audio -> the project's mel -> the classifier's 64-frame windows -> penultimate features.
    model = MelClassifier.load(env["classifier"])
    frontend = MelFrontend(Synthesizer.load(env["bundle"]).config.mel)

    def embed(waves: np.ndarray) -> np.ndarray:
        waves = np.asarray(waves, np.float32)
        if waves.shape[1] == 64 * 1024:  # retrieved windows: reflect-padded to the 66,560 samples of 64 frames
            waves = np.pad(waves, ((0, 0), (512, 512)), mode="reflect")
        with torch.no_grad():
            windows, _ = mel_windows(frontend(torch.from_numpy(waves)), 64)
            return model.embed(windows).double().numpy()

    expected = frechet_distance_features(embed(result.generated.waves), embed(test_split["audio"]))
    assert m["fad_melclf"] == pytest.approx(expected, rel=1e-5)
    assert result.generated.waves.shape == (8, 64 * 1024)
    assert m["fad_melclf"] > 0 and embedding_statistics(embed(test_split["audio"])).count == 16
    table = compare_experiment("offline-eval", tmp_path / "table", log_to_mlflow=False)
    markdown = table.paths["markdown"].read_text()
    assert "| MUSIC FAD-melclf↓ | MUSIC FD-melclf↓ | MUSIC Relevance↑ |" in markdown
    assert "RANDOM" not in markdown and "on the re-analysed audio (melclf-audio/mel-classifier/" in markdown
