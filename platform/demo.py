"""The embedded default: the whole platform end to end on the built-in sample corpus, on one machine.

    corpus (FluidSynth + ffmpeg)  ->  ingest (Ray Data)  ->  HiFi-GAN + diffusion (Ray Train)  ->  mel classifier
        ->  evaluation (Ray actors, FAD/FID)  ->  Ray Serve app  ->  wav files for a few text queries

Everything is tracked in one MLflow experiment in a local SQLite file under the output directory. Each stage
writes `stages/<name>.json` when it finishes; a re-run reuses a finished stage whose settings are unchanged
(the corpus builder, ingestion and training also resume from partial work on their own).

CLIP: pretrained ViT-B-32 weights are used when they are in the open_clip cache, given by path, or
downloadable. Otherwise the demo falls back to a tiny random CLIP, says so in a banner, and tags every MLflow
run `clip_random=true`: with random CLIP the model still learns image->audio, but text queries carry no meaning.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

BANNER_WIDTH = 100


@dataclass
class DemoConfig:
    out: str = "demo_output"
    # corpus
    classes: tuple[str, ...] = (
        "acoustic_guitar",
        "cello",
        "clarinet",
        "flute",
        "trumpet",
        "tuba",
        "violin",
        "xylophone",
    )
    videos_per_class: int = 3
    min_seconds: float = 10.0
    max_seconds: float = 15.0
    test_fraction: float = 0.25  # the default 24-video corpus needs more than the paper's 10% to have a test split
    # CLIP
    clip_model: str = "ViT-B-32"
    clip_pretrained: str = "openai"  # a tag, a weights path, or "none"
    fallback_clip_model: str = "tiny"
    # training (a few CPU minutes each)
    model_size: str = "tiny"
    diffusion_steps: int = 1000
    diffusion_train_steps: int = 100
    diffusion_batch_size: int = 8
    diffusion_lr: float = 5e-4
    vocoder_size: str = "tiny"
    vocoder_train_steps: int = 40
    vocoder_batch_size: int = 4
    vocoder_segment_frames: int = 16
    num_workers: int = 1
    classifier_epochs: int = 15
    # evaluation and serving
    eval_samples: int = 16
    eval_steps: int = 25
    serve_steps: int = 50
    queries: tuple[str, ...] = ("playing violin", "playing cello", "playing flute", "playing trumpet")
    seed: int = 0
    experiment: str = "clipsynth-demo"
    registered_model: str = "clipsynth-demo"
    ray_num_cpus: int = 6  # logical CPUs: more than the physical cores so data stages are never starved
    serve_port: int = 8000
    serve_import_path: str = "serve:app_builder"
    keep_serving: bool = False

    @property
    def root(self) -> Path:
        return Path(self.out).expanduser().resolve()


def banner(lines: list[str], log: Callable[[str], None] = print) -> None:
    log("#" * BANNER_WIDTH)
    for line in lines:
        log(f"# {line}")
    log("#" * BANNER_WIDTH)


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_clip(config: DemoConfig, log: Callable[[str], None] = print) -> tuple[str, str, bool]:
    """(model, pretrained, is_random): pretrained weights from cache/path/download, else the tiny random CLIP."""
    from clipsynth_core import ClipConfig, ClipQueryEncoder, ClipWeightsError

    if config.clip_pretrained.lower() == "none":
        return config.clip_model, "none", True
    allow_download = _hub_reachable()
    try:
        ClipQueryEncoder(
            ClipConfig(model_name=config.clip_model, pretrained=config.clip_pretrained, allow_download=allow_download)
        )
        log(f"[demo] CLIP {config.clip_model}/{config.clip_pretrained}: pretrained weights found")
        return config.clip_model, config.clip_pretrained, False
    except ClipWeightsError as exc:
        reason = str(exc).splitlines()[0]
    banner(
        [
            "NO PRETRAINED CLIP WEIGHTS: the demo runs with a small RANDOM CLIP.",
            "Text queries will carry NO meaning: random CLIP does not put 'violin' near violin frames.",
            "The pipeline, training, tracking and serving all run for real; the runs are tagged clip_random=true.",
            f"Reason: {reason[: BANNER_WIDTH - 10]}",
            "Fix: put ViT-B-32/openai in the open_clip cache, or run with --clip-pretrained /path/to/weights.bin",
        ],
        log,
    )
    return config.fallback_clip_model, "none", True


class Stages:
    """`stages/<name>.json` markers: a finished stage with the same settings is not run again."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "stages"
        self.dir.mkdir(parents=True, exist_ok=True)

    def run(self, name: str, settings: dict, fn: Callable[[], dict], log: Callable[[str], None] = print) -> dict:
        key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
        path = self.dir / f"{name}.json"
        if path.exists():
            done = json.loads(path.read_text())
            if done.get("key") == key:
                log(f"[demo] {name}: reusing the finished stage ({path})")
                return done["result"]
        t0 = time.perf_counter()
        log(f"[demo] {name}: running")
        result = fn()
        seconds = time.perf_counter() - t0
        path.write_text(
            json.dumps({"key": key, "settings": settings, "seconds": seconds, "result": result}, indent=2, default=str)
        )
        log(f"[demo] {name}: done in {seconds:.0f} s")
        return result


