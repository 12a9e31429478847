"""Train the mel-spectrogram classifier (as SpecVQGAN's Melception) that gives the evaluation its
fd_melclf features, relevance, and the offline FAD backbone (fad_melclf) when VGGish's weights are absent.

    python jobs/train_mel_classifier.py --data s3://bucket/music --out classifiers/music
    python jobs/evaluate.py ... --mel-classifier classifiers/music

A small CNN on random 64x64 windows of the train split's mels, one class per label; saves
mel_classifier.safetensors + mel_classifier.json to --out and logs parameters, per-epoch loss, train/test
window accuracy and the files to MLflow.
"""

import argparse
import sys

import mlflow

from clipsynth_platform.evaluation.cli import add_dataclass_arguments, config_from_args
from clipsynth_platform.evaluation.mel_classifier import MelClassifierTrainConfig, run_mel_classifier_job
from clipsynth_platform.registry import default_tracking_uri


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, MelClassifierTrainConfig, required=("data",))
    config = config_from_args(MelClassifierTrainConfig, parser.parse_args(argv))
    mlflow.set_tracking_uri(default_tracking_uri())
    run_mel_classifier_job(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
