"""What one evaluation invocation reads once and every run of it shares: the bundle, the training run it came
from, the test split's rows and content hash, and which audio the FAD reference is."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clipsynth_core import Synthesizer
from clipsynth_platform.datasets.splits import column_null_count, dataset_fingerprint, iter_split_rows
from clipsynth_platform.runtime.devices import resolve_device
from clipsynth_platform.runtime.logs import LogFn, get_logger, progress
from clipsynth_platform.runtime.uri import is_s3, strip_scheme
from clipsynth_platform.tracking.registry import resolve_bundle, training_run_of

from .config import TRAIN_QUERY_TYPES, EvalConfig
from .embedders import file_sha256
from .stats_cache import StatsCache

logger = get_logger("evaluate")

TEST_ROW_COLUMNS = ["chunk_id", "label", "clip_model", "frame_times"]


def canonical_uri(uri: str) -> str:
    return str(uri).rstrip("/") if is_s3(uri) else strip_scheme(uri)


@dataclass
class EvalContext:
    """The inputs of one invocation, read by `load`; `close` removes the downloaded bundle."""

    config: EvalConfig
    device: torch.device
    bundle_dir: Path
    synth: Synthesizer
    metadata: dict[str, Any]
    vocoder_id: str  # in the cache key of statistics of vocoded mels
    training_run_id: str | None
    train_query_type: str
    data: str  # the dataset URI as the cache key and tags name it
    test_rows: list[dict[str, Any]]  # TEST_ROW_COLUMNS of every test row, in split order
    fingerprint: str
    fad_reference: str  # "audio" (the test split's) or "vocoded_mels"
    cache: StatsCache
    started: float = field(default_factory=time.perf_counter)
    workdir: tempfile.TemporaryDirectory | None = None

    @classmethod
    def load(cls, config: EvalConfig, log: LogFn | None = None) -> EvalContext:
        log = log or progress("evaluate")
        started = time.perf_counter()
        device = resolve_device(config.device)
        workdir = tempfile.TemporaryDirectory(prefix="clipsynth-eval-")
        try:
            bundle_dir = resolve_bundle(config.model, dst=workdir.name)
            synth = Synthesizer.load(bundle_dir, device=device)
            if config.gap != "none" and (synth.gap is None or config.gap not in synth.gap.methods):
                raise ValueError(f"--gap {config.gap}: the bundle has no such statistics (jobs/fit_modality_gap.py)")
            test_rows = list(iter_split_rows(config.data, "test", TEST_ROW_COLUMNS))
            if not test_rows:
                raise ValueError(f"the test split of {config.data} is empty")
            nulls, rows = column_null_count(config.data, "test", "audio")
        except BaseException:
            workdir.cleanup()
            raise
        # Mixed splits use the vocoder for every clip, so the reference is one kind of audio throughout.
        if 0 < nulls < rows:
            log(f"note: {nulls} of {rows} test rows lack audio; the FAD reference is vocoded mels for all")
        metadata = dict(synth.config.metadata)
        return cls(
            config=config,
            device=device,
            bundle_dir=Path(bundle_dir),
            synth=synth,
            metadata=metadata,
            vocoder_id=vocoder_identity(Path(bundle_dir), synth.config.serving_vocoder),
            training_run_id=training_run_of(config.model, metadata),
            train_query_type=resolve_train_query_type(config, metadata),
            data=canonical_uri(config.data),
            test_rows=test_rows,
            fingerprint=dataset_fingerprint(config.data, "test", config.fingerprint),
            fad_reference="audio" if nulls == 0 else "vocoded_mels",
            cache=StatsCache(None if config.stats_cache.lower() in ("", "none") else config.stats_cache),
            started=started,
            workdir=workdir,
        )

    @property
    def labels(self) -> tuple[str, ...]:
        """The test split's labels, sorted."""
        return tuple(sorted({r["label"] for r in self.test_rows if r["label"] is not None}))

    def close(self) -> None:
        if self.workdir is not None:
            self.workdir.cleanup()
            self.workdir = None


def vocoder_identity(bundle_dir: Path, serving_vocoder: str) -> str:
    """What turns the bundle's mels into audio, for the statistics cache: Griffin-Lim, or its HiFi-GAN's weights
    (a bundle that carries a HiFi-GAN and serves Griffin-Lim is keyed as Griffin-Lim, not by those weights)."""
    if serving_vocoder == "griffin-lim":
        return "griffin-lim"
    return f"{serving_vocoder}:sha256:{file_sha256(bundle_dir / 'vocoder.safetensors')[:16]}"


def resolve_train_query_type(config: EvalConfig, metadata: Mapping[str, Any]) -> str:
    if config.train_query_type:
        return config.train_query_type
    for key in ("train_query_type", "query_type", "condition", "variant"):
        value = str(metadata.get(key, "")).lower().replace("image+text", "hybrid").replace("mixed", "hybrid")
        if value in TRAIN_QUERY_TYPES:
            return value
    logger.info("note: the bundle's metadata names no train query type; assuming 'image' (pass --train-query-type)")
    return "image"
