"""Build the paper's Table 1 from an MLflow experiment of evaluation runs (jobs/evaluate.py).

    python jobs/compare.py --experiment clipsynth-eval --out results/table1

Writes table.md (with the modality gap), table.csv, modality_gap.csv and table.png to --out, and logs them
to a "table1-comparison" run in the same experiment. Only FINISHED evaluation runs count; runs are grouped by
the backbones and FAD reference they used (one table per group, a footnote naming every column's backbone),
and runs with random backbones are never tabled beside real ones (--exclude-random leaves them out).
"""

import argparse
import sys

from clipsynth_platform.evaluation.compare import compare_experiment
from clipsynth_platform.logs import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="clipsynth-eval", help="MLflow experiment (default: clipsynth-eval)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the table to MLflow")
    parser.add_argument(
        "--exclude-random",
        action="store_true",
        help="leave out runs with random (tiny-random) backbones instead of refusing a mix with real ones",
    )
    args = parser.parse_args(argv)
    configure_logging()
    print(f"[compare] config {vars(args)}")
    try:
        result = compare_experiment(
            args.experiment, args.out, log_to_mlflow=not args.no_mlflow, exclude_random=args.exclude_random
        )
    except ValueError as exc:
        print(f"[compare] error: {exc}", file=sys.stderr)
        return 2
    print(result.paths["markdown"].read_text())
    print(
        f"[compare] {result.runs} evaluation runs, {result.used_runs} used -> {len(result.tables)} table(s); "
        f"wrote {', '.join(str(p) for p in result.paths.values())}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
