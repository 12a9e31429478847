"""Training platform pieces that need no Ray cluster: configs and CLI, learning-rate schedule and time budget,
dataset inspection, vocoders, digests, MLflow run continuity, the fault drill (examples and batching:
test_train_examples.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from clipsynth_core import (
    ClipConfig,
    ConditionalUNet,
    DiffusionConfig,
    GaussianDiffusion,
    HiFiGANGenerator,
    Synthesizer,
    SynthesizerConfig,
    diffusion_losses,
    hifigan_config,
    state_digest,
    unet_config,
)
from clipsynth_core.training import scheduled_lr
from clipsynth_platform.datasets.synthetic import write_synthetic_dataset
from clipsynth_platform.runtime.logs import configure_logging
from clipsynth_platform.runtime.preflight import ClusterView
from clipsynth_platform.train import DatasetError, DiffusionTrainConfig, HiFiGANTrainConfig, inspect_dataset
from clipsynth_platform.train.config import config_from_dict, parse_config
from clipsynth_platform.train.data import (
    column_bytes,
)
from clipsynth_platform.train.diffusion_loop import build_bundle
from clipsynth_platform.train.loop import TimeBudget, fault_drill
from clipsynth_platform.train.runner import check_cluster_resources, prepare_diffusion, prepare_hifigan
from clipsynth_platform.train.tracking import RunTracker, read_run_record, run_record_uri, write_samples
from clipsynth_platform.train.vocoder import load_hifigan, load_hifigan_dir, save_vocoder
from clipsynth_platform.train.worker import WorkerPlace

REPO = Path(__file__).resolve().parents[1]


def job_defaults(name: str) -> dict:
    """The DEFAULTS of a job script, loaded without running it."""
    spec = importlib.util.spec_from_file_location(f"job_{name}", REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DEFAULTS


# ----------------------------------------------------------------------------------------------- config
def test_paper_defaults_and_cli_overrides():
    music = parse_config(DiffusionTrainConfig, ["--data", "d"], "x", job_defaults("train_music"))
    vgg = parse_config(DiffusionTrainConfig, ["--data", "d"], "x", job_defaults("train_vggsound"))
    assert (music.max_steps, vgg.max_steps) == (100_000, 500_000)
    assert (music.register_as, vgg.register_as) == ("clipsynth-music", "clipsynth-vggsound")
    assert music.clip_template == "a photo of playing {query}" and vgg.clip_template == "a photo of {query}"
    # improved-diffusion's optimiser and the paper's diffusion
    assert (vgg.lr, vgg.weight_decay, vgg.ema_decay, vgg.diffusion_steps, vgg.variant) == (
        1e-4,
        0.0,
        0.9999,
        4000,
        "image",
    )
    cfg = parse_config(
        DiffusionTrainConfig,
        [
            *("--data", "s3://b/p", "--variant", "hybrid", "--max-steps", "7", "--use-gpu", "--num-workers", "4"),
            *("--sample-queries", "a dog", "rain", "--lr", "3e-4", "--bf16", "off", "--register-as", ""),
        ],
        "x",
    )
    assert (cfg.variant, cfg.max_steps, cfg.use_gpu, cfg.num_workers, cfg.lr, cfg.bf16) == (
        "hybrid",
        7,
        True,
        4,
        3e-4,
        "off",
    )
    assert cfg.sample_queries == ("a dog", "rain") and cfg.register_as == ""
    assert config_from_dict(DiffusionTrainConfig, json.loads(cfg.to_json())) == cfg
    hifi = parse_config(HiFiGANTrainConfig, ["--data", "d"], "x")
    assert (hifi.lr, hifi.adam_b1, hifi.adam_b2, hifi.lr_decay, hifi.batch_plan().global_size, hifi.segment_frames) == (
        2e-4,
        0.8,
        0.99,
        0.999,
        16,
        32,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--data is required"),
        (["--data", "d", "--max-steps", "0"], "--max-steps must be >= 1"),
        (["--data", "d", "--variant", "audio"], "invalid choice: 'audio'"),
        (["--data", "d", "--sample-steps", "5000"], "--sample-steps must lie in 1..4000"),
        (["--data", "d", "--window-frames", "60"], "multiple of 8"),
        (["--data", "d", "--cond-drop-prob", "1.5"], "--cond-drop-prob must lie in [0, 1)"),
    ],
)
def test_cli_rejects_bad_values(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(DiffusionTrainConfig, argv, "x")
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------------- schedules, budgets
def test_cosine_lr_schedule_closed_form():
    assert scheduled_lr("constant", 3e-3, 0.9) == 3e-3
    for progress, expected in ((0.0, 1.0), (0.25, (1 + 2**-0.5) / 2), (0.5, 0.5), (1.0, 0.0), (1.7, 0.0)):
        assert scheduled_lr("cosine", 2.0, progress) == pytest.approx(2.0 * expected, abs=1e-12)
    with pytest.raises(ValueError, match="unknown lr schedule"):
        scheduled_lr("linear", 1.0, 0.5)
    with pytest.raises(ValueError, match="--lr-schedule must be one of"):
        DiffusionTrainConfig(data="d", lr_schedule="linear").check()


def test_budget_fraction_is_the_larger_of_steps_and_agreed_time():
    steps_only = TimeBudget(0.0)
    assert steps_only.fraction(250, 1000) == 0.25 and steps_only.fraction(2000, 1000) == 1.0
    timed = TimeBudget(100.0, spent_before=30.0)  # a resumed run: 30 s were spent before
    assert timed.fraction(10, 1000) == pytest.approx(0.3)  # the agreed time, before any check
    assert not timed.exhausted(11, torch.device("cpu"))
    assert 0.3 <= timed.fraction(11, 1000) < 0.4  # agreed again at step 11: still about 30 s
    assert timed.fraction(900, 1000) == 0.9  # the steps, when they are further along
    timed.agreed = 150.0
    assert timed.fraction(10, 1000) == 1.0


# ------------------------------------------------------------------------------------------ the dataset
@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_clip):
    root = tmp_path_factory.mktemp("train-data")
    write_synthetic_dataset(str(root), tiny_clip, labels=("violin", "cello", "flute"), videos_per_label=1)
    return str(root)


def test_inspect_dataset_reads_the_shards(dataset, tiny_clip):
    info = inspect_dataset(dataset)
    assert (info.num_rows, info.embed_dim, info.clip_model, info.n_mels) == (6, 64, "tiny/none", 64)
    assert info.labels == ["cello", "flute", "violin"]
    assert (info.rows_with_text, info.rows_with_audio, info.min_mel_frames) == (6, 6, 155)
    job, _ = prepare_diffusion(DiffusionTrainConfig(data=dataset, model_size="tiny", storage_path="/tmp/x"))
    assert job["unet"]["cond_dim"] == 64  # from the shards
    assert job["clip"]["model_name"] == "tiny" and job["clip"]["pretrained"] == "none"
    assert job["sample_names"] == ["cello", "flute", "violin"]
    expected = tiny_clip.encode_text(["cello", "flute", "violin"]).numpy()
    np.testing.assert_allclose(np.asarray(job["sample_conds"]), expected, atol=1e-6)
    assert job["params"]["unet.cond_dim"] == "64" and job["params"]["diffusion.num_steps"] == "4000"
    # the batch as it divides, logged with the run: the paper's 128 on one worker, in one pass
    assert {k: job["params"][f"batch.{k}"] for k in ("global_size", "per_worker", "microbatch", "accumulation")} == {
        "global_size": "128",
        "per_worker": "128",
        "microbatch": "128",
        "accumulation": "1",
    }
    assert job["tags"]["variant"] == "image" and job["tags"]["clip_model"] == "tiny"


def test_column_bytes_and_the_cache_decision(dataset, tiny_clip):
    info = inspect_dataset(dataset)
    table = pq.read_table(info.files[0], columns=["mel", "audio"])
    for f in info.files[1:]:
        table = pa.concat_tables([table, pq.read_table(f, columns=["mel", "audio"])])
    mel, audio = column_bytes(info, ["mel"]), column_bytes(info, ["audio"])
    # Parquet's uncompressed pages hold the values, level data and maybe a dictionary page: about what the
    # columns take in memory (Arrow adds offsets), at most twice that (the decision errs towards streaming)
    assert 0.95 < mel / table.column("mel").nbytes < 2.0
    assert 0.95 < audio / table.column("audio").nbytes < 2.0
    assert column_bytes(info, ["mel", "audio"]) == mel + audio and column_bytes(info, ["nothing"]) == 0
    base = {"data": dataset, "model_size": "tiny", "storage_path": "/tmp/x"}
    job, _ = prepare_diffusion(DiffusionTrainConfig(**base))
    assert job["cache_in_worker"] is True  # a tiny dataset, auto
    assert job["dataset"]["share_mb_per_worker"] == round(
        column_bytes(info, ["chunk_id", "mel", "n_mels", "mel_frames", "image_embeddings", "embed_dim"]) / 1e6, 1
    )
    assert prepare_diffusion(DiffusionTrainConfig(**base, cache_max_mb=1e-3))[0]["cache_in_worker"] is False
    assert prepare_diffusion(DiffusionTrainConfig(**base, cache_in_worker="off"))[0]["cache_in_worker"] is False
    voc, _ = prepare_hifigan(HiFiGANTrainConfig(data=dataset, model_size="tiny", cache_in_worker="on"))
    assert voc["cache_in_worker"] is True


def test_unusable_datasets_fail_clearly(dataset, tmp_path, tiny_clip):
    with pytest.raises(DatasetError, match="no training shards"):
        inspect_dataset(str(tmp_path / "nothing"))
    silent = tmp_path / "silent"
    write_synthetic_dataset(str(silent), tiny_clip, labels=("violin",), videos_per_label=1, with_audio=False)
    with pytest.raises(DatasetError, match="have no audio"):
        prepare_hifigan(HiFiGANTrainConfig(data=str(silent), model_size="tiny"))
    unlabeled = tmp_path / "unlabeled"
    (unlabeled / "train").mkdir(parents=True)
    table = pq.read_table(Path(dataset) / "train")
    table = table.set_column(
        table.schema.get_field_index("text_embedding"), "text_embedding", pa.nulls(len(table), pa.list_(pa.float32()))
    )
    pq.write_table(table, unlabeled / "train" / "part-0.parquet")
    with pytest.raises(DatasetError, match="--variant text needs label text embeddings"):
        prepare_diffusion(DiffusionTrainConfig(data=str(unlabeled), variant="text", model_size="tiny"))


def test_data_pipeline_refuses_to_starve():
    two_cpus = ClusterView(nodes=({"CPU": 2.0},))  # a fixed cluster: no node types to scale up
    with pytest.raises(RuntimeError, match="Ray Data would get none"):
        check_cluster_resources(DiffusionTrainConfig(data="d", num_workers=2), two_cpus)
    check_cluster_resources(DiffusionTrainConfig(data="d", num_workers=2, cpus_per_worker=0.5), two_cpus)


# ----------------------------------------------------------------------------------------- model pieces
def test_training_loss_keeps_the_null_condition_in_the_graph():
    """The loss the training loop uses (core's diffusion_losses) is DDP-safe without condition dropout: the
    learned null condition takes part in the backward pass, with zero gradient."""
    torch.manual_seed(0)
    model = ConditionalUNet(unet_config("tiny", cond_dim=64))
    with torch.no_grad():
        for p in model.out.parameters():
            p.normal_(0, 0.02)  # the output layer starts at zero: make the outputs depend on the input
    diffusion = GaussianDiffusion.from_config(DiffusionConfig(num_steps=50))
    mel, cond = torch.rand(3, 1, 64, 16) * 2 - 1, torch.randn(3, 64)  # 16 frames: the loss math is the same
    core = diffusion_losses(model, diffusion, mel, cond, generator=torch.Generator().manual_seed(5))
    core["loss"].backward()
    assert model.null_cond.grad is not None and not model.null_cond.grad.any()  # in the graph, zero gradient


def test_state_digest_tracks_every_bit():
    a, b = HiFiGANGenerator(hifigan_config("tiny")), HiFiGANGenerator(hifigan_config("tiny"))
    b.load_state_dict(a.state_dict())
    assert state_digest(a) == state_digest(b) == state_digest(dict(reversed(list(a.state_dict().items()))))
    with torch.no_grad():
        p = next(b.parameters())
        p.view(-1)[0] = torch.nextafter(p.view(-1)[0], torch.tensor(1e9))
    assert state_digest(a) != state_digest(b)


def test_vocoder_directories_round_trip(tmp_path):
    torch.manual_seed(1)
    generator = HiFiGANGenerator(hifigan_config("tiny"))
    mel = torch.rand(1, 64, 8) * 2 - 1
    save_vocoder(tmp_path / "voc", generator, hifigan_config("tiny"), step=12)
    loaded, manifest = load_hifigan(str(tmp_path / "voc"))
    assert manifest["step"] == 12
    with torch.no_grad():
        assert torch.equal(loaded(mel), generator.eval()(mel))
        assert loaded(mel).shape == (1, 8 * 1024)
    synth = Synthesizer(SynthesizerConfig.tiny(diffusion=DiffusionConfig(num_steps=10)), hifigan=generator)
    synth.save(tmp_path / "bundle")
    from_bundle, _ = load_hifigan_dir(tmp_path / "bundle")
    assert state_digest(from_bundle) == state_digest(generator)
    with pytest.raises(FileNotFoundError, match=r"neither vocoder\.json"):
        load_hifigan_dir(tmp_path)


def test_bundle_carries_the_given_weights(tmp_path):
    unet_cfg = unet_config("tiny", cond_dim=64)
    torch.manual_seed(3)
    ema_state = ConditionalUNet(unet_cfg).state_dict()
    vocoder = HiFiGANGenerator(hifigan_config("tiny"))
    common = dict(unet_config=unet_cfg, unet_state=ema_state, diffusion=DiffusionConfig(num_steps=20), vocoder=vocoder)
    build_bundle(
        tmp_path / "b",
        clip=ClipConfig(model_name="tiny", pretrained="none"),
        sampling_steps=1000,
        metadata={},
        **common,
    )
    synth = Synthesizer.load(tmp_path / "b")
    assert state_digest(synth.unet) == state_digest(ema_state)
    assert synth.config.sampling.steps == 20  # capped at the diffusion steps
    # A pretrained CLIP is referenced by name; its weights need not exist where the bundle is written.
    build_bundle(
        tmp_path / "p",
        clip=ClipConfig(model_name="ViT-B-32", pretrained="openai"),
        sampling_steps=10,
        metadata={"variant": "image"},
        **{
            **common,
            "unet_config": unet_config("tiny", cond_dim=512),
            "unet_state": ConditionalUNet(unet_config("tiny", cond_dim=512)).state_dict(),
        },
    )
    saved = json.loads((tmp_path / "p" / "bundle.json").read_text())
    assert saved["clip"]["pretrained"] == "openai" and not (tmp_path / "p" / "clip.safetensors").exists()


# ---------------------------------------------------------------------------------------- tracking, drill
def test_run_tracker_continues_one_run(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    record = run_record_uri(str(tmp_path / "runs"), "r1")
    first = RunTracker(uri, "exp", "r1", record, {"variant": "image"})
    first.log_params({"max_steps": "10", "lr": "0.1"})
    first.log_metrics({"loss": 1.0, "nan": float("nan")}, step=1)
    assert first.finish()  # sent from a background thread: all in MLflow once it finished
    again = RunTracker(uri, "exp", "r1", record, {"variant": "image"})
    assert again.resumed and again.run_id == first.run_id
    again.log_params({"max_steps": "20", "lr": "0.1", "seed": "0"})  # a longer re-run
    assert again.finish()
    run = mlflow.tracking.MlflowClient(uri).get_run(first.run_id)
    assert run.data.params == {"max_steps": "10", "lr": "0.1", "seed": "0"}
    assert run.data.tags["resumed_with.max_steps"] == "20" and run.data.metrics["loss"] == 1.0
    assert set(run.data.metrics) == {"loss", "tracking_seconds", "process_cpu_seconds"}  # not the NaN
    assert read_run_record(record)["mlflow_run_id"] == first.run_id
    assert len(mlflow.tracking.MlflowClient(uri).search_runs([first.experiment_id])) == 1


def test_fault_drill_fires_once_on_rank_one(tmp_path, monkeypatch, capsys):
    class Exited(Exception):
        pass

    def fake_exit(code):
        raise Exited(code)

    monkeypatch.setattr("os._exit", fake_exit)
    configure_logging()  # (a Train worker's run_worker sends the same lines to the process's own stdout)
    waits = []
    monkeypatch.setattr("clipsynth_platform.train.loop.wait_for_committed_checkpoints", lambda: waits.append(1))

    def drill(at: int, step: int, rank: int, world: int) -> None:
        fault_drill(at, step, WorkerPlace(rank, world, torch.device("cpu")), str(tmp_path), "r")

    drill(3, 3, rank=0, world=2)  # rank 0: no
    drill(3, 2, rank=1, world=2)  # other step: no
    with pytest.raises(Exited):
        drill(3, 3, rank=1, world=2)
    assert (tmp_path / "r" / "fault_drill_step_3.done").exists() and waits == [1]  # after the commit
    assert capsys.readouterr().out == "[fault drill] rank 1 exits at step 3\n"  # once, where the jobs read it
    drill(3, 3, rank=1, world=2)  # marker: not again
    with pytest.raises(Exited):
        drill(4, 4, rank=0, world=1)  # alone: rank 0


def test_sample_artifacts_are_audio_and_images(tmp_path):
    import soundfile as sf

    waves = np.stack([np.linspace(-0.5, 0.5, 2048, dtype=np.float32), np.zeros(2048, np.float32)])
    mels = np.zeros((2, 64, 2), np.float32)
    files = write_samples(tmp_path, ["a dog / barking", "rain"], mels, waves, 16_000, "t", reference_mels=mels)
    names = sorted(p.name for p in files)
    assert names == ["00_a_dog_barking.wav", "01_rain.wav", "mels.png"]
    audio, rate = sf.read(tmp_path / "00_a_dog_barking.wav", dtype="float32")
    assert rate == 16_000 and np.abs(audio - waves[0]).max() < 1 / 16_000
    assert (tmp_path / "mels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
