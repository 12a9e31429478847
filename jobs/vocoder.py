"""Train the demo's HiFi-GAN to the CPU recipe (20 minutes on 2 cores), measure it against Griffin-Lim, and
register the demo's bundle with it (`make vocoder`; `make demo` first).

    python jobs/vocoder.py                      # on demo_output/
    python jobs/vocoder.py --vocoder-train-seconds 600 --registered-model my-vocoder

See clipsynth_platform.experiments.demo.vocoder for the stages and VocoderRunConfig for every setting.
"""

import sys

from clipsynth_platform.experiments.demo.vocoder import VocoderRunConfig, main
from clipsynth_platform.runtime.options import parse_config

if __name__ == "__main__":
    sys.exit(main(parse_config(VocoderRunConfig, None, __doc__)))
