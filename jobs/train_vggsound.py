"""Train CLIPSynth's diffusion model on VGG-Sound shards with Ray Train (data parallel) and MLflow.

    python jobs/train_vggsound.py --data s3://bucket/vggsound --variant image
    ray job submit --working-dir . -- python jobs/train_vggsound.py --data s3://bucket/vggsound --num-workers 8 --use-gpu

Paper defaults (Dong et al., 2023): 500K steps, AdamW with improved-diffusion's hyperparameters, 4,000
cosine diffusion steps, hybrid loss, EMA. The final EMA synthesizer is registered as clipsynth-vggsound.
"""

import sys

from clipsynth_platform.presets import preset
from clipsynth_platform.train.cli import main_diffusion

DEFAULTS = preset("vggsound").overrides("DiffusionTrainConfig")

if __name__ == "__main__":
    sys.exit(main_diffusion(None, __doc__, DEFAULTS))
