"""Audio embedding backbones for FAD behind one interface, with VGGish (Hershey et al., 2017) as the default.

`AudioEmbedder`: `embed(waves [B, N] at 16 kHz) -> [M, D]` float64 numpy, plus an `identity` string that
names the backbone and its weights (tables group by it) and, optionally, `version` (the code and front-end
version: the statistics cache keys on it), `metric_name` (the metric its Fréchet distance is logged under,
default "fad") and `random` (True for a backbone with random weights). Any object with the three required
members works; `build_audio_embedder(spec)` makes one from a command-line string:

| spec                                | backbone                                                            |
| ----------------------------------- | ------------------------------------------------------------------- |
| `vggish`                            | VGGish, weights from $CLIPSYNTH_VGGISH_WEIGHTS or a default location |
| `vggish:/path/w.pth`, or a path     | VGGish with the state dict at that path (safetensors, or a torch    |
| ending .safetensors/.pt/.pth        | file read with weights_only=True)                                   |
| `vggish-relu[:/path]`               | the same weights, embeddings taken after the final ReLU             |
| `tiny-random[:SEED]`                | a narrow VGGish with seeded random weights (unit tests only)        |
| a name given to `register_audio_embedder` | that factory                                                  |
| `package.module:factory`            | factory(device=...) returning an AudioEmbedder                      |

(The evaluation also accepts `auto`, VGGish when its weights are here and otherwise the mel classifier's
audio embedding, and `melclf`; see runner.py and mel_classifier.ClassifierAudioEmbedder.)

VGGish, as published: 16 kHz mono; STFT of 25 ms periodic-Hann windows every 10 ms (FFT length 512); 64 mel
bands (HTK mel scale, triangles in mel space) over 125-7500 Hz; log(mel + 0.01); non-overlapping examples of
96 frames (0.96 s), each a 96x64 patch. Network: conv64-pool, conv128-pool, 2x conv256-pool, 2x conv512-pool
(3x3 convs, ReLU, 2x2 max pools) -> 6x4x512 -> FC 4096 -> FC 4096 -> FC 128. The module layout (`features`,
`embeddings` Sequentials) follows the common PyTorch port (torchvggish) so its state dicts load; the flatten
before the FC layers is in TensorFlow's NHWC order, which ported weights expect.

The embedding is the 128-d output of the last FC layer BEFORE its activation, as Google's FAD, the
`frechet_audio_distance` package and AudioLDM's evaluation take it (the port appends a ReLU, which zeroes
about half the dimensions; `vggish-relu` keeps it for whoever needs that variant). Embeddings are taken
before VGGish's PCA/quantisation post-processing (its `pproc.*` tensors are ignored when present).

Weights: the port's release file `vggish-10086976.pth` (VGGISH_WEIGHTS_URL), loaded by path. Nothing is
downloaded here.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from .frozen_network import FrozenNetwork, float_tensor

VGGISH_ENV = "CLIPSYNTH_VGGISH_WEIGHTS"
VGGISH_WEIGHTS_FILE = "vggish-10086976.pth"
VGGISH_WEIGHTS_URL = f"https://github.com/harritaylor/torchvggish/releases/download/v0.1/{VGGISH_WEIGHTS_FILE}"
DEFAULT_VGGISH_PATH = Path("~/.cache/clipsynth/vggish.safetensors")
# Where `vggish` looks when $CLIPSYNTH_VGGISH_WEIGHTS is unset, in order (the last is torch.hub's cache, where
# torch.hub.load("harritaylor/torchvggish", "vggish") leaves the file).
DEFAULT_VGGISH_PATHS = (
    DEFAULT_VGGISH_PATH,
    Path("~/.cache/clipsynth") / VGGISH_WEIGHTS_FILE,
    Path("~/.cache/torch/hub/checkpoints") / VGGISH_WEIGHTS_FILE,
)
# Bumped whenever the front end or the embedding taken changes what VGGish returns; with a digest of this
# file's source it keys the reference statistics (stats_cache.py), so a change never reuses stale ones.
# 2: the pre-activation embedding (1 took the port's final ReLU).
VGGISH_CODE_VERSION = "vggish/2"


class BackboneWeightsError(FileNotFoundError):
    """Raised when a backbone's weights are asked for but are not on this machine."""


@runtime_checkable
class AudioEmbedder(Protocol):
    identity: str
    sample_rate: int

    def embed(self, waves: Tensor | np.ndarray) -> np.ndarray:
        """waves [B, N] at `sample_rate` -> embeddings [M, D] (M may exceed B: several per clip)."""
        ...


