"""Soak: one ingestion of many short videos (default 1,000 clips of 5 s, 160x120, in WebDataset .tar shards), with
the memory of every process of the job sampled over time: what grows, and by how much.

    python benchmarks/ingest/soak.py                         # 1,000 clips, 4 shards
    python benchmarks/ingest/soak.py --clips 200 --shards 2  # a quick look

The job runs as jobs/preprocess.py would (tiny random CLIP: this measures the data path, not CLIP), on a local
Ray with one decode task at a time, so that one decode worker and its decoder child (recycled every
isolated.RECYCLE_AFTER videos) carry the whole run. Every `--interval` seconds the resident set size (RSS) of
each process under this one is read and given a role: the driver, the decode worker (the Ray worker that reads
the shards and feeds the child), the decoder child (`python -m clipsynth_platform.ingest.decode_child`), the CLIP
actor, the write workers, Ray's own (raylet, GCS, ...). Progress (videos committed) comes from the job's commit
lines, so growth is given per 100 videos: a least-squares slope over the run for long-lived processes, and
within each lifetime for the decoder children. Results: benchmarks/results/ingest_soak_cpu.json and one line.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import itertools

from common import RESULTS, benchmark_parser, emit
from local_ray import start_local_ray
from mirror_corpus import make_clips, write_shards

CHILD_MARK = "clipsynth_platform.ingest.decode_child"
# Commit every this many chunk rows (one per 5 s clip): the progress signal memory is plotted against.
COMMIT_ROWS = 25
SERIES_POINTS = 150  # points kept per role's time series in the results
COMMIT_LINE = re.compile(r"; (\d+)/(\d+) videos,")


def role_of(proc: psutil.Process, child_parents: set[int]) -> str:
    try:
        cmd = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "gone"
    if CHILD_MARK in cmd:
        return "decoder_child"
    if proc.pid in child_parents or "decode_videos" in cmd:
        return "decode_worker"
    if "ClipEmbedder" in cmd:
        return "clip_actor"
    if "write_staged" in cmd:
        return "write_worker"
    if cmd.startswith("ray::"):
        return "ray_worker_other"
    return "ray_system"


class Sampler(threading.Thread):
    """RSS of every descendant of this process (and of this process: the driver), by role, every `interval` s."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.samples: list[dict] = []  # {"t", "pid", "role", "rss_mb"}
        self.progress: list[tuple[float, int]] = [(0.0, 0)]  # (t, videos committed)
        self.stop = threading.Event()
        self.t0 = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def log(self, line: str) -> None:
        m = COMMIT_LINE.search(line)
        if m:
            self.progress.append((self.now(), int(m.group(1))))
        print(f"[{self.now():7.1f}] {line[:200]}", flush=True)

    def run(self) -> None:
        me = psutil.Process()
        while not self.stop.is_set():
            t = self.now()
            procs = [me, *me.children(recursive=True)]
            parents = set()
            for p in procs:
                try:
                    if CHILD_MARK in " ".join(p.cmdline()):
                        parents.add(p.ppid())
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    pass
            for p in procs:
                try:
                    rss = p.memory_info().rss / 2**20
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                role = "driver" if p.pid == me.pid else role_of(p, parents)
                self.samples.append({"t": round(t, 2), "pid": p.pid, "role": role, "rss_mb": round(rss, 1)})
            self.stop.wait(self.interval)

    def videos_at(self, t: float) -> float:
        """Videos committed by time t, interpolated between commit lines."""
        pts = self.progress
        for (t0, v0), (t1, v1) in itertools.pairwise(pts):
            if t0 <= t <= t1:
                return v0 + (v1 - v0) * (t - t0) / max(t1 - t0, 1e-9)
        return float(pts[-1][1]) if t > pts[-1][0] else 0.0


