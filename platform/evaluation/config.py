"""What an evaluation run is asked to do (`EvalConfig`, whose fields are jobs/evaluate.py's flags) and the
names its MLflow runs are tagged with, which compare.py reads back."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from clipsynth_core.diffusion import SAMPLERS
from clipsynth_platform.runtime.options import check_choices, opt, required

from .embedders import VGGISH_ENV, VGGISH_WEIGHTS_FILE, VGGISH_WEIGHTS_URL
from .inception_fid import FID_INCEPTION_ENV, FID_INCEPTION_FILE, FID_INCEPTION_URL
from .mel_classifier import CONFIG_FILE
from .stats_cache import DEFAULT_CACHE_DIR

DATASET_QUERY_TEMPLATES = {"music": "playing {label}", "vggsound": "{label}"}
TRAIN_QUERY_TYPES = ("image", "text", "hybrid")
EVAL_MARKER_TAG = "clipsynth.kind"
EVAL_MARKER = "evaluation"
# Runs without this tag (or with an older value) were logged when `fid` held the classifier distance and FAD
# took VGGish after its ReLU: compare.py leaves them out of tables.
METRICS_VERSION_TAG = "clipsynth.metrics_version"
METRICS_VERSION = "2"

FAD_BACKBONE_HELP = (
    "auto | vggish | vggish-relu | weights path | melclf | tiny-random[:SEED] | module:factory. "
    "vggish: FAD as published (128-d pre-activation embeddings of 16 kHz audio), from the PyTorch "
    f"VGGish port's {VGGISH_WEIGHTS_FILE} ({VGGISH_WEIGHTS_URL}) given as a path or by "
    f"${VGGISH_ENV}; logged as fad. melclf: the mel classifier's embedding of the audio, logged as "
    "fad_melclf. auto: vggish when its weights are here, else melclf. tiny-random: a random "
    "network, for unit tests only"
)
FID_BACKBONE_HELP = (
    "inception | weights path | tiny-random | none. Inception FID on the mels rendered as images "
    f"(pytorch-fid's network), from its {FID_INCEPTION_FILE} ({FID_INCEPTION_URL}) given as a path or "
    f"by ${FID_INCEPTION_ENV}; logged as fid. With 'inception' and no weights file, fid is not "
    "computed (the run's tag fid_absent says why)"
)
MEL_CLASSIFIER_HELP = (
    "mel classifier dir | mel-classifier ($CLIPSYNTH_MEL_CLASSIFIER) | tiny-random | module:factory | "
    "none: the classifier trained on the dataset (jobs/train_mel_classifier.py) for fd_melclf, "
    "relevance and the fad_melclf fallback"
)


def normalize_dataset(name: str) -> str:
    """'MUSIC' -> 'music', 'VGG-Sound' -> 'vggsound'; other names lower-cased."""
    key = str(name).strip().lower()
    compact = re.sub(r"[^a-z0-9]", "", key)
    return compact if compact in DATASET_QUERY_TEMPLATES else key


def is_random_identity(identity: str) -> bool:
    return str(identity).startswith("tiny-random")


@dataclass
class EvalConfig:
    model: str = required("bundle directory or MLflow model URI (models:/NAME/1, runs:/ID/PATH)")
    data: str = required("preprocessed dataset URI (root with test/ and, for the retriever, train/)")
    dataset: str = opt("music", "dataset name for the table (case-insensitive); music|vggsound set the query template")
    query_template: str | None = opt(
        None, "text query of a label, inside CLIP's 'a photo of {query}'; default per dataset"
    )
    queries: str = opt("text", "test query type", choices=("text", "image", "both"))
    num_samples: int = opt(512, "samples per query type (paper: 512)")
    steps: int | None = opt(None, "sampling steps; default: the bundle's (paper: 1000)")
    sampler: str | None = opt(None, "ddpm|ddim; default: the bundle's", choices=SAMPLERS)
    guidance: float | None = opt(None, "classifier-free guidance; default: the bundle's")
    gap: str = opt(
        "none", "modality-gap reduction of text queries (the bundle's statistics)", choices=("none", "shift", "prior")
    )
    seconds: float = opt(4.16, "sample length (4.16 s = 64 frames, the paper's)")
    seed: int = opt(0, "seed of the query draw and of every sample's noise")
    batch_size: int = opt(16, "samples per actor call")
    num_workers: int = opt(0, "Ray actors; 0 = one per GPU, else up to 4 CPU actors")
    cpus_per_worker: float = opt(1.0, "CPUs (and torch threads) of a CPU actor")
    image_queries: str = opt(
        "auto",
        "image conditions: stored CLIP embeddings, decoded frames, or auto",
        choices=("auto", "stored", "frames"),
    )
    fad_backbone: str = opt("auto", FAD_BACKBONE_HELP)
    fid_backbone: str = opt("inception", FID_BACKBONE_HELP)
    mel_classifier: str = opt("mel-classifier", MEL_CLASSIFIER_HELP)
    retriever: bool = opt(False, "score CLIPRetriever (train-split index) instead of the model")
    hifigan_recon: bool = opt(False, "score the vocoder's reconstructions of the test mels")
    recon_metric: bool = opt(True, "also log fad_hifigan_recon when the test split has audio")
    experiment: str = opt("clipsynth-eval", "MLflow experiment of the evaluation runs")
    run_name: str | None = opt(None, "MLflow run name; default model-variant-queries-dataset")
    model_name: str | None = opt(None, "name in the table; default: bundle metadata or variant")
    train_query_type: str | None = opt(
        None, "what the model was trained on; default: bundle metadata", choices=TRAIN_QUERY_TYPES
    )
    stats_cache: str = opt(str(DEFAULT_CACHE_DIR), "reference statistics cache dir; 'none' = off")
    fingerprint: str = opt("footer", "test-split content hash", choices=("footer", "full"))
    max_reference_clips: int = opt(0, "0 = the whole test split (the paper's protocol)")
    num_audio_artifacts: int = opt(4, "WAVs logged to MLflow")
    device: str = opt("auto", "device of the metrics backbones in this process")
    ray_address: str | None = opt(None, "Ray cluster to join; default: RAY_ADDRESS or a local one")

    def __post_init__(self) -> None:
        self.dataset = normalize_dataset(self.dataset)
        # Before the Inception FID, --fid-backbone named the mel classifier: a classifier directory there
        # still means the classifier (and the Inception FID keeps its default).
        if (Path(str(self.fid_backbone)).expanduser() / CONFIG_FILE).is_file():
            if self.mel_classifier == "mel-classifier":
                self.mel_classifier = str(self.fid_backbone)
            self.fid_backbone = "inception"

    def check(self) -> None:
        """Raise ValueError for values no evaluation can run with (options.parse_config calls it)."""
        check_choices(self)
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
