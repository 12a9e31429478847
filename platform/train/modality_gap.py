"""Fit the modality-gap statistics (clipsynth_core.modality_gap) on a preprocessed dataset's train split.

Pairs: every frame embedding of every labelled train row with the CLIP text embedding of each phrasing of its
label (CAPTION_PHRASES, "{name}" ... "music played on a {name}", through the encoder's template). The
evaluation's phrasing ("playing {name}", the zero-shot template) is held out by default, so a measured gain on
text queries is not a lookup of texts the prior was trained on. The supervision is the label of each video:
the shift needs the texts only for their mean, the prior needs them paired with frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from clipsynth_core.modality_gap import GapReducer, PriorConfig
from clipsynth_platform.runtime.options import opt, required

EVAL_PHRASE = "playing {name}"


@dataclass(frozen=True)
class GapFitConfig:
    data: str
    holdout_phrases: tuple[str, ...] = (EVAL_PHRASE,)
    frames_per_row: int = 0  # 0: every frame embedding of a row
    prior: PriorConfig = field(default_factory=PriorConfig)
    with_prior: bool = True


def label_phrases(label: str, holdout: tuple[str, ...] = (EVAL_PHRASE,)) -> list[str]:
    from clipsynth_platform.datasets.captions import CAPTION_PHRASES, class_name

    return [p.format(name=class_name(label)) for p in CAPTION_PHRASES if p not in holdout]


def fit_gap_reducer(config: GapFitConfig, encoder) -> GapReducer:
    """Paired (text, frame) embeddings of the train split -> the fitted GapReducer."""
    from clipsynth_platform.datasets.splits import iter_split_rows

    cols = ["label", "image_embeddings", "embed_dim"]
    rows = [r for r in iter_split_rows(config.data, "train", cols) if r["label"] is not None]
    if not rows:
        raise ValueError(f"{config.data} has no labelled train rows: the gap reduction needs texts for its frames")
    labels = sorted({r["label"] for r in rows})
    phrases = {label: label_phrases(label, config.holdout_phrases) for label in labels}
    flat = [p for label in labels for p in phrases[label]]
    table = encoder.encode_text(flat).float()
    offsets = np.cumsum([0] + [len(phrases[label]) for label in labels])
    texts, images = [], []
    for r in rows:
        frames = np.asarray(r["image_embeddings"], np.float32).reshape(-1, int(r["embed_dim"]))
        if config.frames_per_row:
            frames = frames[: config.frames_per_row]
        i = labels.index(r["label"])
        for t in table[offsets[i] : offsets[i + 1]]:
            texts.append(t.expand(len(frames), -1))
            images.append(torch.from_numpy(frames))
    reducer = GapReducer.fit(torch.cat(texts), torch.cat(images), config.prior, config.with_prior)
    reducer.info.update({"labels": labels, "phrases_per_label": len(flat) // len(labels), "rows": len(rows)})
    return reducer


@dataclass(frozen=True)
class GapFitJobConfig:
    """jobs/fit_modality_gap.py: fit the statistics on a dataset and write them into a bundle."""

    data: str = required("preprocessed dataset (its train split)")
    bundle: str = required("a synthesizer bundle directory to write the statistics into")
    with_prior: bool = opt(True, "fit the text-to-image prior too (--no-prior: the shift only)", flag="prior")
    prior_steps: int = opt(PriorConfig.steps, "optimizer steps of the prior")
    seed: int = opt(0, "seed of the prior's training")


def fit_gap_job(config: GapFitJobConfig) -> dict:
    """Load the bundle's CLIP, fit the reducer on the data, save it into the bundle; returns what it wrote."""
    from clipsynth_core.synthesizer import load_bundle_encoder, read_bundle_config

    encoder = load_bundle_encoder(config.bundle, read_bundle_config(config.bundle).clip)
    fit = GapFitConfig(
        data=config.data, prior=PriorConfig(steps=config.prior_steps, seed=config.seed), with_prior=config.with_prior
    )
    reducer = fit_gap_reducer(fit, encoder)
    reducer.save(config.bundle)
    return {"bundle": config.bundle, **reducer.describe(), "labels": list(reducer.info.get("labels", []))}
