"""Fine-tuning (--init-from): a new run that starts from a trained bundle's weights and EMA, with a fresh
optimiser and its own MLflow run, on other data; and the clear errors when the bundle's variant or CLIP is not
the run's."""

from __future__ import annotations

import json

import mlflow
import pytest
import torch
from safetensors.torch import load_file

from clipsynth_core import (
    EMA,
    ClipConfig,
    ConditionalUNet,
    DiffusionConfig,
    HiFiGANGenerator,
    UNetConfig,
    hifigan_config,
    load_training_state,
    unet_config,
)
from clipsynth_platform.datasets.synthetic import write_synthetic_dataset
from clipsynth_platform.tracking.registry import resolve_bundle
from clipsynth_platform.train import DatasetError, DiffusionTrainConfig, run_diffusion_training
from clipsynth_platform.train.diffusion_loop import build_bundle
from clipsynth_platform.train.runner import prepare_diffusion

SOURCE_STEPS = 50  # the source model's diffusion process (the run's --diffusion-steps default is 4000)


def _trained_bundle(path, *, variant="image", clip="tiny", cond_dim=64, seed=7):
    """A bundle as the diffusion job writes it, with weights far from any fresh initialisation."""
    config = unet_config("tiny", cond_dim=cond_dim)
    torch.manual_seed(seed)
    unet = ConditionalUNet(config)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    build_bundle(
        path,
        clip=ClipConfig(model_name=clip, pretrained="none"),
        unet_config=config,
        unet_state=unet.state_dict(),
        diffusion=DiffusionConfig(num_steps=SOURCE_STEPS),
        vocoder=HiFiGANGenerator(hifigan_config("tiny")),
        sampling_steps=10,
        metadata={"variant": variant, "mlflow_run_id": "source-run", "step": 1234},
    )
    return path


@pytest.fixture(scope="module")
def other_data(tmp_path_factory, tiny_clip) -> str:
    """Data of other classes than the source model's."""
    root = tmp_path_factory.mktemp("finetune-data")
    write_synthetic_dataset(str(root), tiny_clip, labels=("flute", "trumpet"), videos_per_label=2, chunks_per_video=2)
    return str(root)


@pytest.mark.slow  # 17 s on 2 shared cores: out of make test-fast
def test_the_bundle_must_match_the_runs_variant_and_clip(other_data, tmp_path):
    base = {"data": other_data, "storage_path": str(tmp_path / "runs"), "model_size": "paper"}
    text_model = _trained_bundle(tmp_path / "text", variant="text")
    with pytest.raises(DatasetError, match=r"trained with --variant text, this run is --variant image"):
        prepare_diffusion(DiffusionTrainConfig(**base, init_from=str(text_model)))
    other_clip = _trained_bundle(tmp_path / "clip", clip="ViT-B-32", cond_dim=512)
    with pytest.raises(DatasetError, match=r"trained on CLIP ViT-B-32/none embeddings, the shards .* hold tiny/none"):
        prepare_diffusion(DiffusionTrainConfig(**base, init_from=str(other_clip)))
    unrecorded = _trained_bundle(tmp_path / "anon", variant="")
    with pytest.raises(DatasetError, match=r"does not record its variant"):
        prepare_diffusion(DiffusionTrainConfig(**base, init_from=str(unrecorded)))
    with pytest.raises(DatasetError, match=r"--init-from .*nothing: .*not a synthesizer bundle"):
        prepare_diffusion(DiffusionTrainConfig(**base, init_from=str(tmp_path / "nothing")))

    good = _trained_bundle(tmp_path / "good")
    cfg = DiffusionTrainConfig(**base, init_from=str(good))
    job, _ = prepare_diffusion(cfg)
    # the bundle's architecture and process, not --model-size paper's or --diffusion-steps' 4000
    assert job["unet"] == UNetConfig.from_dict(json.loads((good / "bundle.json").read_text())["unet"]).to_dict()
    assert job["unet"]["model_channels"] == 32  # the bundle's tiny U-Net
    assert job["diffusion"]["num_steps"] == SOURCE_STEPS
    assert job["run_name"] == "clipsynth-vggsound-image-finetune"  # its own run, apart from the source's
    weights = job["init_from"]["weights"]
    assert weights == str(tmp_path / "runs" / "clipsynth-vggsound-image-finetune" / "init_from.safetensors")
    assert load_file(weights).keys() == load_file(good / "unet.safetensors").keys()
    assert (job["tags"]["init_from"], job["tags"]["init_from_run"]) == (str(good), "source-run")
    assert job["params"]["init.source_step"] == "1234"


@pytest.mark.ray
@pytest.mark.slow
def test_fine_tuning_starts_from_the_trained_weights_on_other_data(ray_cluster, other_data, tmp_path):
    source = _trained_bundle(tmp_path / "source")
    trained = load_file(source / "unet.safetensors")
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = DiffusionTrainConfig(
        data=other_data,
        init_from=str(source),
        experiment="test-finetune",
        storage_path=str(tmp_path / "runs"),
        tracking_uri=tracking,
        num_workers=1,  # a real worker, whose checkpoints stay in storage
        global_batch_size=4,
        max_steps=3,
        lr=1e-7,  # AdamW moves a weight by about lr a step: the weights stay within 1e-6 of where they started
        log_every=3,
        checkpoint_every=3,
        sample_every=0,
        min_examples_per_pass=32,
        register_as="test-finetuned",
    )
    summary = run_diffusion_training(cfg)
    assert summary.final_step == 3 and summary.run_name == "test-finetune-image-finetune"

    model = ConditionalUNet(unet_config("tiny", cond_dim=64))
    fresh = {k: v.clone() for k, v in ConditionalUNet(unet_config("tiny", cond_dim=64)).state_dict().items()}
    ema = EMA(model, 0.9999)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-7)
    state = load_training_state(summary.checkpoint_path, model=model, ema=ema, optimizer=optimizer)
    assert state["step"] == 3
    assert optimizer.state_dict()["state"][0]["step"].item() == 3  # a fresh optimiser: three steps, not 1237
    for name, value in trained.items():
        assert (model.state_dict()[name] - value).abs().max() < 1e-5, name  # the model started from the bundle
        assert (ema.state_dict()[name] - value).abs().max() < 1e-5, name  # and so did its EMA
    assert max((fresh[k] - trained[k]).abs().max() for k in trained) > 0.05  # which a fresh start is far from

    client = mlflow.tracking.MlflowClient(tracking)
    run = client.get_run(summary.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.info.run_id != "source-run"
    assert (run.data.tags["init_from"], run.data.tags["init_from_run"]) == (str(source), "source-run")
    assert run.data.params["diffusion.num_steps"] == str(SOURCE_STEPS)
    mlflow.set_tracking_uri(tracking)
    bundle = resolve_bundle("models:/test-finetuned/1", tmp_path / "dl")
    metadata = json.loads((bundle / "bundle.json").read_text())["metadata"]
    assert metadata["init_from"] == str(source) and metadata["mlflow_run_id"] == summary.mlflow_run_id
