"""The embedded default: run the whole platform end to end on the built-in sample corpus (`make demo`).

Builds a labelled instrument-video corpus offline, starts a local Ray, preprocesses it (Ray Data), trains the
HiFi-GAN and the diffusion model (image variant) for a few CPU minutes each (Ray Train), trains the mel
classifier, evaluates (FAD, FID, relevance, retriever baseline), logs everything to MLflow in a local SQLite
file, starts the Ray Serve app and synthesizes a few text queries into wav files. Re-running reuses what is
already built. See clipsynth_platform.experiments.demo.DemoConfig for every setting.
"""

import sys

from clipsynth_platform.experiments.demo import DemoConfig, main
from clipsynth_platform.runtime.options import parse_config

if __name__ == "__main__":
    sys.exit(main(parse_config(DemoConfig, None, __doc__)))
