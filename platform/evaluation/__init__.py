"""Evaluation of CLIPSynth models (the paper's Table 1): FAD, FID, relevance, CLIPRetriever, MLflow comparison.

    from clipsynth_platform.evaluation import EvalConfig, run_evaluation      # jobs/evaluate.py
    from clipsynth_platform.evaluation.compare import compare_experiment       # jobs/compare.py
    from clipsynth_platform.evaluation.mel_classifier import train_mel_classifier

The metric math (Fréchet distance, statistics) is in clipsynth_core.metrics.
"""

from .embedders import AudioEmbedder, BackboneWeightsError, VGGish, VGGishEmbedder, build_audio_embedder
from .mel_classifier import MelClassifier, MelFeatureExtractor, build_mel_feature_extractor
from .runner import EvalConfig, EvalResult, run_evaluation

__all__ = [
    "AudioEmbedder",
    "BackboneWeightsError",
    "EvalConfig",
    "EvalResult",
    "MelClassifier",
    "MelFeatureExtractor",
    "VGGish",
    "VGGishEmbedder",
    "build_audio_embedder",
    "build_mel_feature_extractor",
    "run_evaluation",
]
