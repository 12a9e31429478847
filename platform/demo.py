"""The embedded default: the whole platform end to end on the built-in sample corpus, on one machine.

    corpus (FluidSynth + ffmpeg)  ->  CLIP  ->  ingest (Ray Data)  ->  HiFi-GAN + diffusion (Ray Train)
        ->  mel classifier  ->  evaluation (Ray actors, FAD/FID)  ->  Ray Serve app  ->  a wav file per query

Everything is tracked in one MLflow experiment in a local SQLite file under the output directory. Each stage
writes `stages/<name>.json` when it finishes; a re-run reuses a finished stage whose settings are unchanged
(the corpus builder, ingestion and training also resume from partial work on their own).

CLIP: pretrained ViT-B-32 weights are used when they are in the open_clip cache, given by path, or
downloadable. Otherwise the demo trains (once; it is cached) its offline CLIP (`offline_clip/`): a small dual
encoder that learns from synthetic captioned instrument pictures what a violin looks like and is called, never
seeing audio or a corpus frame. A banner and the MLflow tag `clip_encoder` say which one ran, and the demo
measures its zero-shot accuracy on the corpus frames. `--clip-pretrained none` runs a random CLIP.

What the user hears is measured too: the service's wav files are re-analysed into mels and classified by the
demo's mel classifier (`served_audio` in demo_summary.json), and the same mels through the bundle's HiFi-GAN
and through Griffin-Lim are compared (`vocoders`): the demo's HiFi-GAN trains for under a minute, so the
bundle serves Griffin-Lim (`--serving-vocoder`).
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

BANNER_WIDTH = 100


@dataclass
class DemoConfig:
    out: str = "demo_output"
    # corpus: enough videos per class to learn from, and a split stratified by class (every class in both)
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
    videos_per_class: int = 20
    test_per_class: int = 4
    min_seconds: float = 10.0
    max_seconds: float = 12.0
    # CLIP: pretrained when available, else the offline encoder (offline_clip/), trained once and cached
    clip_model: str = "ViT-B-32"
    clip_pretrained: str = "openai"  # a tag, a weights path, "offline" (skip the lookup) or "none" (random)
    offline_clip_pictures: int = 400
    offline_clip_steps: int = 1500
    # training: measured in benchmarks/learning (the "cpu" U-Net learns the 8 classes in a few CPU minutes)
    model_size: str = "cpu"
    diffusion_steps: int = 1000
    # The time budget ends the run (on 2 cores the worker, with its rows cached, makes about 4.5 steps/s);
    # the step cap only bounds a faster machine.
    diffusion_train_steps: int = 2000
    diffusion_train_seconds: float = 345.0
    diffusion_batch_size: int = 16
    diffusion_lr: float = 3e-3
    # benchmarks/learning, 360 s on this data: cosine decay 0.67/0.64 (image/text relevance) vs constant 0.62/0.50
    diffusion_lr_schedule: str = "cosine"
    diffusion_ema_decay: float = 0.999
    # Each pass over the data restarts Ray Data's streaming split, a stall of several seconds on 2 cores: long
    # passes (many windows per chunk) stall rarely, and a large shuffle buffer keeps batches diverse in chunks.
    diffusion_examples_per_pass: int = 8192
    diffusion_shuffle_buffer: int = 4096
    vocoder_size: str = "tiny"
    vocoder_train_seconds: float = 10.0
    vocoder_batch_size: int = 4
    vocoder_segment_frames: int = 16
    # The HiFi-GAN gets under a minute here, far from the 500K steps it needs: the demo serves Griffin-Lim and
    # measures both on the same mels (demo_summary.json: vocoders).
    serving_vocoder: str = "griffin-lim"
    num_workers: int = 1
    cpus_per_worker: int = 2  # torch threads of the Train worker: both cores
    classifier_epochs: int = 40
    # evaluation and serving
    eval_samples: int = 64
    eval_steps: int = 25
    serve_steps: int = 25
    serve_concurrency: int = 8  # requests in flight at once
    queries: tuple[str, ...] = ()  # default: "playing {class}" for every class
    seeds_per_query: int = 4  # 32 served clips: relevance to about +/- 0.09, not +/- 0.12 with 16
    seed: int = 0
    experiment: str = "clipsynth-demo"
    registered_model: str = "clipsynth-demo"
    ray_num_cpus: int = 6  # logical CPUs: more than the physical cores so data stages are never starved
    serve_port: int = 8000
    serve_import_path: str = "serve:app_builder"
    keep_serving: bool = False

    def query_list(self) -> list[tuple[str, str]]:
        """(text query, intended class): the given queries (class guessed by name), or one per class."""
        if not self.queries:
            return [(f"playing {c.replace('_', ' ')}", c) for c in self.classes]
        out = []
        for q in self.queries:
            match = [c for c in self.classes if c.replace("_", " ") in q]
            out.append((q, match[0] if match else ""))
        return out

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


@dataclass(frozen=True)
class DemoClip:
    """The CLIP the demo runs with, and what kind it is (the banner and every MLflow run say which)."""

    model: str
    pretrained: str  # an open_clip tag, a weights path, or "none"
    kind: str  # "pretrained" | "offline-toy" | "random"
    note: str = ""  # for the offline encoder: its zero-shot accuracy on fresh pictures

    @property
    def identity(self) -> str:
        return f"{self.model}/{self.pretrained}"

    def tags(self) -> dict[str, str]:
        return {"clip": self.identity, "clip_encoder": self.kind, "clip_random": str(self.kind == "random").lower()}


def pretrained_clip_missing(config: DemoConfig, allow_download: bool) -> str | None:
    """Why the configured pretrained CLIP cannot be loaded (no file, not in the cache, no download), or None
    when it loads. The demo's choice between pretrained and offline CLIP is this answer; its test asks it too."""
    from clipsynth_core import ClipConfig, ClipQueryEncoder, ClipWeightsError

    try:
        ClipQueryEncoder(
            ClipConfig(model_name=config.clip_model, pretrained=config.clip_pretrained, allow_download=allow_download)
        )
    except ClipWeightsError as exc:
        return str(exc).splitlines()[0]
    return None


