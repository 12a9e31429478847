"""`make vocoder` (jobs/vocoder.py): the demo's HiFi-GAN trained to the CPU recipe, measured, and served.

The demo gives its HiFi-GAN seconds and serves Griffin-Lim; this job gives it the recipe's 20 minutes of
training (benchmarks/vocoder measured the recipe: README, "The vocoder"; in CPU minutes it stays short of
Griffin-Lim, so the demo's own bundle keeps serving Griffin-Lim and this one is the HiFi-GAN to hear beside it,
and the start a longer run resumes from). On the demo's output
(`make demo` first), each stage resumable as the demo's:
  1. train_vocoder: the HiFi-GAN on the demo's shards (Ray Train, the recipe: `CpuRunConfig.hifigan_settings`),
     tracked in the demo's MLflow experiment;
  2. vocoder_bundle: the demo's synthesizer bundle with that HiFi-GAN, serving it, registered as the MLflow
     model `--registered-model` (the service loads it by that name);
  3. vocoder_quality: the HiFi-GAN and Griffin-Lim on the same generated mels and the same real test windows
     (clipsynth_platform.evaluation.vocoder_quality), and the "HiFi-GAN reconstructions" row of the demo
     experiment's Table 1 (an evaluation run with --hifigan-recon; jobs/compare.py tables it).
Writes vocoder_summary.json under the demo's output and ends with the command that serves the bundle.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from clipsynth_platform.experiments.cpu_run import CpuRunConfig
from clipsynth_platform.presets import DEMO, VOCODER
from clipsynth_platform.runtime.logs import LogFn, configure_logging, progress
from clipsynth_platform.runtime.options import opt

from .report import banner
from .stages import Stages, use_local_tracking


@dataclass(frozen=True, kw_only=True)
class VocoderRunConfig(CpuRunConfig):
    """jobs/vocoder.py's settings: the shared CPU knobs (the HiFi-GAN recipe among them) and this job's own."""

    out: str = opt("demo_output", "the demo's output directory: its shards, mel classifier, bundle and MLflow store")
    vocoder_train_seconds: float = opt(1200.0, "HiFi-GAN training time: the recipe's 20 CPU minutes")
    experiment: str = opt("clipsynth-demo", "MLflow experiment (the demo's, whose Table 1 gains the HiFi-GAN row)")
    registered_model: str = opt(
        "clipsynth-demo-hifigan", "MLflow registered model of the demo's bundle with the trained HiFi-GAN"
    )
    per_class: int = opt(8, "generated mels per class that both vocoders turn into audio")
    windows_per_chunk: int = opt(2, "real 4.16 s test windows per test chunk for the spectral distances")

    @property
    def root(self) -> Path:
        return Path(self.out).expanduser().resolve()


def _demo_model_uri(root: Path) -> str:
    summary = root / "demo_summary.json"
    if not summary.exists():
        raise SystemExit(f"no {summary}: `make vocoder` trains on the demo's output; run `make demo` first")
    return str(json.loads(summary.read_text())["model_uri"])


def run_vocoder(config: VocoderRunConfig, log: LogFn | None = None) -> dict:
    """Run (or resume) the three stages; returns what vocoder_summary.json holds."""
    import mlflow

    from clipsynth_platform.runtime.ray_cluster import LocalRay, connect_ray
    from clipsynth_platform.tracking.registry import log_bundle_model, resolve_bundle, resolve_vocoder_dir
    from clipsynth_platform.train.config import HiFiGANTrainConfig
    from clipsynth_platform.train.runner import run_hifigan_training
    from clipsynth_platform.train.vocoder import bundle_with_vocoder

    say = log or progress("vocoder")
    root = config.root
    t_start = time.perf_counter()
    demo_model = _demo_model_uri(root)
    tracking = use_local_tracking(root)
    stages = Stages(root, say)
    train_cfg = VOCODER.build(
        HiFiGANTrainConfig,
        data=str(root / "shards"),
        experiment=config.experiment,
        storage_path=str(root / "checkpoints"),
        tracking_uri=tracking,
        **config.hifigan_settings(),
        train_seconds=config.vocoder_train_seconds,
    )

    def train() -> dict:
        say(f"on {connect_ray('local', DEMO.build(LocalRay, **config.local_ray_settings(tracking)))}")
        return run_hifigan_training(train_cfg).to_dict()

    trained = stages.run("train_vocoder", asdict(train_cfg), train)

    def make_bundle() -> dict:
        vocoder_dir = resolve_vocoder_dir(str(trained["checkpoint_path"]))
        bundle = bundle_with_vocoder(resolve_bundle(demo_model), root / "bundles" / "hifigan", "hifigan", vocoder_dir)
        with mlflow.start_run(run_id=trained["mlflow_run_id"]):
            info = log_bundle_model(bundle, registered_name=config.registered_model)
        version = getattr(info, "registered_model_version", None)
        uri = f"models:/{config.registered_model}/{version}" if version is not None else info.model_uri
        say(f"bundle with the trained HiFi-GAN (step {trained['final_step']}): {bundle}, registered as {uri}")
        return {"bundle": str(bundle), "model_uri": uri}

    bundled = stages.run("vocoder_bundle", {"demo_model": demo_model, "trained": trained}, make_bundle)
    quality = stages.run(
        "vocoder_quality",
        {"bundle": bundled, "per_class": config.per_class, "windows": config.windows_per_chunk, "seed": config.seed},
        lambda: _measure(config, bundled["bundle"], say),
    )
    summary = {
        "seconds": round(time.perf_counter() - t_start, 1),
        "mlflow_tracking_uri": tracking,
        "demo_model": demo_model,
        "training": trained,
        **bundled,
        **quality,
    }
    (root / "vocoder_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    banner(_closing_lines(summary), say)
    return summary


def _measure(config: VocoderRunConfig, bundle: str, say: LogFn) -> dict:
    """Both vocoders on the same mels and windows; the HiFi-GAN reconstruction row of the demo's Table 1."""
    from clipsynth_core import GriffinLimVocoder, Synthesizer
    from clipsynth_platform.evaluation.config import EvalConfig
    from clipsynth_platform.evaluation.mel_classifier import MelClassifier
    from clipsynth_platform.evaluation.runner import run_evaluation
    from clipsynth_platform.evaluation.vocoder_quality import generated_class_mels, reference_windows, score_vocoder

    root = config.root
    judge = MelClassifier.load(root / "mel_classifier")
    synth = Synthesizer.load(bundle)
    mels, intended = generated_class_mels(
        synth, list(judge.config.labels), config.per_class, config.eval_steps, config.seed
    )
    windows = reference_windows(str(root / "shards"), "test", config.windows_per_chunk)
    scores = {
        name: score_vocoder(vocoder, judge, mels, intended, windows).to_dict()
        for name, vocoder in (("hifigan", synth.vocoder), ("griffin-lim", GriffinLimVocoder()))
    }
    for name, s in scores.items():
        say(
            f"{name}: heard as its class {s['relevance']:.2f} ({len(intended)} generated mels); on real test audio "
            f"LSD {s['lsd_db']:.2f} dB, MR-STFT {s['mrstft']:.3f}, mel L1 {s['mel_l1']:.3f}"
        )
    hifigan, griffin_lim = scores["hifigan"], scores["griffin-lim"]
    recon = DEMO.build(
        EvalConfig,
        model=bundle,
        data=str(root / "shards"),
        hifigan_recon=True,
        model_name="HiFi-GAN reconstructions",
        **config.eval_settings(),
        mel_classifier=str(root / "mel_classifier"),
        experiment=config.experiment,
        stats_cache=str(root / "stats_cache"),
    )
    recon_metrics = {r.test_query_type: {"run_id": r.run_id, **r.metrics} for r in run_evaluation(recon)}
    return {
        "vocoders": scores,
        "generated_mels": len(intended),
        "test_windows": len(windows.labels),
        "beats_griffin_lim": hifigan["relevance"] >= griffin_lim["relevance"]
        and hifigan["lsd_db"] < griffin_lim["lsd_db"],
        "table1_recon": recon_metrics,
    }


