"""Mel -> waveform for training artifacts: a trained HiFi-GAN from any URI the platform produces, or
Griffin-Lim (no training needed, audibly phasey) when none is given.

A vocoder directory (what the HiFi-GAN job logs as the MLflow artifact "vocoder") holds:
    vocoder.json           {"format": "clipsynth-vocoder/1", "vocoder": HiFiGANConfig, "mel": MelConfig,
                            "weights": "<file>.safetensors", "step": N}
    vocoder.safetensors    the generator's weights
Every HiFi-GAN training checkpoint carries the same vocoder.json (weights: model.safetensors), so a
checkpoint directory is a vocoder directory too; a synthesizer bundle also holds one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
import torchaudio.functional as AF
from safetensors.torch import load_file, save_file
from torch import Tensor

from clipsynth_core import HiFiGANConfig, HiFiGANGenerator, MelConfig, MelFrontend

VOCODER_FORMAT = "clipsynth-vocoder/1"
VOCODER_FILE = "vocoder.json"


def vocoder_manifest(config: HiFiGANConfig, mel: MelConfig, weights: str, step: int) -> dict:
    return {"format": VOCODER_FORMAT, "vocoder": asdict(config), "mel": asdict(mel), "weights": weights, "step": step}


def save_vocoder(directory: str | os.PathLike, generator: torch.nn.Module, config: HiFiGANConfig, step: int) -> Path:
    """Write a vocoder directory (generator weights + manifest)."""
    from clipsynth_core.ema import unwrap

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in unwrap(generator).state_dict().items()}
    save_file(state, str(d / "vocoder.safetensors"))
    manifest = vocoder_manifest(config, MelConfig(), "vocoder.safetensors", step)
    (d / VOCODER_FILE).write_text(json.dumps(manifest, indent=2))
    return d


def load_vocoder_dir(directory: str | os.PathLike) -> tuple[HiFiGANGenerator, dict]:
    """A HiFi-GAN generator from a vocoder directory, HiFi-GAN checkpoint or synthesizer bundle directory."""
    d = Path(directory)
    if (d / VOCODER_FILE).exists():
        manifest = json.loads((d / VOCODER_FILE).read_text())
        if manifest.get("format") != VOCODER_FORMAT:
            raise ValueError(f"{d / VOCODER_FILE} is not a {VOCODER_FORMAT} manifest")
        config = HiFiGANConfig.from_dict(manifest["vocoder"])
        weights = d / manifest.get("weights", "vocoder.safetensors")
        mel = manifest.get("mel", {})
    elif (d / "bundle.json").exists():
        bundle = json.loads((d / "bundle.json").read_text())
        config = HiFiGANConfig.from_dict(bundle["vocoder"])
        weights = d / "vocoder.safetensors"
        mel = bundle.get("mel", {})
        manifest = {"format": "bundle", "step": bundle.get("metadata", {}).get("vocoder_step")}
    else:
        raise FileNotFoundError(f"{d} holds neither {VOCODER_FILE} (vocoder or HiFi-GAN checkpoint) nor bundle.json")
    if mel and MelConfig(**mel) != MelConfig():
        raise ValueError(f"the vocoder at {d} was trained on other mel settings than the platform's: {mel}")
    generator = HiFiGANGenerator(config)
    generator.load_state_dict(load_file(str(weights)))
    return generator.eval(), manifest


def load_vocoder(uri: str, dst: str | os.PathLike | None = None) -> tuple[HiFiGANGenerator, dict]:
    """Resolve any vocoder URI (path, s3://, runs:/, models:/, MLflow artifact URI) and load its generator."""
    from ..registry import resolve_vocoder_dir

    return load_vocoder_dir(resolve_vocoder_dir(uri, dst))


class GriffinLimVocoder:
    """Normalised log-mel [B, n_mels, T] -> waveform [B, T * hop] by Griffin-Lim.

    The mel magnitude is mapped back to a linear spectrogram with the pseudo-inverse of the platform's mel
    filterbank (clamped at 0), then phase is estimated iteratively; a stand-in until a HiFi-GAN is trained.
    """

    name = "griffin-lim"

    def __init__(self, mel: MelConfig | None = None, n_iter: int = 32) -> None:
        self.frontend = MelFrontend(mel or MelConfig())
        self.n_iter = n_iter
        self.inverse_basis = torch.linalg.pinv(self.frontend.mel_basis)  # [freqs, mels]

    @torch.no_grad()
    def __call__(self, mel: Tensor) -> Tensor:
        c = self.frontend.config
        mel = mel.detach().float().cpu()
        magnitude_mel = torch.exp(self.frontend.denormalize(mel))
        linear = torch.clamp(self.inverse_basis @ magnitude_mel, min=0.0)
        length = mel.shape[-1] * c.hop_length
        window = torch.hann_window(c.win_length)
        wave = AF.griffinlim(
            linear,
            window=window,
            n_fft=c.n_fft,
            hop_length=c.hop_length,
            win_length=c.win_length,
            power=1.0,
            n_iter=self.n_iter,
            momentum=0.99,
            length=None,
            rand_init=False,
        )
        # Griffin-Lim centres frame t at t * hop; the platform's mel (no centre padding) centres it at
        # t * hop + n_fft / 2. Shift by that much, then fit to the vocoder convention of T * hop samples.
        wave = torch.nn.functional.pad(wave, (c.n_fft // 2, 0))
        wave = torch.nn.functional.pad(wave, (0, max(0, length - wave.shape[-1])))[..., :length]
        return wave.clamp(-1.0, 1.0)


class HiFiGANVocoder:
    """A trained generator as a callable mel -> waveform, on CPU (samples are few and short)."""

    def __init__(self, generator: HiFiGANGenerator, source: str) -> None:
        self.generator = generator.eval().cpu()
        self.name = f"hifigan:{source}"

    @torch.no_grad()
    def __call__(self, mel: Tensor) -> Tensor:
        return self.generator(mel.detach().float().cpu()).clamp(-1.0, 1.0)