def slope(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3 or max(xs) - min(xs) < 1e-9:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def series_report(sampler: Sampler, samples: list[dict], own_start: bool) -> dict:
    """One process's RSS: first, last and max, and how it grows per 100 videos committed over the second half of
    what it saw (after the ramp of imports, caches and allocator arenas: what keeps growing is what leaks).
    Samples count from the job's first commit, or (`own_start`: a decoder child) from the process's start."""
    warm = 0.0 if own_start or len(sampler.progress) < 2 else sampler.progress[1][0]
    kept = [s for s in samples if s["t"] >= warm and s["rss_mb"] > 0] or [s for s in samples if s["rss_mb"] > 0]
    if not kept:
        return {"samples": len(samples), "videos_seen": 0}
    xs = [sampler.videos_at(s["t"]) for s in kept]
    ys = [s["rss_mb"] for s in kept]
    middle = (min(xs) + max(xs)) / 2
    late = slope([x for x in xs if x >= middle], [y for x, y in zip(xs, ys) if x >= middle])
    return {
        "samples": len(kept),
        "videos_seen": round(max(xs) - min(xs), 1),
        "rss_first_mb": ys[0],
        "rss_last_mb": ys[-1],
        "rss_max_mb": max(ys),
        "growth_mb_per_100_videos_second_half": round(100 * late, 2) if late is not None else None,
    }


def analyse(sampler: Sampler) -> dict:
    by_pid: dict[int, list[dict]] = {}
    for s in sampler.samples:
        by_pid.setdefault(s["pid"], []).append(s)
    roles: dict[str, list[dict]] = {}
    for pid, samples in by_pid.items():
        role = statistics.mode(s["role"] for s in samples)
        report = series_report(sampler, samples, own_start=role == "decoder_child")
        roles.setdefault(role, []).append({"pid": pid, **report})
    for reports in roles.values():
        reports.sort(key=lambda r: r["videos_seen"], reverse=True)
    children = [
        r
        for r in roles.get("decoder_child", [])
        if r["videos_seen"] >= COMMIT_ROWS * 2 and r["growth_mb_per_100_videos_second_half"] is not None
    ]
    total, series = {}, {}
    for role, reports in roles.items():  # the role's summed RSS over time (all its processes)
        at: dict[float, float] = {}
        for s in sampler.samples:
            if s["role"] == role:
                at[s["t"]] = at.get(s["t"], 0.0) + s["rss_mb"]
        ts = sorted(at)
        total[role] = {
            "processes": len(reports),
            "rss_mb_at_start": round(at[ts[0]], 1),
            "rss_mb_at_end": round(at[ts[-1]], 1),
            "rss_mb_max": round(max(at.values()), 1),
        }
        step = max(1, len(ts) // SERIES_POINTS)
        series[role] = [[t, round(sampler.videos_at(t), 1), round(at[t], 1)] for t in ts[::step]]
    return {
        "by_role": total,
        "series_by_role": {"columns": ["seconds", "videos_committed", "rss_mb_sum"], **series},
        "processes": roles,
        "decoder_child_lifetimes": {
            "count": len(children),
            "median_growth_mb_per_100_videos_second_half": statistics.median(
                r["growth_mb_per_100_videos_second_half"] for r in children
            )
            if children
            else None,
            "median_rss_first_mb": statistics.median(r["rss_first_mb"] for r in children) if children else None,
            "median_rss_max_mb": statistics.median(r["rss_max_mb"] for r in children) if children else None,
        },
    }


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--clips", type=int, default=1000, help="clips to ingest")
    p.add_argument("--seconds", type=int, default=5, help="length of each clip (one 4.16 s window needs >= 5)")
    p.add_argument("--size", default="160x120", help="video resolution")
    p.add_argument("--shards", type=int, default=4, help="WebDataset .tar shards the clips are written to")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between memory samples")
    p.add_argument("--workdir", default=None, help="keep the corpus and shards here (default: a temporary folder)")
    p.add_argument("--out", default=str(RESULTS / "ingest_soak_cpu.json"))
    args = p.parse_args()

    from clipsynth_platform.ingest import IngestConfig, run_ingest
    from clipsynth_platform.ingest.isolated import RECYCLE_AFTER

    work = Path(args.workdir or tempfile.mkdtemp(prefix="ingest-soak-"))
    t0 = time.perf_counter()
    clips = make_clips(work / "clips", args.clips, args.seconds, args.size)
    shards = write_shards(clips, work / "shards", args.shards, compressed=False)
    make_seconds = time.perf_counter() - t0
    shutil.rmtree(work / "clips")  # the shards hold them
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    config = IngestConfig(
        input=str(work / "shards"),
        output=str(out),
        clip_model="tiny",
        clip_pretrained="none",
        decode_concurrency=1,
        num_cpus=4,
        shard_rows=COMMIT_ROWS,
    )
    start_local_ray(config.num_cpus)  # the job finds it running
    sampler = Sampler(args.interval)
    sampler.start()
    try:
        summary = run_ingest(config, log=sampler.log)
    finally:
        sampler.stop.set()
        sampler.join()
    report = analyse(sampler)
    life = report["decoder_child_lifetimes"]
    worker = (report["processes"].get("decode_worker") or [{}])[0]
    result = {
        "benchmark": "ingestion soak: memory of the job's processes over a long run",
        "machine": {"cpus": os.cpu_count(), "note": "shared with other jobs: timings are noisy, memory is not"},
        "corpus": {
            "clips": args.clips,
            "seconds": args.seconds,
            "size": args.size,
            "shards": len(shards),
            "format": "WebDataset .tar (uncompressed), h264/aac mp4 members",
            "make_seconds": round(make_seconds, 1),
        },
        "job": {k: summary[k] for k in ("videos_in", "videos_ok", "videos_failed", "chunks_written", "seconds")},
        "decoder_recycled_every": RECYCLE_AFTER,
        **report,
        "progress": sampler.progress,
    }
    driver = (report["processes"].get("driver") or [{}])[0]
    line = (
        f"{summary['videos_ok']}/{summary['videos_in']} clips in {summary['seconds']:.0f} s; decoder child "
        f"(recycled every {RECYCLE_AFTER}, {life['count']} lifetimes) rises from {life['median_rss_first_mb']} to "
        f"{life['median_rss_max_mb']} MB, then {life['median_growth_mb_per_100_videos_second_half']} MB per 100 "
        f"videos over the second half of a lifetime; over the second half of the run, decode worker "
        f"{worker.get('growth_mb_per_100_videos_second_half')} MB per 100 videos ({worker.get('rss_last_mb')} MB), "
        f"driver {driver.get('growth_mb_per_100_videos_second_half')} ({driver.get('rss_last_mb')} MB)"
    )
    emit(result, "ingest_soak_cpu", line, args.out)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
