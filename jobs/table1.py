"""Table 1 in one command: CLIPSynth, -Text, -Hybrid (same step budget), the HiFi-GAN once, evaluation of each
with text and image queries (and the image model's text queries under each modality-gap reduction), the
retriever and the HiFi-GAN reconstructions, all tracked in MLflow, then the table (markdown, CSV, PNG).

    python jobs/table1.py --data demo_output/shards --mel-classifier demo_output/mel_classifier   # make table1
    python jobs/table1.py --data s3://bucket/music --model-size paper --diffusion-train-steps 100000 \\
        --eval-samples 512 --eval-steps 1000 --batch-size 128 --lr 1e-4                            # the paper

Every setting is a field of clipsynth_platform.table1.Table1Config (one option each). Re-running reuses the
finished stages (out/stages/*.json). The table is written to OUT/table/ and printed.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields


def parse(argv: list[str] | None = None):
    from clipsynth_platform.table1 import Table1Config

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(Table1Config):
        flag = "--" + f.name.replace("_", "-")
        if f.default is MISSING:
            p.add_argument(flag, required=True)
        elif isinstance(f.default, tuple):
            p.add_argument(flag, default=",".join(f.default), help=f"comma-separated (default {','.join(f.default)})")
        else:
            p.add_argument(flag, type=type(f.default), default=f.default, help=f"(default {f.default})")
    args = vars(p.parse_args(argv))
    for f in fields(Table1Config):
        if isinstance(f.default, tuple):
            args[f.name] = tuple(x.strip() for x in args[f.name].split(",") if x.strip())
    try:
        return Table1Config(**args).check()
    except ValueError as exc:
        p.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    from clipsynth_platform.table1 import run_table1

    run_table1(parse(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
