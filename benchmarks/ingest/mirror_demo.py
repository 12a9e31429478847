"""Issue 26's closing run, ingestion half: a VGG-Sound-format set (vggsound.csv + `{ytid}_{start:06d}.mp4` clips,
some listed clips missing, some broken) ingested from its files and from WebDataset shards of the same clips;
the counts, the failure reasons and the coverage report of each, and whether the two agree.

    python benchmarks/ingest/mirror_demo.py --fetched /work/fetch_demo   # what jobs/fetch.py left there
    python benchmarks/ingest/mirror_demo.py                              # a set made here with ffmpeg

Without --fetched (or when it holds no vggsound CSV), the set is made here: `--rows` CSV rows over `--classes`
classes (80% train), 10 s clips at 160x120; of the listed clips `--missing` are never made, and among those
made some are broken on purpose: cut in half, random bytes, 3 s long, silent. The shards are `--shards`
uncompressed .tar (the files' bytes as members `{clip_id}.mp4`). Results: benchmarks/results/
ingest_mirror_demo_cpu.json and one line per input form.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, benchmark_parser, emit
from local_ray import start_local_ray
from mirror_corpus import make_clips, write_shards

CLASSES = ("dog barking", "cat purring", "playing violin, fiddle", "rain on surface", "train horning",
           "church bell ringing", "bird chirping, tweeting", "playing drum kit", "typing on computer keyboard",
           "ocean burbling")  # fmt: skip
BROKEN = ("truncated", "random bytes", "short 3 s", "silent")


def make_set(root: Path, rows: int, classes: int, missing: int, broken_each: int, seed: int) -> tuple[Path, Path, dict]:
    """vggsound.csv and the clips folder; returns them and what was done to which clip."""
    rng = np.random.default_rng(seed)
    ids = [f"{''.join(rng.choice(list('abcdefghijkLMNOPQRSTUVWXYZ0123456789-_'), 11))}" for _ in range(rows)]
    starts = [int(s) for s in rng.integers(0, 300, rows)]
    ids[1], starts[1] = ids[0], starts[0] + 30  # one video, two clips: both kept (their names differ)
    listed = [
        (i, s, CLASSES[k % classes], "test" if rng.random() < 0.2 else "train")
        for k, (i, s) in enumerate(zip(ids, starts))
    ]
    index = root / "vggsound.csv"
    with index.open("w", newline="") as f:
        csv.writer(f).writerows(listed)
    made = [row for k, row in enumerate(listed) if k % (rows // missing) != 3] if missing else listed
    clips = make_clips(root / "_make", len(made), 10, "160x120")
    folder = root / "clips"
    folder.mkdir()
    fate: dict[str, str] = {}
    for k, (clip, (yid, start, _, _)) in enumerate(zip(clips, made)):
        name = folder / f"{yid}_{start:06d}.mp4"
        kind = BROKEN[k // 7 % len(BROKEN)] if k % 7 == 5 and k // 7 < len(BROKEN) * broken_each else "ok"
        if kind == "truncated":
            data = clip.read_bytes()
            name.write_bytes(data[: len(data) // 2])
        elif kind == "random bytes":
            name.write_bytes(rng.bytes(50_000))
        elif kind in ("short 3 s", "silent"):
            audio = ["-af", "volume=0"] if kind == "silent" else []
            cut = ["-t", "3"] if kind == "short 3 s" else []
            cmd = [
                "ffmpeg",
                "-nostdin",
                "-loglevel",
                "error",
                "-y",
                "-i",
                str(clip),
                *cut,
                "-c:v",
                "copy",
                *audio,
                str(name),
            ]
            subprocess.run(cmd, check=True)
        else:
            clip.rename(name)
        fate[name.stem] = kind
    shutil.rmtree(root / "_make")
    return index, folder, fate


def find_fetched(root: Path) -> tuple[Path, Path, list[Path]] | None:
    """A fetch's output: its CSV, the folder of clips, and the WebDataset shards it wrote (if any)."""
    csvs = sorted(root.rglob("*.csv"))
    videos = sorted(root.rglob("*.mp4"))
    if not csvs or (not videos and not list(root.rglob("*.tar"))):
        return None
    return csvs[0], videos[0].parent if videos else root, sorted(root.rglob("*.tar")) + sorted(root.rglob("*.tar.gz"))


