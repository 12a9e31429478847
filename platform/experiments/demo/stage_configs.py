"""Each stage's config in the demo: the "demo" preset's fixed settings (clipsynth_platform.presets), with the
DemoConfig knobs that stage reads on top. The stage cache keys hash these configs (platform/experiments/demo/stages.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clipsynth_platform.presets import DEMO

from .config import DemoConfig

if TYPE_CHECKING:
    from clipsynth_platform.datasets.corpus import CorpusConfig
    from clipsynth_platform.evaluation.mel_classifier import MelClassifierTrainConfig
    from clipsynth_platform.evaluation.runner import EvalConfig
    from clipsynth_platform.ingest import IngestConfig
    from clipsynth_platform.runtime.ray_cluster import LocalRay
    from clipsynth_platform.train.config import DiffusionTrainConfig, HiFiGANTrainConfig

    from .clip import DemoClip


def corpus_config(config: DemoConfig) -> CorpusConfig:
    from clipsynth_platform.datasets.corpus import CorpusConfig

    return DEMO.build(
        CorpusConfig,
        out=str(config.root / "corpus"),
        classes=tuple(config.classes),
        videos_per_class=config.videos_per_class,
        min_seconds=config.min_seconds,
        max_seconds=config.max_seconds,
        test_per_class=config.test_per_class,
        seed=config.seed,
    )


def local_ray(config: DemoConfig, tracking: str) -> LocalRay:
    from clipsynth_platform.runtime.ray_cluster import LocalRay

    return DEMO.build(LocalRay, **config.local_ray_settings(tracking))


def ingest_config(config: DemoConfig, labels_file: str, clip: DemoClip) -> IngestConfig:
    from clipsynth_platform.ingest import IngestConfig

    return DEMO.build(
        IngestConfig,
        input=str(config.root / "corpus"),
        output=str(config.root / "shards"),
        labels=labels_file,
        clip_model=clip.model,
        clip_pretrained=clip.pretrained,
    )


def _training(config: DemoConfig, tracking: str) -> dict[str, Any]:
    """Where both training stages run and log (their knobs: CpuRunConfig's settings)."""
    return {
        "data": str(config.root / "shards"),
        "experiment": config.experiment,
        "storage_path": str(config.root / "checkpoints"),
        "num_workers": config.num_workers,
        "tracking_uri": tracking,
    }


def hifigan_config(config: DemoConfig, tracking: str) -> HiFiGANTrainConfig:
    from clipsynth_platform.train.config import HiFiGANTrainConfig

    return DEMO.build(
        HiFiGANTrainConfig,
        **_training(config, tracking),
        **config.hifigan_settings(),
        train_seconds=config.vocoder_train_seconds,
    )


def diffusion_config(config: DemoConfig, tracking: str, vocoder_uri: str) -> DiffusionTrainConfig:
    from clipsynth_platform.train.config import DiffusionTrainConfig

    return DEMO.build(
        DiffusionTrainConfig,
        **_training(config, tracking),
        **config.diffusion_settings(),
        max_steps=config.diffusion_train_steps,
        train_seconds=config.diffusion_train_seconds,
        checkpoint_every=max(config.diffusion_train_steps // 3, 1),
        sample_every=config.diffusion_train_steps,
        sample_queries=tuple(q for q, _ in config.query_list()[:4]),
        vocoder=vocoder_uri,
        bundle_sampling_steps=config.serve_steps,
        register_as=config.registered_model,
    )


def classifier_config(config: DemoConfig) -> MelClassifierTrainConfig:
    from clipsynth_platform.evaluation.mel_classifier import MelClassifierTrainConfig

    return DEMO.build(
        MelClassifierTrainConfig,
        data=str(config.root / "shards"),
        out=str(config.root / "mel_classifier"),
        epochs=config.classifier_epochs,
        experiment=config.experiment,
    )


def eval_config(config: DemoConfig, model_uri: str, retriever: bool) -> EvalConfig:
    """The generative model with text and image queries, or (retriever) the CLIPRetriever baseline's text rows."""
    from clipsynth_platform.evaluation.runner import EvalConfig

    return DEMO.build(
        EvalConfig,
        model=model_uri,
        data=str(config.root / "shards"),
        queries="text" if retriever else "both",
        **config.eval_settings(),
        mel_classifier=str(config.root / "mel_classifier"),
        retriever=retriever,
        experiment=config.experiment,
        stats_cache=str(config.root / "stats_cache"),
    )
