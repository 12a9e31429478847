"""The synthesizer: query (text or image) -> CLIP embedding -> mel (diffusion) -> waveform (HiFi-GAN).

A synthesizer bundle is a directory that holds everything needed to run it, with no pickle:
    bundle.json            format version, configs of every part (mel, CLIP, U-Net, diffusion, HiFi-GAN),
                           defaults for sampling, and free-form metadata (run id, dataset, variant)
    unet.safetensors       the diffusion model's weights (the EMA weights when training kept them)
    vocoder.safetensors    the HiFi-GAN generator (kept and measured even when Griffin-Lim serves)
    clip.safetensors       when CLIP is random (pretrained="none") or one of the core's local CLIPs (the toy
                           encoder of the offline demo), so a round trip is exact and the bundle is whole;
                           open_clip's pretrained weights are referenced by name/tag, not copied
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from .clip_encoder import TINY_CLIP_CONFIG, ClipConfig, ClipQueryEncoder, build_local_clip
from .diffusion import DiffusionConfig, GaussianDiffusion, guided_model
from .hifigan import HiFiGANConfig, HiFiGANGenerator, hifigan_config
from .mel import MelConfig, MelFrontend
from .modality_gap import GapReducer
from .noise import example_keys
from .precision import AutocastDenoiser, resolve_precision
from .query_blend import encode_queries
from .unet import ConditionalUNet, UNetConfig, unet_config
from .vocoder import VOCODERS, build_vocoder

BUNDLE_FORMAT = "clipsynth-bundle/1"
PAPER_SECONDS = 4.16  # 64 frames, the paper's window
ALLOWED_SECONDS = (4.16, 8.32)  # 64 and 128 frames (the paper's 64x64 and 64x128 samples)


@dataclass(frozen=True)
class SamplingDefaults:
    steps: int = 1000  # the paper samples with 1,000 respaced steps
    sampler: str = "ddpm"
    guidance: float = 0.0
    seconds: float = PAPER_SECONDS


@dataclass
class SynthesizerConfig:
    mel: MelConfig = field(default_factory=MelConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    vocoder: HiFiGANConfig = field(default_factory=HiFiGANConfig)
    # Which vocoder turns mels into the audio served: the bundle's HiFi-GAN, or Griffin-Lim (vocoder.py).
    serving_vocoder: str = "hifigan"
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "format": BUNDLE_FORMAT,
            "mel": asdict(self.mel),
            "clip": asdict(self.clip),
            "unet": asdict(self.unet),
            "diffusion": asdict(self.diffusion),
            "vocoder": asdict(self.vocoder),
            "serving_vocoder": self.serving_vocoder,
            "sampling": asdict(self.sampling),
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, d: dict) -> SynthesizerConfig:
        if d.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"not a synthesizer bundle of format {BUNDLE_FORMAT!r}: format={d.get('format')!r}")
        return cls(
            mel=MelConfig(**d["mel"]),
            clip=ClipConfig(**d["clip"]),
            unet=UNetConfig.from_dict(d["unet"]),
            diffusion=DiffusionConfig(**d["diffusion"]),
            vocoder=HiFiGANConfig.from_dict(d["vocoder"]),
            serving_vocoder=d.get("serving_vocoder", "hifigan"),
            sampling=SamplingDefaults(**d.get("sampling", {})),
            metadata=d.get("metadata", {}),
        )

    @classmethod
    def tiny(
        cls,
        *,
        unet: UNetConfig | None = None,
        diffusion: DiffusionConfig | None = None,
        sampling: SamplingDefaults | None = None,
        metadata: dict | None = None,
    ) -> SynthesizerConfig:
        """A synthesizer that runs in seconds on a CPU and needs no download: the tiny random CLIP, the tiny
        U-Net and HiFi-GAN presets, 100 diffusion steps sampled with 10. For tests, smoke runs and benchmarks;
        any of the parts named here can be given instead."""
        return cls(
            clip=ClipConfig(model_name="tiny", pretrained="none"),
            unet=unet or unet_config("tiny", cond_dim=TINY_CLIP_CONFIG["embed_dim"]),
            vocoder=hifigan_config("tiny"),
            diffusion=diffusion or DiffusionConfig(num_steps=100),
            sampling=sampling or SamplingDefaults(steps=10),
            metadata=dict(metadata or {}),
        )

    def check(self) -> None:
        if self.unet.in_channels != 1:
            raise ValueError("the U-Net models one mel channel")
        if self.unet.out_channels != (2 if self.diffusion.learn_sigma else 1):
            raise ValueError("U-Net out_channels must be 2 with learned variance, else 1")
        if self.unet.input_height != self.mel.n_mels or self.vocoder.n_mels != self.mel.n_mels:
            raise ValueError("U-Net input height, vocoder n_mels and mel n_mels must agree")
        if self.vocoder.hop_length != self.mel.hop_length:
            raise ValueError(f"vocoder upsamples by {self.vocoder.hop_length}, the mel hop is {self.mel.hop_length}")
        if self.serving_vocoder not in VOCODERS:
            raise ValueError(f"serving_vocoder {self.serving_vocoder!r} is not one of {VOCODERS}")


def frames_for_seconds(seconds: float, mel: MelConfig | None = None) -> int:
    """4.16 s -> 64 frames, 8.32 s -> 128 (the paper's convention: 64 frames per 4.16 s)."""
    mel = mel or MelConfig()
    frames = round(seconds / PAPER_SECONDS * mel.segment_frames)
    if frames < 8:
        raise ValueError(f"{seconds} s is too short to synthesize")
    return frames


class Synthesizer:
    """Batched, seeded text/image-to-audio. `synthesize(queries, steps=, seed=)` -> [B, N] at 16 kHz.

    `hifigan` is the bundle's HiFi-GAN generator; `vocoder` is what serves (`config.serving_vocoder`): that
    generator returning whole clips, or Griffin-Lim. A process that needs neither passes stand-ins for both.
    """

    def __init__(
        self,
        config: SynthesizerConfig,
        unet: ConditionalUNet | None = None,
        hifigan: HiFiGANGenerator | None = None,
        encoder: ClipQueryEncoder | None = None,
        device: torch.device | str = "cpu",
        vocoder: torch.nn.Module | None = None,
    ) -> None:
        config.check()
        self.config = config
        self.device = torch.device(device)
        self.encoder = (encoder or ClipQueryEncoder(config.clip)).to(self.device)
        if self.encoder.embed_dim != config.unet.cond_dim:
            raise ValueError(f"CLIP embeds to {self.encoder.embed_dim} dims, the U-Net expects {config.unet.cond_dim}")
        self.unet = (unet or ConditionalUNet(config.unet)).to(self.device).eval()
        self.hifigan = (hifigan or HiFiGANGenerator(config.vocoder)).to(self.device).eval()
        vocoder = vocoder if vocoder is not None else build_vocoder(config.serving_vocoder, self.hifigan, config.mel)
        self.vocoder = vocoder.to(self.device).eval()
        self.mel = MelFrontend(config.mel).to(self.device)
        self.diffusion = GaussianDiffusion.from_config(config.diffusion)
        self._respaced: dict[int, GaussianDiffusion] = {}
        # What sampling calls: the U-Net, or its torch.compile'd form (`compile_unet`), which shares its weights.
        self.denoiser: torch.nn.Module = self.unet
        # The modality-gap statistics fitted on the training data (None: the bundle has none).
        self.gap: GapReducer | None = None

    @classmethod
    def untrained(cls, config: SynthesizerConfig, *, seed: int = 0, weight_noise: float = 0.05) -> Synthesizer:
        """Random weights whose samples still depend on the query, for tests and benchmarks.

        A fresh U-Net's output layers are zero (it would predict eps = 0 whatever the condition), so every U-Net
        weight gets N(0, weight_noise^2) added, from `seed`.
        """
        torch.manual_seed(seed)
        synth = cls(config)
        with torch.no_grad():
            for p in synth.unet.parameters():
                p.add_(weight_noise * torch.randn_like(p))
        return synth

    # --------------------------------------------------------------------------------------------- parts
    def process(self, steps: int) -> GaussianDiffusion:
        """The diffusion process respaced to `steps` (cached)."""
        steps = int(steps)
        if steps not in self._respaced:
            process = self.diffusion if steps == self.diffusion.num_timesteps else self.diffusion.respaced(steps)
            self._respaced[steps] = process.to(self.device)  # its tables on the device once, not per step
        return self._respaced[steps]

    def sample_in(self, precision: str) -> Synthesizer:
        """Run the U-Net's forward passes of sampling in `precision` ("fp32", "bf16", "auto": bf16 on CUDA);
        the sampler's arithmetic stays float32. Call before `compile_unet` to compile the autocast graph.
        Returns self."""
        if resolve_precision(precision, self.device) == "bf16":
            self.denoiser = AutocastDenoiser(self.unet, self.device.type, torch.bfloat16)
        else:
            self.denoiser = self.unet
        return self

    def compile_unet(self, **options) -> Synthesizer:
        """Sample through torch.compile(unet, **options) from now on (the first batch of each shape compiles:
        minutes on a CPU, under a minute on a GPU; later ones run the compiled kernels). Returns self."""
        self.denoiser = cast(torch.nn.Module, torch.compile(self.denoiser, **options))
        return self

    def encode(self, queries: Sequence, gap: str = "none") -> Tensor:
        """Text queries (str; "a + b", "a*0.7 + b*0.3" blend) or images -> [B, D] condition vectors.

        `gap` ("none", "shift", "prior") reduces the modality gap of text queries (clipsynth_core.modality_gap).
        """
        if len(queries) and all(isinstance(q, str) for q in queries):
            return encode_queries(self.encoder, list(queries), self.gap, gap)
        return self.encoder.encode_image(queries)

    @torch.no_grad()
    def sample_mels(
        self,
        cond: Tensor,
        *,
        steps: int | None = None,
        seed: int | Sequence[int] | None = None,
        guidance: float | Sequence[float] | None = None,
        seconds: float | None = None,
        sampler: str | None = None,
        eta: float = 0.0,
    ) -> Tensor:
        """Condition vectors [B, D] -> normalised mels [B, n_mels, frames]. Example i uses seed[i] (or seed + i)."""
        d = self.config.sampling
        steps = d.steps if steps is None else steps
        sampler = d.sampler if sampler is None else sampler
        guidance = d.guidance if guidance is None else guidance
        frames = frames_for_seconds(d.seconds if seconds is None else seconds, self.config.mel)
        n = cond.shape[0]
        if seed is None:
            seeds = torch.randint(0, 2**31 - 1, (n,)).tolist()
        elif isinstance(seed, int):
            seeds = [seed + i for i in range(n)]
        else:
            seeds = list(seed)
        if len(seeds) != n:
            raise ValueError(f"{len(seeds)} seeds for {n} conditions")
        g = torch.as_tensor(guidance, dtype=torch.float32)
        if bool((g != 0).any()) and self.config.diffusion.cond_drop_prob <= 0:
            raise ValueError("guidance needs a model trained with condition dropout (cond_drop_prob > 0)")
        model = guided_model(self.denoiser, cond.to(self.device), g, self.config.diffusion.learn_sigma)
        # The noise of example i is a function of seeds[i] alone, drawn on the device: the same sample for the
        # same seed in any batch and on any device (clipsynth_core.noise.seeded_normal).
        keys = example_keys(seeds, self.device)
        shape = (n, 1, self.config.mel.n_mels, frames)
        x = self.process(steps).sample(model, shape, sampler=sampler, eta=eta, seeds=keys)
        return x[:, 0].clamp(-1, 1)

    @torch.no_grad()
    def vocode(self, mel: Tensor) -> Tensor:
        """Normalised mels [B, n_mels, T] -> the clips they describe, [B, (T - 1) * hop + n_fft] samples."""
        return self.vocoder(mel.to(self.device)).float()

    @torch.no_grad()
    def synthesize(self, queries: Sequence, gap: str = "none", **kwargs) -> Tensor:
        """Queries (strings, or images) -> waveforms [B, N] at 16 kHz. kwargs as `sample_mels`."""
        return self.vocode(self.sample_mels(self.encode(queries, gap), **kwargs)).cpu()

    # ------------------------------------------------------------------------------------------- bundle
    def save(self, path: str | os.PathLike) -> Path:
        d = Path(path)
        d.mkdir(parents=True, exist_ok=True)
        (d / "bundle.json").write_text(json.dumps(self.config.to_dict(), indent=2))
        save_file(_cpu(self.unet.state_dict()), str(d / "unet.safetensors"))
        save_file(_cpu(self.hifigan.state_dict()), str(d / "vocoder.safetensors"))
        if bundles_clip_weights(self.config.clip):
            save_file(_cpu(self.encoder.model.state_dict()), str(d / "clip.safetensors"))
        if self.gap is not None:
            self.gap.save(d)
        return d

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu", clip_pretrained: str | None = None):
        """Load a bundle directory; `clip_pretrained` overrides where pretrained CLIP weights come from."""
        config = read_bundle_config(path)
        if clip_pretrained is not None:
            config.clip = ClipConfig(**{**asdict(config.clip), "pretrained": clip_pretrained})
        synth = cls(
            config,
            unet=load_bundle_unet(path, config),
            hifigan=load_bundle_hifigan(path, config),
            encoder=load_bundle_encoder(path, config.clip),
            device=device,
        )
        synth.gap = GapReducer.load(path)
        return synth

    @property
    def identity(self) -> dict:
        """The bundle's parts and its scalar metadata; the parts win over metadata of the same name (the training
        jobs' metadata "vocoder" notes where the HiFi-GAN came from, not which vocoder serves)."""
        return {
            **{k: v for k, v in self.config.metadata.items() if isinstance(v, (str, int, float, bool))},
            "format": BUNDLE_FORMAT,
            "clip": self.config.clip.identity,
            "unet_channels": self.config.unet.model_channels,
            "vocoder": self.config.serving_vocoder,
            "diffusion_steps": self.config.diffusion.num_steps,
        }


# One loader per bundle part, so that a process that needs one part (a Serve deployment) loads only that one.
def read_bundle_config(path: str | os.PathLike) -> SynthesizerConfig:
    d = Path(path)
    if not (d / "bundle.json").exists():
        raise FileNotFoundError(f"{d} is not a synthesizer bundle (no bundle.json)")
    return SynthesizerConfig.from_dict(json.loads((d / "bundle.json").read_text()))


def bundles_clip_weights(clip: ClipConfig) -> bool:
    """Whether a bundle carries the CLIP weights (random and local CLIPs) or only names them (open_clip's)."""
    return clip.is_random or clip.is_local


def load_bundle_encoder(path: str | os.PathLike, clip: ClipConfig) -> ClipQueryEncoder:
    """The bundle's CLIP: from its clip.safetensors when it carries one (random and local CLIPs: the file the
    weights first came from need not exist where the bundle is loaded), else by name/tag or weights path."""
    weights = Path(path) / "clip.safetensors"
    if not (bundles_clip_weights(clip) and weights.exists()):
        return ClipQueryEncoder(clip)
    state = load_file(str(weights))
    if clip.is_local:
        model = build_local_clip(clip.model_name, clip.init_seed)
        model.load_state_dict(state)
        return ClipQueryEncoder(clip, model=model)
    encoder = ClipQueryEncoder(clip)  # a random open_clip architecture
    encoder.model.load_state_dict(state)
    return encoder


def load_bundle_unet(path: str | os.PathLike, config: SynthesizerConfig) -> ConditionalUNet:
    unet = ConditionalUNet(config.unet)
    unet.load_state_dict(load_file(str(Path(path) / "unet.safetensors")))
    return unet


def load_bundle_hifigan(path: str | os.PathLike, config: SynthesizerConfig) -> HiFiGANGenerator:
    generator = HiFiGANGenerator(config.vocoder)
    generator.load_state_dict(load_file(str(Path(path) / "vocoder.safetensors")))
    return generator.eval()


def load_bundle_vocoder(path: str | os.PathLike, config: SynthesizerConfig) -> torch.nn.Module:
    """The serving vocoder of the bundle (config.serving_vocoder): mels -> whole clips. A served HiFi-GAN has its
    weight norm folded into its weights (the same outputs; no norm recomputed at every request)."""
    generator = load_bundle_hifigan(path, config).remove_weight_norm() if config.serving_vocoder == "hifigan" else None
    return build_vocoder(config.serving_vocoder, generator, config.mel).eval()


def _cpu(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
