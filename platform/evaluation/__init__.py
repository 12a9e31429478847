"""Evaluation of CLIPSynth models (the paper's Table 1): FAD, Inception FID on mels, the mel classifier's
distances and relevance, CLIPRetriever, MLflow comparison.

    from clipsynth_platform.evaluation import EvalConfig, run_evaluation      # jobs/evaluate.py
    from clipsynth_platform.evaluation.compare import compare_experiment       # jobs/compare.py
    from clipsynth_platform.evaluation.mel_classifier import train_mel_classifier

The metric math (Fréchet distance, statistics) is in clipsynth_core.metrics.
"""

from .config import EvalConfig
from .embedders import AudioEmbedder, BackboneWeightsError, VGGish, VGGishEmbedder, build_audio_embedder
from .inception_fid import MelImageFID, build_mel_image_fid
from .mel_classifier import (
    ClassifierAudioEmbedder,
    MelClassifier,
    MelFeatureExtractor,
    build_mel_feature_extractor,
)
from .runner import EvalResult, Evaluation, run_evaluation

__all__ = [
    "AudioEmbedder",
    "BackboneWeightsError",
    "ClassifierAudioEmbedder",
    "EvalConfig",
    "EvalResult",
    "Evaluation",
    "MelClassifier",
    "MelFeatureExtractor",
    "MelImageFID",
    "VGGish",
    "VGGishEmbedder",
    "build_audio_embedder",
    "build_mel_feature_extractor",
    "build_mel_image_fid",
    "run_evaluation",
]