def _tracking(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"


def _log_ingest_run(config: DemoConfig, summary: dict, shards: Path, clip: tuple[str, str, bool]) -> str:
    """Ingestion does not track itself; the demo records its summary as the experiment's preprocessing run."""
    import mlflow

    from .registry import ensure_experiment

    with mlflow.start_run(experiment_id=ensure_experiment(config.experiment), run_name="preprocess") as run:
        mlflow.set_tags({"stage": "preprocess", "clip": f"{clip[0]}/{clip[1]}", "clip_random": str(clip[2]).lower()})
        mlflow.log_params(
            {"input": str(config.root / "corpus"), "output": str(shards), "test_fraction": config.test_fraction}
        )
        mlflow.log_metrics(
            {k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        )
        mlflow.log_dict(summary, "_summary.json")
        return run.info.run_id


def _tag_random_clip(experiment: str, clip: tuple[str, str, bool]) -> None:
    import mlflow

    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return
    client = mlflow.MlflowClient()
    for run in client.search_runs([exp.experiment_id], max_results=500):
        client.set_tag(run.info.run_id, "clip_random", str(clip[2]).lower())
        client.set_tag(run.info.run_id, "clip", f"{clip[0]}/{clip[1]}")


def _synthesize_over_http(config: DemoConfig, model_uri: str, log: Callable[[str], None]) -> list[dict]:
    """Start the Serve app on the running Ray, ask it for each query, save the wav files."""
    from ray import serve
    from ray._common.utils import import_attr

    samples = config.root / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    builder = import_attr(config.serve_import_path)
    app = builder({"model_uri": model_uri, "default_steps": config.serve_steps})
    serve.start(http_options={"host": "127.0.0.1", "port": config.serve_port})
    serve.run(app, name="clipsynth", route_prefix="/", blocking=False)
    base = f"http://127.0.0.1:{config.serve_port}"
    deadline = time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=10) as r:
                if r.status == 200:
                    log(f"[demo] serve: ready at {base} ({r.read().decode()[:200]})")
                    break
        except OSError:
            pass
        if time.time() > deadline:
            raise RuntimeError("the Serve app did not become healthy within 180 s")
        time.sleep(1)
    written = []
    for i, query in enumerate(config.queries):
        body = json.dumps({"query": query, "seed": config.seed + i, "steps": config.serve_steps}).encode()
        req = urllib.request.Request(f"{base}/synthesize", data=body, headers={"Content-Type": "application/json"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=600) as r:
            wav = r.read()
        name = query.replace(" ", "_") + ".wav"
        (samples / name).write_bytes(wav)
        written.append(
            {"query": f"a photo of {query}", "file": str(samples / name), "seconds": time.perf_counter() - t0}
        )
        log(
            f"[demo] serve: 'a photo of {query}' -> {samples / name} ({len(wav)} bytes, {written[-1]['seconds']:.1f} s)"
        )
    return written


def run_demo(config: DemoConfig, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) every stage; returns a summary of where everything is."""
    import mlflow
    import ray

    root = config.root
    root.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    tracking = _tracking(root)
    os.environ["MLFLOW_TRACKING_URI"] = tracking
    mlflow.set_tracking_uri(tracking)
    log("[demo] config " + json.dumps(asdict(config), default=str))
    stages = Stages(root)

    # 1. corpus
    from .corpus import CorpusConfig, build_corpus

    corpus_cfg = CorpusConfig(
        out=str(root / "corpus"),
        classes=tuple(config.classes),
        videos_per_class=config.videos_per_class,
        min_seconds=config.min_seconds,
        max_seconds=config.max_seconds,
        seed=config.seed,
    )
    manifest = build_corpus(corpus_cfg, progress=lambda m: log(f"[corpus] {m}"))
    log(f"[demo] corpus: {len(manifest.videos)} videos in {root / 'corpus'} ({len(manifest.reused)} reused)")
    labels_file = str(root / "corpus" / manifest.label_index)

    # 2. CLIP and a local Ray shared by every stage
    clip = resolve_clip(config, log)
    # The Serve app (`serve:app_builder`) lives at the repository root, like `serve run serve:app` expects; the
    # driver and every Ray worker (which inherit this environment) need that root on their import path.
    project_root = str(Path(__file__).resolve().parents[1])
    if project_root not in sys.path:
        sys.path.insert(0, project_root)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (project_root, os.environ.get("PYTHONPATH", "")) if p)
    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=config.ray_num_cpus,
            object_store_memory=1_500_000_000,
            # The dashboard serves Ray's state API: without it Ray Train's placement-group watcher warns on every
            # check that it cannot see the controller (hundreds of lines per training run).
            runtime_env={"env_vars": {"MLFLOW_TRACKING_URI": tracking}},
        )

    # 3. ingestion
    from .ingest import IngestConfig, run_ingest

    shards = root / "shards"
    ingest_cfg = IngestConfig(
        input=str(root / "corpus"),
        output=str(shards),
        labels=labels_file,
        test_fraction=config.test_fraction,
        clip_model=clip[0],
        clip_pretrained=clip[1],
        clip_allow_download=False,
        num_gpus=0,
    )

    def ingest() -> dict:
        summary = run_ingest(ingest_cfg, log=log)
        summary["mlflow_run_id"] = _log_ingest_run(config, summary, shards, clip)
        return summary

    ingest_summary = stages.run(
        "preprocess", {"ingest": asdict(ingest_cfg), "corpus": manifest.config_hash}, ingest, log
    )

    # 4. HiFi-GAN, then the diffusion model (whose bundle takes the trained vocoder)
    from .train.config import DiffusionTrainConfig, HiFiGANTrainConfig
    from .train.runner import run_diffusion_training, run_hifigan_training

    storage = str(root / "checkpoints")
    voc_cfg = HiFiGANTrainConfig(
        data=str(shards),
        experiment=config.experiment,
        run_name="demo-hifigan",
        storage_path=storage,
        num_workers=config.num_workers,
        model_size=config.vocoder_size,
        max_steps=config.vocoder_train_steps,
        batch_size=config.vocoder_batch_size,
        segment_frames=config.vocoder_segment_frames,
        checkpoint_every=max(config.vocoder_train_steps // 2, 1),
        log_every=10,
        sample_every=config.vocoder_train_steps,
        tracking_uri=tracking,
        seed=config.seed,
    )
    voc = stages.run("train_hifigan", asdict(voc_cfg), lambda: run_hifigan_training(voc_cfg).to_dict(), log)
    vocoder_uri = voc.get("checkpoint_path") or ""

    diff_cfg = DiffusionTrainConfig(
        data=str(shards),
        experiment=config.experiment,
        run_name="demo-diffusion-image",
        storage_path=storage,
        num_workers=config.num_workers,
        variant="image",
        model_size=config.model_size,
        max_steps=config.diffusion_train_steps,
        batch_size=config.diffusion_batch_size,
        lr=config.diffusion_lr,
        ema_decay=0.99,
        diffusion_steps=config.diffusion_steps,
        checkpoint_every=max(config.diffusion_train_steps // 3, 1),
        log_every=25,
        sample_every=config.diffusion_train_steps,
        sample_queries=tuple(config.queries),
        vocoder=vocoder_uri,
        bundle_sampling_steps=config.serve_steps,
        register_as=config.registered_model,
        tracking_uri=tracking,
        seed=config.seed,
    )
    diff = stages.run("train_diffusion", asdict(diff_cfg), lambda: run_diffusion_training(diff_cfg).to_dict(), log)
    record = diff.get("record", {})
    if record.get("registered_version") is not None:
        model_uri = f"models:/{record['registered_model']}/{record['registered_version']}"
    else:
        model_uri = record.get("model_uri") or f"models:/{config.registered_model}/latest"

    # 5. a mel classifier for FID and relevance, then evaluation (text and image queries, and the retriever)
    from .evaluation.mel_classifier import MelClassifierTrainConfig, run_mel_classifier_job
    from .evaluation.runner import EvalConfig, run_evaluation

    cls_cfg = MelClassifierTrainConfig(
        data=str(shards),
        out=str(root / "mel_classifier"),
        epochs=config.classifier_epochs,
        experiment=config.experiment,
    )
    stages.run("mel_classifier", asdict(cls_cfg), lambda: {"metrics": run_mel_classifier_job(cls_cfg, log=log)[1]}, log)

    vggish = os.environ.get("CLIPSYNTH_VGGISH_WEIGHTS") or str(
        Path("~/.cache/clipsynth/vggish.safetensors").expanduser()
    )
    fad_backbone = "vggish" if Path(vggish).exists() else "tiny-random"
    if fad_backbone != "vggish":
        banner(
            [
                "No VGGish weights: FAD uses a RANDOM embedding network (numbers are not comparable to the paper).",
                "Fix: set CLIPSYNTH_VGGISH_WEIGHTS=/path/to/vggish.safetensors (see jobs/evaluate.py --help).",
            ],
            log,
        )

    def evaluate() -> dict:
        out = {}
        for retriever in (False, True):
            ecfg = EvalConfig(
                model=model_uri,
                data=str(shards),
                dataset="music",
                queries="text" if retriever else "both",
                num_samples=config.eval_samples,
                steps=config.eval_steps,
                batch_size=8,
                num_workers=1,
                fad_backbone=fad_backbone,
                fid_backbone=str(root / "mel_classifier"),
                retriever=retriever,
                experiment=config.experiment,
                stats_cache=str(root / "stats_cache"),
            )
            for r in run_evaluation(ecfg, log=log):
                out[f"{r.variant}/{r.test_query_type}"] = {"run_id": r.run_id, **r.metrics}
        return out

    metrics = stages.run(
        "evaluate", {"model": model_uri, "samples": config.eval_samples, "fad": fad_backbone}, evaluate, log
    )
    if clip[2]:
        _tag_random_clip(config.experiment, clip)

    # 6. the service, asked for a few text queries
    written = _synthesize_over_http(config, model_uri, log)

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
        "clip": f"{clip[0]}/{clip[1]}",
        "clip_random": clip[2],
        "samples": written,
        "metrics": metrics,
    }
    (root / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    lines = [
        f"Done in {summary['seconds']:.0f} s. Everything is under {root}",
        f"  samples (16 kHz wav): {root / 'samples'}",
        f"  shards: {shards}   corpus: {root / 'corpus'}",
        f"  model: {model_uri}",
        "Look and listen in MLflow:",
        f"  .venv/bin/mlflow ui --backend-store-uri {tracking}   then open http://127.0.0.1:5000",
        "Serve the model again and open its page:",
        f"  MLFLOW_TRACKING_URI={tracking} CLIPSYNTH_MODEL_URI={model_uri} .venv/bin/serve run serve:app"
        "   then open http://127.0.0.1:8000/",
    ]
    if clip[2]:
        lines.append("CLIP was RANDOM (no pretrained weights found): text queries carry no meaning in this run.")
    banner(lines, log)
    if config.keep_serving:
        log("[demo] serving until Ctrl-C")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    from ray import serve

    serve.shutdown()
    return summary


def main(config: DemoConfig) -> int:
    try:
        run_demo(config)
    except KeyboardInterrupt:
        print("[demo] interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


__all__ = ["DemoConfig", "main", "resolve_clip", "run_demo"]
