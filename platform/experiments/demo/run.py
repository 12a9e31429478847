"""run_demo: every stage in order, each resumable, on one local Ray; main() for jobs/demo.py."""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from clipsynth_platform.presets import DEMO
from clipsynth_platform.runtime.console import open_console
from clipsynth_platform.runtime.logs import LogFn, get_logger, progress

from . import stage_configs
from .budget import diffusion_train_seconds
from .clip import frames_zero_shot, resolve_clip
from .config import DemoConfig
from .gap import register_with_gap
from .listening import compare_served_vocoders, judge_served_audio, synthesize_over_http
from .report import banner, closing_lines
from .stages import Stages, use_local_tracking
from .tracking import log_ingest_run, tag_clip

# The Serve app (`serve:app_builder`) lives at the repository root, like `serve run serve:app` expects.
PROJECT_ROOT = str(Path(__file__).resolve().parents[3])


def _serve_app_importable() -> None:
    """The driver and every Ray worker (which inherit this environment) need the repository root on their path."""
    if PROJECT_ROOT not in sys.path:
        sys.path.insert(0, PROJECT_ROOT)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (PROJECT_ROOT, os.environ.get("PYTHONPATH", "")) if p)


def _model_uri(config: DemoConfig, trained: dict) -> str:
    """The registered version the diffusion stage made, else its run's model."""
    record = trained.get("record", {})
    if record.get("registered_version") is not None:
        return f"models:/{record['registered_model']}/{record['registered_version']}"
    return record.get("model_uri") or f"models:/{config.registered_model}/latest"


def _warn_missing_backbones(log: LogFn) -> None:
    """Released backbones when their weights are here (VGGish for FAD, FID Inception for FID); else FAD falls
    back to the mel classifier's embedding of the audio (fad_melclf) and FID is absent, never a random network."""
    from clipsynth_platform.evaluation.embedders import resolve_vggish_path
    from clipsynth_platform.evaluation.inception_fid import resolve_fid_inception_path

    if resolve_vggish_path()[0] is None or resolve_fid_inception_path()[0] is None:
        banner(
            [
                "VGGish or FID-Inception weights missing: without VGGish, FAD is computed on the demo's mel classifier",
                "(fad_melclf); without Inception, FID is absent. Such numbers do not compare with the paper's Table 1;",
                "jobs/evaluate.py --help says where the weights come from ($CLIPSYNTH_VGGISH_WEIGHTS and",
                "$CLIPSYNTH_FID_INCEPTION_WEIGHTS).",
            ],
            log,
        )


