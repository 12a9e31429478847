"""The demo's model with the modality-gap statistics its service asks for by default (serve's
`default_gap_reduction`, "prior"): fitted on the train split's frames and label phrasings (about 10 s), written
into a copy of the bundle, and registered as the next version of the demo's model from the same training run.

The service then answers text queries through the prior, and the model card lists the classes the statistics
were fitted on (its example queries). The evaluation still scores the paper's method (no gap reduction)."""

from __future__ import annotations

from pathlib import Path

from clipsynth_platform.runtime.logs import LogFn

from .config import DemoConfig


def register_with_gap(config: DemoConfig, model_uri: str, shards: Path, log: LogFn) -> dict:
    """Returns {"model_uri": the new version's URI, "gap": what the statistics hold}."""
    import mlflow

    from clipsynth_platform.tracking.registry import log_bundle_model, training_run_of, writable_bundle_copy
    from clipsynth_platform.train.modality_gap import GapFitJobConfig, fit_gap_job

    bundle = writable_bundle_copy(model_uri, config.root / "bundle")
    fitted = fit_gap_job(GapFitJobConfig(data=str(shards), bundle=str(bundle), seed=config.seed))
    run_id = training_run_of(model_uri, {})
    with mlflow.start_run(run_id=run_id) if run_id else mlflow.start_run(run_name="demo-gap"):
        info = log_bundle_model(bundle, registered_name=config.registered_model, name="synthesizer_gap")
    version = getattr(info, "registered_model_version", None)
    uri = f"models:/{config.registered_model}/{version}" if version is not None else info.model_uri
    labels = fitted.get("labels", [])
    log(f"gap statistics ({', '.join(fitted.get('methods', []))}) fitted on {len(labels)} classes -> {uri}")
    return {"model_uri": uri, "gap": fitted}