def resolve_clip(config: DemoConfig, log: Callable[[str], None] = print) -> DemoClip:
    """Pretrained weights from the cache, a path or a download; else the offline encoder, trained once and cached."""
    choice = config.clip_pretrained.lower()
    if choice == "none":
        return DemoClip(config.clip_model, "none", "random")
    reason = "--clip-pretrained offline"
    if choice != "offline":
        missing = pretrained_clip_missing(config, allow_download=_hub_reachable())
        if missing is None:
            log(f"[demo] CLIP {config.clip_model}/{config.clip_pretrained}: pretrained weights found")
            return DemoClip(config.clip_model, config.clip_pretrained, "pretrained")
        reason = missing
    from .offline_clip import OfflineClipConfig, offline_clip

    trained = offline_clip(
        OfflineClipConfig(pictures_per_class=config.offline_clip_pictures, steps=config.offline_clip_steps), log=log
    )
    note = f"zero-shot {trained.report.heldout_zero_shot:.2f} on fresh pictures"
    banner(
        [
            "NO PRETRAINED CLIP WEIGHTS: the demo runs its OFFLINE CLIP, a small dual encoder trained here once",
            "(and cached) with open_clip's contrastive loss on synthetic captioned instrument pictures. Like the",
            "paper's CLIP it never saw audio, nor a corpus frame. Text queries mean something for the instruments",
            f"it knows ({len(trained.report.classes)}; {note}), not beyond.",
            f"Reason: {reason[: BANNER_WIDTH - 10]}",
            "For real CLIP: put ViT-B-32/openai in the open_clip cache, or pass --clip-pretrained /path/to/weights",
        ],
        log,
    )
    return DemoClip(trained.clip_config.model_name, trained.clip_config.pretrained, "offline-toy", note)


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


