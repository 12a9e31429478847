"""Ingest in-the-wild video into training shards (Ray Data): `python jobs/preprocess.py --help`.

Laptop:   python jobs/preprocess.py --input videos/ --output shards/ --labels MUSIC21_solo_videos.json
Cluster:  ray job submit --working-dir . -- python jobs/preprocess.py --input s3://bucket/videos \
              --output s3://bucket/shards --num-gpus 4
(with RAY_ADDRESS set, as under `ray job submit`, the job joins that cluster; otherwise it starts a local one).
Re-running the same command resumes: only videos without a committed outcome are processed.
"""

from __future__ import annotations

import argparse
import sys

from clipsynth_core import ClipWeightsError
from clipsynth_platform.ingest import IngestConfig, run_ingest
from clipsynth_platform.ingest.config import DEFAULT_VIDEO_EXTENSIONS, FRAME_SAMPLING_MODES, LABEL_FORMATS


def build_parser() -> argparse.ArgumentParser:
    d = IngestConfig()
    p = argparse.ArgumentParser(
        description="Decode videos into 10 s chunks (log-mel, JPEG frames, CLIP embeddings, 16 kHz PCM) as Parquet shards.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    io = p.add_argument_group("input and output")
    io.add_argument("--input", required=True, help="local directory or s3:// prefix of videos (searched recursively)")
    io.add_argument("--output", required=True, help="local directory or s3:// prefix for the dataset")
    io.add_argument(
        "--labels", default=None, help="label index: vggsound.csv, a MUSIC JSON video list, or a path,label[,split] CSV"
    )
    io.add_argument("--labels-format", default=d.labels_format, choices=LABEL_FORMATS, help="label index format")
    io.add_argument(
        "--extensions",
        default=",".join(e.lstrip(".") for e in DEFAULT_VIDEO_EXTENSIONS),
        help="comma-separated video file extensions to list",
    )
    io.add_argument("--limit", type=int, default=None, help="process at most this many listed videos (smoke runs)")
    io.add_argument(
        "--shard-rows",
        type=int,
        default=d.shard_rows,
        help="commit a shard once finished videos hold this many chunk rows",
    )
    io.add_argument(
        "--retry-failed", action="store_true", help="re-process videos that earlier runs recorded as failed"
    )
    io.add_argument(
        "--max-errored-blocks",
        type=int,
        default=d.max_errored_blocks,
        help="Ray Data blocks that may fail (a bug, not a bad file) before the job stops; their videos are "
        "recorded as lost (default: stop on the first)",
    )

    feat = p.add_argument_group("chunks and features")
    feat.add_argument(
        "--chunk-seconds",
        type=float,
        default=d.chunk_seconds,
        help="chunk length; a trailing chunk is kept if it holds 4.16 s",
    )
    feat.add_argument(
        "--fps",
        dest="frames_per_second",
        type=float,
        default=d.frames_per_second,
        help="frames sampled per second of video",
    )
    feat.add_argument(
        "--frame-sampling",
        default=d.frame_sampling,
        choices=FRAME_SAMPLING_MODES,
        help="exact: the frame on screen at each sampled time; keyframe: the nearest keyframe (much faster, coarser)",
    )
    feat.add_argument("--image-size", type=int, default=d.image_size, help="shorter side of the stored JPEG frames")
    feat.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality, help="JPEG quality of the stored frames")
    feat.add_argument(
        "--audio",
        dest="with_audio",
        action=argparse.BooleanOptionalAction,
        default=d.with_audio,
        help="store each chunk's 16 kHz mono int16 PCM (--no-audio leaves the column null)",
    )
    feat.add_argument(
        "--test-fraction",
        type=float,
        default=d.test_fraction,
        help="share of videos hashed to the test split when the index has no split",
    )

    clip = p.add_argument_group("CLIP")
    clip.add_argument("--clip-model", default=d.clip_model, help='open_clip model name ("tiny" for tests)')
    clip.add_argument(
        "--clip-pretrained",
        default=d.clip_pretrained,
        help='pretrained tag, local weights file, or "none" (random weights, tests only)',
    )
    clip.add_argument("--clip-template", default=d.clip_template, help="query template for label text embeddings")
    clip.add_argument("--clip-cache-dir", default=None, help="open_clip / Hugging Face cache directory")
    clip.add_argument(
        "--clip-allow-download",
        action=argparse.BooleanOptionalAction,
        default=d.clip_allow_download,
        help="let open_clip download missing weights",
    )

    res = p.add_argument_group("Ray resources")
    res.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)")
    res.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs of the local cluster the job starts (default: all cores)"
    )
    res.add_argument(
        "--num-gpus",
        type=int,
        default=d.num_gpus,
        help="GPUs for the CLIP stage, one actor each (default: every GPU the cluster has; 0: CPU actors)",
    )
    res.add_argument("--decode-cpus", type=float, default=d.decode_cpus, help="CPUs reserved per decode task")
    res.add_argument(
        "--decode-concurrency", type=int, default=None, help="max concurrent decode tasks (default: as resources allow)"
    )
    res.add_argument(
        "--videos-per-task",
        type=int,
        default=d.videos_per_task,
        help="videos per decode task",
    )
    res.add_argument(
        "--clip-actors", type=int, default=d.clip_actors, help="max CPU CLIP actors (with GPUs: one per GPU)"
    )
    res.add_argument("--clip-cpus", type=float, default=d.clip_cpus, help="CPUs reserved per CLIP actor")
    res.add_argument("--clip-batch-size", type=int, default=d.clip_batch_size, help="chunks per CLIP batch")
    res.add_argument(
        "--object-store-gb", type=float, default=None, help="object store size of the local cluster the job starts"
    )
    return p


def config_from_args(args: argparse.Namespace) -> IngestConfig:
    values = vars(args).copy()
    values["extensions"] = tuple(e.strip() for e in values["extensions"].split(",") if e.strip())
    return IngestConfig(**values).with_test_hooks_from_env()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        run_ingest(config)
    except ClipWeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, NotADirectoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
