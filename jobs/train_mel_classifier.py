"""Train the mel-spectrogram classifier (as SpecVQGAN's Melception) that gives the evaluation its
fd_melclf features, relevance, and the offline FAD backbone (fad_melclf) when VGGish's weights are absent.

    python jobs/train_mel_classifier.py --data s3://bucket/music --out classifiers/music
    python jobs/evaluate.py ... --mel-classifier classifiers/music

A small CNN on random 64x64 windows of the train split's mels, one class per label; saves
mel_classifier.safetensors + mel_classifier.json to --out and logs parameters, per-epoch loss, train/test
window accuracy and the files to MLflow.
"""

import sys

import mlflow

from clipsynth_platform.evaluation.mel_classifier import MelClassifierTrainConfig, run_mel_classifier_job
from clipsynth_platform.runtime.console import open_console
from clipsynth_platform.runtime.options import parse_config
from clipsynth_platform.tracking.registry import default_tracking_uri


def main(argv: list[str] | None = None) -> int:
    config = parse_config(MelClassifierTrainConfig, argv, __doc__)
    open_console("mel-classifier")
    mlflow.set_tracking_uri(default_tracking_uri())
    run_mel_classifier_job(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