# ------------------------------------------------------------------------------------------------- VGGish
@dataclass(frozen=True)
class VGGishFrontendConfig:
    sample_rate: int = 16_000
    window_seconds: float = 0.025
    hop_seconds: float = 0.010
    n_mels: int = 64
    f_min: float = 125.0
    f_max: float = 7500.0
    log_offset: float = 0.01
    example_frames: int = 96  # 0.96 s
    example_hop_frames: int = 96

    @property
    def window_length(self) -> int:
        return round(self.window_seconds * self.sample_rate)

    @property
    def hop_length(self) -> int:
        return round(self.hop_seconds * self.sample_rate)

    @property
    def fft_length(self) -> int:
        return 2 ** math.ceil(math.log2(self.window_length))

    def frames_for_samples(self, samples: int) -> int:
        return 0 if samples < self.window_length else 1 + (samples - self.window_length) // self.hop_length

    def examples_for_samples(self, samples: int) -> int:
        frames = self.frames_for_samples(samples)
        return 0 if frames < self.example_frames else 1 + (frames - self.example_frames) // self.example_hop_frames


def hz_to_mel_htk(hz: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def vggish_mel_matrix(c: VGGishFrontendConfig) -> np.ndarray:
    """[fft_length // 2 + 1, n_mels] triangular weights, built in mel space as VGGish does (DC bin zeroed)."""
    n_bins = c.fft_length // 2 + 1
    bin_mels = hz_to_mel_htk(np.linspace(0.0, c.sample_rate / 2.0, n_bins))
    edges = np.linspace(hz_to_mel_htk(c.f_min), hz_to_mel_htk(c.f_max), c.n_mels + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_mels[:, None] - lower[None]) / (center - lower)[None]
    falling = (upper[None] - bin_mels[:, None]) / (upper - center)[None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    return weights


class VGGishFrontend(nn.Module):
    """waves [B, N] at 16 kHz -> log-mel examples [B * P, 1, 96, 64] and P (examples per clip)."""

    window: Tensor  # buffers
    mel_matrix: Tensor

    def __init__(self, config: VGGishFrontendConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or VGGishFrontendConfig()
        self.register_buffer("window", torch.hann_window(c.window_length, periodic=True), persistent=False)
        self.register_buffer("mel_matrix", torch.from_numpy(vggish_mel_matrix(c)).float(), persistent=False)

    def log_mel(self, waves: Tensor) -> Tensor:
        """[B, N] -> [B, frames, n_mels]."""
        c = self.config
        frames = waves.float().unfold(-1, c.window_length, c.hop_length) * self.window
        magnitude = torch.fft.rfft(frames, n=c.fft_length).abs()
        return torch.log(magnitude @ self.mel_matrix + c.log_offset)

    def forward(self, waves: Tensor) -> tuple[Tensor, int]:
        c = self.config
        if waves.dim() != 2:
            raise ValueError(f"expected waves [B, N], got shape {tuple(waves.shape)}")
        per_clip = c.examples_for_samples(waves.shape[-1])
        if per_clip == 0:
            need = c.window_length + (c.example_frames - 1) * c.hop_length
            raise ValueError(f"clips of {waves.shape[-1]} samples are shorter than one VGGish example ({need})")
        mel = self.log_mel(waves)  # [B, F, 64]
        examples = mel.unfold(1, c.example_frames, c.example_hop_frames)[:, :per_clip]  # [B, P, 64, 96]
        return examples.transpose(-1, -2).reshape(-1, 1, c.example_frames, c.n_mels), per_clip


@dataclass(frozen=True)
class VGGishConfig:
    channels: tuple[int, int, int, int] = (64, 128, 256, 512)
    fc_dims: tuple[int, ...] = (4096, 4096)
    embed_dim: int = 128
    # The port ends with a ReLU after the 128-d layer; FAD as published takes the embedding before it.
    final_relu: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


TINY_VGGISH = VGGishConfig(channels=(4, 8, 8, 8), fc_dims=(32,), embed_dim=16, final_relu=False)


class VGGish(nn.Module):
    """[B, 1, 96, 64] log-mel examples -> [B, embed_dim] embeddings."""

    def __init__(self, config: VGGishConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or VGGishConfig()
        layers: list[nn.Module] = []
        c_in = 1
        # Convs per group: 1, 1, 2, 2 (VGG configuration "A" cut to four groups).
        for c_out, repeats in zip(c.channels, (1, 1, 2, 2)):
            for _ in range(repeats):
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True)]
                c_in = c_out
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        fcs: list[nn.Module] = []
        width = c.channels[-1] * 6 * 4  # 96x64 after four 2x2 pools
        for dim in c.fc_dims:
            fcs += [nn.Linear(width, dim), nn.ReLU(inplace=True)]
            width = dim
        fcs.append(nn.Linear(width, c.embed_dim))
        if c.final_relu:
            fcs.append(nn.ReLU(inplace=True))
        self.embeddings = nn.Sequential(*fcs)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 96, 64):
            raise ValueError(f"expected examples [B, 1, 96, 64], got {tuple(x.shape)}")
        h = self.features(x)  # [B, C, 6, 4]
        h = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)  # NHWC flatten, as TensorFlow-trained weights expect
        return self.embeddings(h)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """A state dict from safetensors or a torch file (weights_only=True: no pickle code runs)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise BackboneWeightsError(f"no weights file at {p}")
    state: Any  # a torch file may hold anything; checked below
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        state = torch.load(str(p), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{p} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def source_digest(*paths: str | os.PathLike) -> str:
    """SHA-256 (16 hex digits) of source files: a change of the code that computes embeddings changes it."""
    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:16]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(Path(path).expanduser(), "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def vggish_help(reason: str) -> str:
    defaults = ", ".join(str(p) for p in DEFAULT_VGGISH_PATHS)
    return (
        f"VGGish weights are not available: {reason}\n"
        "Nothing is downloaded by the evaluation. Get the PyTorch VGGish port's weights, "
        f"{VGGISH_WEIGHTS_FILE} ({VGGISH_WEIGHTS_URL}), or any state dict with its keys (features.*, "
        "embeddings.*), and give it as a local file in one of these ways:\n"
        f"  1. --fad-backbone /path/to/{VGGISH_WEIGHTS_FILE} (.pth/.pt read with weights_only=True, or .safetensors);\n"
        f"  2. export {VGGISH_ENV}=/path/to/{VGGISH_WEIGHTS_FILE};\n"
        f"  3. put the file at one of: {defaults}.\n"
        "Without it, --fad-backbone auto (the default) measures FAD with the mel classifier's audio embedding "
        "(fad_melclf), a backbone trained on the dataset at hand."
    )


def resolve_weights_path(
    path: str | os.PathLike | None, env: str, defaults: tuple[Path, ...]
) -> tuple[Path | None, str]:
    """(a released weights file, or None, and where it was looked for): `path`, else $`env`, else the first of
    `defaults` that exists. Shared by every backbone whose weights are loaded by path."""
    if path:
        p = Path(path).expanduser()
        return (p if p.is_file() else None), f"{p} (the path given)"
    if os.environ.get(env):
        p = Path(os.environ[env]).expanduser()
        return (p if p.is_file() else None), f"{p} (from ${env})"
    for candidate in defaults:
        p = candidate.expanduser()
        if p.is_file():
            return p, f"{p} (a default location)"
    return None, "the default locations " + ", ".join(str(p) for p in defaults)


def resolve_vggish_path(path: str | os.PathLike | None = None) -> tuple[Path | None, str]:
    """The VGGish weights file: `path`, else $CLIPSYNTH_VGGISH_WEIGHTS, else the first of DEFAULT_VGGISH_PATHS."""
    return resolve_weights_path(path, VGGISH_ENV, DEFAULT_VGGISH_PATHS)


def vggish_config_from_state(state: dict[str, Tensor], final_relu: bool = False) -> VGGishConfig:
    """The widths of a VGGish state dict (conv groups of 1, 1, 2, 2 convs, then the FC layers)."""

    def weights(prefix: str) -> list[Tensor]:
        keys = [k for k in state if k.startswith(prefix) and k.endswith(".weight") and k.count(".") == 2]
        return [state[k] for k in sorted(keys, key=lambda k: int(k.split(".")[1]))]

    convs, fcs = weights("features."), weights("embeddings.")
    if len(convs) != 6 or not fcs:
        raise ValueError(f"not a VGGish state dict: {len(convs)} conv and {len(fcs)} linear weights (need 6 and >= 1)")
    channels = (convs[0].shape[0], convs[1].shape[0], convs[2].shape[0], convs[4].shape[0])
    dims = [w.shape[0] for w in fcs]
    return VGGishConfig(channels=channels, fc_dims=tuple(dims[:-1]), embed_dim=dims[-1], final_relu=final_relu)


def load_vggish(path: str | os.PathLike, config: VGGishConfig | None = None, final_relu: bool = False) -> VGGish:
    """VGGish with the state dict at `path`; its widths are read from the file unless `config` is given."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise BackboneWeightsError(vggish_help(f"no file at {p}"))
    state = {k: v for k, v in load_state_dict_file(p).items() if not k.startswith("pproc.")}
    model = VGGish(config or vggish_config_from_state(state, final_relu))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{p} is not a VGGish state dict for {model.config}: missing {sorted(missing)[:6]}, "
            f"unexpected {sorted(unexpected)[:6]}"
        )
    return model


