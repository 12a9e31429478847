"""Generate the evaluation samples in parallel on Ray: a few actors, each holding one Synthesizer.

The bundle's files travel through the object store (each actor writes them to a temporary directory), so
actors on other nodes need no shared filesystem. Each actor takes one GPU when the cluster has GPUs, else
`cpus_per_worker` CPUs (and as many torch threads). Batches go to whichever actor is free
(`ray.util.ActorPool`); every sample has its own seed, so the result does not depend on how samples were
batched or which actor ran them.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from clipsynth_platform.runtime.logs import LogFn, progress

BUNDLE_SUFFIXES = (".json", ".safetensors")


@dataclass
class SampleSpec:
    """One sample to generate: its condition (text, stored image embedding, or a JPEG frame) and seed."""

    index: int
    seed: int
    label: str | None = None
    text: str | None = None
    embedding: np.ndarray | None = None
    jpeg: bytes | None = None
    row: int | None = None  # global index of the test row the query came from
    frame: int | None = None

    @property
    def source(self) -> tuple[int, int]:
        """(test row, frame) the query came from; the query plan sets both for image queries."""
        if self.row is None or self.frame is None:
            raise ValueError(f"sample {self.index} names no test row and frame")
        return self.row, self.frame

    @property
    def kind(self) -> str:
        if self.text is not None:
            return "text"
        if self.embedding is not None:
            return "embedding"
        if self.jpeg is not None:
            return "jpeg"
        raise ValueError(f"sample {self.index} has no condition")

    def describe(self) -> dict:
        return {
            "index": self.index,
            "seed": self.seed,
            "label": self.label,
            "condition": self.kind
            if self.text is not None or self.embedding is not None or self.jpeg is not None
            else None,
            "text": self.text,
            "row": self.row,
            "frame": self.frame,
        }


@dataclass(frozen=True)
class SamplingOptions:
    steps: int | None = None
    sampler: str | None = None
    guidance: float | None = None
    seconds: float | None = None
    gap: str = "none"  # modality-gap reduction of text queries (clipsynth_core.modality_gap)


@dataclass
class GeneratedSet:
    """Samples in index order: mels [N, n_mels, T] (normalised) and waveforms [N, T * hop] at 16 kHz."""

    specs: list[SampleSpec]
    mels: np.ndarray
    waves: np.ndarray
    seconds: float = 0.0
    workers: int = 0
    extra: dict = field(default_factory=dict)


def read_bundle_files(bundle_dir: str | Path) -> dict[str, bytes]:
    d = Path(bundle_dir)
    files = {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file() and p.suffix in BUNDLE_SUFFIXES}
    if "bundle.json" not in files:
        raise FileNotFoundError(f"{d} is not a synthesizer bundle (no bundle.json)")
    return files


def conditions_for(synth, batch: Sequence[SampleSpec], gap: str = "none"):
    """Condition vectors [B, D] for a batch of one kind of condition."""
    import torch

    kinds = {s.kind for s in batch}
    if len(kinds) != 1:
        raise ValueError(f"a batch mixes condition kinds {sorted(kinds)}")
    kind = kinds.pop()
    if kind == "text":
        return synth.encode([s.text for s in batch], gap)
    if kind == "embedding":
        emb = torch.from_numpy(np.stack([np.asarray(s.embedding, dtype=np.float32) for s in batch]))
        if emb.shape[1] != synth.encoder.embed_dim:
            raise ValueError(
                f"stored image embeddings have {emb.shape[1]} dims, the model's CLIP {synth.encoder.embed_dim}"
            )
        return torch.nn.functional.normalize(emb, dim=-1)
    import io

    from PIL import Image

    # kind "jpeg" means every spec of the batch carries its frame's bytes
    return synth.encode([Image.open(io.BytesIO(cast(bytes, s.jpeg))).convert("RGB") for s in batch])


class SynthesisWorker:
    """A Ray actor body: loads the bundle once and turns batches of SampleSpecs into mels and waveforms."""

    def __init__(self, bundle_files: dict[str, bytes], device: str = "cpu", threads: int = 1) -> None:
        import torch

        from clipsynth_core import Synthesizer

        torch.set_num_threads(max(1, int(threads)))
        self.directory = Path(tempfile.mkdtemp(prefix="clipsynth-eval-bundle-"))
        for name, data in bundle_files.items():
            (self.directory / name).write_bytes(data)
        self.synth = Synthesizer.load(self.directory, device=device)
        shutil.rmtree(self.directory, ignore_errors=True)

    def generate(self, batch: list[SampleSpec], options: SamplingOptions) -> dict:
        cond = conditions_for(self.synth, batch, options.gap)
        mels = self.synth.sample_mels(
            cond,
            steps=options.steps,
            seed=[s.seed for s in batch],
            guidance=options.guidance,
            seconds=options.seconds,
            sampler=options.sampler,
        )
        waves = self.synth.vocode(mels)
        return {
            "index": [s.index for s in batch],
            "mels": mels.float().cpu().numpy(),
            "waves": waves.float().cpu().numpy(),
        }


def make_batches(specs: Sequence[SampleSpec], batch_size: int) -> list[list[SampleSpec]]:
    """Consecutive batches of at most `batch_size`, never mixing condition kinds."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    batches: list[list[SampleSpec]] = []
    for spec in specs:
        if batches and len(batches[-1]) < batch_size and batches[-1][-1].kind == spec.kind:
            batches[-1].append(spec)
        else:
            batches.append([spec])
    return batches


