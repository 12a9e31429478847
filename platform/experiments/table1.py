"""Table 1 in one command: the three CLIPSynth variants, the retriever and the HiFi-GAN row, then the table.

    from clipsynth_platform.experiments.table1 import Table1Config, run_table1
    run_table1(Table1Config(data="demo_output/shards", mel_classifier="demo_output/mel_classifier"))

Stages (each resumable, as the demo's: stages/<name>.json under `out`):
  1. the HiFi-GAN, once, on a STEP budget (Ray Train), shared by every variant's bundle;
  2. the diffusion model per variant (image, text, hybrid: the paper's CLIPSynth, -Text, -Hybrid), all with the
     same step budget, batch, learning rate and condition dropout (Ray Train, tracked in MLflow);
  3. the gap statistics (platform/train/modality_gap.py) written into each bundle (a local copy under bundles/);
  4. evaluation (Ray actors, MLflow runs): every variant with text and image queries, the image-trained model's
     text queries again under each gap reduction (rows "CLIPSynth + shift", "CLIPSynth + prior"), the
     retriever, the HiFi-GAN reconstructions;
  5. jobs/compare.py's table of the experiment: table.md, table.csv, modality_gap.csv, table.png under out/table.
Step budgets, not time caps: a run on a busy machine trains the same models as one on an idle one.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from clipsynth_platform.runtime.logs import LogFn, progress
from clipsynth_platform.runtime.options import opt, required
from clipsynth_platform.train.config import VARIANTS

from .cpu_run import CpuRunConfig

RECON_ROWS = {"griffin-lim": "Griffin-Lim reconstructions", "hifigan": "HiFi-GAN reconstructions"}


@dataclass(frozen=True)
class Table1Config(CpuRunConfig):
    """Every setting of the Table 1 job (jobs/table1.py: one option each): the shared CPU knobs (the demo's, so
    `make table1` trains on the demo's shards as the demo does) and Table 1's own. The bundles' default sampling
    steps are --eval-steps."""

    data: str = required(
        "a preprocessed dataset (train/ and test/ with labels): demo_output/shards for the built-in corpus"
    )
    out: str = opt("table1_output", "output directory (stages/, bundles/, table/, table1_summary.json)")
    mel_classifier: str = opt("", "a mel classifier directory; empty: train one (--classifier-epochs) under out/")
    dataset: str = opt("music", 'the text-query template of evaluation ("a photo of playing {label}")')
    experiment: str = opt("clipsynth-table1", "MLflow experiment of every run")
    variants: tuple[str, ...] = opt(VARIANTS, "diffusion variants to train and table (image, text, hybrid)")
    diffusion_train_steps: int = opt(
        1200, "the same step budget for every variant (~5 min each at ~4 steps/s, estimated)"
    )
    cond_drop_prob: float = opt(0.1, "condition dropout (every variant can be guided)")
    vocoder_train_steps: int = opt(60, "HiFi-GAN step budget (trained once, shared by every variant's bundle)")
    vocoder: str = opt(
        "",
        "a trained HiFi-GAN instead (a vocoder or checkpoint directory, a bundle, or an MLflow URI; make vocoder's: "
        "demo_output/bundles/hifigan): every bundle carries it, and the table gets its 'HiFi-GAN reconstructions' row "
        "beside Griffin-Lim's",
    )
    gap_methods: tuple[str, ...] = opt(("shift", "prior"), "modality-gap reductions tabled for the image model")
    prior_steps: int = opt(600, "optimizer steps of the gap prior")
    fad_backbone: str = opt("auto", "VGGish when its weights are here, else fad_melclf (jobs/evaluate.py --help)")
    fid_backbone: str = opt("inception", "FID network (absent, and tagged, without its weights)")

    def check(self) -> None:
        super().check()
        unknown = set(self.variants) - set(VARIANTS)
        if unknown or not self.variants:
            raise ValueError(f"variants must be among {VARIANTS}, got {self.variants}")
        if set(self.gap_methods) - {"shift", "prior"}:
            raise ValueError(f"gap_methods must be among shift, prior; got {self.gap_methods}")
        for name in ("diffusion_train_steps", "vocoder_train_steps", "eval_samples", "eval_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


@dataclass(frozen=True)
class CompareConfig:
    """jobs/compare.py: the table of an experiment's finished evaluation runs."""

    out: str = required("output directory")
    experiment: str = opt("clipsynth-eval", "MLflow experiment of the evaluation runs")
    mlflow: bool = opt(True, "log the table to a table1-comparison run in the experiment (--no-mlflow: do not)")
    exclude_random: bool = opt(
        False, "leave out runs with random (tiny-random) backbones instead of refusing a mix with real ones"
    )


def compare_runs(config: CompareConfig, log: LogFn | None = None) -> int:
    """Write and print the table (the job's exit status: 2 when the experiment holds nothing to table)."""
    from clipsynth_platform.evaluation.compare import compare_experiment

    log = log or progress("compare")
    log(f"config {asdict(config)}")
    try:
        result = compare_experiment(
            config.experiment, config.out, log_to_mlflow=config.mlflow, exclude_random=config.exclude_random
        )
    except ValueError as exc:
        print(f"[compare] error: {exc}", file=sys.stderr)
        return 2
    print(result.paths["markdown"].read_text())
    log(
        f"{result.runs} evaluation runs, {result.used_runs} used -> {len(result.tables)} table(s); "
        f"wrote {', '.join(str(p) for p in result.paths.values())}"
    )
    return 0


def _train(cfg: Any) -> dict:
    from clipsynth_platform.train.runner import run_diffusion_training

    return run_diffusion_training(cfg).to_dict()


def run_table1(config: Table1Config, log: LogFn | None = None) -> dict:
    """Run (or resume) every stage; returns the table's paths, rows and the modality gaps."""
    from clipsynth_platform.evaluation.compare import compare_experiment
    from clipsynth_platform.evaluation.mel_classifier import MelClassifierTrainConfig, run_mel_classifier_job
    from clipsynth_platform.evaluation.runner import DEFAULT_MODEL_NAMES, METRICS_VERSION, EvalConfig, run_evaluation
    from clipsynth_platform.presets import TABLE1
    from clipsynth_platform.runtime.ray_cluster import LocalRay, connect_ray
    from clipsynth_platform.tracking.registry import writable_bundle_copy
    from clipsynth_platform.train.config import DiffusionTrainConfig, HiFiGANTrainConfig
    from clipsynth_platform.train.modality_gap import GapFitJobConfig, fit_gap_job
    from clipsynth_platform.train.runner import run_hifigan_training
    from clipsynth_platform.train.vocoder import bundle_with_vocoder

    from .demo import Stages, use_local_tracking

    # the stages' own lines ("[evaluate] ...") go to the caller's callback when there is one, else to their default
    stage_log: dict[str, Any] = {"log": log} if log is not None else {}
    log = log or progress("table1")
    config.check()
    root = Path(config.out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    tracking = use_local_tracking(root)
    stages = Stages(root, log)
    local = TABLE1.build(LocalRay, **config.local_ray_settings(tracking))
    log(f"on {connect_ray('local', local)}")
    shared = {
        "data": config.data,
        "experiment": config.experiment,
        "storage_path": str(root / "checkpoints"),
        "tracking_uri": tracking,
    }

    voc_cfg = TABLE1.build(
        HiFiGANTrainConfig,
        **shared,
        **config.hifigan_settings(),
        max_steps=config.vocoder_train_steps,
        checkpoint_every=config.vocoder_train_steps,
        sample_every=config.vocoder_train_steps,
    )
    if config.vocoder:  # a HiFi-GAN trained elsewhere (make vocoder): no 60-step one
        voc = {"checkpoint_path": config.vocoder}
    else:
        voc = stages.run("train_hifigan", asdict(voc_cfg), lambda: run_hifigan_training(voc_cfg).to_dict())

    models: dict[str, str] = {}
    for variant in config.variants:
        cfg = TABLE1.build(
            DiffusionTrainConfig,
            **shared,
            **config.diffusion_settings(),
            run_name=f"table1-diffusion-{variant}",
            variant=variant,
            max_steps=config.diffusion_train_steps,
            cond_drop_prob=config.cond_drop_prob,
            checkpoint_every=config.diffusion_train_steps,
            sample_every=config.diffusion_train_steps,
            vocoder=voc.get("checkpoint_path") or "",
            bundle_sampling_steps=config.eval_steps,
        )
        done = stages.run(f"train_{variant}", asdict(cfg), partial(_train, cfg))
        models[variant] = done["record"]["model_uri"]

    classifier = config.mel_classifier
    if not classifier:
        cls_cfg = MelClassifierTrainConfig(
            data=config.data,
            out=str(root / "mel_classifier"),
            epochs=config.classifier_epochs,
            experiment=config.experiment,
        )
        stages.run("mel_classifier", asdict(cls_cfg), lambda: {"m": run_mel_classifier_job(cls_cfg, **stage_log)[1]})
        classifier = str(root / "mel_classifier")

    def prepare_bundles() -> dict:
        out = {}
        for variant, uri in models.items():
            bundle = writable_bundle_copy(uri, root / "bundles" / variant)
            fit_gap_job(
                GapFitJobConfig(data=config.data, bundle=str(bundle), prior_steps=config.prior_steps, seed=config.seed)
            )
            out[variant] = str(bundle)
        return out

    bundles = stages.run("gap_statistics", {"models": models, "prior_steps": config.prior_steps}, prepare_bundles)

    def evaluate() -> dict:
        base: dict[str, Any] = TABLE1.overrides(EvalConfig) | dict(
            data=config.data,
            dataset=config.dataset,
            **config.eval_settings(),
            fad_backbone=config.fad_backbone,
            fid_backbone=config.fid_backbone,
            mel_classifier=classifier,
            experiment=config.experiment,
            stats_cache=str(root / "stats_cache"),
            seed=config.seed,
        )
        plans = [EvalConfig(model=bundles[v], queries="both", **base) for v in config.variants]
        if "image" in bundles:
            plans += [
                EvalConfig(
                    model=bundles["image"],
                    queries="text",
                    gap=m,
                    model_name=f"{DEFAULT_MODEL_NAMES['image']} + {m}",
                    **base,
                )
                for m in config.gap_methods
            ]
        first = bundles[config.variants[0]]
        plans += [
            EvalConfig(model=first, queries="text", retriever=True, **base),
            EvalConfig(model=first, hifigan_recon=True, model_name=RECON_ROWS[config.serving_vocoder], **base),
        ]
        if config.vocoder:  # the trained HiFi-GAN's reconstructions too, whichever vocoder the bundles serve
            other = "hifigan" if config.serving_vocoder == "griffin-lim" else "griffin-lim"
            copy = bundle_with_vocoder(first, root / "bundles" / f"recon-{other}", other)
            plans.append(EvalConfig(model=str(copy), hifigan_recon=True, model_name=RECON_ROWS[other], **base))
        out = {}
        for plan in plans:
            for r in run_evaluation(plan, **stage_log):
                name = plan.model_name or r.variant
                out[f"{name}/{r.test_query_type}"] = {"run_id": r.run_id, **r.metrics}
        return out

    settings = {
        **({"vocoder": config.vocoder} if config.vocoder else {}),  # (keys of earlier runs without one unchanged)
        "bundles": bundles,
        "samples": config.eval_samples,
        "steps": config.eval_steps,
        "metrics": METRICS_VERSION,
    }
    metrics = stages.run("evaluate", settings, evaluate)
    table = compare_experiment(config.experiment, root / "table")
    summary = {
        "seconds": round(time.perf_counter() - t_start, 1),
        "config": asdict(config),
        "mlflow_tracking_uri": tracking,
        "models": models,
        "bundles": bundles,
        "metrics": metrics,
        "table": {k: str(v) for k, v in table.paths.items()},
        "gaps": table.gaps,
    }
    (root / "table1_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    log((root / "table" / "table.md").read_text())
    return summary