def _log_ingest_run(config: DemoConfig, summary: dict, shards: Path, clip: DemoClip) -> str:
    """Ingestion does not track itself; the demo records its summary as the experiment's preprocessing run."""
    import mlflow

    from .registry import ensure_experiment

    with mlflow.start_run(experiment_id=ensure_experiment(config.experiment), run_name="preprocess") as run:
        mlflow.set_tags({"stage": "preprocess", **clip.tags()})
        mlflow.log_params(
            {"input": str(config.root / "corpus"), "output": str(shards), "test_per_class": config.test_per_class}
        )
        mlflow.log_metrics(
            {k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        )
        mlflow.log_dict(summary, "_summary.json")
        return run.info.run_id


def _tag_clip(experiment: str, clip: DemoClip) -> None:
    """Every run of the experiment says which CLIP the demo ran with."""
    import mlflow

    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return
    client = mlflow.MlflowClient()
    for run in client.search_runs([exp.experiment_id], max_results=500):
        for key, value in clip.tags().items():
            client.set_tag(run.info.run_id, key, value)


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

    def ask(query: str, label: str, seed: int, k: int) -> dict:
        body = json.dumps({"query": query, "seed": seed, "steps": config.serve_steps}).encode()
        req = urllib.request.Request(f"{base}/synthesize", data=body, headers={"Content-Type": "application/json"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=600) as r:
            wav = r.read()
        path = samples / f"{query.replace(' ', '_')}_{k}.wav"
        path.write_bytes(wav)
        seconds = time.perf_counter() - t0
        log(f"[demo] serve: 'a photo of {query}' (seed {seed}) -> {path} ({len(wav)} bytes, {seconds:.1f} s)")
        return {"query": f"a photo of {query}", "label": label, "seed": seed, "file": str(path), "seconds": seconds}

    asks = [
        (query, label, config.seed + i * config.seeds_per_query + k, k)
        for i, (query, label) in enumerate(config.query_list())
        for k in range(config.seeds_per_query)
    ]
    # As clients would: several requests in flight, so the service's dynamic batching runs them together (a
    # request's audio depends only on its query and seed, not on its batch mates; tests/test_serve_units.py).
    with ThreadPoolExecutor(max_workers=config.serve_concurrency, thread_name_prefix="client") as clients:
        written = list(clients.map(lambda a: ask(*a), asks))
    return written


def _frames_zero_shot(clip: DemoClip, shards: Path, log: Callable[[str], None]) -> dict:
    """CLIP's zero-shot accuracy on the corpus frames ingestion embedded ("a photo of playing {class}")."""
    from clipsynth_core import ClipConfig, ClipQueryEncoder

    from .offline_clip import dataset_zero_shot

    encoder = ClipQueryEncoder(ClipConfig(model_name=clip.model, pretrained=clip.pretrained, allow_download=False))
    result = dataset_zero_shot(encoder, str(shards))
    worst = min(result.per_class, key=lambda name: result.per_class[name])
    log(
        f"[demo] CLIP zero-shot on {result.frames} corpus frames: {result.accuracy:.3f} "
        f"({len(result.classes)} classes; lowest {worst} {result.per_class[worst]:.2f})"
    )
    return result.to_dict()


def _judge_served_audio(config: DemoConfig, written: list[dict], log: Callable[[str], None]):
    """The served wav files, re-analysed into mels and classified by the demo's mel classifier."""
    from .evaluation.audio_relevance import judge_wav_files
    from .evaluation.mel_classifier import MelClassifier

    judged = [w for w in written if w["label"]]
    classifier = MelClassifier.load(config.root / "mel_classifier")
    result = judge_wav_files(classifier, [w["file"] for w in judged], [w["label"] for w in judged])
    for j in result.judgements:
        log(f"[demo] listen: {j.name}: heard as {j.predicted} (p[{j.intended}] = {j.intended_probability:.2f})")
    log(f"[demo] served audio relevance {result.relevance:.2f} (chance {result.chance:.3f})")
    return result


def _compare_vocoders(config: DemoConfig, model_uri: str, log: Callable[[str], None]) -> dict:
    """The same generated mels through the bundle's HiFi-GAN and Griffin-Lim, each re-analysed and classified."""
    from clipsynth_core import Synthesizer

    from .evaluation.audio_relevance import compare_vocoders
    from .evaluation.mel_classifier import MelClassifier
    from .registry import resolve_bundle

    pairs = config.query_list()
    queries = [q for q, label in pairs for _ in range(config.seeds_per_query) if label]
    labels = [label for _, label in pairs for _ in range(config.seeds_per_query) if label]
    synth = Synthesizer.load(resolve_bundle(model_uri))
    classifier = MelClassifier.load(config.root / "mel_classifier")
    seeds = [config.seed + 10_000 + i for i in range(len(queries))]
    result = compare_vocoders(synth, classifier, queries, labels, seeds, steps=config.serve_steps)
    parts = ", ".join(f"{name} {r.relevance:.2f}" for name, r in result.audio.items())
    log(f"[demo] vocoders on the same {len(queries)} mels: mel {result.mel.relevance:.2f}; audio {parts}")
    figure = _class_mel_figure(config, synth, [(q, label) for q, label in pairs if label])
    log(f"[demo] generated vs real mel of every class: {figure}")
    return {**result.to_dict(), "figure": str(figure)}


def _class_mel_figure(config: DemoConfig, synth, pairs: list[tuple[str, str]]) -> Path:
    """The mel generated for each class's text query beside the first test mel of that class."""
    import numpy as np

    from .evaluation.data import iter_split_rows
    from .evaluation.plots import generated_vs_real_png

    real: dict = {}
    for row in iter_split_rows(str(config.root / "shards"), "test", ["label", "mel", "n_mels", "mel_frames"]):
        if row["label"] not in real:
            mel = np.asarray(row["mel"], np.float32).reshape(row["n_mels"], row["mel_frames"])
            real[row["label"]] = mel[:, :64]
    pairs = [(q, label) for q, label in pairs if label in real]
    queries = [q for q, _ in pairs]
    generated = synth.sample_mels(synth.encode(queries), steps=config.serve_steps, seed=config.seed).cpu().numpy()
    path = config.root / "class_mels.png"
    return generated_vs_real_png(
        generated,
        np.stack([real[label] for _, label in pairs]),
        [f"a photo of {q}" for q in queries],
        [label for _, label in pairs],
        path,
    )


def run_demo(config: DemoConfig, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) every stage; returns a summary of where everything is."""
    import mlflow

    from .ray_cluster import LocalRay, connect_ray

    root = config.root
    root.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    tracking = _tracking(root)
    os.environ["MLFLOW_TRACKING_URI"] = tracking
    mlflow.set_tracking_uri(tracking)
    log("[demo] config " + json.dumps(asdict(config), default=str))
    stages = Stages(root)

    # 1. corpus, while CLIP is found or trained: rendering waits on FluidSynth and ffmpeg processes and leaves
    # cores to spare, so the offline CLIP's training overlaps it (about 40 s less on 2 cores)
    from .corpus import CorpusConfig, build_corpus

    corpus_cfg = CorpusConfig(
        out=str(root / "corpus"),
        classes=tuple(config.classes),
        videos_per_class=config.videos_per_class,
        min_seconds=config.min_seconds,
        max_seconds=config.max_seconds,
        test_per_class=config.test_per_class,
        seed=config.seed,
    )
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="clip") as pool:
        finding_clip = pool.submit(resolve_clip, config, log)
        manifest = build_corpus(corpus_cfg, progress=lambda m: log(f"[corpus] {m}"))
        log(f"[demo] corpus: {len(manifest.videos)} videos in {root / 'corpus'} ({len(manifest.reused)} reused)")

        # 2. a local Ray shared by every stage, started while the offline CLIP may still be training
        # The Serve app (`serve:app_builder`) lives at the repository root, like `serve run serve:app` expects;
        # the driver and every Ray worker (which inherit this environment) need that root on their import path.
        project_root = str(Path(__file__).resolve().parents[1])
        if project_root not in sys.path:
            sys.path.insert(0, project_root)
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (project_root, os.environ.get("PYTHONPATH", "")) if p)
        local = LocalRay(
            num_cpus=config.ray_num_cpus,
            object_store_bytes=1_500_000_000,
            env_vars={"MLFLOW_TRACKING_URI": tracking},
            worker_niceness=0,  # as Ray Jobs: the Train worker does not yield to every other busy process
        )
        log(f"[demo] on {connect_ray('local', local)}")
        clip = finding_clip.result()
    labels_file = str(root / "corpus" / manifest.split_index)  # path,label,split: the stratified split

    # 3. ingestion
    from .ingest import IngestConfig, run_ingest

    shards = root / "shards"
    ingest_cfg = IngestConfig(
        input=str(root / "corpus"),
        output=str(shards),
        labels=labels_file,
        clip_model=clip.model,
        clip_pretrained=clip.pretrained,
        clip_allow_download=False,
        num_gpus=0,
    )

    def ingest() -> dict:
        summary = run_ingest(ingest_cfg, log=log)
        summary["clip_zero_shot"] = _frames_zero_shot(clip, shards, log)
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
        max_steps=1_000_000,
        train_seconds=config.vocoder_train_seconds,
        batch_size=config.vocoder_batch_size,
        segment_frames=config.vocoder_segment_frames,
        cpus_per_worker=config.cpus_per_worker,
        checkpoint_every=1_000_000,  # the final checkpoint only
        log_every=10,
        sample_every=1_000_000,  # samples at the final step only
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
        train_seconds=config.diffusion_train_seconds,
        batch_size=config.diffusion_batch_size,
        lr=config.diffusion_lr,
        lr_schedule=config.diffusion_lr_schedule,
        ema_decay=config.diffusion_ema_decay,
        ema_warmup=True,
        cpus_per_worker=config.cpus_per_worker,
        min_examples_per_pass=config.diffusion_examples_per_pass,
        shuffle_buffer=config.diffusion_shuffle_buffer,
        diffusion_steps=config.diffusion_steps,
        checkpoint_every=max(config.diffusion_train_steps // 3, 1),
        log_every=50,
        sample_every=config.diffusion_train_steps,
        sample_queries=tuple(q for q, _ in config.query_list()[:4]),
        vocoder=vocoder_uri,
        serving_vocoder=config.serving_vocoder,
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
    from .evaluation.runner import METRICS_VERSION, EvalConfig, run_evaluation

    cls_cfg = MelClassifierTrainConfig(
        data=str(shards),
        out=str(root / "mel_classifier"),
        epochs=config.classifier_epochs,
        experiment=config.experiment,
    )
    stages.run("mel_classifier", asdict(cls_cfg), lambda: {"metrics": run_mel_classifier_job(cls_cfg, log=log)[1]}, log)

    # Released backbones when their weights are here (VGGish for FAD, FID Inception for FID); else FAD falls
    # back to the mel classifier's embedding of the audio (fad_melclf) and FID is absent, never a random network.
    fad_backbone = "auto"
    from .evaluation.embedders import resolve_vggish_path
    from .evaluation.inception_fid import resolve_fid_inception_path

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
                fid_backbone="inception",
                mel_classifier=str(root / "mel_classifier"),
                retriever=retriever,
                experiment=config.experiment,
                stats_cache=str(root / "stats_cache"),
            )
            for r in run_evaluation(ecfg, log=log):
                out[f"{r.variant}/{r.test_query_type}"] = {"run_id": r.run_id, **r.metrics}
        return out

    metrics = stages.run(
        "evaluate",
        # the metrics' version too: a demo output evaluated by older metric code is evaluated again
        {"model": model_uri, "samples": config.eval_samples, "fad": fad_backbone, "metrics": METRICS_VERSION},
        evaluate,
        log,
    )
    _tag_clip(config.experiment, clip)

    # 6. the service, asked for every class's text query; what it returns is judged as audio
    written = _synthesize_over_http(config, model_uri, log)
    listened = _judge_served_audio(config, written, log)
    vocoders = stages.run(
        "compare_vocoders",
        {"model": model_uri, "queries": config.query_list(), "steps": config.serve_steps},
        lambda: _compare_vocoders(config, model_uri, log),
        log,
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
        "served_audio": listened.to_dict(),
        "vocoders": vocoders,
        "metrics": metrics,
    }
    (root / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    zero_shot = summary["clip_zero_shot"] or {}
    text, image = metrics.get("image/text", {}), metrics.get("image/image", {})
    lines = [
        f"Done in {summary['seconds']:.0f} s. Everything is under {root}",
        f"  CLIP: {clip.kind} ({clip.identity}); zero-shot on the corpus frames {zero_shot.get('accuracy', float('nan')):.2f}",
        f"  relevance of generated mels: image queries {image.get('relevance', float('nan')):.2f}, text queries "
        f"{text.get('relevance', float('nan')):.2f} (chance {listened.chance:.3f})",
        f"  served audio ({config.serving_vocoder}), re-analysed and classified: relevance {listened.relevance:.2f} "
        f"over {len(listened.judgements)} text queries",
        f"  samples (16 kHz wav): {root / 'samples'}",
        f"  shards: {shards}   corpus: {root / 'corpus'}",
        f"  model: {model_uri}",
        "Look and listen in MLflow:",
        f"  .venv/bin/mlflow ui --backend-store-uri {tracking}   then open http://127.0.0.1:5000",
        "Serve the model again and open its page:",
        f"  MLFLOW_TRACKING_URI={tracking} CLIPSYNTH_MODEL_URI={model_uri} .venv/bin/serve run serve:app"
        "   then open http://127.0.0.1:8000/",
    ]
    if clip.kind == "random":
        lines.append("CLIP was RANDOM (--clip-pretrained none): text queries carry no meaning in this run.")
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


__all__ = ["DemoClip", "DemoConfig", "main", "pretrained_clip_missing", "resolve_clip", "run_demo"]
