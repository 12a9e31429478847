"""Ingestion: in-the-wild video (files, WebDataset shards or Parquet files of video bytes; local or s3://) ->
training shards in the platform schema.

    from clipsynth_platform.ingest import IngestConfig, run_ingest
    summary = run_ingest(IngestConfig(input="videos/", output="shards/", labels="MUSIC21_solo_videos.json"))

Modules: config (the dataclass), inputs (what --input names), containers / tarshard / videoparquet (shards and
Parquet files: their members, listed and read), readers (one decode task's read unit), labels (label index
parsers), sources (one VideoSource per video: ids, splits, the label join), decode (the CPU stage), embed (the
CLIP actor stage), store (commit protocol, resume), coverage and summary (the accounting), tracking (MLflow),
pipeline (Ray Data wiring).
"""

from .config import IngestConfig
from .labels import LabelEntry, LabelIndex, load_label_index, parse_music_json, parse_path_label_csv, parse_vggsound_csv
from .pipeline import run_ingest
from .sources import VideoSource, hashed_split, plan_sources, video_id_of

__all__ = [
    "IngestConfig",
    "LabelEntry",
    "LabelIndex",
    "VideoSource",
    "hashed_split",
    "load_label_index",
    "parse_music_json",
    "parse_path_label_csv",
    "parse_vggsound_csv",
    "plan_sources",
    "run_ingest",
    "video_id_of",
]
