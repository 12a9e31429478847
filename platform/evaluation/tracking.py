"""An evaluation's MLflow side: the training run a model came from, the tags compare.py reads, the run with its
metrics and artifacts, and the modality gap logged onto the text and image runs."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import mlflow

from clipsynth_platform.runtime.logs import get_logger
from clipsynth_platform.tracking.registry import ensure_experiment

from .config import EVAL_MARKER, EVAL_MARKER_TAG, METRICS_VERSION, METRICS_VERSION_TAG
from .generation import GeneratedSet
from .parts import EvalParts
from .plots import mel_grid_png, write_wavs
from .variants import EvalVariant

logger = get_logger("evaluate")


def run_tags(ev: EvalParts, variant: EvalVariant, test_query_type: str) -> dict[str, str]:
    """The tags compare.py groups and labels the run by: what was evaluated, on which data, with which backbones."""
    ctx, bb = ev.context, ev.backbones
    tags = {
        EVAL_MARKER_TAG: EVAL_MARKER,
        "model_name": ev.model_name,
        "variant": variant.name,
        "dataset": ev.config.dataset,
        "train_query_type": variant.train_query_type,
        "test_query_type": test_query_type,
        "generative": str(variant.generative).lower(),
        "unlabeled_only": variant.unlabeled_only,
        "fad_reference": ctx.fad_reference,
        "fad_metric": bb.fad_metric,
        "fad_backbone": bb.embedder.identity,
        "fid_backbone": bb.fid.identity if bb.fid else "absent",
        "melclf_backbone": bb.extractor.identity if bb.extractor else "none",
        "random_backbones": ",".join(bb.random_metrics()) or "none",
        METRICS_VERSION_TAG: METRICS_VERSION,
        "model_uri": ev.config.model,
        "data_uri": ctx.data,
        "clip_model": ctx.synth.config.clip.identity,
    }
    if bb.fid_absent:
        tags["fid_absent"] = bb.fid_absent
    if bb.fad_fallback:
        tags["fad_fallback"] = bb.fad_fallback
    if ctx.training_run_id:
        tags["training_run_id"] = ctx.training_run_id
    return tags


def run_params(ev: EvalParts) -> dict[str, str]:
    """The config, and the sampling settings it resolved to (the bundle's where the config left them open)."""
    c = ev.config
    d = ev.context.synth.config.sampling
    resolved = {
        "steps_used": c.steps or d.steps,
        "sampler_used": c.sampler or d.sampler,
        "guidance_used": d.guidance if c.guidance is None else c.guidance,
        "query_template_used": c.template,
        "clip_template": ev.context.synth.config.clip.template,
    }
    return {**{k: str(v) for k, v in asdict(c).items()}, **{k: str(v) for k, v in resolved.items()}}


def _write_artifacts(ev: EvalParts, generated: GeneratedSet, directory: Path) -> None:
    """A few WAVs, a grid of mel images and the queries (with the clip template) under `directory`."""
    n = min(ev.config.num_audio_artifacts, len(generated.specs))
    names = [f"{s.index:03d}_{s.label or 'unlabelled'}" for s in generated.specs[:n]]
    synth_config = ev.context.synth.config
    write_wavs(directory / "samples", generated.waves[:n], names, synth_config.mel.sample_rate)
    titles = [s.label or "?" for s in generated.specs[:16]]
    mel_grid_png(generated.mels[:16], titles, directory / "mel_grid.png")
    queries = {
        "clip_template": synth_config.clip.template,
        "samples": [s.describe() for s in generated.specs],
        **generated.extra,
    }
    (directory / "queries.json").write_text(json.dumps(queries, indent=1))


def log_run(
    ev: EvalParts,
    variant: EvalVariant,
    test_query_type: str,
    metrics: Mapping[str, float],
    generated: GeneratedSet | None,
) -> tuple[str, dict[str, str]]:
    """One MLflow run of the evaluation experiment; returns its id and tags."""
    c = ev.config
    tags = run_tags(ev, variant, test_query_type)
    experiment_id = ensure_experiment(c.experiment)
    name = c.run_name or f"{ev.model_name}-{variant.name}-{test_query_type}-{c.dataset}"
    if len(c.query_types) > 1 and c.run_name:
        name = f"{c.run_name}-{test_query_type}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=name) as run:
        mlflow.set_tags(tags)
        mlflow.log_params(run_params(ev))
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        if generated is not None:
            with tempfile.TemporaryDirectory() as tmp:
                _write_artifacts(ev, generated, Path(tmp))
                mlflow.log_artifacts(tmp, artifact_path="eval")
    return run.info.run_id, tags


def log_modality_gap(
    run_ids: Sequence[str], text: Mapping[str, float], image: Mapping[str, float], metric_names: Sequence[str]
) -> dict[str, float]:
    """`modality_gap_<metric>`: the metric with text queries minus with image queries, logged on every run."""
    gap = {f"modality_gap_{k}": text[k] - image[k] for k in metric_names if k in text and k in image}
    client = mlflow.MlflowClient()
    for run_id in run_ids:
        for k, v in gap.items():
            client.log_metric(run_id, k, v)
    return gap
