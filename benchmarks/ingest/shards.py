"""Ingestion from WebDataset shards against the same videos as files: the whole job (jobs/preprocess.py's run_ingest,
tiny random CLIP) on one corpus given as a folder of .mp4 files, as uncompressed .tar shards, as .tar.gz shards
and as a Parquet file of video bytes, in alternation, repeated; the ratios of wall time to the files' run.

    python benchmarks/ingest/shards.py                           # 48 clips of 10 s, 320x240, 2 repeats
    python benchmarks/ingest/shards.py --clips 16 --repeats 1    # a quick look

Every run starts from an empty output on the same local Ray (started once, then warmed by one untimed run of
the files, so that no form pays for Ray's first workers), so each pays the same job start; the shard runs also
pay listing their shards. The forms' order rotates from one repeat to the next. `--shards` shards of each kind: a .tar.gz is read by one task (it
cannot be split), a .tar by `videos_per_task` members per task, Parquet by row group (`--row-group` clips).
Results: benchmarks/results/ingest_shards_cpu.json and one summary line.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, benchmark_parser, emit
from local_ray import start_local_ray
from mirror_corpus import make_clips, write_parquet, write_shards

FORMS = ("files", "tar", "tar.gz", "parquet")


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--seconds", type=int, default=10, help="clip length (VGG-Sound's is 10 s)")
    p.add_argument("--size", default="320x240")
    p.add_argument("--shards", type=int, default=2, help="shards per kind")
    p.add_argument("--row-group", type=int, default=8, help="clips per Parquet row group")
    p.add_argument("--repeats", type=int, default=3, help="runs per form, in alternation (median quoted)")
    p.add_argument("--forms", default=",".join(FORMS), help="comma-separated: " + ", ".join(FORMS))
    p.add_argument("--num-cpus", type=int, default=None, help="local Ray CPUs (default: the machine's)")
    p.add_argument("--out", default=str(RESULTS / "ingest_shards_cpu.json"))
    args = p.parse_args()

    from clipsynth_platform.ingest import IngestConfig, run_ingest

    forms = [f.strip() for f in args.forms.split(",") if f.strip()]
    work = Path(tempfile.mkdtemp(prefix="ingest-shards-"))
    try:
        clips = make_clips(work / "files", args.clips, args.seconds, args.size)
        inputs = {
            "files": work / "files",
            "tar": write_shards(clips, work / "tar", args.shards, compressed=False)[0].parent,
            "tar.gz": write_shards(clips, work / "targz", args.shards, compressed=True)[0].parent,
            "parquet": write_parquet(clips, work / "parquet" / "clips.parquet", args.row_group).parent,
        }
        sizes = {k: sum(f.stat().st_size for f in Path(v).iterdir()) for k, v in inputs.items()}
        where = start_local_ray(args.num_cpus)
        runs: dict[str, list[dict]] = {f: [] for f in forms}

        def run(form: str, out: Path) -> tuple[dict, float]:
            config = IngestConfig(input=str(inputs[form]), output=str(out), clip_model="tiny", clip_pretrained="none")
            t0 = time.perf_counter()
            summary = run_ingest(config, log=lambda m: None)
            wall = time.perf_counter() - t0
            shutil.rmtree(out, ignore_errors=True)
            if summary["videos_ok"] != args.clips:
                raise RuntimeError(f"{form}: {summary['videos_ok']} of {args.clips} ok: {summary['failures_by_stage']}")
            return summary, wall

        run("files", work / "out-warmup")
        for r in range(args.repeats):
            for form in forms[r % len(forms) :] + forms[: r % len(forms)]:
                summary, wall = run(form, work / f"out-{form}-{r}")
                decode = summary["throughput"]["decode"]
                runs[form].append(
                    {
                        "wall_seconds": round(wall, 2),
                        "chunks": summary["chunks_written"],
                        "decode_busy_seconds": decode["busy_seconds"],
                        "read_seconds": decode["busy_seconds_by_step"]["read"],
                        "listing_seconds": summary["inputs"]["listing_seconds"],
                    }
                )
                print(f"[{form} run {r + 1}] {wall:.1f} s, read {runs[form][-1]['read_seconds']:.2f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    median = {f: statistics.median(x["wall_seconds"] for x in rs) for f, rs in runs.items()}
    base = median.get("files")
    result = {
        "benchmark": "ingestion of one corpus as files, WebDataset shards and Parquet: whole job, wall time",
        "machine": {"cpus": os.cpu_count(), "ray": where, "note": "shared with other jobs: compare the ratios"},
        "corpus": {
            "clips": args.clips,
            "seconds": args.seconds,
            "size": args.size,
            "shards_per_kind": args.shards,
            "parquet_row_group": args.row_group,
            "bytes": sizes,
        },
        "runs": runs,
        "median_wall_seconds": median,
        "ratio_to_files": {f: round(m / base, 3) for f, m in median.items()} if base else None,
        "decode_busy_seconds_per_clip": {
            f: round(statistics.median(x["decode_busy_seconds"] for x in rs) / args.clips, 4) for f, rs in runs.items()
        },
        "read_seconds_per_clip": {
            f: round(statistics.median(x["read_seconds"] for x in rs) / args.clips, 4) for f, rs in runs.items()
        },
    }
    ratios = result["ratio_to_files"] or {}
    line = (
        f"{args.clips} clips of {args.seconds} s: median wall "
        + ", ".join(f"{f} {m:.1f} s" for f, m in median.items())
        + "; ratio to files "
        + ", ".join(f"{f} {x:.2f}" for f, x in ratios.items() if f != "files")
        + "; read per clip "
        + ", ".join(f"{f} {x * 1000:.1f} ms" for f, x in result["read_seconds_per_clip"].items())
    )
    emit(result, "ingest_shards_cpu", line, args.out)


if __name__ == "__main__":
    main()
