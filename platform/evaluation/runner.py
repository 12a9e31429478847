"""The evaluation protocol of the paper (sec. 4.1), as one function: `run_evaluation(EvalConfig)`.

For a synthesizer bundle (path or MLflow model URI) and a preprocessed dataset:
1. queries: `num_samples` test rows drawn at random (seeded; the same rows and seeds for text and image
   queries, so the two differ only in the modality). Text queries put the row's label in the dataset's
   template ("playing {label}" on MUSIC, "{label}" on VGG-Sound), which the model's CLIP template turns into
   "a photo of playing violin". Image queries take a random frame of the row: its stored CLIP embedding when
   the shard was embedded with the model's CLIP, else the decoded JPEG through the model's CLIP;
2. samples: generated on Ray actors (`generation.py`), or retrieved by CLIPRetriever from the train split
   (`--retriever`), or the vocoder's reconstructions of the test mels (`--hifigan-recon`);
3. metrics, each named for the backbone that computes it (one name never holds two kinds of number):
   - `fad`: FAD as the literature computes it, VGGish's 128-d pre-activation embeddings of the samples
     against those of the whole test split's audio (its `audio` column, else the bundle's vocoder on its
     mels; the tag `fad_reference` says which). Without VGGish weights, `--fad-backbone auto` (the default)
     falls back to `fad_melclf`: the same distance on the mel classifier's embedding of the audio re-analysed
     into the project's mel, a backbone trained on the data at hand (tag `fad_fallback` says why);
   - `fid`: Inception FID on the mels rendered as images (inception_fid.py, pytorch-fid's network and
     weights file); without the weights file it is not computed, and the tag `fid_absent` says why;
   - `fd_melclf`: the Fréchet distance of the mel classifier's features of 64-frame mel windows against the
     test mels' windows; `relevance`: the classifier's accuracy on the intended label;
   - `<fad metric>_hifigan_recon`: the vocoder's reconstructions of the test mels against the test audio;
   - with `--queries both`, `modality_gap_<metric>`: the metric with text queries minus with image queries.
   Reference statistics are cached (`stats_cache.py`) under a key of everything that changes them;
4. MLflow: one evaluation run per query type, tagged for `compare.py` (every backbone's identity, which
   metrics came from random backbones) and with the training run's id, with the metrics, a few WAVs, a grid
   of mel images and the list of queries as artifacts.

A random backbone (`tiny-random`) is used only where a caller asks for it by name (unit tests); its runs are
tagged, and compare.py never puts them in a table with real ones.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

import mlflow
import numpy as np
import torch

from clipsynth_core import ClipRetriever, Synthesizer, frames_for_seconds
from clipsynth_core.metrics import (
    GaussianStats,
    StatsAccumulator,
    embedding_statistics,
    frechet_distance_stats,
)

from ..batching import apply_by_group, stack_by_length
from ..registry import default_tracking_uri, ensure_experiment, resolve_bundle
from ..schema import audio_of, image_embeddings_of, mel_of
from ..uri import is_s3, strip_scheme
from .data import column_null_count, dataset_fingerprint, gather_rows, iter_split_batches, iter_split_rows
from .embedders import (
    VGGISH_ENV,
    VGGISH_WEIGHTS_FILE,
    VGGISH_WEIGHTS_URL,
    AudioEmbedder,
    BackboneWeightsError,
    build_audio_embedder,
    file_sha256,
    resolve_device,
    resolve_vggish_path,
    vggish_help,
)
from .generation import GeneratedSet, RayGenerator, SampleSpec, SamplingOptions, make_batches
from .inception_fid import FID_INCEPTION_ENV, FID_INCEPTION_FILE, FID_INCEPTION_URL, build_mel_image_fid
from .mel_classifier import (
    CONFIG_FILE,
    ClassifierAudioEmbedder,
    ClassifierFeatures,
    MelFeatureExtractor,
    build_mel_feature_extractor,
)
from .plots import mel_grid_png, write_wavs
from .stats_cache import DEFAULT_CACHE_DIR, StatsCache

DATASET_QUERY_TEMPLATES = {"music": "playing {label}", "vggsound": "{label}"}
TRAIN_QUERY_TYPES = ("image", "text", "hybrid")
VARIANTS = (*TRAIN_QUERY_TYPES, "retriever", "hifigan-recon")
DEFAULT_MODEL_NAMES = {
    "image": "CLIPSynth",
    "text": "CLIPSynth-Text",
    "hybrid": "CLIPSynth-Hybrid",
    "retriever": "CLIPRetriever",
    "hifigan-recon": "HiFi-GAN reconstructions",
}
EVAL_MARKER_TAG = "clipsynth.kind"
EVAL_MARKER = "evaluation"
# Runs without this tag (or with an older value) were logged when `fid` held the classifier distance and FAD
# took VGGish after its ReLU: compare.py leaves them out of tables.
METRICS_VERSION_TAG = "clipsynth.metrics_version"
METRICS_VERSION = "2"
# Version of how reference statistics are computed here (which clips, how they are batched and accumulated).
REFERENCE_VERSION = "reference/2"


def normalize_dataset(name: str) -> str:
    """'MUSIC' -> 'music', 'VGG-Sound' -> 'vggsound'; other names lower-cased."""
    key = str(name).strip().lower()
    compact = re.sub(r"[^a-z0-9]", "", key)
    return compact if compact in DATASET_QUERY_TEMPLATES else key


def is_random_identity(identity: str) -> bool:
    return str(identity).startswith("tiny-random")


@dataclass
class EvalConfig:
    model: str = field(
        default="", metadata={"help": "bundle directory or MLflow model URI (models:/NAME/1, runs:/ID/PATH)"}
    )
    data: str = field(
        default="", metadata={"help": "preprocessed dataset URI (root with test/ and, for the retriever, train/)"}
    )
    dataset: str = field(
        default="music",
        metadata={"help": "dataset name for the table (case-insensitive); music|vggsound set the query template"},
    )
    query_template: str | None = field(
        default=None,
        metadata={"help": "text query of a label, inside CLIP's 'a photo of {query}'; default per dataset"},
    )
    queries: str = field(default="text", metadata={"help": "test query type", "choices": ("text", "image", "both")})
    num_samples: int = field(default=512, metadata={"help": "samples per query type (paper: 512)"})
    steps: int | None = field(default=None, metadata={"help": "sampling steps; default: the bundle's (paper: 1000)"})
    sampler: str | None = field(
        default=None, metadata={"help": "ddpm|ddim; default: the bundle's", "choices": ("ddpm", "ddim")}
    )
    guidance: float | None = field(default=None, metadata={"help": "classifier-free guidance; default: the bundle's"})
    gap: str = field(
        default="none",
        metadata={
            "help": "modality-gap reduction of text queries (the bundle's statistics)",
            "choices": ("none", "shift", "prior"),
        },
    )
    seconds: float = field(default=4.16, metadata={"help": "sample length (4.16 s = 64 frames, the paper's)"})
    seed: int = field(default=0, metadata={"help": "seed of the query draw and of every sample's noise"})
    batch_size: int = field(default=16, metadata={"help": "samples per actor call"})
    num_workers: int = field(default=0, metadata={"help": "Ray actors; 0 = one per GPU, else up to 4 CPU actors"})
    cpus_per_worker: float = field(default=1.0, metadata={"help": "CPUs (and torch threads) of a CPU actor"})
    image_queries: str = field(
        default="auto",
        metadata={
            "help": "image conditions: stored CLIP embeddings, decoded frames, or auto",
            "choices": ("auto", "stored", "frames"),
        },
    )
    fad_backbone: str = field(
        default="auto",
        metadata={
            "help": (
                "auto | vggish | vggish-relu | weights path | melclf | tiny-random[:SEED] | module:factory. "
                "vggish: FAD as published (128-d pre-activation embeddings of 16 kHz audio), from the PyTorch "
                f"VGGish port's {VGGISH_WEIGHTS_FILE} ({VGGISH_WEIGHTS_URL}) given as a path or by "
                f"${VGGISH_ENV}; logged as fad. melclf: the mel classifier's embedding of the audio, logged as "
                "fad_melclf. auto: vggish when its weights are here, else melclf. tiny-random: a random "
                "network, for unit tests only"
            )
        },
    )
    fid_backbone: str = field(
        default="inception",
        metadata={
            "help": (
                "inception | weights path | tiny-random | none. Inception FID on the mels rendered as images "
                f"(pytorch-fid's network), from its {FID_INCEPTION_FILE} ({FID_INCEPTION_URL}) given as a path or "
                f"by ${FID_INCEPTION_ENV}; logged as fid. With 'inception' and no weights file, fid is not "
                "computed (the run's tag fid_absent says why)"
            )
        },
    )
    mel_classifier: str = field(
        default="mel-classifier",
        metadata={
            "help": (
                "mel classifier dir | mel-classifier ($CLIPSYNTH_MEL_CLASSIFIER) | tiny-random | module:factory | "
                "none: the classifier trained on the dataset (jobs/train_mel_classifier.py) for fd_melclf, "
                "relevance and the fad_melclf fallback"
            )
        },
    )
    retriever: bool = field(
        default=False, metadata={"help": "score CLIPRetriever (train-split index) instead of the model"}
    )
    hifigan_recon: bool = field(
        default=False, metadata={"help": "score the vocoder's reconstructions of the test mels"}
    )
    recon_metric: bool = field(
        default=True, metadata={"help": "also log fad_hifigan_recon when the test split has audio"}
    )
    experiment: str = field(default="clipsynth-eval", metadata={"help": "MLflow experiment of the evaluation runs"})
    run_name: str | None = field(
        default=None, metadata={"help": "MLflow run name; default model-variant-queries-dataset"}
    )
    model_name: str | None = field(
        default=None, metadata={"help": "name in the table; default: bundle metadata or variant"}
    )
    train_query_type: str | None = field(
        default=None,
        metadata={"help": "what the model was trained on; default: bundle metadata", "choices": TRAIN_QUERY_TYPES},
    )
    stats_cache: str = field(
        default=str(DEFAULT_CACHE_DIR), metadata={"help": "reference statistics cache dir; 'none' = off"}
    )
    fingerprint: str = field(
        default="footer", metadata={"help": "test-split content hash", "choices": ("footer", "full")}
    )
    max_reference_clips: int = field(default=0, metadata={"help": "0 = the whole test split (the paper's protocol)"})
    num_audio_artifacts: int = field(default=4, metadata={"help": "WAVs logged to MLflow"})
    device: str = field(default="auto", metadata={"help": "device of the metrics backbones in this process"})
    ray_address: str | None = field(
        default=None, metadata={"help": "Ray cluster to join; default: RAY_ADDRESS or a local one"}
    )

    def __post_init__(self) -> None:
        self.dataset = normalize_dataset(self.dataset)
        # Before the Inception FID, --fid-backbone named the mel classifier: a classifier directory there
        # still means the classifier (and the Inception FID keeps its default).
        if (Path(str(self.fid_backbone)).expanduser() / CONFIG_FILE).is_file():
            if self.mel_classifier == "mel-classifier":
                self.mel_classifier = str(self.fid_backbone)
            self.fid_backbone = "inception"

    def validate(self) -> None:
        if not self.model:
            raise ValueError("--model is required (--hifigan-recon too: it uses the bundle's vocoder)")
        if not self.data:
            raise ValueError("--data is required")
        if self.retriever and self.hifigan_recon:
            raise ValueError("--retriever and --hifigan-recon are separate evaluations; pass one")
        if not 2 <= self.num_samples <= 100_000:
            raise ValueError(f"num_samples must be in [2, 100000], got {self.num_samples}")
        if self.steps is not None and not 1 <= self.steps <= 4000:
            raise ValueError(f"steps must be in [1, 4000], got {self.steps}")
        if not 0 < self.seconds <= 60:
            raise ValueError(f"seconds must be in (0, 60], got {self.seconds}")
        if self.batch_size < 1 or self.num_workers < 0 or self.cpus_per_worker <= 0:
            raise ValueError("batch_size >= 1, num_workers >= 0 and cpus_per_worker > 0 are required")
        if "{label}" not in self.template:
            raise ValueError(f"the query template {self.template!r} lacks '{{label}}'")

    @property
    def template(self) -> str:
        return self.query_template or DATASET_QUERY_TEMPLATES.get(self.dataset, "{label}")

    @property
    def query_types(self) -> tuple[str, ...]:
        if self.hifigan_recon:
            return ("n/a",)
        return ("text", "image") if self.queries == "both" else (self.queries,)


@dataclass
class EvalResult:
    run_id: str
    variant: str
    test_query_type: str
    metrics: dict
    tags: dict
    generated: GeneratedSet | None = None
    cache_hits: int = 0  # reference statistics served from the cache (cumulative within one invocation)
    cache_misses: int = 0


def resolve_training_run_id(model_uri: str, metadata: dict) -> str | None:
    """The training run behind a model URI: runs:/ID/..., a registered version's source run, or the bundle's
    metadata (training_run_id / run_id / mlflow_run_id)."""
    try:
        if model_uri.startswith("runs:/"):
            return model_uri[len("runs:/") :].split("/")[0] or None
        if model_uri.startswith("models:/"):
            rest = model_uri[len("models:/") :]
            client = mlflow.MlflowClient()
            if "@" in rest:
                name, alias = rest.split("@", 1)
                return client.get_model_version_by_alias(name, alias.split("/")[0]).run_id or None
            name, _, version = rest.partition("/")
            version = version.split("/")[0]
            if not version.isdigit():  # "latest"
                versions = client.search_model_versions(f"name='{name}'")
                if not versions:
                    return None
                version = str(max(int(v.version) for v in versions))
            return client.get_model_version(name, version).run_id or None
    except mlflow.exceptions.MlflowException as exc:
        print(f"[evaluate] note: cannot resolve the training run of {model_uri}: {exc}")
    for key in ("training_run_id", "run_id", "mlflow_run_id"):
        if metadata.get(key):
            return str(metadata[key])
    return None


def resolve_train_query_type(config: EvalConfig, metadata: dict) -> str:
    if config.train_query_type:
        return config.train_query_type
    for key in ("train_query_type", "query_type", "condition", "variant"):
        value = str(metadata.get(key, "")).lower().replace("image+text", "hybrid").replace("mixed", "hybrid")
        if value in TRAIN_QUERY_TYPES:
            return value
    print(
        "[evaluate] note: the bundle's metadata names no train query type; assuming 'image' (pass --train-query-type)"
    )
    return "image"


def canonical_uri(uri: str) -> str:
    return str(uri).rstrip("/") if is_s3(uri) else strip_scheme(uri)


def _stored_audio(row: dict) -> np.ndarray:
    audio = audio_of(row)
    if audio is None:
        raise ValueError(f"test row {row.get('chunk_id', '?')} stores no audio for the audio reference")
    return audio


class Evaluation:
    """State shared by the runs of one invocation: the bundle, the test split's metadata, the backbones."""

    def __init__(self, config: EvalConfig, log: Callable[[str], None] = print) -> None:
        config.validate()
        self.config = config
        self.log = log
        self.t0 = time.perf_counter()
        self.device = resolve_device(config.device)
        self.cache = StatsCache(None if config.stats_cache.lower() in ("", "none") else config.stats_cache)
        self._generator: RayGenerator | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="clipsynth-eval-")
        self.bundle_dir = resolve_bundle(config.model, dst=self._tmp.name)
        self.synth = Synthesizer.load(self.bundle_dir, device=self.device)
        if config.gap != "none" and (self.synth.gap is None or config.gap not in self.synth.gap.methods):
            raise ValueError(f"--gap {config.gap}: the bundle has no such statistics (jobs/fit_modality_gap.py)")
        self.metadata = dict(self.synth.config.metadata)
        self.vocoder_id = f"sha256:{file_sha256(self.bundle_dir / 'vocoder.safetensors')[:16]}"
        self.training_run_id = resolve_training_run_id(config.model, self.metadata)
        self.train_query_type = resolve_train_query_type(config, self.metadata)
        if config.retriever:
            self.variant = "retriever"
        elif config.hifigan_recon:
            self.variant = "hifigan-recon"
        else:
            self.variant = self.train_query_type
        # The bundle's own name belongs to its diffusion model, not to the retriever or vocoder baselines.
        bundle_name = self.metadata.get("model_name") if self.variant in TRAIN_QUERY_TYPES else None
        self.model_name = config.model_name or bundle_name or DEFAULT_MODEL_NAMES[self.variant]
        self.data = canonical_uri(config.data)
        self.test_rows = list(iter_split_rows(config.data, "test", ["chunk_id", "label", "clip_model", "frame_times"]))
        if not self.test_rows:
            raise ValueError(f"the test split of {config.data} is empty")
        self.fingerprint = dataset_fingerprint(config.data, "test", config.fingerprint)
        nulls, rows = column_null_count(config.data, "test", "audio")
        # Mixed splits use the vocoder for every clip, so the reference is one kind of audio throughout.
        self.fad_reference = "audio" if nulls == 0 else "vocoded_mels"
        if 0 < nulls < rows:
            log(f"[evaluate] note: {nulls} of {rows} test rows lack audio; the FAD reference is vocoded mels for all")
        labels = tuple(sorted({r["label"] for r in self.test_rows if r["label"] is not None}))
        self.extractor: MelFeatureExtractor | None = (
            None
            if config.mel_classifier.lower() == "none"
            else build_mel_feature_extractor(config.mel_classifier, self.device, labels=labels)
        )
        self.fad_fallback: str | None = None
        self.embedder: AudioEmbedder = self._build_embedder(config.fad_backbone)
        self.fad_metric: str = getattr(self.embedder, "metric_name", "fad")
        self.fid_absent: str | None = None
        self.fid: MelFeatureExtractor | None = self._build_fid(config.fid_backbone)
        for name, backbone in (("FAD", self.embedder), ("FID", self.fid), ("mel classifier", self.extractor)):
            if backbone is not None and self._is_random(backbone):
                log(f"[evaluate] note: the {name} backbone {backbone.identity} is RANDOM: its numbers carry no meaning")

    # ------------------------------------------------------------------------------------- backbones
    @staticmethod
    def _is_random(backbone) -> bool:
        return bool(getattr(backbone, "random", False)) or is_random_identity(backbone.identity)

    def _classifier_embedder(self, why: str) -> ClassifierAudioEmbedder:
        if not isinstance(self.extractor, ClassifierFeatures):
            raise BackboneWeightsError(
                f"{why}, and there is no mel classifier to fall back on (--mel-classifier DIR, or "
                "$CLIPSYNTH_MEL_CLASSIFIER; train one with jobs/train_mel_classifier.py)"
            )
        return ClassifierAudioEmbedder(self.extractor, self.synth.config.mel)

    def _build_embedder(self, spec: str) -> AudioEmbedder:
        spec = str(spec).strip()
        if spec in ("melclf", "mel-classifier"):
            return self._classifier_embedder(f"--fad-backbone {spec} needs the mel classifier")
        if spec == "auto":
            path, where = resolve_vggish_path()
            if path is not None:
                return build_audio_embedder(f"vggish:{path}", self.device)
            self.fad_fallback = f"no VGGish weights at {where}"
            embedder = self._classifier_embedder(vggish_help(f"no file at {where}"))
            self.log(
                f"[evaluate] note: {self.fad_fallback}; FAD is measured with the mel classifier's audio embedding "
                f"and logged as {embedder.metric_name} (not comparable to VGGish FADs). See jobs/evaluate.py --help."
            )
            return embedder
        return build_audio_embedder(spec, self.device)

    def _build_fid(self, spec: str) -> MelFeatureExtractor | None:
        spec = str(spec).strip()
        if spec.lower() == "none":
            self.fid_absent = "disabled (--fid-backbone none)"
            return None
        window = self.synth.config.mel.segment_frames
        try:
            return build_mel_image_fid(spec, self.device, window_frames=window)
        except BackboneWeightsError as exc:
            if spec != "inception":  # a file asked for by name must be there
                raise
            self.fid_absent = "no FID Inception weights"
            self.log(f"[evaluate] note: fid is not computed: {exc}")
            return None

    # ------------------------------------------------------------------------------------- references
    def _ref_parts(self, metric: str, reference: str, backbone) -> dict:
        """Everything that changes a reference's statistics (and nothing that does not, such as the device):
        the data and its content, the backbone's weights (in its identity) and code version, what the
        reference is, and how many clips it takes."""
        c = self.config
        parts = {
            "metric": metric,
            "data": self.data,
            "split": "test",
            "fingerprint": f"{c.fingerprint}:{self.fingerprint}",
            "backbone": backbone.identity,
            "backbone_version": getattr(backbone, "version", "unversioned"),
            "reference": reference,
            "reference_version": REFERENCE_VERSION,
            "max_reference_clips": c.max_reference_clips,
        }
        if hasattr(backbone, "window_frames"):
            parts["window_frames"] = backbone.window_frames
        if reference == "vocoded_mels":
            parts["vocoder"] = self.vocoder_id
        return parts

    def _test_batches(self, columns: list[str]) -> Iterator[list[dict]]:
        limit = self.config.max_reference_clips
        seen = 0
        for _, rows in iter_split_batches(self.config.data, "test", columns, batch_rows=32):
            if limit:
                rows = rows[: max(0, limit - seen)]
            if not rows:
                return
            seen += len(rows)
            yield rows

    @torch.no_grad()
    def vocode(self, mels: list[np.ndarray]) -> list[np.ndarray]:
        """Waveforms of normalised mels [n_mels, T] (any mix of lengths), in input order."""
        return apply_by_group(mels, lambda m: m.shape[-1], self._vocode_batch)

    def _vocode_batch(self, mels: list[np.ndarray]) -> list[np.ndarray]:
        batch = torch.from_numpy(np.stack([np.asarray(m, dtype=np.float32) for m in mels]))
        return list(self.synth.vocode(batch).cpu().numpy())

    def embed_waves(self, waves: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([self.embedder.embed(torch.from_numpy(g)) for g in stack_by_length(waves)])

    def _audio_stats(self, reference: str) -> GaussianStats:
        acc = StatsAccumulator()
        clips = 0
        columns = ["audio"] if reference == "audio" else ["mel", "n_mels", "mel_frames"]
        for rows in self._test_batches(columns):
            waves: list[np.ndarray]
            if reference == "audio":
                waves = [_stored_audio(r) for r in rows]
            else:
                waves = self.vocode([mel_of(r) for r in rows])
            acc.update(self.embed_waves(waves))
            clips += len(rows)
            self.log(f"[reference] {reference}: {clips} test clips embedded")
        return acc.stats()

    def audio_reference(self, reference: str) -> tuple[GaussianStats, bool]:
        parts = self._ref_parts(self.fad_metric, reference, self.embedder)
        if isinstance(self.embedder, ClassifierAudioEmbedder):
            parts["sample_rate"] = self.embedder.sample_rate
        return self.cache.get_or_compute(parts, lambda: self._audio_stats(reference))

    def _mel_stats(self, extractor: MelFeatureExtractor) -> GaussianStats:
        acc = StatsAccumulator()
        for rows in self._test_batches(["mel", "n_mels", "mel_frames"]):
            for group in stack_by_length([mel_of(r) for r in rows], dtype=np.float32):
                acc.update(extractor.features(group))
        return acc.stats()

    def mel_reference(self, extractor: MelFeatureExtractor | None = None) -> tuple[GaussianStats, bool]:
        """The test mels' windows through `extractor` (default: the mel classifier)."""
        chosen = extractor or self.extractor
        if chosen is None:
            raise ValueError("no mel feature extractor for the mel reference (--mel-classifier none)")
        metric = getattr(chosen, "metric_name", "fd_melclf")
        parts = self._ref_parts(metric, "mels", chosen)
        return self.cache.get_or_compute(parts, lambda: self._mel_stats(chosen))

    # ----------------------------------------------------------------------------------------- queries
    def plan(self, query_type: str) -> list[SampleSpec]:
        """The seeded draw of test rows, frames and noise seeds (identical for text and image queries)."""
        c = self.config
        labelled = [i for i, r in enumerate(self.test_rows) if r["label"] is not None and r["frame_times"]]
        eligible = labelled or [i for i, r in enumerate(self.test_rows) if r["frame_times"]]
        if query_type == "text" and not labelled:
            raise ValueError("text queries need labels, and no test row has one")
        if not eligible:
            raise ValueError("no test row has frames to query with")
        rng = np.random.default_rng(c.seed)
        rows = rng.choice(np.asarray(eligible), size=c.num_samples, replace=True)
        frames = [int(rng.integers(0, len(self.test_rows[r]["frame_times"]))) for r in rows]
        seeds = rng.integers(0, 2**31 - 1, size=c.num_samples)
        specs = []
        for i, (r, f, s) in enumerate(zip(rows.tolist(), frames, seeds.tolist())):
            label = self.test_rows[r]["label"]
            text = c.template.format(label=label.replace("_", " ")) if query_type == "text" else None
            specs.append(SampleSpec(index=i, seed=int(s), label=label, text=text, row=r, frame=f))
        if query_type == "image":
            self._attach_images(specs)
        return specs

    def _attach_images(self, specs: list[SampleSpec]) -> None:
        mode = self.config.image_queries
        sources = [s.source for s in specs]
        rows = sorted({r for r, _ in sources})
        identity = self.synth.config.clip.identity
        stored_ok = all(self.test_rows[r]["clip_model"] == identity for r in rows)
        if mode == "stored" and not stored_ok:
            found = sorted({self.test_rows[r]["clip_model"] for r in rows})
            raise ValueError(f"the test split was embedded with CLIP {found}, the model uses {identity!r}; use frames")
        if mode == "stored" or (mode == "auto" and stored_ok):
            got = gather_rows(self.config.data, "test", ["image_embeddings", "embed_dim"], rows)
            for s, (row, frame) in zip(specs, sources):
                s.embedding = image_embeddings_of(got[row])[frame]
            return
        got = gather_rows(self.config.data, "test", ["frames_jpeg"], rows)
        for s, (row, frame) in zip(specs, sources):
            jpeg = got[row]["frames_jpeg"][frame]
            if not jpeg:
                raise ValueError(
                    f"test row {row} has no JPEG for frame {frame} and its stored embeddings come from "
                    f"another CLIP ({self.test_rows[row]['clip_model']!r}, model: {identity!r})"
                )
            s.jpeg = jpeg

    # ----------------------------------------------------------------------------------------- samples
    def generate(self, specs: list[SampleSpec]) -> GeneratedSet:
        from ..ray_cluster import LocalRay, connect_ray

        c = self.config
        connect_ray(c.ray_address, LocalRay(dashboard=False))
        if self._generator is None:  # started once, shared by the text and image runs
            max_batches = len(make_batches(specs, c.batch_size))
            self._generator = RayGenerator(self.bundle_dir, c.num_workers, c.cpus_per_worker, max_batches, self.log)
        options = SamplingOptions(steps=c.steps, sampler=c.sampler, guidance=c.guidance, seconds=c.seconds, gap=c.gap)
        return self._generator.generate(specs, options, c.batch_size)

    def retrieve(self, specs: list[SampleSpec]) -> GeneratedSet:
        """CLIPRetriever over every frame of the train split; returns the retrieved clips' windows."""
        t0 = time.perf_counter()
        identity = self.synth.config.clip.identity
        embeddings: list[np.ndarray] = []
        entries: list[tuple[int, float]] = []
        for start, rows in iter_split_batches(
            self.config.data, "train", ["image_embeddings", "embed_dim", "frame_times", "clip_model"], 256
        ):
            for k, row in enumerate(rows):
                if row["clip_model"] != identity:
                    raise ValueError(f"train row {start + k} was embedded with {row['clip_model']!r}, not {identity!r}")
                emb = image_embeddings_of(row)
                embeddings.append(emb)
                entries.extend((start + k, float(t)) for t in row["frame_times"][: len(emb)])
        if not entries:
            raise ValueError("the retriever's index is empty: no frames in the train split")
        # The index's "audio" is the entry id, so the M clips stay on disk; the retrieved ones are read below.
        retriever = ClipRetriever(
            self.synth.encoder, torch.from_numpy(np.concatenate(embeddings)), torch.arange(len(entries))[:, None]
        )
        kind = specs[0].kind
        if kind == "text":
            hits = retriever.synthesize([s.text for s in specs])[:, 0]
        elif kind == "embedding":
            # the kind says every spec carries one
            stored = [cast(np.ndarray, s.embedding) for s in specs]
            hits = retriever.nearest(torch.from_numpy(np.stack(stored)), 1)[1][:, 0]
        else:
            import io

            from PIL import Image

            pictures = [Image.open(io.BytesIO(cast(bytes, s.jpeg))).convert("RGB") for s in specs]
            hits = retriever.synthesize(pictures)[:, 0]
        picked = [entries[int(h)] for h in hits]
        picked_rows = gather_rows(
            self.config.data, "train", ["audio", "mel", "n_mels", "mel_frames"], sorted({r for r, _ in picked})
        )
        frames = frames_for_seconds(self.config.seconds, self.synth.config.mel)
        hop = self.synth.config.mel.hop_length
        sr = self.synth.config.mel.sample_rate
        mels, waves = [], []
        vocoded = 0  # retrieved clips without stored audio, heard through the bundle's vocoder
        for row_id, t in picked:
            row = picked_rows[row_id]
            mel = mel_of(row)
            if mel.shape[1] < frames:
                raise ValueError(f"train row {row_id} has {mel.shape[1]} mel frames, fewer than {frames}")
            # The window centred on the frame's time, kept inside the chunk.
            centre = round(t * sr / hop)
            start = int(min(max(centre - frames // 2, 0), mel.shape[1] - frames))
            window = mel[:, start : start + frames]
            audio = audio_of(row)
            if audio is not None and len(audio) >= (start + frames) * hop:
                wave = audio[start * hop : (start + frames) * hop]
            else:
                wave = self.vocode([window])[0]
                vocoded += 1
            mels.append(window)
            waves.append(wave)
        extra = {
            "retriever_index_entries": len(entries),
            "retriever_distinct_hits": len(set(int(h) for h in hits)),
            "retriever_vocoded_clips": vocoded,
        }
        return GeneratedSet(specs, np.stack(mels), np.stack(waves), seconds=time.perf_counter() - t0, extra=extra)

    def reconstructions(self, count: int) -> GeneratedSet:
        """The vocoder's reconstructions of the first test mels' first windows (artifacts of the recon run)."""
        frames = self.synth.config.mel.segment_frames
        rows = list(iter_split_rows(self.config.data, "test", ["mel", "n_mels", "mel_frames", "label"]))[:count]
        mels = np.stack([mel_of(r)[:, :frames] for r in rows])
        specs = [SampleSpec(index=i, seed=0, label=r["label"], row=i) for i, r in enumerate(rows)]
        return GeneratedSet(specs, mels, np.stack(self.vocode(list(mels))))

    # ----------------------------------------------------------------------------------------- metrics
    def score(self, generated: GeneratedSet) -> dict:
        metrics: dict[str, float] = {}
        ref, hit = self.audio_reference(self.fad_reference)
        self.log(
            f"[metrics] {self.fad_metric} reference ({self.fad_reference}): {ref.count} embeddings, "
            f"cache {'hit' if hit else 'miss'}"
        )
        gen_stats = embedding_statistics(self.embed_waves(list(generated.waves)))
        metrics[self.fad_metric] = frechet_distance_stats(gen_stats, ref)
        metrics["num_reference_embeddings"] = ref.count
        metrics["num_generated_embeddings"] = gen_stats.count
        for extractor in (self.fid, self.extractor):
            if extractor is None:
                continue
            mel_ref, _ = self.mel_reference(extractor)
            gen = embedding_statistics(extractor.features(generated.mels))
            metrics[getattr(extractor, "metric_name", "fd_melclf")] = frechet_distance_stats(gen, mel_ref)
        if self.extractor is not None:
            metrics.update(self.relevance(generated))
        if self.config.recon_metric and self.fad_reference == "audio":
            metrics[f"{self.fad_metric}_hifigan_recon"] = self.recon_fad(ref)
        return metrics

    def recon_fad(self, audio_ref: GaussianStats) -> float:
        recon, _ = self.audio_reference("vocoded_mels")
        return frechet_distance_stats(recon, audio_ref)

    def relevance(self, generated: GeneratedSet) -> dict:
        labels = getattr(self.extractor, "labels", None)
        if self.extractor is None or not labels or not hasattr(self.extractor, "predict_proba"):
            return {}
        index = {name: i for i, name in enumerate(labels)}
        scored = [k for k, s in enumerate(generated.specs) if s.label in index]
        if not scored:
            self.log("[metrics] relevance: no generated sample's label is one of the classifier's")
            return {}
        probs = self.extractor.predict_proba(generated.mels[scored])
        target = np.array([index[generated.specs[k].label] for k in scored])
        return {
            "relevance": float((probs.argmax(axis=1) == target).mean()),
            "relevance_prob": float(probs[np.arange(len(target)), target].mean()),
            "relevance_scored": len(scored),
        }

    # ------------------------------------------------------------------------------------------ MLflow
    def tags(self, test_query_type: str) -> dict:
        generative = self.variant in TRAIN_QUERY_TYPES
        if self.variant == "hifigan-recon":
            unlabeled = "n/a"
            train_q = "n/a"
        elif self.variant == "retriever":
            # The retriever's index is frames and audio only: no labels are involved.
            unlabeled, train_q = "true", "n/a"
        else:
            unlabeled = str(self.train_query_type == "image").lower()
            train_q = self.train_query_type
        tags = {
            EVAL_MARKER_TAG: EVAL_MARKER,
            "model_name": self.model_name,
            "variant": self.variant,
            "dataset": self.config.dataset,
            "train_query_type": train_q,
            "test_query_type": test_query_type,
            "generative": str(generative).lower(),
            "unlabeled_only": unlabeled,
            "fad_reference": self.fad_reference,
            "fad_metric": self.fad_metric,
            "fad_backbone": self.embedder.identity,
            "fid_backbone": self.fid.identity if self.fid else "absent",
            "melclf_backbone": self.extractor.identity if self.extractor else "none",
            "random_backbones": ",".join(self.random_metrics()) or "none",
            METRICS_VERSION_TAG: METRICS_VERSION,
            "model_uri": self.config.model,
            "data_uri": self.data,
            "clip_model": self.synth.config.clip.identity,
        }
        if self.fid_absent:
            tags["fid_absent"] = self.fid_absent
        if self.fad_fallback:
            tags["fad_fallback"] = self.fad_fallback
        if self.training_run_id:
            tags["training_run_id"] = self.training_run_id
        return tags

    def random_metrics(self) -> list[str]:
        """The metrics this evaluation computes with a random backbone."""
        out = []
        if self._is_random(self.embedder):
            out.append(self.fad_metric)
        if self.fid is not None and self._is_random(self.fid):
            out.append("fid")
        if self.extractor is not None and self._is_random(self.extractor):
            out += ["fd_melclf", "relevance"]
        return out

    def params(self) -> dict:
        c = self.config
        d = self.synth.config.sampling
        resolved = {
            "steps_used": c.steps or d.steps,
            "sampler_used": c.sampler or d.sampler,
            "guidance_used": d.guidance if c.guidance is None else c.guidance,
            "query_template_used": c.template,
            "clip_template": self.synth.config.clip.template,
        }
        return {**{k: str(v) for k, v in asdict(c).items()}, **{k: str(v) for k, v in resolved.items()}}

    def log_run(self, test_query_type: str, metrics: dict, generated: GeneratedSet | None) -> tuple[str, dict]:
        c = self.config
        tags = self.tags(test_query_type)
        experiment_id = ensure_experiment(c.experiment)
        name = c.run_name or f"{self.model_name}-{self.variant}-{test_query_type}-{c.dataset}"
        if len(c.query_types) > 1 and c.run_name:
            name = f"{c.run_name}-{test_query_type}"
        with mlflow.start_run(experiment_id=experiment_id, run_name=name) as run:
            mlflow.set_tags(tags)
            mlflow.log_params(self.params())
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
            if generated is not None:
                with tempfile.TemporaryDirectory() as tmp:
                    n = min(c.num_audio_artifacts, len(generated.specs))
                    names = [f"{s.index:03d}_{s.label or 'unlabelled'}" for s in generated.specs[:n]]
                    write_wavs(Path(tmp) / "samples", generated.waves[:n], names, self.synth.config.mel.sample_rate)
                    titles = [s.label or "?" for s in generated.specs[:16]]
                    mel_grid_png(generated.mels[:16], titles, Path(tmp) / "mel_grid.png")
                    (Path(tmp) / "queries.json").write_text(
                        json.dumps(
                            {
                                "clip_template": self.synth.config.clip.template,
                                "samples": [s.describe() for s in generated.specs],
                                **generated.extra,
                            },
                            indent=1,
                        )
                    )
                    mlflow.log_artifacts(tmp, artifact_path="eval")
        return run.info.run_id, tags

    def close(self) -> None:
        if self._generator is not None:
            self._generator.close()
            self._generator = None
        self._tmp.cleanup()


def run_evaluation(config: EvalConfig, log: Callable[[str], None] = print) -> list[EvalResult]:
    """Evaluate as configured; one MLflow run (and EvalResult) per test query type."""
    mlflow.set_tracking_uri(default_tracking_uri())
    log("[evaluate] config " + json.dumps(asdict(config), sort_keys=True))
    ev = Evaluation(config, log)
    results: list[EvalResult] = []
    try:
        log(
            f"[evaluate] model {ev.model_name!r} variant={ev.variant} clip={ev.synth.config.clip.identity} "
            f"training_run={ev.training_run_id} test rows={len(ev.test_rows)} fad_reference={ev.fad_reference}"
        )
        for query_type in config.query_types:
            t0 = time.perf_counter()
            if ev.variant == "hifigan-recon":
                if ev.fad_reference != "audio":
                    raise ValueError("HiFi-GAN reconstruction FAD needs the test split's audio column")
                ref, _ = ev.audio_reference("audio")
                recon = ev.recon_fad(ref)
                metrics = {ev.fad_metric: recon, f"{ev.fad_metric}_hifigan_recon": recon}
                generated = ev.reconstructions(max(config.num_audio_artifacts, 1))
            else:
                specs = ev.plan(query_type)
                if query_type == "text":
                    example = ev.synth.encoder.format_queries([specs[0].text])[0]
                    log(f"[evaluate] text queries look like {example!r}")
                generated = ev.retrieve(specs) if ev.variant == "retriever" else ev.generate(specs)
                metrics = ev.score(generated)
                metrics["num_samples"] = len(specs)
                metrics["seconds_generation"] = generated.seconds
                metrics.update({k: v for k, v in generated.extra.items() if isinstance(v, (int, float))})
            metrics["seconds_total"] = time.perf_counter() - t0
            run_id, tags = ev.log_run(query_type, metrics, generated)
            log(
                f"[evaluate] run {run_id} ({query_type}): "
                + ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
            )
            results.append(
                EvalResult(run_id, ev.variant, query_type, metrics, tags, generated, ev.cache.hits, ev.cache.misses)
            )
        by_query = {r.test_query_type: r for r in results}
        if {"text", "image"} <= by_query.keys():
            text_m, image_m = by_query["text"].metrics, by_query["image"].metrics
            gap = {
                f"modality_gap_{k}": text_m[k] - image_m[k]
                for k in (ev.fad_metric, "fid", "fd_melclf")
                if k in text_m and k in image_m
            }
            client = mlflow.MlflowClient()
            for r in results:
                for k, v in gap.items():
                    client.log_metric(r.run_id, k, v)
                r.metrics.update(gap)
            log(f"[evaluate] modality gap: {gap}")
        log(
            f"[evaluate] done in {time.perf_counter() - ev.t0:.1f} s: {len(results)} run(s); "
            f"samples {[len(r.generated.specs) if r.generated else 0 for r in results]}; test clips "
            f"{len(ev.test_rows)}; reference cache hits {ev.cache.hits}, misses {ev.cache.misses}"
        )
    finally:
        ev.close()
    return results
