"""Build the paper's Table 1 from an MLflow experiment of evaluation runs (jobs/evaluate.py).

    python jobs/compare.py --experiment clipsynth-eval --out results/table1

Writes table.md (with the modality gap), table.csv, modality_gap.csv and table.png to --out, and logs them
to a "table1-comparison" run in the same experiment. Only FINISHED evaluation runs count; runs are grouped by
the backbones and FAD reference they used (one table per group, a footnote naming every column's backbone),
and runs with random backbones are never tabled beside real ones (--exclude-random leaves them out).
"""

import sys
from collections.abc import Sequence

from clipsynth_platform.experiments.table1 import CompareConfig, compare_runs
from clipsynth_platform.runtime.console import open_console
from clipsynth_platform.runtime.options import parse_config


def main(argv: Sequence[str] | None = None) -> int:
    open_console("compare")
    return compare_runs(parse_config(CompareConfig, argv, __doc__))


if __name__ == "__main__":
    sys.exit(main())
