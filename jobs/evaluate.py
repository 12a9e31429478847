"""Evaluate a CLIPSynth model (or CLIPRetriever, or the HiFi-GAN reconstructions) by the paper's protocol.

    python jobs/evaluate.py --model models:/clipsynth-music/1 --data s3://bucket/music --dataset music
    python jobs/evaluate.py --model BUNDLE_DIR --data DATA --queries both --steps 50 --fad-backbone vggish
    python jobs/evaluate.py --model BUNDLE_DIR --data DATA --retriever
    ray job submit --working-dir . -- python jobs/evaluate.py --model ... --data ...

512 samples per query type (text: "a photo of playing {label}" on MUSIC, "a photo of {label}" on VGG-Sound;
image: random test frames), generated on Ray actors (GPU when present); FAD against the whole test split
(VGGish by default: weights from a local file, see --fad-backbone), FID and relevance with the platform's mel
classifier (jobs/train_mel_classifier.py), the HiFi-GAN reconstruction FAD, the modality gap. Results go to
an MLflow evaluation run linked to the model's training run; jobs/compare.py makes Table 1 from them.
"""

import argparse
import sys

from clipsynth_platform.evaluation.cli import add_dataclass_arguments, config_from_args
from clipsynth_platform.evaluation.runner import EvalConfig, run_evaluation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, EvalConfig, required=("model", "data"))
    config = config_from_args(EvalConfig, parser.parse_args(argv))
    try:
        config.validate()
    except ValueError as exc:
        parser.error(str(exc))
    try:
        results = run_evaluation(config)
    except (ValueError, FileNotFoundError) as exc:  # bad input: missing split, weights, bundle; wrong CLIP
        print(f"[evaluate] error: {exc}", file=sys.stderr)
        return 2
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
