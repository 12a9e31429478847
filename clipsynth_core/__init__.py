"""CLIPSynth's model, in pure PyTorch (no Ray, no MLflow).

from clipsynth_core import MelConfig, MelFrontend        # MelFrontend(MelConfig())(wave[B, N], sr) -> [B, 64, T]
from clipsynth_core import ClipQueryEncoder             # encode_text(list[str]) / encode_image(images) -> [B, D]
from clipsynth_core import GaussianDiffusion, cosine_betas
from clipsynth_core import ConditionalUNet, HiFiGANGenerator
from clipsynth_core import Synthesizer                  # Synthesizer.load(path).synthesize(queries, steps=, seed=)
from clipsynth_core import ClipRetriever
"""

from .checkpoint import load_training_state, save_training_state, state_digest
from .clip_encoder import ClipConfig, ClipQueryEncoder, ClipWeightsError
from .diffusion import DiffusionConfig, GaussianDiffusion, cosine_betas, space_timesteps
from .ema import EMA
from .hifigan import HiFiGANConfig, HiFiGANDiscriminator, HiFiGANGenerator, hifigan_config
from .hifigan_step import HiFiGANStep
from .mel import MelConfig, MelFrontend, random_segment
from .retriever import ClipRetriever
from .synthesizer import SamplingDefaults, Synthesizer, SynthesizerConfig, frames_for_seconds
from .training import OptimConfig, diffusion_losses
from .unet import ConditionalUNet, UNetConfig, unet_config
from .vocoder import VOCODERS, GriffinLimVocoder, HiFiGANVocoder, build_vocoder

__all__ = [
    "EMA",
    "VOCODERS",
    "ClipConfig",
    "ClipQueryEncoder",
    "ClipRetriever",
    "ClipWeightsError",
    "ConditionalUNet",
    "DiffusionConfig",
    "GaussianDiffusion",
    "GriffinLimVocoder",
    "HiFiGANConfig",
    "HiFiGANDiscriminator",
    "HiFiGANGenerator",
    "HiFiGANStep",
    "HiFiGANVocoder",
    "MelConfig",
    "MelFrontend",
    "OptimConfig",
    "SamplingDefaults",
    "Synthesizer",
    "SynthesizerConfig",
    "UNetConfig",
    "build_vocoder",
    "cosine_betas",
    "diffusion_losses",
    "frames_for_seconds",
    "hifigan_config",
    "load_training_state",
    "random_segment",
    "save_training_state",
    "space_timesteps",
    "state_digest",
    "unet_config",
]
