"""Modality-gap reduction: carry a text query's CLIP embedding towards where frame embeddings live.

CLIPSynth trains on frame embeddings and is queried with text embeddings; in CLIP's space the two modalities
occupy separate cones (Liang et al., 2022, "Mind the Gap"), so a text query conditions the U-Net on a point it
never saw. Two ways to close the gap, both fitted on the training data and stored in the synthesizer bundle:

- "shift" (Liang et al.): t' = normalise(t + (mean image embedding - mean text embedding)); needs nothing but
  the training frames and the texts of their rows (label texts). Fitted in closed form.
- "prior" (CLIPSonic's idea, here a deterministic regressor rather than a diffusion prior): a small residual
  MLP f with t' = normalise(t + f(t)), trained to maximise the cosine between t' and the frame embeddings of
  the rows whose text t describes. Needs paired (text, frame) supervision: captions or label texts per video.

"none" is the identity. Every method maps unit vectors [B, D] to unit vectors [B, D]; image queries are never
touched (they are already in the modality the model was trained on).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

GAP_METHODS = ("none", "shift", "prior")
GAP_FILE = "modality_gap.safetensors"
GAP_CONFIG_FILE = "modality_gap.json"


def check_gap_method(method: str) -> str:
    if method not in GAP_METHODS:
        raise ValueError(f"gap reduction {method!r} is not one of {GAP_METHODS}")
    return method


@dataclass(frozen=True)
class PriorConfig:
    hidden: int = 256
    steps: int = 600
    lr: float = 2e-3
    batch_size: int = 256
    weight_decay: float = 1e-4
    input_noise: float = 0.02  # Gaussian noise on the (normalised) text input: smooths the map between texts
    seed: int = 0


class EmbeddingPrior(nn.Module):
    """t -> normalise(t + mlp(t)): a residual map from text embeddings to the frame embeddings' region."""

    def __init__(self, dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)  # starts as the identity map
        nn.init.zeros_(self.out.bias)

    def forward(self, text: Tensor) -> Tensor:
        return F.normalize(text + self.out(self.net(text)), dim=-1)


def train_prior(text: Tensor, image: Tensor, config: PriorConfig | None = None) -> tuple[EmbeddingPrior, dict]:
    """Fit the prior on pairs (text[i], image[i]) of unit vectors; returns it and its final mean cosine."""
    config = config or PriorConfig()
    if text.shape != image.shape or text.dim() != 2 or len(text) == 0:
        raise ValueError(f"need paired [N, D] text and image embeddings, got {tuple(text.shape)}, {tuple(image.shape)}")
    text, image = F.normalize(text.float(), dim=-1), F.normalize(image.float(), dim=-1)
    gen = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        prior = EmbeddingPrior(text.shape[1], config.hidden)
    opt = torch.optim.AdamW(prior.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    for _ in range(config.steps):
        idx = torch.randint(0, len(text), (min(config.batch_size, len(text)),), generator=gen)
        x = F.normalize(text[idx] + config.input_noise * torch.randn(text[idx].shape, generator=gen), dim=-1)
        loss = (1 - (prior(x) * image[idx]).sum(-1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    prior.eval().requires_grad_(False)
    with torch.no_grad():
        cos_after = float((prior(text) * image).sum(-1).mean())
        cos_before = float((text * image).sum(-1).mean())
    return prior, {"pair_cosine_before": cos_before, "pair_cosine_after": cos_after, "pairs": len(text)}


class GapReducer(nn.Module):
    """The fitted statistics of both methods; `forward(text, method)` reduces text embeddings [B, D]."""

    mean_image: Tensor  # buffers
    mean_text: Tensor
    prior: EmbeddingPrior | None

    def __init__(self, mean_image: Tensor, mean_text: Tensor, prior: EmbeddingPrior | None = None, info=None):
        super().__init__()
        if mean_image.shape != mean_text.shape or mean_image.dim() != 1:
            raise ValueError("mean_image and mean_text must be [D] vectors of one size")
        self.register_buffer("mean_image", mean_image.float().clone())
        self.register_buffer("mean_text", mean_text.float().clone())
        self.prior = prior
        self.info: dict = dict(info or {})

    @property
    def dim(self) -> int:
        return int(self.mean_image.shape[0])

    @property
    def methods(self) -> tuple[str, ...]:
        return ("none", "shift", "prior") if self.prior is not None else ("none", "shift")

    @classmethod
    def fit(
        cls, text: Tensor, image: Tensor, prior_config: PriorConfig | None = None, with_prior: bool = True
    ) -> GapReducer:
        """From paired rows: text[i] describes the frame image[i] (unit vectors, one pair per training frame).

        The means are over the rows, so each text counts as often as frames of it are trained on.
        """
        text, image = F.normalize(text.float(), dim=-1), F.normalize(image.float(), dim=-1)
        prior, info = train_prior(text, image, prior_config) if with_prior else (None, {})
        info = {**info, "gap_norm": float((image.mean(0) - text.mean(0)).norm())}
        return cls(image.mean(0), text.mean(0), prior, info)

    def shift(self, text: Tensor) -> Tensor:
        delta = (self.mean_image - self.mean_text).to(text.device, text.dtype)
        return F.normalize(text + delta, dim=-1)

    @torch.no_grad()
    def forward(self, text: Tensor, method: str = "shift") -> Tensor:
        check_gap_method(method)
        if text.shape[-1] != self.dim:
            raise ValueError(f"text embeddings have {text.shape[-1]} dims, the gap statistics {self.dim}")
        if method == "none":
            return text
        if method == "shift":
            return self.shift(text)
        if self.prior is None:
            raise ValueError("this bundle's gap statistics have no prior (fitted without paired texts)")
        self.prior.to(text.device)
        return self.prior(text.float()).to(text.dtype)

    # ------------------------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike) -> None:
        d = Path(directory)
        tensors = {"mean_image": self.mean_image, "mean_text": self.mean_text}
        meta = {"dim": self.dim, "info": self.info, "prior": None}
        if self.prior is not None:
            tensors.update({f"prior.{k}": v for k, v in self.prior.state_dict().items()})
            meta["prior"] = {"hidden": self.prior.out.in_features}
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(d / GAP_FILE))
        (d / GAP_CONFIG_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> GapReducer | None:
        """The bundle's gap statistics, or None when the bundle has none (trained before they existed)."""
        d = Path(directory)
        if not (d / GAP_FILE).exists():
            return None
        meta = json.loads((d / GAP_CONFIG_FILE).read_text())
        state = load_file(str(d / GAP_FILE))
        prior = None
        if meta.get("prior"):
            prior = EmbeddingPrior(int(meta["dim"]), int(meta["prior"]["hidden"]))
            prior.load_state_dict({k.removeprefix("prior."): v for k, v in state.items() if k.startswith("prior.")})
            prior.eval().requires_grad_(False)
        return cls(state["mean_image"], state["mean_text"], prior, meta.get("info"))

    def describe(self) -> dict:
        """What a model card shows: the methods available and the fit's scalar facts."""
        return {"methods": list(self.methods), **{k: v for k, v in self.info.items() if isinstance(v, (int, float))}}
