"""Training the offline demo's CLIP-style dual encoder, and measuring it zero-shot.

open_clip builds the model (the core's "toy" config: a small ModifiedResNet and a 2-layer text transformer) and
ships the loss (`open_clip.loss.ClipLoss`, the symmetric InfoNCE of CLIP with its learned temperature). Each
step shows every class a few times over, in groups that hold every class once (one picture and one caption
each); the loss is CLIP's within each group, so no two pairs it contrasts share a class (CLIP's loss counts
every other pair as a negative). The encoder never sees audio, nor a corpus frame.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clipsynth_core import ClipConfig, ClipQueryEncoder
from clipsynth_core.clip_encoder import build_local_clip
from clipsynth_platform.datasets.captions import captions
from clipsynth_platform.datasets.corpus.config import INSTRUMENTS
from clipsynth_platform.runtime.console import progress_bar
from clipsynth_platform.runtime.logs import LogFn, progress

from .pictures import draw_pictures
from .zero_shot import zero_shot_accuracy


@dataclass(frozen=True)
class OfflineClipConfig:
    """What to train: every instrument the corpus can draw, so queries beyond the demo's classes mean something."""

    model_name: str = "toy"
    classes: tuple[str, ...] = tuple(sorted(INSTRUMENTS))
    pictures_per_class: int = 500
    steps: int = 1000
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_fraction: float = 0.1
    max_shift: int = 4  # pixels of random translation per step (a cheap augmentation of the fixed pool)
    # One-picture-per-class groups in each step's forward pass, each with its own CLIP loss. Zero-shot on the
    # demo corpus's 1,600 frames, 400 pictures a class, trained alone on 2 AVX2 cores: 1 group x 1,500 steps
    # 0.85 / 0.72 (seeds 0 / 1; fresh pictures 0.88 / 0.61), 115 / 105 s; 4 groups x 700 steps 0.99 / 0.98
    # (0.89 / 0.89), 125 / 132 s; 4 groups x 1,000 steps 0.99 / 0.99 / 0.96 (seeds 0-2; 0.95 / 0.91 / 0.93), 175-182 s.
    groups_per_step: int = 4
    seed: int = 0
    heldout_per_class: int = 40  # fresh pictures (another seed) for the held-out zero-shot accuracy

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        unknown = [c for c in self.classes if c not in INSTRUMENTS]
        if unknown or len(self.classes) < 2:
            raise ValueError(f"offline CLIP classes must be >= 2 of {sorted(INSTRUMENTS)}; unknown: {unknown}")
        if min(self.pictures_per_class, self.steps, self.heldout_per_class, self.groups_per_step) < 1:
            raise ValueError("pictures_per_class, steps, heldout_per_class and groups_per_step must be >= 1")
        if not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.warmup_fraction < 1:
            raise ValueError("lr must be > 0, weight_decay >= 0, warmup_fraction in [0, 1)")


@dataclass
class OfflineClipReport:
    """How training went, and what the encoder is worth on pictures it never saw."""

    steps: int
    seconds: float
    final_loss: float
    logit_scale: float
    heldout_zero_shot: float  # accuracy on fresh pictures with ZERO_SHOT_TEMPLATE, all classes
    classes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def grouped_clip_loss(
    loss_fn: Callable[[Tensor, Tensor, Tensor], Tensor],
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: Tensor,
    groups: int,
) -> Tensor:
    """CLIP's loss within each of `groups` equal consecutive slices of the batch, averaged over the groups.

    One forward pass for every group (a batch of 15 small pictures leaves the CPU idle between kernels), but no
    pair is a negative of a pair from another group: each group holds every class once, so within a group no
    two pairs share a class and none is a false negative."""
    n, rest = divmod(len(image_features), groups)
    if rest or len(text_features) != len(image_features):
        raise ValueError(f"{len(image_features)} images and {len(text_features)} texts do not split in {groups} groups")
    parts = [loss_fn(i, t, logit_scale) for i, t in zip(image_features.split(n), text_features.split(n))]
    return torch.stack(parts).mean()


def train_offline_clip(
    config: OfflineClipConfig, log: LogFn | None = None
) -> tuple[ClipQueryEncoder, OfflineClipReport]:
    """Train from scratch (seeded); returns the frozen encoder and its report."""
    from open_clip.loss import ClipLoss

    config.check()
    log = log or progress("offline-clip")
    t0 = time.perf_counter()
    classes = list(config.classes)
    model: Any = build_local_clip(config.model_name, config.seed)  # open_clip's CLIP, untyped attributes
    clip = ClipConfig(model_name=config.model_name, pretrained="none", init_seed=config.seed)
    encoder = ClipQueryEncoder(clip, model=model)  # its preprocessing and tokenizer; it freezes the model
    model.requires_grad_(True).train()
    images, _targets = draw_pictures(classes, config.pictures_per_class, config.seed)
    # The pool is preprocessed once (in blocks: the float copy of every full-size picture would not fit).
    pool = torch.cat([encoder.preprocess(images[i : i + 500]) for i in range(0, len(images), 500)])
    pool = pool.view(len(classes), config.pictures_per_class, *pool.shape[1:])
    del images
    tokens = torch.stack([encoder.tokenizer(captions(c)) for c in classes])  # [C, phrasings, context]
    log(f"{len(classes)} classes x {config.pictures_per_class} pictures drawn in {time.perf_counter() - t0:.1f} s")

    loss_fn = ClipLoss()
    # fused: the text tower's 49,408-token embedding is 6.3 M of the 8.1 M parameters, and the default
    # per-tensor AdamW spent half of every CPU step updating it (benchmarks/core/offline_clip.py: fused is 1.6-1.8x
    # the steps/s)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.steps, pct_start=max(config.warmup_fraction, 1e-3)
    )
    rng = np.random.default_rng([config.seed, 0xC11F])
    groups, n = config.groups_per_step, len(classes)
    rows = torch.arange(n).repeat(groups)  # group g holds every class once, at rows g*n .. (g+1)*n - 1
    loss = torch.zeros(())
    with progress_bar(config.steps, "offline-clip", "steps", log) as bar:
        for step in range(1, config.steps + 1):
            x = pool[rows, torch.from_numpy(rng.integers(0, config.pictures_per_class, len(rows)))]
            if config.max_shift:
                dy, dx = (int(v) for v in rng.integers(-config.max_shift, config.max_shift + 1, 2))
                x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            text = tokens[rows, torch.from_numpy(rng.integers(0, tokens.shape[1], len(rows)))]
            image_features, text_features, logit_scale = model(x, text)
            loss = grouped_clip_loss(loss_fn, image_features, text_features, logit_scale, groups=groups)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():  # CLIP's clamp: the temperature stays above 1/100
                model.logit_scale.clamp_(0, math.log(100))
            if step % 250 == 0 or step == config.steps:
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            bar.update(1)
    model.eval().requires_grad_(False)

    heldout, heldout_targets = draw_pictures(classes, config.heldout_per_class, config.seed + 1)
    accuracy = zero_shot_accuracy(encoder, encoder.encode_image(heldout), heldout_targets, classes)
    report = OfflineClipReport(
        steps=config.steps,
        seconds=round(time.perf_counter() - t0, 1),
        final_loss=loss.item(),
        logit_scale=float(model.logit_scale.exp()),
        heldout_zero_shot=accuracy,
        classes=classes,
    )
    log(f"trained in {report.seconds:.0f} s; zero-shot on fresh pictures {accuracy:.3f}")
    return encoder, report
