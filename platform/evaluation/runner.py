"""The evaluation protocol of the paper (sec. 4.1), as one function: `run_evaluation(EvalConfig)`.

For a synthesizer bundle (path or MLflow model URI) and a preprocessed dataset:
1. queries (`queries.py`): `num_samples` test rows drawn at random (seeded; the same rows and seeds for text
   and image queries, so the two differ only in the modality). Text queries put the row's label in the
   dataset's template ("playing {label}" on MUSIC, "{label}" on VGG-Sound), which the model's CLIP template
   turns into "a photo of playing violin". Image queries take a random frame of the row: its stored CLIP
   embedding when the shard was embedded with the model's CLIP, else the decoded JPEG through the model's CLIP;
2. samples (`variants.py`): generated on Ray actors (`generation.py`), or retrieved by CLIPRetriever from the
   train split (`--retriever`), or the vocoder's reconstructions of the test mels (`--hifigan-recon`), both in
   `baselines.py`;
3. metrics (`scoring.py`, `backbones.py`), each named for the backbone that computes it (one name never holds
   two kinds of number):
   - `fad`: FAD as the literature computes it, VGGish's 128-d pre-activation embeddings of the samples
     against those of the whole test split's audio (its `audio` column, else the bundle's vocoder on its
     mels; the tag `fad_reference` says which). Without VGGish weights, `--fad-backbone auto` (the default)
     falls back to `fad_melclf`: the same distance on the mel classifier's embedding of the audio re-analysed
     into the project's mel, a backbone trained on the data at hand (tag `fad_fallback` says why);
   - `fid`: Inception FID on the mels rendered as images (inception_fid.py, pytorch-fid's network and
     weights file); without the weights file it is not computed, and the tag `fid_absent` says why;
   - `fd_melclf`: the Fréchet distance of the mel classifier's features of 64-frame mel windows against the
     test mels' windows; `relevance`: the classifier's accuracy on the intended label;
   - `<fad metric>_hifigan_recon`: the vocoder's reconstructions of the test mels against the test audio;
   - with `--queries both`, `modality_gap_<metric>`: the metric with text queries minus with image queries.
   Reference statistics (`references.py`) are cached (`stats_cache.py`) under a key of everything that
   changes them;
4. MLflow (`tracking.py`): one evaluation run per query type, tagged for `compare.py` (every backbone's
   identity, which metrics came from random backbones) and with the training run's id, with the metrics, a few
   WAVs, a grid of mel images and the list of queries as artifacts.

A random backbone (`tiny-random`) is used only where a caller asks for it by name (unit tests); its runs are
tagged, and compare.py never puts them in a table with real ones.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import mlflow

from clipsynth_platform.runtime.logs import LogFn, get_logger, progress
from clipsynth_platform.tracking.registry import default_tracking_uri

from .backbones import Backbones, is_random
from .config import (
    DATASET_QUERY_TEMPLATES,
    EVAL_MARKER,
    EVAL_MARKER_TAG,
    METRICS_VERSION,
    METRICS_VERSION_TAG,
    TRAIN_QUERY_TYPES,
    EvalConfig,
    is_random_identity,
    normalize_dataset,
)
from .context import EvalContext, canonical_uri, resolve_train_query_type
from .generation import GeneratedSet
from .parts import EvalParts
from .references import REFERENCE_VERSION
from .tracking import log_modality_gap, log_run, run_tags
from .variants import DEFAULT_MODEL_NAMES, EVAL_VARIANTS, EvalVariant, variant_for

__all__ = [
    "DATASET_QUERY_TEMPLATES",
    "DEFAULT_MODEL_NAMES",
    "EVAL_MARKER",
    "EVAL_MARKER_TAG",
    "EVAL_VARIANTS",
    "METRICS_VERSION",
    "METRICS_VERSION_TAG",
    "REFERENCE_VERSION",
    "TRAIN_QUERY_TYPES",
    "EvalConfig",
    "EvalResult",
    "Evaluation",
    "canonical_uri",
    "is_random",
    "is_random_identity",
    "normalize_dataset",
    "resolve_train_query_type",
    "run_evaluation",
]


@dataclass
class EvalResult:
    run_id: str
    variant: str
    test_query_type: str
    metrics: dict[str, float]
    tags: dict[str, str]
    generated: GeneratedSet | None = None
    cache_hits: int = 0  # reference statistics served from the cache (cumulative within one invocation)
    cache_misses: int = 0


class Evaluation(EvalParts):
    """One invocation: its parts (parts.py) and the variant they score.

    The constructor only assembles; `Evaluation.load(config)` reads the bundle, the test split and the
    backbones' weights."""

    def __init__(
        self, context: EvalContext, backbones: Backbones, variant: EvalVariant, log: LogFn | None = None
    ) -> None:
        super().__init__(context, backbones, variant.model_name(context.config, context.metadata), log)
        self.variant = variant

    @classmethod
    def load(cls, config: EvalConfig, log: LogFn | None = None) -> Evaluation:
        config.check()
        context = EvalContext.load(config, log)
        try:
            backbones = Backbones.build(config, context.synth.config.mel, context.labels, context.device, log)
            return cls(context, backbones, variant_for(config, context.train_query_type), log)
        except BaseException:
            context.close()
            raise

    def tags(self, test_query_type: str) -> dict[str, str]:
        return run_tags(self, self.variant, test_query_type)

    def run(self, query_type: str) -> EvalResult:
        """One MLflow run: the variant's samples and metrics for `query_type`."""
        t0 = time.perf_counter()
        out = self.variant.evaluate(self, query_type)
        metrics = {**out.metrics, "seconds_total": time.perf_counter() - t0}
        run_id, tags = log_run(self, self.variant, query_type, metrics, out.generated)
        self.log(f"run {run_id} ({query_type}): " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
        cache = self.context.cache
        return EvalResult(run_id, self.variant.name, query_type, metrics, tags, out.generated, cache.hits, cache.misses)


def run_evaluation(config: EvalConfig, log: LogFn | None = None) -> list[EvalResult]:
    """Evaluate as configured; one MLflow run (and EvalResult) per test query type."""
    log = log or progress("evaluate")
    mlflow.set_tracking_uri(default_tracking_uri())
    get_logger("evaluate").debug("config " + json.dumps(asdict(config), sort_keys=True))
    ev = Evaluation.load(config, log)
    ctx = ev.context
    results: list[EvalResult] = []
    try:
        log(
            f"model {ev.model_name!r} variant={ev.variant.name} clip={ctx.synth.config.clip.identity} "
            f"training_run={ctx.training_run_id} test rows={len(ctx.test_rows)} fad_reference={ctx.fad_reference}"
        )
        results = [ev.run(query_type) for query_type in config.query_types]
        by_query = {r.test_query_type: r for r in results}
        if {"text", "image"} <= by_query.keys():
            gap = log_modality_gap(
                [r.run_id for r in results],
                by_query["text"].metrics,
                by_query["image"].metrics,
                (ev.backbones.fad_metric, "fid", "fd_melclf"),
            )
            for r in results:
                r.metrics.update(gap)
            log(f"modality gap: {gap}")
        log(
            f"done in {time.perf_counter() - ctx.started:.1f} s: {len(results)} run(s); "
            f"samples {[len(r.generated.specs) if r.generated else 0 for r in results]}; test clips "
            f"{len(ctx.test_rows)}; reference cache hits {ctx.cache.hits}, misses {ctx.cache.misses}"
        )
    finally:
        ev.close()
    return results