def _closing_lines(summary: dict) -> list[str]:
    h, g = summary["vocoders"]["hifigan"], summary["vocoders"]["griffin-lim"]
    tracking, uri = summary["mlflow_tracking_uri"], summary["model_uri"]
    return [
        f"Done in {summary['seconds']:.0f} s: the HiFi-GAN trained {summary['training']['final_step']} steps.",
        f"  heard as its class: HiFi-GAN {h['relevance']:.2f}, Griffin-Lim {g['relevance']:.2f} "
        f"({summary['generated_mels']} generated mels)",
        f"  log-spectral distance to the real audio: HiFi-GAN {h['lsd_db']:.2f} dB, Griffin-Lim {g['lsd_db']:.2f} dB",
        "  "
        + ("it beats Griffin-Lim on both" if summary["beats_griffin_lim"] else "it does NOT beat Griffin-Lim on both"),
        f"  bundle: {summary['bundle']} ({uri})",
        "Serve it (the page and /healthz say which vocoder serves):",
        f"  MLFLOW_TRACKING_URI={tracking} CLIPSYNTH_MODEL_URI={uri} .venv/bin/serve run serve:app",
    ]


def main(config: VocoderRunConfig) -> int:
    configure_logging()
    try:
        run_vocoder(config)
    except KeyboardInterrupt:
        print("[vocoder] interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0
