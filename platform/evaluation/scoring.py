"""The metrics of one set of samples against the test split's references: the FAD, the Fréchet distances of
mel features (fid, fd_melclf), the mel classifier's relevance, and the vocoder's reconstruction FAD."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from clipsynth_core.metrics import embedding_statistics, frechet_distance_stats

from .generation import GeneratedSet
from .references import References


@dataclass(frozen=True)
class Relevance:
    """The mel classifier on the samples whose intended label it knows."""

    relevance: float  # accuracy on the intended label
    relevance_prob: float  # mean probability of the intended label
    relevance_scored: int  # samples scored

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def relevance(references: References, generated: GeneratedSet) -> Relevance | None:
    """None when there is no classifier with labels, or no sample asked for one of its labels."""
    extractor = references.backbones.extractor
    labels = getattr(extractor, "labels", None)
    if extractor is None or not labels or not hasattr(extractor, "predict_proba"):
        return None
    index = {name: i for i, name in enumerate(labels)}
    scored = [k for k, s in enumerate(generated.specs) if s.label in index]
    if not scored:
        references.log("metrics: relevance: no generated sample's label is one of the classifier's")
        return None
    probs = extractor.predict_proba(generated.mels[scored])
    target = np.array([index[generated.specs[k].label] for k in scored])
    return Relevance(
        relevance=float((probs.argmax(axis=1) == target).mean()),
        relevance_prob=float(probs[np.arange(len(target)), target].mean()),
        relevance_scored=len(scored),
    )


def score(references: References, generated: GeneratedSet, recon_metric: bool = True) -> dict[str, float]:
    """Every metric of `generated` (MLflow metric name -> value)."""
    bb, ctx = references.backbones, references.context
    metrics: dict[str, float] = {}
    ref, hit = references.audio_reference(ctx.fad_reference)
    references.log(
        f"metrics: {bb.fad_metric} reference ({ctx.fad_reference}): {ref.count} embeddings, "
        f"cache {'hit' if hit else 'miss'}"
    )
    gen_stats = embedding_statistics(references.embed_waves(list(generated.waves)))
    metrics[bb.fad_metric] = frechet_distance_stats(gen_stats, ref)
    metrics["num_reference_embeddings"] = ref.count
    metrics["num_generated_embeddings"] = gen_stats.count
    for extractor in (bb.fid, bb.extractor):
        if extractor is None:
            continue
        mel_ref, _ = references.mel_reference(extractor)
        gen = embedding_statistics(extractor.features(generated.mels))
        metrics[getattr(extractor, "metric_name", "fd_melclf")] = frechet_distance_stats(gen, mel_ref)
    found = relevance(references, generated)
    if found is not None:
        metrics.update(found.to_dict())
    if recon_metric and ctx.fad_reference == "audio":
        metrics[f"{bb.fad_metric}_hifigan_recon"] = references.recon_fad(ref)
    return metrics