def worker_resources(num_workers: int, cpus_per_worker: float, num_batches: int) -> tuple[int, dict]:
    """(actors, per-actor resources): one GPU each when the cluster has GPUs, else CPUs."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus:
        n = num_workers or gpus
        return max(1, min(n, num_batches)), {"num_gpus": 1, "num_cpus": 1}
    cpus = ray.cluster_resources().get("CPU", 1)
    n = num_workers or max(1, min(4, int(cpus // max(cpus_per_worker, 1))))
    return max(1, min(n, num_batches)), {"num_cpus": cpus_per_worker}


class RayGenerator:
    """A pool of SynthesisWorker actors, started once and reused for every generate() until close()."""

    def __init__(
        self,
        bundle_dir: str | Path,
        num_workers: int = 0,
        cpus_per_worker: float = 1.0,
        max_batches: int = 1_000_000,
        log: LogFn | None = None,
    ) -> None:
        import ray

        if not ray.is_initialized():
            raise RuntimeError("Ray is not initialised: call ray.init() (the evaluation job does) first")
        self.log = log or progress("evaluate")
        n_workers, self.resources = worker_resources(num_workers, cpus_per_worker, max_batches)
        self.device = "cuda" if self.resources.get("num_gpus") else "cpu"
        threads = max(1, math.floor(self.resources.get("num_cpus", 1)))
        files_ref = ray.put(read_bundle_files(bundle_dir))
        worker_cls = ray.remote(SynthesisWorker)
        self.actors: list[Any] = [
            worker_cls.options(**self.resources).remote(files_ref, self.device, threads) for _ in range(n_workers)
        ]

    def generate(self, specs: Sequence[SampleSpec], options: SamplingOptions, batch_size: int = 16) -> GeneratedSet:
        """Every spec's sample, in spec order."""
        from ray.util import ActorPool

        if not specs:
            raise ValueError("nothing to generate")
        t0 = time.perf_counter()
        batches = make_batches(specs, batch_size)
        self.log(
            f"generate: {len(specs)} samples in {len(batches)} batches on {len(self.actors)} actor(s) "
            f"({self.device}, {self.resources})"
        )
        by_index: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        done = 0
        pool = ActorPool(self.actors)
        for out in pool.map_unordered(lambda actor, batch: actor.generate.remote(batch, options), batches):
            for k, i in enumerate(out["index"]):
                by_index[i] = (out["mels"][k], out["waves"][k])
            done += len(out["index"])
            self.log(f"generate: {done}/{len(specs)} samples, {time.perf_counter() - t0:.1f} s")
        order = [s.index for s in specs]
        return GeneratedSet(
            list(specs),
            np.stack([by_index[i][0] for i in order]),
            np.stack([by_index[i][1] for i in order]),
            seconds=time.perf_counter() - t0,
            workers=len(self.actors),
        )

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def generate_on_ray(
    bundle_dir: str | Path,
    specs: Sequence[SampleSpec],
    options: SamplingOptions,
    batch_size: int = 16,
    num_workers: int = 0,
    cpus_per_worker: float = 1.0,
    log: LogFn | None = None,
) -> GeneratedSet:
    """Generate every spec on a fresh pool of Ray actors; the result is in spec order."""
    generator = RayGenerator(bundle_dir, num_workers, cpus_per_worker, len(make_batches(specs, batch_size)), log)
    try:
        return generator.generate(specs, options, batch_size)
    finally:
        generator.close()


class EvalSampler:
    """The actors one evaluation generates with: Ray joined (or started) and the actors started on first use,
    then shared by its text and image runs until close()."""

    def __init__(
        self,
        bundle_dir: str | Path,
        options: SamplingOptions,
        batch_size: int = 16,
        num_workers: int = 0,
        cpus_per_worker: float = 1.0,
        ray_address: str | None = None,
        log: LogFn | None = None,
    ) -> None:
        self.bundle_dir = bundle_dir
        self.options = options
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.cpus_per_worker = cpus_per_worker
        self.ray_address = ray_address
        self.log = log or progress("evaluate")
        self._generator: RayGenerator | None = None

    def generate(self, specs: Sequence[SampleSpec]) -> GeneratedSet:
        from clipsynth_platform.runtime.ray_cluster import LocalRay, connect_ray

        connect_ray(self.ray_address, LocalRay(dashboard=False))
        if self._generator is None:
            max_batches = len(make_batches(specs, self.batch_size))
            self._generator = RayGenerator(
                self.bundle_dir, self.num_workers, self.cpus_per_worker, max_batches, self.log
            )
        return self._generator.generate(specs, self.options, self.batch_size)

    def close(self) -> None:
        if self._generator is not None:
            self._generator.close()
            self._generator = None