class VGGishEmbedder(FrozenNetwork):
    """AudioEmbedder over a VGGish network: every 0.96 s example of every clip gives one embedding."""

    sample_rate = 16_000
    metric_name = "fad"

    def __init__(
        self,
        model: VGGish,
        identity: str,
        device: str | torch.device | None = "auto",
        batch_size: int = 256,
        frontend: VGGishFrontendConfig | None = None,
        random: bool = False,
    ) -> None:
        super().__init__(model, identity, device, batch_size, random)
        self.frontend = VGGishFrontend(frontend).to(self.device)
        self.sample_rate = self.frontend.config.sample_rate
        # Everything that changes the embeddings but not the weights: code, front end, which layer is taken.
        front = hashlib.sha256(json.dumps(asdict(self.frontend.config), sort_keys=True).encode()).hexdigest()[:8]
        self.version = (
            f"{VGGISH_CODE_VERSION}/src:{source_digest(__file__)}/frontend:{front}/final_relu:{model.config.final_relu}"
        )

    @torch.no_grad()
    def embed(self, waves: Tensor | np.ndarray) -> np.ndarray:
        x = float_tensor(waves)
        if x.dim() == 1:
            x = x[None]
        examples, _ = self.frontend(x.to(self.device))
        return self.in_batches(self.model, examples).double().numpy()


