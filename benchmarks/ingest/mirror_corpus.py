"""Synthetic mirror corpora for the ingestion benchmarks: many short, distinct H.264/AAC clips named like
VGG-Sound's (`{id}_{start:06d}.mp4`), made by one ffmpeg run cut into segments, and the same clips written as
WebDataset shards (.tar, .tar.gz) or a Parquet file of video bytes."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def make_clips(out: Path, count: int, seconds: int, size: str, rate: int = 10) -> list[Path]:
    """`count` clips of `seconds` each, `size` pixels: one moving test pattern with a tone sweeping over 200-1800 Hz
    (so no two clips are alike), cut at forced keyframes. Returns the files, renamed `clip{i:06d}_000000.mp4`."""
    out.mkdir(parents=True, exist_ok=True)
    total = count * seconds
    tone = f"aevalsrc=0.25*sin(2*PI*(200+1600*mod(t/{total}\\,1))*t):s=44100:d={total}"
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    cmd += ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={total}", "-f", "lavfi", "-i", tone]
    cmd += [
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        "-force_key_frames",
        f"expr:gte(t,n_forced*{seconds})",
    ]
    cmd += ["-c:a", "aac", "-shortest", "-f", "segment", "-segment_time", str(seconds), "-reset_timestamps", "1"]
    cmd += [str(out / "seg%06d.mp4")]
    subprocess.run(cmd, check=True)
    clips = []
    for i, seg in enumerate(sorted(out.glob("seg*.mp4"))[:count]):
        clip = out / f"clip{i:06d}_000000.mp4"
        seg.rename(clip)
        clips.append(clip)
    for extra in out.glob("seg*.mp4"):
        extra.unlink()
    if len(clips) < count:
        raise RuntimeError(f"ffmpeg made {len(clips)} segments, not {count}")
    return clips


def write_shards(clips: list[Path], out: Path, shards: int, compressed: bool) -> list[Path]:
    """The clips as `shards` WebDataset shards (members `{clip}.mp4`), in order."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    per = -(-len(clips) // shards)
    for k in range(shards):
        path = out / f"shard-{k:05d}.{'tar.gz' if compressed else 'tar'}"
        with tarfile.open(path, "w:gz" if compressed else "w") as tar:
            for clip in clips[k * per : (k + 1) * per]:
                tar.add(clip, arcname=clip.name)
        paths.append(path)
    return paths


def write_parquet(clips: list[Path], path: Path, row_group_size: int) -> Path:
    """The clips as one Parquet file: clip_id and video bytes, `row_group_size` rows per row group."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {"clip_id": [c.stem for c in clips], "video": pa.array([c.read_bytes() for c in clips], pa.binary())}
    )
    pq.write_table(table, path, row_group_size=row_group_size)
    return path
