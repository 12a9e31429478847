"""The rows that flow between the job's stages: CHUNK_SCHEMA's columns plus a few bookkeeping ones.

The decode stage emits, per video, its chunk rows ("chunk") and then one "video" row that says how the video
went (ok, or failed with stage and reason) and how many chunks it has. The driver counts a video done when its
"video" row and all its chunk rows have arrived; a video of which nothing arrived was lost with its worker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pyarrow as pa

from clipsynth_platform.datasets.schema import CHUNK_SCHEMA

RECORD_CHUNK = "chunk"
RECORD_VIDEO = "video"
RECORD_CHUNK_FAILED = "chunk_failed"  # a chunk the CLIP stage could not embed; its video fails
RECORD_WRITTEN = "written"  # the write stage staged some of a video's chunk rows in a file (info_json says which)

STATUS_OK = "ok"
STATUS_FAILED = "failed"

# Failure stages recorded in _failures.parquet.
STAGE_READ = "read"
STAGE_DECODE = "decode"
STAGE_EMBED = "embed"
STAGE_HYGIENE = "hygiene"  # a readable clip the data should not hold: too short for one window, or silent
STAGE_CONTAINER = "container"  # a shard or Parquet file that could not be read (whole, or past some member)
# What a hygiene rejection was, in the video's info ("hygiene") and the summary's counts.
HYGIENE_TOO_SHORT = "too_short"
HYGIENE_SILENT = "silent"
CRASHED_REASON = "worker crashed (native)"

EXTRA_FIELDS = [
    pa.field("record", pa.string()),
    pa.field("status", pa.string()),
    pa.field("fail_stage", pa.string()),
    pa.field("fail_reason", pa.string()),
    pa.field("video_chunks", pa.int32()),
    pa.field("silent_chunks", pa.int32()),
    pa.field("info_json", pa.string()),
]
# Nullable everywhere: a "video" row carries no chunk columns, a chunk row no bookkeeping ones.
RECORD_SCHEMA = pa.schema([f.with_nullable(True) for f in CHUNK_SCHEMA] + EXTRA_FIELDS)


def record_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts with any subset of RECORD_SCHEMA's columns) -> a table in exactly RECORD_SCHEMA."""
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)


@dataclass
class VideoRecord:
    """What became of one video: its "video" row, less the columns that come from its source."""

    status: str = STATUS_OK
    chunks: int = 0
    silent_chunks: int = 0
    fail_stage: str | None = None
    fail_reason: str | None = None
    audio_decoder: str | None = None  # the decoders that served (as far as the video got)
    video_decoder: str | None = None
    info: dict = field(default_factory=dict)  # timings, notes, streams...: the row's info_json

    def fail(self, stage: str, reason: str) -> None:
        """A failed video keeps no chunks."""
        self.status, self.fail_stage, self.fail_reason = STATUS_FAILED, stage, reason
        self.chunks = self.silent_chunks = 0


def video_row(source: dict, record: VideoRecord) -> dict:
    return {
        "record": RECORD_VIDEO,
        "video_id": source["video_id"],
        "source_uri": source["uri"],
        "split": source["split"],
        "label": source.get("label"),
        "status": record.status,
        "fail_stage": record.fail_stage,
        "fail_reason": record.fail_reason,
        "video_chunks": record.chunks,
        "silent_chunks": record.silent_chunks,
        "audio_decoder": record.audio_decoder,
        "video_decoder": record.video_decoder,
        "info_json": json.dumps(record.info, sort_keys=True),
    }


def to_chunk_table(records: pa.Table) -> pa.Table:
    """Chunk records -> CHUNK_SCHEMA (non-null columns enforced), ordered by video and chunk index."""
    table = records.select(CHUNK_SCHEMA.names).cast(CHUNK_SCHEMA)
    return table.sort_by([("video_id", "ascending"), ("chunk_index", "ascending")])
