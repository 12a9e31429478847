"""The ingestion job's configuration: one typed dataclass with the paper's defaults; each field is one option of
jobs/preprocess.py (clipsynth_platform.runtime.options)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields

from clipsynth_core import ClipConfig, MelConfig
from clipsynth_platform.runtime.options import check_all, check_choices, internal, opt

# Containers FFmpeg reads that in-the-wild video corpora use; anything else in the input tree is ignored.
DEFAULT_VIDEO_EXTENSIONS = (
    ".mp4",
    ".m4v",
    ".mov",
    ".mkv",
    ".webm",
    ".avi",
    ".flv",
    ".mpg",
    ".mpeg",
    ".ts",
    ".mts",
    ".m2ts",
    ".3gp",
    ".ogv",
    ".wmv",
)
FRAME_SAMPLING_MODES = ("exact", "keyframe")
# Columns that name a row's clip in Parquet mirrors, tried in this order when --parquet-id-column is not given.
PARQUET_ID_COLUMNS = ("clip_id", "key", "__key__", "id", "video_id", "ytid", "youtube_id")
# A clip whose audio level (RMS over the clip) is below this is rejected as silent. The built-in corpus
# (jobs/build_corpus.py, 15 classes x 4 videos) measures -31.4 to -9.5 dBFS (median -16.2), so -60 dBFS (FFmpeg
# silencedetect's default noise floor) leaves 28 dB of margin below its quietest clip.
DEFAULT_SILENCE_DB = -60.0
LABEL_FORMATS = ("auto", "vggsound", "music", "csv")

# Test-only hooks (a decoder crash, a forced decoder fallback, an interrupt after N commits). They are off
# unless this variable is "1" in the driver's environment, and never appear in --help.
TEST_HOOKS_ENV = "CLIPSYNTH_INGEST_TEST_HOOKS"
TEST_EXIT_AFTER_COMMITS_ENV = "CLIPSYNTH_INGEST_TEST_EXIT_AFTER_COMMITS"


@dataclass
class IngestConfig:
    """Everything one ingestion run needs. Defaults follow the paper (10 s chunks, 16 kHz, 1 fps, 10% test)."""

    # Input and output.
    input: tuple[str, ...] = opt(
        (),
        "what to ingest, one or more of: video files, WebDataset shards (.tar, .tar.gz: {clip_id}.mp4 members, "
        "optional {clip_id}.json), Parquet files with a video-bytes column; each a file, a local directory or an "
        "s3:// prefix (searched recursively); required",
    )
    output: str = opt(
        "", "local directory or s3:// prefix for the dataset (shards, _summary.json, _failures.parquet); required"
    )
    labels: str | None = opt(None, "label index: vggsound.csv, a MUSIC JSON video list, or a path,label[,split] CSV")
    labels_format: str = opt("auto", "label index format", choices=LABEL_FORMATS)
    parquet_video_column: str = opt(
        "video", "Parquet inputs: the column of video bytes (binary, or a struct with a 'bytes' field)"
    )
    parquet_id_column: str | None = opt(
        None,
        "Parquet inputs: the column of clip ids the label index is joined on (default: the first of "
        f"{', '.join(PARQUET_ID_COLUMNS)} present, else the video struct's 'path', else the row number)",
    )
    extensions: tuple[str, ...] = opt(
        DEFAULT_VIDEO_EXTENSIONS, "video file extensions to list (space-separated, with or without the dot)"
    )
    limit: int | None = opt(None, "process at most this many listed videos (smoke runs)")
    shard_rows: int = opt(256, "commit a shard once finished videos hold this many chunk rows")
    retry_failed: bool = opt(False, "re-process videos that earlier runs recorded as failed (or crashed)")
    max_errored_blocks: int = opt(
        0,
        "Ray Data blocks that may fail (a bug, not a bad file) before the job stops; their videos are recorded as "
        "lost (default: stop on the first)",
    )

    # Chunks and features.
    chunk_seconds: float = opt(10.0, "chunk length; a trailing chunk is kept if it holds 4.16 s")
    frames_per_second: float = opt(1.0, "frames sampled per second of video", flag="fps")
    frame_sampling: str = opt(
        "exact",
        "exact: the frame on screen at each sampled time; keyframe: the nearest keyframe (much faster, coarser)",
        choices=FRAME_SAMPLING_MODES,
    )
    image_size: int = opt(224, "shorter side of the stored JPEG frames")
    jpeg_quality: int = opt(90, "JPEG quality of the stored frames")
    with_audio: bool = opt(
        True, "store each chunk's 16 kHz mono int16 PCM (--no-audio leaves the column null)", flag="audio"
    )
    test_fraction: float = opt(0.1, "share of videos hashed to the test split when the index has no split")
    silence_db: float = opt(
        DEFAULT_SILENCE_DB,
        "clips whose audio level (RMS over the whole clip, dBFS) is below this are rejected as silent (stage "
        "'hygiene'); -200 keeps them all",
    )

    # CLIP (frozen) for frame and label embeddings.
    clip_model: str = opt("ViT-B-32", 'open_clip model name ("tiny" for tests)')
    clip_pretrained: str = opt("openai", 'pretrained tag, local weights file, or "none" (random weights, tests only)')
    clip_template: str = opt("a photo of {query}", "query template for label text embeddings")
    clip_cache_dir: str | None = opt(None, "open_clip / Hugging Face cache directory")
    clip_allow_download: bool = opt(True, "let open_clip download missing weights")

    # Tracking (off unless a URI is given: the demo records ingestion in its own experiment).
    tracking_uri: str | None = opt(
        None, "MLflow tracking URI: when given, the run's counts, hygiene, coverage report and failures are logged"
    )
    experiment: str = opt("clipsynth-ingest", "MLflow experiment of the ingestion runs (with --tracking-uri)")

    # Ray resources.
    address: str | None = opt(None, "Ray cluster address (default: RAY_ADDRESS, else a local cluster)")
    num_cpus: int | None = opt(None, "CPUs of the local cluster the job starts (default: all cores)")
    num_gpus: int | None = opt(
        None, "GPUs for the CLIP stage, one actor each (default: every GPU the cluster has; 0: CPU actors)"
    )
    decode_cpus: float = opt(1.0, "CPUs reserved per decode task")
    decode_concurrency: int | None = opt(None, "max concurrent decode tasks (default: as resources allow)")
    videos_per_task: int = opt(1, "videos per decode task (a native crash loses all of them)")
    clip_actors: int = opt(1, "max CPU CLIP actors (with GPUs: one per GPU)")
    clip_cpus: float = opt(1.0, "CPUs reserved per CLIP actor")
    clip_batch_size: int = opt(32, "chunks per CLIP batch")
    object_store_gb: float | None = opt(None, "object store size of the local cluster the job starts")

    # Test-only (see TEST_HOOKS_ENV); not on the command line.
    test_hooks: bool = internal(False)
    test_exit_after_commits: int | None = internal(None)

    def __post_init__(self) -> None:
        if isinstance(self.input, str):  # one location, as Python callers give it
            self.input = (self.input,) if self.input else ()
        self.input = tuple(self.input)
        self.extensions = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in self.extensions)

    def validate(self) -> None:
        """Raise ValueError with a clear message for settings that cannot work."""
        check_choices(self)  # frame sampling, label format: what `choices=` declares
        if not self.input or not all(self.input):
            raise ValueError("--input is required (files, local directories or s3:// prefixes)")
        if not self.output:
            raise ValueError("--output is required (a local directory or an s3:// prefix)")
        checks = [
            (
                self.chunk_seconds * MelConfig().sample_rate >= MelConfig().segment_samples,
                "--chunk-seconds must hold one 4.16 s window (>= 4.16)",
            ),
            (0 < self.frames_per_second <= 30, "--fps must be in (0, 30]"),
            (32 <= self.image_size <= 1024, "--image-size must be in [32, 1024]"),
            (1 <= self.jpeg_quality <= 100, "--jpeg-quality must be in [1, 100]"),
            (0.0 <= self.test_fraction < 1.0, "--test-fraction must be in [0, 1)"),
            (self.num_gpus is None or self.num_gpus >= 0, "--num-gpus must be >= 0"),
            (self.num_cpus is None or self.num_cpus >= 1, "--num-cpus must be >= 1"),
            (self.decode_cpus > 0, "--decode-cpus must be > 0"),
            (self.decode_concurrency is None or self.decode_concurrency >= 1, "--decode-concurrency must be >= 1"),
            (1 <= self.videos_per_task <= 1000, "--videos-per-task must be in [1, 1000]"),
            (self.clip_actors >= 1, "--clip-actors must be >= 1"),
            (self.clip_cpus > 0, "--clip-cpus must be > 0"),
            (1 <= self.clip_batch_size <= 4096, "--clip-batch-size must be in [1, 4096]"),
            (1 <= self.shard_rows <= 1_000_000, "--shard-rows must be in [1, 1000000]"),
            (self.limit is None or self.limit >= 1, "--limit must be >= 1"),
            (self.max_errored_blocks >= 0, "--max-errored-blocks must be >= 0"),
            ("{query}" in self.clip_template, "--clip-template must contain {query}"),
            (-200.0 <= self.silence_db <= 0.0, "--silence-db must be in [-200, 0] (dBFS)"),
            (bool(self.parquet_video_column), "--parquet-video-column must name a column"),
        ]
        check_all(checks)

    def check(self) -> None:
        """What clipsynth_platform.runtime.options runs after parsing (a bad value exits with the usage line)."""
        self.validate()

    @property
    def clip_config(self) -> ClipConfig:
        return ClipConfig(
            model_name=self.clip_model,
            pretrained=self.clip_pretrained,
            template=self.clip_template,
            cache_dir=self.clip_cache_dir,
            allow_download=self.clip_allow_download,
        )

    @property
    def min_chunk_samples(self) -> int:
        """A trailing chunk is kept only if it holds a full training window (4.16 s = 66,560 samples)."""
        return MelConfig().segment_samples

    @property
    def chunk_samples(self) -> int:
        return round(self.chunk_seconds * MelConfig().sample_rate)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["extensions"] = list(self.extensions)
        d["input"] = list(self.input)
        for f in fields(self):
            if not f.repr:
                d.pop(f.name)
        return d

    def row_settings(self) -> dict:
        """The settings that change row contents: a resumed run must use the same ones."""
        return {
            "chunk_seconds": self.chunk_seconds,
            "min_chunk_samples": self.min_chunk_samples,
            "frames_per_second": self.frames_per_second,
            "frame_sampling": self.frame_sampling,
            "image_size": self.image_size,
            "jpeg_quality": self.jpeg_quality,
            "with_audio": self.with_audio,
            "test_fraction": self.test_fraction,
            "silence_db": self.silence_db,
            "clip": self.clip_config.identity,
            "clip_template": self.clip_template,
            "mel": MelConfig().to_dict(),
        }

    def describe(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def with_test_hooks_from_env(self) -> IngestConfig:
        """Turn the test-only hooks on when the environment asks for them (the CLI's only way in)."""
        if os.environ.get(TEST_HOOKS_ENV) == "1":
            self.test_hooks = True
            exit_after = os.environ.get(TEST_EXIT_AFTER_COMMITS_ENV)
            self.test_exit_after_commits = int(exit_after) if exit_after else None
        return self