def run_demo(config: DemoConfig, log: LogFn | None = None) -> dict:
    """Run (or resume) every stage; returns a summary of where everything is."""
    from clipsynth_platform.datasets.corpus import build_corpus
    from clipsynth_platform.evaluation.mel_classifier import run_mel_classifier_job
    from clipsynth_platform.evaluation.runner import METRICS_VERSION, run_evaluation
    from clipsynth_platform.ingest import run_ingest
    from clipsynth_platform.runtime.ray_cluster import connect_ray
    from clipsynth_platform.train.runner import run_diffusion_training, run_hifigan_training

    # the stages' own lines ("[ingest] ...") go to the caller's callback when there is one, else to their default
    stage_log: dict[str, Any] = {"log": log} if log is not None else {}
    say = log or progress("demo")
    root = config.root
    root.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    tracking = use_local_tracking(root)
    get_logger("demo").debug("config " + json.dumps(asdict(config), default=str))
    stages = Stages(root, say)

    # 1. corpus, while CLIP is found or trained: rendering waits on FluidSynth and ffmpeg processes and leaves
    # cores to spare, so the offline CLIP's training overlaps it (about 40 s less on 2 cores)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="clip") as pool:
        finding_clip = pool.submit(resolve_clip, config, log)
        corpus_log = (lambda m: log(f"[corpus] {m}")) if log else progress("corpus")
        manifest = build_corpus(stage_configs.corpus_config(config), progress=corpus_log)
        say(f"corpus: {len(manifest.videos)} videos in {root / 'corpus'} ({len(manifest.reused)} reused)")

        # 2. a local Ray shared by every stage, started while the offline CLIP may still be training
        _serve_app_importable()
        say(f"on {connect_ray('local', stage_configs.local_ray(config, tracking))}")
        clip = finding_clip.result()
    labels_file = str(root / "corpus" / manifest.split_index)  # path,label,split: the stratified split

    # 3. ingestion
    shards = root / "shards"
    ingest_cfg = stage_configs.ingest_config(config, labels_file, clip)

    def ingest() -> dict:
        summary = run_ingest(ingest_cfg, **stage_log)
        summary["clip_zero_shot"] = frames_zero_shot(clip, shards, say)
        summary["mlflow_run_id"] = log_ingest_run(config, summary, shards, clip)
        return summary

    ingest_summary = stages.run("preprocess", {"ingest": asdict(ingest_cfg), "corpus": manifest.config_hash}, ingest)

    # 4. HiFi-GAN beside the mel classifier (for FID and relevance), then the diffusion model, whose bundle takes
    # the trained vocoder. The HiFi-GAN stage is mostly Ray Train starting and stopping (it trains for seconds),
    # so the classifier, a plain PyTorch loop here, runs in its idle time; the diffusion model trains alone.
    voc_cfg = stage_configs.hifigan_config(config, tracking)
    cls_cfg = stage_configs.classifier_config(config)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mel-classifier") as pool:
        classifier = pool.submit(
            stages.run,
            "mel_classifier",
            asdict(cls_cfg),
            lambda: {"metrics": run_mel_classifier_job(cls_cfg, **stage_log)[1]},
        )
        voc = stages.run("train_hifigan", asdict(voc_cfg), lambda: run_hifigan_training(voc_cfg).to_dict())
        classifier.result()
    diff_cfg = stage_configs.diffusion_config(config, tracking, voc.get("checkpoint_path") or "")
    # The stage is keyed by its configured cap, so a re-run reuses it however long the earlier stages took.
    seconds = diffusion_train_seconds(config, time.perf_counter() - t_start)
    say(
        f"diffusion: {config.diffusion_train_steps} steps, or {seconds:.0f} s of training if that comes first "
        f"(cap {config.diffusion_train_seconds:.0f} s; "
        + (f"the demo's budget is {config.demo_seconds:.0f} s)" if config.demo_seconds else "no demo budget)")
    )
    run_cfg = replace(diff_cfg, train_seconds=seconds)
    diff = stages.run("train_diffusion", asdict(diff_cfg), lambda: run_diffusion_training(run_cfg).to_dict())
    trained_uri = _model_uri(config, diff)
    gap = stages.run(
        "gap_statistics", {"model": trained_uri}, lambda: register_with_gap(config, trained_uri, shards, say)
    )
    model_uri = gap["model_uri"]  # served, evaluated and reported: the trained weights plus the gap statistics

    # 5. evaluation: text and image queries, and the retriever
    _warn_missing_backbones(say)

    def evaluate() -> dict:
        out = {}
        for retriever in (False, True):
            for r in run_evaluation(stage_configs.eval_config(config, model_uri, retriever), **stage_log):
                out[f"{r.variant}/{r.test_query_type}"] = {"run_id": r.run_id, **r.metrics}
        return out

    fad = DEMO.overrides("EvalConfig")["fad_backbone"]
    # the metrics' version and the judge's config too: a demo output evaluated by older metric code, or by a
    # mel classifier of other settings (which the classifier stage then retrained), is evaluated again
    settings = {
        "model": model_uri,
        "samples": config.eval_samples,
        "fad": fad,
        "metrics": METRICS_VERSION,
        "judge": asdict(cls_cfg),
    }
    metrics = stages.run("evaluate", settings, evaluate)
    tag_clip(config.experiment, clip)

    # 6. the service, asked for every class's text query; what it returns is judged as audio
    written, health = synthesize_over_http(config, model_uri, say)
    listened = judge_served_audio(config, written, say)
    vocoders = stages.run(
        "compare_vocoders",
        {"model": model_uri, "queries": config.query_list(), "steps": config.serve_steps},
        lambda: compare_served_vocoders(config, model_uri, say),
    )

    summary = {
        "seconds": round(time.perf_counter() - t_start, 1),
        "output": str(root),
        "corpus": str(root / "corpus"),
        "shards": str(shards),
        "videos_in": ingest_summary.get("videos_in"),
        "chunks_written": ingest_summary.get("chunks_written"),
        "model_uri": model_uri,
        "mlflow_tracking_uri": tracking,
        "experiment": config.experiment,
        "clip": clip.identity,
        "clip_encoder": clip.kind,
        "clip_random": clip.kind == "random",
        "clip_zero_shot": ingest_summary.get("clip_zero_shot"),
        "serving_vocoder": config.serving_vocoder,
        "samples": written,
        "service": {"card": health.get("card", {}), "defaults": health.get("defaults", {})},
        "served_audio": listened.to_dict(),
        "vocoders": vocoders,
        "metrics": metrics,
    }
    (root / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    banner(closing_lines(summary, listened), say)
    if config.keep_serving:
        say("serving until Ctrl-C")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    from ray import serve

    serve.shutdown()
    return summary


def main(config: DemoConfig) -> int:
    open_console("demo", config.root / "logs")
    try:
        run_demo(config)
    except KeyboardInterrupt:
        print("[demo] interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0
