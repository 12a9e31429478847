"""Train a HiFi-GAN vocoder from scratch on a dataset's audio (16 kHz, 64 mel bands, hop 1024).

    python jobs/train_hifigan.py --data s3://bucket/music
    ray job submit --working-dir . -- python jobs/train_hifigan.py --data s3://bucket/music --num-workers 4 --use-gpu

Random aligned (mel, waveform) segments; HiFi-GAN V1's hyperparameters; 500K steps as in the paper. The
generator is logged as the MLflow artifact "vocoder": pass runs:/RUN_ID/vocoder as --vocoder to the
diffusion jobs.
"""

import sys

from clipsynth_platform.train.cli import main_hifigan

if __name__ == "__main__":
    sys.exit(main_hifigan(None, __doc__))
