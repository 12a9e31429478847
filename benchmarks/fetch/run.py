"""Benchmark: the fetch stage (jobs/fetch.py's run_fetch: yt-dlp actors on Ray) against a loopback HTTP server
serving ffmpeg-made videos: clips per second at 1, 4 and 16 concurrent downloads, and the memory of a 1,000-clip
run against a 200-clip one.

    python benchmarks/fetch/run.py                          # 96 clips per rate run, 2 repeats; 200, 1,000 clips
    python benchmarks/fetch/run.py --clips 24 --repeats 1 --memory-clips 50 200   # a quick look

Source: --videos distinct 60 s 160x120 H.264/AAC videos (tests/loopback_videos.py), hard-linked under 100
names; each clip is a 10 s window of one of them (VGG-Sound's layout: several clips per video). Each run fetches
into a fresh output folder on the one local Ray cluster (8 logical CPUs, 0.25 CPU per download actor), with
--extractors generic, so the figures are the stage's own cost per clip (yt-dlp's extraction, ffmpeg cutting the
window, the ledger) plus the actors' start, not a network's.
- clips per second: clips / the run's fetch seconds (the actors' start included), medians over --repeats; the
  concurrencies alternate in order within each repeat, so a busy machine slows all of them alike;
- in-actor clips per second: clips / (the ledger's per-clip seconds summed / concurrency): the rate once the
  actors run, without their start (each actor starts a Ray worker and a yt-dlp child, about a CPU-second);
- CPU seconds per clip: user + system time of this process and all its descendants (reaped children included)
  over the run, per clip: what a clip costs whatever else the machine is doing;
- memory: the peak proportional set size (PSS, /proc/PID/smaps_rollup) summed over this process and all its
  descendants (Ray's daemons, the actors, their yt-dlp children, ffmpeg), sampled every 0.25 s, minus the same
  sum just before the run (the idle cluster), for each --memory-clips run.
Results: benchmarks/results/fetch_cpu.json and one summary line on stdout.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
from common import benchmark_parser, emit  # noqa: E402
from loopback_videos import LoopbackServer, tone_video  # noqa: E402

from clipsynth_platform.fetch import FetchConfig, Ledger, run_fetch  # noqa: E402

NAMES = 100  # source "videos": hard links to the --videos distinct files
WINDOWS = tuple(range(0, 50, 5))  # 10 windows per video (starts 0..45 s)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree() -> list[int]:
    """This process and all its descendants."""
    pids, stack = [], [os.getpid()]
    while stack:
        pid = stack.pop()
        pids.append(pid)
        stack.extend(_children(pid))
    return pids


def tree_pss_mib() -> float:
    """PSS of this process and all its descendants, in MiB."""
    return sum(_pss_kib(pid) for pid in _tree()) / 1024


def tree_cpu_seconds() -> float:
    """User + system CPU of this process and its descendants, with the children they have reaped (ffmpeg,
    finished actors): the work a run cost, whatever else the machine was doing."""
    total = 0
    for pid in _tree():
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


class PeakSampler:
    def __init__(self, period: float = 0.25) -> None:
        self.period, self.peak, self._stop = period, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_pss_mib())
            self._stop.wait(self.period)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def make_site(workdir: Path, videos: int) -> Path:
    site = workdir / "site"
    for i in range(videos):
        tone_video(site / f"src_{i:02d}.mp4", seconds=60, gray=40 + 15 * i)
    for n in range(NAMES):
        os.link(site / f"src_{n % videos:02d}.mp4", site / f"vid{n:03d}.mp4")
    return site


def write_manifest(path: Path, clips: int) -> Path:
    rows = [
        f"vid{n:03d},{start},class_{n % 7},{'test' if n % 10 == 0 else 'train'}"
        for start in WINDOWS
        for n in range(NAMES)
    ]
    if clips > len(rows):
        raise SystemExit(f"at most {len(rows)} clips ({NAMES} videos x {len(WINDOWS)} windows)")
    path.write_text("\n".join(rows[:clips]) + "\n")
    return path


def fetch(server: LoopbackServer, manifest: Path, out: Path, concurrency: int) -> dict:
    config = FetchConfig(
        manifest=str(manifest),
        format="vggsound",
        output=str(out),
        url_template=server.url("{id}.mp4"),
        concurrency=concurrency,
        clips_per_task=1,
        retries=0,
        extractors=("generic",),
        num_cpus=8,
    )
    requests_before, cpu_before = server.total_requests, tree_cpu_seconds()
    summary = run_fetch(config, log=lambda line: None)
    cpu = tree_cpu_seconds() - cpu_before
    if summary.ok != summary.clips_in:
        raise RuntimeError(f"{summary.clips_in - summary.ok} clips failed: {summary.failed_by_class}")
    busy = sum(r.seconds for r in Ledger.read(str(out)).rows.values() if r.run == summary.run.run)
    return {
        "clips": summary.clips_in,
        "seconds": summary.run.seconds,
        "clips_per_second": summary.run.clips_per_second,
        "in_actor_clips_per_second": round(summary.run.fetched_ok / (busy / concurrency), 3) if busy else None,
        "cpu_seconds_per_clip": round(cpu / summary.clips_in, 3),
        "requests": server.total_requests - requests_before,
    }


def start_ray() -> None:
    """The one local Ray of all runs (8 logical CPUs: 16 actors at 0.25 CPU fit); a loaded machine can make Ray's
    30 s start-up wait run out, so it is tried three times."""
    from clipsynth_platform.runtime.ray_cluster import LocalRay, connect_ray

    for attempt in range(3):
        try:
            connect_ray(None, LocalRay(num_cpus=8, object_store_bytes=1_000_000_000, dashboard=False))
            return
        except Exception as exc:  # Ray raises a bare Exception for the start-up timeout
            print(f"Ray did not start ({exc}); attempt {attempt + 1} of 3", file=sys.stderr)
            import ray

            ray.shutdown()
    raise SystemExit("Ray did not start")


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--videos", type=int, default=10, help="distinct source videos (60 s each)")
    p.add_argument("--clips", type=int, default=96, help="clips per rate run")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16], help="downloads at once")
    p.add_argument("--repeats", type=int, default=2, help="rate runs per concurrency (median quoted)")
    p.add_argument("--memory-clips", type=int, nargs="+", default=[200, 1000], help="clips of the memory runs")
    p.add_argument("--memory-concurrency", type=int, default=8, help="downloads at once in the memory runs")
    p.add_argument("--out", default=None, help="result JSON (default benchmarks/results/fetch_cpu.json)")
    args = p.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="clipsynth-fetch-bench-"))
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    start_ray()
    try:
        site = make_site(workdir, args.videos)
        with LoopbackServer(site) as server:
            rate_manifest = write_manifest(workdir / "rate.csv", args.clips)
            runs: dict[int, list[dict]] = {c: [] for c in args.concurrency}
            for repeat in range(args.repeats):
                order = args.concurrency if repeat % 2 == 0 else list(reversed(args.concurrency))
                for c in order:
                    out = workdir / f"rate_{c}_{repeat}"
                    runs[c].append(fetch(server, rate_manifest, out, c))
                    shutil.rmtree(out)
                    print(f"concurrency {c}, repeat {repeat}: {runs[c][-1]}", file=sys.stderr)
            memory = []
            for clips in args.memory_clips:
                manifest = write_manifest(workdir / f"memory_{clips}.csv", clips)
                out = workdir / f"memory_{clips}"
                idle = tree_pss_mib()
                with PeakSampler() as sampler:
                    result = fetch(server, manifest, out, args.memory_concurrency)
                rerun = fetch(server, manifest, out, args.memory_concurrency)  # nothing left: requests 0
                memory.append(
                    {
                        **result,
                        "concurrency": args.memory_concurrency,
                        "idle_tree_pss_mib": round(idle, 1),
                        "peak_tree_pss_mib": round(sampler.peak, 1),
                        "peak_above_idle_mib": round(sampler.peak - idle, 1),
                        "rerun_requests": rerun["requests"],
                    }
                )
                shutil.rmtree(out)
                print(f"memory run, {clips} clips: {memory[-1]}", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    rates = {
        str(c): {
            "median_clips_per_second": statistics.median(r["clips_per_second"] for r in rs),
            "median_in_actor_clips_per_second": statistics.median(r["in_actor_clips_per_second"] for r in rs),
            "median_cpu_seconds_per_clip": statistics.median(r["cpu_seconds_per_clip"] for r in rs),
            "runs": rs,
        }
        for c, rs in runs.items()
    }
    base = rates[str(args.concurrency[0])]["median_clips_per_second"]
    result = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "load_average_before_and_after": [round(load_before[0], 1), round(os.getloadavg()[0], 1)],
            "note": "2 cores shared with other jobs: compare within one run; CPU seconds per clip are load-proof",
        },
        "settings": vars(args),
        "clips_per_second": rates,
        "speedup_vs_first": {c: round(r["median_clips_per_second"] / base, 2) for c, r in rates.items()},
        "memory": memory,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    rate_text = ", ".join(
        f"{c}: {r['median_clips_per_second']:.2f} (in actors {r['median_in_actor_clips_per_second']:.2f}, "
        f"{r['median_cpu_seconds_per_clip']:.2f} CPU s/clip)"
        for c, r in rates.items()
    )
    mem_text = ", ".join(f"{m['clips']} clips +{m['peak_above_idle_mib']:.0f} MiB" for m in memory)
    emit(
        result, "fetch_cpu", f"clips/s by concurrency {rate_text}; peak PSS above the idle cluster {mem_text}", args.out
    )


if __name__ == "__main__":
    main()
