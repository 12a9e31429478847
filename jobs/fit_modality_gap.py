"""Fit the modality-gap statistics on a dataset's train split and store them in a synthesizer bundle.

    python jobs/fit_modality_gap.py --data demo_output/shards --bundle BUNDLE_DIR
    python jobs/fit_modality_gap.py --data DATA --bundle BUNDLE_DIR --no-prior      # the shift only

Writes modality_gap.safetensors and modality_gap.json into the bundle: the mean frame and mean text
embeddings (the shift of Liang et al.) and the text-to-image prior (a small MLP; needs the rows' labels).
Then `Synthesizer.encode(queries, gap="shift" | "prior")`, `jobs/evaluate.py --gap ...` and the service's
`gap_reduction` field use them. See platform/modality_gap.py for the texts and the held-out phrasing.
"""

import argparse
import json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="preprocessed dataset (its train split)")
    p.add_argument("--bundle", required=True, help="a synthesizer bundle directory to write the statistics into")
    p.add_argument("--no-prior", dest="with_prior", action="store_false", help="fit the shift only")
    p.add_argument("--prior-steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from clipsynth_core.modality_gap import PriorConfig
    from clipsynth_core.synthesizer import load_bundle_encoder, read_bundle_config
    from clipsynth_platform.modality_gap import GapFitConfig, fit_gap_reducer

    config = read_bundle_config(args.bundle)
    encoder = load_bundle_encoder(args.bundle, config.clip)
    fit = GapFitConfig(
        data=args.data, prior=PriorConfig(steps=args.prior_steps, seed=args.seed), with_prior=args.with_prior
    )
    reducer = fit_gap_reducer(fit, encoder)
    reducer.save(args.bundle)
    print(json.dumps({"bundle": args.bundle, **reducer.describe()}))


if __name__ == "__main__":
    main()
