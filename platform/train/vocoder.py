"""HiFi-GAN vocoder directories: what the HiFi-GAN job writes and every other job loads by URI.

A vocoder directory (what the HiFi-GAN job logs as the MLflow artifact "vocoder") holds:
    vocoder.json           {"format": "clipsynth-vocoder/1", "vocoder": HiFiGANConfig, "mel": MelConfig,
                            "weights": "<file>.safetensors", "step": N}
    vocoder.safetensors    the generator's weights
Every HiFi-GAN training checkpoint carries the same vocoder.json (weights: model.safetensors), so a
checkpoint directory is a vocoder directory too; a synthesizer bundle also holds one.

`bundle_with_vocoder` makes a copy of a synthesizer bundle that carries another HiFi-GAN and serves with the
vocoder asked for (jobs/vocoder.py: the demo's bundle with the HiFi-GAN trained to the CPU recipe).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from clipsynth_core import HiFiGANConfig, HiFiGANGenerator, MelConfig
from clipsynth_core.synthesizer import read_bundle_config

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


def load_hifigan_dir(directory: str | os.PathLike) -> tuple[HiFiGANGenerator, dict]:
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


def load_hifigan(uri: str, dst: str | os.PathLike | None = None) -> tuple[HiFiGANGenerator, dict]:
    """Resolve any vocoder URI (path, s3://, runs:/, models:/, MLflow artifact URI) and load its generator."""
    from clipsynth_platform.tracking.registry import resolve_vocoder_dir

    return load_hifigan_dir(resolve_vocoder_dir(uri, dst))


def bundle_with_vocoder(
    bundle_dir: str | os.PathLike, out_dir: str | os.PathLike, serving: str, vocoder_dir: str | os.PathLike = ""
) -> Path:
    """A copy of the bundle at `out_dir` (replaced) that serves with `serving` ("hifigan" or "griffin-lim") and,
    when `vocoder_dir` is given, carries its HiFi-GAN (config, weights, and its step in the metadata)."""
    src, dst = Path(bundle_dir), Path(out_dir)
    config = read_bundle_config(src)
    config.serving_vocoder = serving
    generator, manifest = load_hifigan_dir(vocoder_dir) if vocoder_dir else (None, {})
    if generator is not None:
        config.vocoder = generator.config
        config.metadata = {**config.metadata, "vocoder_step": manifest.get("step"), "vocoder_source": str(vocoder_dir)}
    config.check()  # before anything is written
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    if generator is not None:
        save_vocoder(dst, generator, generator.config, int(manifest.get("step") or 0))
        (dst / VOCODER_FILE).unlink()  # a bundle describes its vocoder in bundle.json
    (dst / "bundle.json").write_text(json.dumps(config.to_dict(), indent=2))
    return dst