def ingest(inputs: list[str], index: Path, out: Path) -> dict:
    from clipsynth_platform.ingest import IngestConfig, run_ingest

    config = IngestConfig(
        input=tuple(inputs), output=str(out), labels=str(index), clip_model="tiny", clip_pretrained="none"
    )
    t0 = time.perf_counter()
    summary = run_ingest(config, log=lambda m: print(f"  {m[:220]}", flush=True))
    import pyarrow.parquet as pq

    failures = pq.read_table(out / "_failures.parquet").to_pylist()
    reasons: dict[str, int] = {}
    for f in failures:
        key = f"{f['stage']}: {f['reason'].split(':')[0]}"
        reasons[key] = reasons.get(key, 0) + 1
    return {
        "wall_seconds": round(time.perf_counter() - t0, 1),
        **{
            k: summary[k]
            for k in ("videos_in", "videos_ok", "videos_failed", "videos_crashed", "chunks_written", "chunks_by_split")
        },
        "failures_by_stage": summary["failures_by_stage"],
        "failure_reasons": dict(sorted(reasons.items())),
        "hygiene": summary["hygiene"],
        "split_leaks": summary["split_leaks"],
        "coverage": {k: v for k, v in summary["coverage"].items() if k != "by_split_class"},
    }


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--fetched", default=None, help="a fetch's output folder (CSV, clips, shards)")
    p.add_argument("--rows", type=int, default=220)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--missing", type=int, default=20, help="listed clips never made")
    p.add_argument("--broken-each", type=int, default=3, help="clips of each broken kind")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "ingest_mirror_demo_cpu.json"))
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ingest-mirror-demo-"))
    fetched = find_fetched(Path(args.fetched)) if args.fetched and Path(args.fetched).exists() else None
    try:
        if fetched is not None:
            index, folder, shards = fetched
            origin, fate = f"fetched by jobs/fetch.py into {args.fetched}", None
            if not shards:
                shards = write_shards(sorted(folder.glob("*.mp4")), work / "shards", args.shards, compressed=False)
        else:
            index, folder, fate = make_set(work, args.rows, args.classes, args.missing, args.broken_each, args.seed)
            origin = f"made here with ffmpeg ({args.fetched or 'no --fetched'} had no fetch output)"
            shards = write_shards(sorted(folder.glob("*.mp4")), work / "shards", args.shards, compressed=False)
        csv_rows = sum(1 for line in index.read_text().splitlines() if line.strip())
        print(
            f"set {origin}: index {index}, {len(list(folder.glob('*.mp4')))} clip files, {len(shards)} shards",
            flush=True,
        )
        start_local_ray(None)
        from_files = ingest([str(folder)], index, work / "out-files")
        from_shards = ingest([str(s) for s in shards], index, work / "out-shards")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    same = {
        k: from_files[k] == from_shards[k]
        for k in ("videos_in", "videos_ok", "failure_reasons", "coverage", "split_leaks", "chunks_by_split")
    }
    result = {
        "what": "a VGG-Sound-format set ingested from its files and from WebDataset shards of the same clips",
        "set": origin,
        "csv_rows": csv_rows,
        "made_broken": {k: sum(v == k for v in fate.values()) for k in BROKEN} if fate else None,
        "machine": {"cpus": os.cpu_count(), "note": "shared with other jobs"},
        "from_files": from_files,
        "from_shards": from_shards,
        "files_and_shards_agree": same,
    }
    cov = from_shards["coverage"]
    line = (
        f"files: {from_files['videos_ok']}/{from_files['videos_in']} ok; shards: {from_shards['videos_ok']}/"
        f"{from_shards['videos_in']} ok; coverage {cov['ok']} of {cov['expected']} listed clips kept "
        f"({cov['found']} found); agree: {all(same.values())}"
    )
    emit(result, "ingest_mirror_demo_cpu", line, args.out)
    print(json.dumps(same))


if __name__ == "__main__":
    main()
