"""The frozen CLIP query encoder: frames (training) and text queries (inference) into one embedding space.

Weights come from, in order of what `ClipConfig.pretrained` says:
- an open_clip pretrained tag (`"openai"`, `"laion2b_s34b_b79k"`, ...): the open_clip / Hugging Face cache,
  downloaded when the machine allows it;
- a local file path (`.bin`, `.pt`, `.safetensors`) with the model's state dict;
- `"none"`: random weights, only when asked for explicitly (tests). Initialisation is seeded (`init_seed`), so
  every process that builds the same random CLIP gets the same one.
Missing weights raise `ClipWeightsError` with the ways to provide them.

Besides open_clip's registry, two small CLIPs are defined here (`LOCAL_CLIP_CONFIGS`): "tiny" for unit tests,
and "toy", the encoder the offline demo trains on synthetic captioned pictures when no pretrained CLIP is at
hand (clipsynth_platform.experiments.offline_clip). They have no published weights, so a synthesizer bundle carries theirs.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_TEMPLATE = "a photo of {query}"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# A CLIP small enough for unit tests on a CPU (about 1.7 M parameters), built without open_clip's registry.
TINY_CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


# The offline demo's dual encoder: a small ModifiedResNet (conv layers learn pictures from a few thousand
# examples far faster than a ViT) and a 2-layer text transformer over 16 tokens (captions are short).
TOY_CLIP_CONFIG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 2},
}
LOCAL_CLIP_CONFIGS: dict[str, dict] = {"tiny": TINY_CLIP_CONFIG, "toy": TOY_CLIP_CONFIG}
# The tokenizer every local CLIP uses (open_clip's BPE of ViT-B-32, truncated to the model's context length).
LOCAL_TOKENIZER = "ViT-B-32"


class ClipWeightsError(RuntimeError):
    """Raised when pretrained CLIP weights are requested but cannot be found or fetched."""


@dataclass(frozen=True)
class ClipConfig:
    model_name: str = "ViT-B-32"  # any open_clip model name, or "tiny" for tests
    pretrained: str = "openai"  # a pretrained tag, a local weights path, or "none" (random, explicit)
    template: str = DEFAULT_TEMPLATE
    init_seed: int = 0  # for pretrained="none"
    cache_dir: str | None = None
    # False: look only in the local cache (no network retries); the offline demo and tests use this.
    allow_download: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def is_random(self) -> bool:
        return self.pretrained.lower() == "none"

    @property
    def is_local(self) -> bool:
        """One of LOCAL_CLIP_CONFIGS: built here, weights from a file or random, carried inside bundles."""
        return self.model_name in LOCAL_CLIP_CONFIGS

    @property
    def identity(self) -> str:
        return f"{self.model_name}/{self.pretrained}"


def _weights_help(config: ClipConfig, reason: str) -> str:
    return (
        f"CLIP weights for {config.model_name!r} (pretrained={config.pretrained!r}) are not available: {reason}\n"
        "Provide them in one of these ways:\n"
        f'  1. put them in the open_clip cache once, on a machine with internet: python -c "import open_clip; '
        f"open_clip.create_model('{config.model_name}', pretrained='{config.pretrained}')\" "
        "(the cache is ~/.cache/huggingface, or HF_HOME / --clip-cache-dir);\n"
        "  2. pass a local file with the state dict: --clip-pretrained /path/to/open_clip_pytorch_model.bin;\n"
        "  3. for tests and offline demos only, ask for random weights explicitly: --clip-pretrained none."
    )


def build_clip_model(config: ClipConfig) -> nn.Module:
    """An open_clip CLIP model with weights as `config` says; raises ClipWeightsError when they are missing."""
    import open_clip

    if config.is_local:
        if not config.is_random and not os.path.isfile(config.pretrained):
            raise ClipWeightsError(
                _weights_help(config, f"the {config.model_name!r} model has no published weights (no file there)")
            )
        model = build_local_clip(config.model_name, config.init_seed)
        if not config.is_random:
            model.load_state_dict(_load_state_dict(config.pretrained))
        return model

    if config.model_name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {config.model_name!r}")
    if config.is_random:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.init_seed)
            return open_clip.create_model(config.model_name, pretrained=None)
    if os.path.sep in config.pretrained or os.path.isfile(config.pretrained):
        if not os.path.isfile(config.pretrained):
            raise ClipWeightsError(_weights_help(config, f"no file at {config.pretrained}"))
        model = open_clip.create_model(config.model_name, pretrained=None)
        model.load_state_dict(_load_state_dict(config.pretrained))
        return model
    if config.pretrained not in open_clip.list_pretrained_tags_by_model(config.model_name):
        raise ClipWeightsError(
            _weights_help(
                config,
                f"{config.pretrained!r} is neither a file nor a pretrained tag of this model "
                f"(tags: {', '.join(open_clip.list_pretrained_tags_by_model(config.model_name))})",
            )
        )
    with _hub_offline(not config.allow_download), _download_error_as_debug():
        try:
            return open_clip.create_model(
                config.model_name,
                pretrained=config.pretrained,
                cache_dir=config.cache_dir,
                require_pretrained=True,
            )
        except Exception as exc:  # network errors, hub errors, missing cache: one clear message
            raise ClipWeightsError(_weights_help(config, f"{type(exc).__name__}: {exc}")) from exc


class _DemoteDownloadError(logging.Filter):
    """open_clip logs a failed weights download as an ERROR on the root logger and then raises; the raise becomes
    ClipWeightsError with the reason, so the log line says it a second time, out of context: keep it at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and record.getMessage().startswith("Failed to download weights"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


@contextlib.contextmanager
def _download_error_as_debug():
    root = logging.getLogger()
    demote, placeholder = _DemoteDownloadError(), logging.NullHandler()
    root.addFilter(demote)
    # logging.error() on a root logger without handlers would call basicConfig() and print to stderr
    root.addHandler(placeholder)
    try:
        yield
    finally:
        root.removeFilter(demote)
        root.removeHandler(placeholder)


def build_local_clip(model_name: str, seed: int = 0) -> nn.Module:
    """A randomly initialised CLIP of one of LOCAL_CLIP_CONFIGS (seeded; the global RNG is left as it was)."""
    from open_clip.model import CLIP

    if model_name not in LOCAL_CLIP_CONFIGS:
        raise ValueError(f"{model_name!r} is not a local CLIP; choose from {sorted(LOCAL_CLIP_CONFIGS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIP(**LOCAL_CLIP_CONFIGS[model_name])


def clip_tokenizer(model_name: str, context_length: int | None = None):
    """open_clip's tokenizer of a model; local CLIPs use ViT-B-32's BPE at their own context length."""
    import open_clip

    if model_name in LOCAL_CLIP_CONFIGS:
        ctx = context_length or LOCAL_CLIP_CONFIGS[model_name]["text_cfg"]["context_length"]
        return open_clip.get_tokenizer(LOCAL_TOKENIZER, context_length=ctx)
    return open_clip.get_tokenizer(model_name)


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """Make the Hugging Face hub client use its cache only (it reads the flag at call time)."""
    if not offline:
        yield
        return
    import huggingface_hub.constants as hc

    old = hc.HF_HUB_OFFLINE
    hc.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hc.HF_HUB_OFFLINE = old


def _load_state_dict(path: str) -> dict[str, Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return {k.removeprefix("module."): v for k, v in state.items()}


class ClipQueryEncoder(nn.Module):
    """Frozen CLIP: `encode_text(list[str])` and `encode_image(images)` -> L2-normalised [B, D] float32.

    Images may be a uint8 array/tensor [B, H, W, 3], a float tensor [B, 3, H, W] in [0, 1], or a list of
    PIL images / HxWx3 arrays. Preprocessing (shortest-side bicubic resize, centre crop, CLIP mean/std) runs
    batched in torch, so it is the same on CPU and GPU.
    """

    # open_clip's CLIP and tokenizer are untyped (their attributes read as Tensor | Module to the checker)
    model: Any
    tokenizer: Any
    mean: Tensor  # buffers
    std: Tensor

    def __init__(self, config: ClipConfig | None = None, model: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config or ClipConfig()
        self.model = model if model is not None else build_clip_model(self.config)
        self.model.eval().requires_grad_(False)
        self.tokenizer = clip_tokenizer(self.config.model_name, getattr(self.model, "context_length", None))
        size = self.model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[-1])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def train(self, mode: bool = True) -> ClipQueryEncoder:
        # Frozen: stays in eval mode whatever the caller does.
        return super().train(False)

    def format_queries(self, queries: Sequence[str], template: str | None = None) -> list[str]:
        tpl = self.config.template if template is None else template
        return [tpl.format(query=q) if "{query}" in tpl else q for q in queries]

    @torch.no_grad()
    def encode_text(self, queries: Sequence[str], template: str | None = None, batch_size: int = 256) -> Tensor:
        """Queries are put into the template ("a photo of {query}") first; pass template="{query}" to skip."""
        if isinstance(queries, str):
            raise TypeError("encode_text takes a list of strings, not one string")
        texts = self.format_queries(list(queries), template)
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[i : i + batch_size]).to(self.device)
            out.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1))
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)

    def preprocess(self, images) -> Tensor:
        """Images -> normalised float tensor [B, 3, S, S] for the vision tower."""
        if isinstance(images, (list, tuple)):
            images = np.stack([np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images])
        x = torch.as_tensor(images)
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4:
            raise ValueError(f"expected a batch of images, got shape {tuple(x.shape)}")
        if x.shape[-1] == 3 and x.shape[1] != 3:
            x = x.permute(0, 3, 1, 2)
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        x = x.float().to(self.device)
        s = self.image_size
        h, w = x.shape[-2:]
        scale = s / min(h, w)
        nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (nh - s) // 2, (nw - s) // 2
        x = x[:, :, top : top + s, left : left + s]
        return (x - self.mean) / self.std

    @torch.no_grad()
    def encode_image(self, images, batch_size: int = 256) -> Tensor:
        x = self.preprocess(images)
        out = [
            F.normalize(self.model.encode_image(x[i : i + batch_size]).float(), dim=-1)
            for i in range(0, len(x), batch_size)
        ]
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)
