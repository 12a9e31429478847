"""The write stage, on the workers: chunk rows -> staged Parquet files in the output store, and only
bookkeeping rows (a few hundred bytes per video) on to the driver, which commits staged files by manifest.

Every video's outcome row ("video", "chunk_failed") passes through without its heavy columns, and each staged
file adds one "written" row per video it holds (file, rows, CLIP seconds and frames of those rows).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter, defaultdict

import pyarrow as pa
import pyarrow.compute as pc

from clipsynth_platform.datasets.schema import SPLITS

from .records import RECORD_CHUNK, RECORD_WRITTEN, record_table, to_chunk_table
from .store import OutputStore

# The columns the driver reads: a video's outcome and the bookkeeping of what was written.
BOOKKEEPING = (
    "record",
    "video_id",
    "source_uri",
    "split",
    "label",
    "status",
    "fail_stage",
    "fail_reason",
    "video_chunks",
    "silent_chunks",
    "audio_decoder",
    "video_decoder",
    "info_json",
)


def bookkeeping_rows(batch: pa.Table) -> list[dict]:
    return batch.select(list(BOOKKEEPING)).to_pylist()


def write_staged(batch: pa.Table, output: str) -> pa.Table:
    """Ray Data UDF: write this batch's chunk rows (one staged file per split); return bookkeeping rows."""
    store = OutputStore(output)
    is_chunk = pc.fill_null(pc.equal(batch["record"], RECORD_CHUNK), False)
    chunks = batch.filter(is_chunk)
    out = [r for r in bookkeeping_rows(batch.filter(pc.invert(is_chunk)))]
    for split in SPLITS:
        part = chunks.filter(pc.equal(chunks["split"], split))
        if not part.num_rows:
            continue
        t0 = time.perf_counter()
        relative, nbytes = store.stage(to_chunk_table(part), f"{uuid.uuid4().hex}-{split}.parquet")
        seconds = time.perf_counter() - t0
        infos = [json.loads(s) if s else {} for s in part["info_json"].to_pylist()]
        frames = pc.list_value_length(part["frames_jpeg"]).to_pylist()
        per_video: Counter = Counter(part["video_id"].to_pylist())
        embed: defaultdict[str, float] = defaultdict(float)  # seconds
        frame_count: Counter = Counter()
        for vid, info, n in zip(part["video_id"].to_pylist(), infos, frames):
            embed[vid] += float(info.get("embed_seconds", 0.0))
            frame_count[vid] += int(n or 0)
        for vid, rows in per_video.items():
            written = {
                "file": relative,
                "split": split,
                "rows": rows,
                "embed_seconds": embed[vid],
                "frames": frame_count[vid],
                # the file's write time and size, on its first row only (summed by the driver)
                "write_seconds": seconds if vid == next(iter(per_video)) else 0.0,
                "bytes": nbytes if vid == next(iter(per_video)) else 0,
            }
            out.append({"record": RECORD_WRITTEN, "video_id": vid, "split": split, "info_json": json.dumps(written)})
    return record_table(out)


def rewrite_without(output: str, relative: str, drop_video_ids: list[str]) -> dict:
    """A staged file without the rows of videos that failed after it was written (a Ray task, rarely run):
    the new staged file's path and rows, or no file when nothing remains."""
    store = OutputStore(output)
    table = store.read_staged(relative)
    keep = table.filter(pc.invert(pc.is_in(table["video_id"], pa.array(drop_video_ids, pa.string()))))
    store.remove_staged(relative)
    if not keep.num_rows:
        return {"file": None, "rows": 0}
    new, _ = store.stage(keep, f"{uuid.uuid4().hex}-rewritten.parquet")
    return {"file": new, "rows": keep.num_rows}
