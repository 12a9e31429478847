"""What one evaluation scores: a CLIPSynth model (trained on image, text or both), CLIPRetriever, or the
vocoder's reconstructions of the test mels. One small type each; `variant_for` picks it from the config."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

from .baselines import reconstructions, retrieve
from .config import TRAIN_QUERY_TYPES, EvalConfig
from .generation import GeneratedSet, SampleSpec
from .parts import EvalParts
from .queries import plan_queries
from .scoring import score

DEFAULT_MODEL_NAMES = {
    "image": "CLIPSynth",
    "text": "CLIPSynth-Text",
    "hybrid": "CLIPSynth-Hybrid",
    "retriever": "CLIPRetriever",
    "hifigan-recon": "HiFi-GAN reconstructions",
}
EVAL_VARIANTS = tuple(DEFAULT_MODEL_NAMES)  # the rows of Table 1 (train.config.VARIANTS: the trained models)


@dataclass(frozen=True)
class VariantRun:
    """What one run of a variant measured, and the samples to log as artifacts."""

    metrics: dict[str, float]
    generated: GeneratedSet


class EvalVariant(abc.ABC):
    """One kind of evaluated thing: its name in the tags, its table flags, and how it produces metrics."""

    name: str
    generative = False
    train_query_type = "n/a"  # tag: what it was trained on
    unlabeled_only = "n/a"  # tag: whether it learnt without labels

    def model_name(self, config: EvalConfig, metadata: dict[str, Any]) -> str:
        return config.model_name or DEFAULT_MODEL_NAMES[self.name]

    @abc.abstractmethod
    def evaluate(self, ev: EvalParts, query_type: str) -> VariantRun:
        """The metrics (and what to log beside them) of one query type."""


class _QueriedVariant(EvalVariant):
    """Samples for the test queries, scored against the test split."""

    @abc.abstractmethod
    def samples(self, ev: EvalParts, specs: list[SampleSpec]) -> GeneratedSet:
        """What this variant produces for the planned queries."""

    def evaluate(self, ev: EvalParts, query_type: str) -> VariantRun:
        specs = plan_queries(ev.context, query_type)
        if query_type == "text":
            example = ev.context.synth.encoder.format_queries([str(specs[0].text)])[0]
            ev.log(f"text queries look like {example!r}")
        generated = self.samples(ev, specs)
        metrics = score(ev.references, generated, ev.config.recon_metric)
        metrics["num_samples"] = len(specs)
        metrics["seconds_generation"] = generated.seconds
        metrics.update({k: v for k, v in generated.extra.items() if isinstance(v, (int, float))})
        return VariantRun(metrics, generated)


class ModelVariant(_QueriedVariant):
    """The bundle's diffusion model, trained on `train_query_type` queries; generated on Ray actors."""

    generative = True

    def __init__(self, train_query_type: str) -> None:
        if train_query_type not in TRAIN_QUERY_TYPES:
            raise ValueError(f"a model is trained on one of {TRAIN_QUERY_TYPES}, not {train_query_type!r}")
        self.name = self.train_query_type = train_query_type
        self.unlabeled_only = str(train_query_type == "image").lower()

    def model_name(self, config: EvalConfig, metadata: dict[str, Any]) -> str:
        # The bundle's own name belongs to its diffusion model, not to the retriever or vocoder baselines.
        return config.model_name or metadata.get("model_name") or DEFAULT_MODEL_NAMES[self.name]

    def samples(self, ev: EvalParts, specs: list[SampleSpec]) -> GeneratedSet:
        return ev.sampler.generate(specs)


class RetrieverVariant(_QueriedVariant):
    """CLIPRetriever over the train split's frames (the bundle's CLIP)."""

    name = "retriever"
    unlabeled_only = "true"  # the index is frames and audio only: no labels are involved

    def samples(self, ev: EvalParts, specs: list[SampleSpec]) -> GeneratedSet:
        return retrieve(ev.references, specs)


class HifiganReconVariant(EvalVariant):
    """The bundle's vocoder on the test mels, against the test audio: the floor the models cannot beat."""

    name = "hifigan-recon"

    def evaluate(self, ev: EvalParts, query_type: str) -> VariantRun:
        if ev.context.fad_reference != "audio":
            raise ValueError("HiFi-GAN reconstruction FAD needs the test split's audio column")
        ref, _ = ev.references.audio_reference("audio")
        recon = ev.references.recon_fad(ref)
        fad = ev.backbones.fad_metric
        metrics = {fad: recon, f"{fad}_hifigan_recon": recon}
        return VariantRun(metrics, reconstructions(ev.references, max(ev.config.num_audio_artifacts, 1)))


def variant_for(config: EvalConfig, train_query_type: str) -> EvalVariant:
    if config.retriever:
        return RetrieverVariant()
    if config.hifigan_recon:
        return HifiganReconVariant()
    return ModelVariant(train_query_type)