# ------------------------------------------------------------------------------------------- registry
EmbedderFactory = Callable[..., AudioEmbedder]
_REGISTRY: dict[str, EmbedderFactory] = {}


def register_audio_embedder(name: str, factory: EmbedderFactory) -> None:
    """Make `build_audio_embedder(name)` call `factory(device=...)`."""
    _REGISTRY[name] = factory


def tiny_random_vggish(seed: int = 0) -> VGGish:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VGGish(TINY_VGGISH)


def _looks_like_path(spec: str) -> bool:
    return spec.endswith((".safetensors", ".pt", ".pth", ".bin")) or os.sep in spec or Path(spec).is_file()


def build_audio_embedder(spec: str, device: str | torch.device | None = "auto", batch_size: int = 256) -> AudioEmbedder:
    """An AudioEmbedder from a command-line string (see the module docstring for the forms)."""
    spec = str(spec).strip()
    if not spec:
        raise ValueError("empty FAD backbone; use 'vggish', a weights path, 'tiny-random' or 'module:factory'")
    if spec in _REGISTRY:
        embedder = _REGISTRY[spec](device=device)
    elif spec.split(":", 1)[0] in ("vggish", "vggish-relu"):
        name, _, given = spec.partition(":")
        p, where = resolve_vggish_path(given or None)
        if p is None:
            raise BackboneWeightsError(vggish_help(f"no file at {where}"))
        relu = name == "vggish-relu"
        # The identity names the weights and the layer taken: pre- and post-ReLU FADs never share a column.
        identity = f"{name}/sha256:{file_sha256(p)[:16]}"
        embedder = VGGishEmbedder(load_vggish(p, final_relu=relu), identity, device, batch_size)
    elif spec == "tiny-random" or spec.startswith("tiny-random:"):
        seed = int(spec.split(":", 1)[1]) if ":" in spec else 0
        embedder = VGGishEmbedder(
            tiny_random_vggish(seed), f"tiny-random-vggish/seed:{seed}", device, batch_size, random=True
        )
    elif _looks_like_path(spec):
        return build_audio_embedder(f"vggish:{spec}", device, batch_size)
    elif ":" in spec:
        module_name, attr = spec.split(":", 1)
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot load the FAD backbone factory {spec!r}: {exc}") from exc
        embedder = factory(device=device)
    else:
        raise ValueError(
            f"unknown FAD backbone {spec!r}; use 'vggish', 'vggish-relu', a weights path, 'tiny-random[:SEED]', "
            f"a registered name ({sorted(_REGISTRY)}) or 'package.module:factory'"
        )
    if not isinstance(embedder, AudioEmbedder):
        raise TypeError(f"FAD backbone {spec!r} gave {type(embedder).__name__}, which lacks identity/sample_rate/embed")
    return embedder
