"""Table 1 in one command: CLIPSynth, -Text, -Hybrid (same step budget), the HiFi-GAN once, evaluation of each
with text and image queries (and the image model's text queries under each modality-gap reduction), the
retriever and the HiFi-GAN reconstructions, all tracked in MLflow, then the table (markdown, CSV, PNG).

    python jobs/table1.py --data demo_output/shards --mel-classifier demo_output/mel_classifier   # make table1
    python jobs/table1.py --data s3://bucket/music --model-size paper --diffusion-train-steps 100000 \\
        --eval-samples 512 --eval-steps 1000 --batch-size 128 --lr 1e-4                            # the paper

Every setting is a field of clipsynth_platform.experiments.table1.Table1Config (one option each). Re-running reuses the
finished stages (out/stages/*.json). The table is written to OUT/table/ and printed.
"""

import sys

from clipsynth_platform.experiments.table1 import Table1Config, run_table1
from clipsynth_platform.runtime.console import open_console
from clipsynth_platform.runtime.options import parse_config

if __name__ == "__main__":
    open_console("table1")
    run_table1(parse_config(Table1Config, None, __doc__))
    sys.exit(0)
