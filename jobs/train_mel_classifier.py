"""Train the mel-spectrogram classifier that gives FID features and relevance (as SpecVQGAN's Melception).

    python jobs/train_mel_classifier.py --data s3://bucket/music --out classifiers/music
    python jobs/evaluate.py ... --fid-backbone classifiers/music

A small CNN on random 64x64 windows of the train split's mels, one class per label; saves
mel_classifier.safetensors + mel_classifier.json to --out and logs parameters, per-epoch loss, train/test
window accuracy and the files to MLflow.
"""

import argparse
import json
import sys
from dataclasses import asdict

import mlflow

from clipsynth_platform.evaluation.cli import add_dataclass_arguments, config_from_args
from clipsynth_platform.evaluation.mel_classifier import MelClassifierTrainConfig, train_mel_classifier
from clipsynth_platform.registry import default_tracking_uri, ensure_experiment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, MelClassifierTrainConfig, required=("data",))
    config = config_from_args(MelClassifierTrainConfig, parser.parse_args(argv))
    print("[mel-classifier] config " + json.dumps(asdict(config)))
    mlflow.set_tracking_uri(default_tracking_uri())
    with mlflow.start_run(experiment_id=ensure_experiment(config.experiment), run_name="mel-classifier"):
        mlflow.log_params({k: str(v) for k, v in asdict(config).items()})

        def log(metrics: dict, epoch: int) -> None:
            mlflow.log_metrics(metrics, step=epoch)
            print(f"[mel-classifier] epoch {epoch + 1}/{config.epochs} " + json.dumps(metrics))

        model, metrics = train_mel_classifier(config, log)
        out = model.save(config.out, training={**metrics, "data": config.data})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        mlflow.set_tags({"labels": ",".join(model.config.labels)[:5000]})
        mlflow.log_artifacts(str(out), artifact_path="mel_classifier")
    print(f"[mel-classifier] saved to {out}: " + json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
