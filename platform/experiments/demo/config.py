"""The demo's settings: what a user may change with jobs/demo.py's flags (one per field).

The stage settings no flag changes (run names, log intervals, the ingestion's CPU-only CLIP) are the "demo"
preset (clipsynth_platform.presets); platform/experiments/demo/stage_configs.py puts these knobs on top of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clipsynth_platform.experiments.cpu_run import CpuRunConfig
from clipsynth_platform.runtime.options import opt


@dataclass(frozen=True, kw_only=True)
class DemoConfig(CpuRunConfig):
    """Every setting of the demo (jobs/demo.py: one option each): the shared CPU knobs and the demo's own."""

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
    # 4 groups of the 15 classes a step (OfflineClipConfig): 0.98-0.99 zero-shot on the corpus frames after 700
    offline_clip_steps: int = opt(700, "training steps of the offline CLIP")
    # training: the shared CPU knobs (CpuRunConfig, measured in benchmarks/learning), and the demo's budgets.
    # Quality follows the steps: benchmarks/learning and the demo's runs put image queries at about 0.5 after
    # 1,000 steps and 0.65-0.8 after 1,300-1,600. The diffusion trains for the step target, within its time cap
    # and within what the demo's whole budget leaves it (platform/experiments/demo/budget.py). On 2 cores the budget ends it
    # first (about 1,600-1,900 steps), so the target only bounds a faster machine; a first run, which trains the
    # offline CLIP, gets fewer steps than a run with the CLIP cached.
    diffusion_train_steps: int = opt(2000, "diffusion training steps (the target: time may end the run first)")
    diffusion_train_seconds: float = opt(480.0, "diffusion training time cap")
    demo_seconds: float = opt(
        870.0, "the whole demo's time budget: the diffusion's training ends early enough to keep it (0: none)"
    )
    after_diffusion_seconds: float = opt(
        # measured from the end of training to the summary: 153 s and 157 s in fresh runs on 2 cores
        160.0,
        "what the stages from the diffusion's end on take here (its bundle, evaluation, serving, listening)",
    )
    min_diffusion_seconds: float = opt(120.0, "the least training time the demo's budget may leave the diffusion")
    vocoder_train_seconds: float = opt(10.0, "HiFi-GAN training time budget")
    num_workers: int = opt(1, "Ray Train workers of each training run")
    # evaluation and serving
    serve_steps: int = opt(25, "sampling steps of the service (and the bundle's default)")
    serve_concurrency: int = opt(8, "requests in flight at once (the service's dynamic batching runs them together)")
    queries: tuple[str, ...] = opt((), 'text queries to synthesize; default: "playing {class}" for every class')
    seeds_per_query: int = opt(4, "served clips per query (32 clips: relevance to about +/- 0.09, not 0.12 with 16)")
    experiment: str = opt("clipsynth-demo", "MLflow experiment of every run")
    registered_model: str = opt("clipsynth-demo", "MLflow registered model of the diffusion bundle")
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
