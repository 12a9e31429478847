"""Fit the modality-gap statistics on a dataset's train split and store them in a synthesizer bundle.

    python jobs/fit_modality_gap.py --data demo_output/shards --bundle BUNDLE_DIR
    python jobs/fit_modality_gap.py --data DATA --bundle BUNDLE_DIR --no-prior      # the shift only

Writes modality_gap.safetensors and modality_gap.json into the bundle: the mean frame and mean text
embeddings (the shift of Liang et al.) and the text-to-image prior (a small MLP; needs the rows' labels).
Then `Synthesizer.encode(queries, gap="shift" | "prior")`, `jobs/evaluate.py --gap ...` and the service's
`gap_reduction` field use them. See platform/train/modality_gap.py for the texts and the held-out phrasing.
"""

import json

from clipsynth_platform.runtime.options import parse_config
from clipsynth_platform.train.modality_gap import GapFitJobConfig, fit_gap_job

if __name__ == "__main__":
    print(json.dumps(fit_gap_job(parse_config(GapFitJobConfig, None, __doc__))))
