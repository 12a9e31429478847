"""CLIP's zero-shot protocol, on pictures or on a dataset's stored frame embeddings.

Each image goes to the class whose caption ("a photo of playing {name}", the evaluation's text query) is
nearest in the shared space. On a preprocessed dataset the frames' embeddings are the ones ingestion stored,
so the number says how well the text queries of serving will line up with what the diffusion model learned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from clipsynth_core import ClipQueryEncoder
from clipsynth_platform.datasets.captions import class_name

ZERO_SHOT_TEMPLATE = "a photo of playing {name}"


def zero_shot_predictions(
    encoder: ClipQueryEncoder, image_embeddings: Tensor, classes: Sequence[str], template: str = ZERO_SHOT_TEMPLATE
) -> np.ndarray:
    """The index into `classes` of each image's nearest caption."""
    texts = encoder.encode_text([template.format(name=class_name(c)) for c in classes], template="{query}")
    return (image_embeddings.float() @ texts.float().T).argmax(dim=1).cpu().numpy()


def zero_shot_accuracy(
    encoder: ClipQueryEncoder,
    image_embeddings: Tensor,
    targets: Sequence[int] | np.ndarray,
    classes: Sequence[str],
    template: str = ZERO_SHOT_TEMPLATE,
) -> float:
    pred = zero_shot_predictions(encoder, image_embeddings, classes, template)
    return float(np.mean(pred == np.asarray(targets)))


@dataclass(frozen=True)
class DatasetZeroShot:
    """Zero-shot accuracy over every labelled frame of a preprocessed dataset (all splits)."""

    accuracy: float
    frames: int
    classes: tuple[str, ...]
    per_class: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


def dataset_zero_shot(
    encoder: ClipQueryEncoder, data: str, splits: Sequence[str] = ("train", "test")
) -> DatasetZeroShot:
    """Zero-shot classification of the frames ingestion embedded, among the dataset's own labels."""
    from clipsynth_platform.datasets.splits import iter_split_rows

    embeddings, labels = [], []
    for split in splits:
        for row in iter_split_rows(data, split, ["label", "image_embeddings", "embed_dim"]):
            if row["label"] is None:
                continue
            frames = np.asarray(row["image_embeddings"], np.float32).reshape(-1, row["embed_dim"])
            embeddings.append(frames)
            labels += [row["label"]] * len(frames)
    if not labels:
        raise ValueError(f"{data} has no labelled frames to classify zero-shot")
    classes = tuple(sorted(set(labels)))
    targets = np.array([classes.index(label) for label in labels])
    pred = zero_shot_predictions(encoder, torch.from_numpy(np.concatenate(embeddings)), classes)
    per_class = {c: float(np.mean(pred[targets == k] == k)) for k, c in enumerate(classes)}
    return DatasetZeroShot(float(np.mean(pred == targets)), len(labels), classes, per_class)
