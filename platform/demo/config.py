"""The demo's settings: what a user may change with jobs/demo.py's flags (one per field).

The stage settings no flag changes (run names, log intervals, the ingestion's CPU-only CLIP) are the "demo"
preset (clipsynth_platform.presets); platform/demo/stage_configs.py puts these knobs on top of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..options import opt


@dataclass
class DemoConfig:
    """Every setting of the demo (jobs/demo.py: one option each)."""

    out: str = opt("demo_output", "output directory: corpus, shards, checkpoints, MLflow, samples, stages")
    # corpus: enough videos per class to learn from, and a split stratified by class (every class in both)
    classes: tuple[str, ...] = opt(
        ("acoustic_guitar", "cello", "clarinet", "flute", "trumpet", "tuba", "violin", "xylophone"),
        "MUSIC classes of the corpus (space-separated)",
    )
    videos_per_class: int = opt(20, "corpus videos per class")
    test_per_class: int = opt(4, "corpus videos of each class in the test split")
    min_seconds: float = opt(10.0, "shortest corpus video")
    max_seconds: float = opt(12.0, "longest corpus video")
    # CLIP: pretrained when available, else the offline encoder (offline_clip/), trained once and cached
    clip_model: str = opt("ViT-B-32", "open_clip model name")
    clip_pretrained: str = opt(
        "openai", 'a pretrained tag, a weights path, "offline" (skip the lookup: the offline CLIP) or "none" (random)'
    )
    offline_clip_pictures: int = opt(400, "synthetic pictures per class of the offline CLIP's training")
    offline_clip_steps: int = opt(1500, "training steps of the offline CLIP")
    # training: measured in benchmarks/learning (the "cpu" U-Net learns the 8 classes in a few CPU minutes)
    model_size: str = opt("cpu", "U-Net size (tiny, cpu, small, paper)")
    diffusion_steps: int = opt(1000, "diffusion steps of the training process")
    # The time budget ends the run (on 2 cores the worker, with its rows cached, makes about 4.5 steps/s);
    # the step cap only bounds a faster machine.
    diffusion_train_steps: int = opt(2000, "diffusion training step cap (the time budget ends the run first here)")
    diffusion_train_seconds: float = opt(345.0, "diffusion training time budget")
    diffusion_batch_size: int = opt(16, "diffusion batch size")
    diffusion_lr: float = opt(3e-3, "diffusion learning rate")
    # benchmarks/learning, 360 s on this data: cosine decay 0.67/0.64 (image/text relevance) vs constant 0.62/0.50
    diffusion_lr_schedule: str = opt("cosine", "diffusion learning-rate schedule (constant or cosine)")
    diffusion_ema_decay: float = opt(0.999, "EMA rate of the diffusion weights")
    # Each pass over the data restarts Ray Data's streaming split, a stall of several seconds on 2 cores: long
    # passes (many windows per chunk) stall rarely, and a large shuffle buffer keeps batches diverse in chunks.
    diffusion_examples_per_pass: int = opt(8192, "examples per pass over the data (long passes stall rarely)")
    diffusion_shuffle_buffer: int = opt(4096, "rows in the Train worker's shuffle buffer")
    vocoder_size: str = opt("tiny", "HiFi-GAN size (tiny, small, paper)")
    vocoder_train_seconds: float = opt(10.0, "HiFi-GAN training time budget")
    vocoder_batch_size: int = opt(4, "HiFi-GAN segments per step")
    vocoder_segment_frames: int = opt(16, "mel frames per HiFi-GAN training segment")
    # The HiFi-GAN gets under a minute here, far from the 500K steps it needs: the demo serves Griffin-Lim and
    # measures both on the same mels (demo_summary.json: vocoders).
    serving_vocoder: str = opt(
        "griffin-lim", "vocoder the bundle serves with (hifigan or griffin-lim)", choices=("hifigan", "griffin-lim")
    )
    num_workers: int = opt(1, "Ray Train workers of each training run")
    cpus_per_worker: int = opt(2, "logical CPUs (torch threads) of the Train worker: both cores")
    classifier_epochs: int = opt(40, "epochs of the mel classifier (FID and relevance)")
    # evaluation and serving
    eval_samples: int = opt(64, "generated samples per evaluation")
    eval_steps: int = opt(25, "sampling steps of evaluation")
    serve_steps: int = opt(25, "sampling steps of the service (and the bundle's default)")
    serve_concurrency: int = opt(8, "requests in flight at once (the service's dynamic batching runs them together)")
    queries: tuple[str, ...] = opt((), 'text queries to synthesize; default: "playing {class}" for every class')
    seeds_per_query: int = opt(4, "served clips per query (32 clips: relevance to about +/- 0.09, not 0.12 with 16)")
    seed: int = opt(0, "seed of the corpus, training and sampling")
    experiment: str = opt("clipsynth-demo", "MLflow experiment of every run")
    registered_model: str = opt("clipsynth-demo", "MLflow registered model of the diffusion bundle")
    ray_num_cpus: int = opt(6, "logical CPUs of the local Ray: more than the cores so data stages are never starved")
    serve_port: int = opt(8000, "HTTP port of the Serve app")
    serve_import_path: str = opt("serve:app_builder", "the Serve application builder (module:attribute)")
    keep_serving: bool = opt(False, "keep the Serve app running after the summary, until Ctrl-C")

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
