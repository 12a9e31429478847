"""A text-image encoder that means something offline: a small CLIP-style dual encoder trained with open_clip on
synthetic captioned pictures of instruments, for the demo when no pretrained CLIP is available.

    from clipsynth_platform.experiments.offline_clip import offline_clip
    encoder = offline_clip()          # trained once (a few CPU minutes), then reused from ~/.cache/clipsynth
    encoder.clip_config               # ClipConfig(model_name="toy", pretrained=<weights file>)

Like the paper's CLIP, it never sees the audio, nor the videos it will embed: see pictures.py for what it sees.
"""

from .cache import OfflineClip, cache_key, offline_clip
from .pictures import draw_picture, draw_pictures
from .train import OfflineClipConfig, OfflineClipReport, train_offline_clip
from .zero_shot import ZERO_SHOT_TEMPLATE, DatasetZeroShot, dataset_zero_shot, zero_shot_accuracy, zero_shot_predictions

__all__ = [
    "ZERO_SHOT_TEMPLATE",
    "DatasetZeroShot",
    "OfflineClip",
    "OfflineClipConfig",
    "OfflineClipReport",
    "cache_key",
    "dataset_zero_shot",
    "draw_picture",
    "draw_pictures",
    "offline_clip",
    "train_offline_clip",
    "zero_shot_accuracy",
    "zero_shot_predictions",
]
