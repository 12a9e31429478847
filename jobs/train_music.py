"""Train CLIPSynth's diffusion model on MUSIC shards with Ray Train (data parallel) and MLflow.

    python jobs/train_music.py --data s3://bucket/music --variant image
    ray job submit --working-dir . -- python jobs/train_music.py --data s3://bucket/music --num-workers 4 --use-gpu

Paper defaults (Dong et al., 2023): 100K steps (MUSIC converges by then), AdamW with improved-diffusion's
hyperparameters, 4,000 cosine diffusion steps, hybrid loss, EMA; queries "a photo of playing {query}".
The final EMA synthesizer is registered as clipsynth-music.
"""

import sys

from clipsynth_platform.presets import preset
from clipsynth_platform.train.cli import main_diffusion

DEFAULTS = preset("music").overrides("DiffusionTrainConfig")

if __name__ == "__main__":
    sys.exit(main_diffusion(None, __doc__, DEFAULTS))
