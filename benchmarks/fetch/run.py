"""Benchmark: the fetch stage (run_fetch: yt-dlp actors on Ray) against a loopback HTTP server serving ffmpeg-made
videos: clips per second at 1, 4 and 16 concurrent downloads, the CPU a clip costs, and the memory of a
1,000-clip run against a 200-clip one.

    python benchmarks/fetch/run.py                    # 96 clips per rate run, 2 repeats; memory: 200 and 1,000 clips
    python benchmarks/fetch/run.py --clips 24 --repeats 1 --memory-clips 50 200   # a quick look

Source: --videos distinct 60 s 160x120 H.264/AAC videos (tests/loopback_videos.py), hard-linked under 100 names;
each clip is a 10 s window of one of them (VGG-Sound's layout: several clips per video). --extractors generic, so
the figures are the stage's own cost per clip (yt-dlp's extraction, ffmpeg cutting the window, ffprobe, the
ledger), not a network's.
- rates (one local Ray of 8 logical CPUs, 0.25 CPU per download actor, a fresh output per run): clips / the run's
  fetch seconds (starting the actors included), and "in actors": clips / (the ledger's per-clip seconds summed /
  concurrency), the rate once the actors run. Medians over --repeats; the concurrencies alternate in order within
  each repeat, so a busy machine slows all of them alike;
- CPU per clip: user + system time of one download child (yt-dlp's Python API) and the ffmpeg and ffprobe it runs
  and waits for, over --cpu-clips clips after a first one: a figure the machine's other load does not move;
- memory: each --memory-clips run in a process of its own (its own local Ray, 8 download actors); the
  proportional set size (PSS, /proc/PID/smaps_rollup) of that process and all its descendants (Ray's daemons,
  the actors, their yt-dlp children, ffmpeg) sampled every 0.25 s: its peak, and its peak over each quarter of
  the run (flat quarters: memory does not grow with the clips fetched).
Results: benchmarks/results/fetch_cpu.json and one summary line on stdout.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
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


def tree_pss_mib(root: int) -> float:
    """PSS of process `root` and all its descendants, in MiB."""
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += _pss_kib(pid)
        stack.extend(_children(pid))
    return total / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and of the children it has waited for."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime, stime, cutime, cstime


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


def fetch(url_template: str, manifest: Path, out: Path, concurrency: int) -> dict:
    """One run_fetch; its counts, rates and the in-actor rate from its ledger."""
    config = FetchConfig(
        manifest=str(manifest),
        format="vggsound",
        output=str(out),
        url_template=url_template,
        concurrency=concurrency,
        clips_per_task=1,
        retries=0,
        extractors=("generic",),
        num_cpus=8,
    )
    summary = run_fetch(config, log=lambda line: None)
    if summary.ok != summary.clips_in:
        raise RuntimeError(f"{summary.clips_in - summary.ok} clips failed: {summary.failed_by_class}")
    busy = sum(r.seconds for r in Ledger.read(str(out)).rows.values() if r.run == summary.run.run)
    return {
        "clips": summary.clips_in,
        "seconds": summary.run.seconds,
        "clips_per_second": summary.run.clips_per_second,
        "in_actor_clips_per_second": round(summary.run.fetched_ok / (busy / concurrency), 3) if busy else None,
    }


def start_ray() -> None:
    """One local Ray (8 logical CPUs: 16 actors at 0.25 CPU fit); a loaded machine can make Ray's 30 s start-up
    wait run out, so it is tried three times."""
    import ray

    from clipsynth_platform.runtime.ray_cluster import LocalRay, connect_ray

    for attempt in range(3):
        try:
            connect_ray(None, LocalRay(num_cpus=8, object_store_bytes=1_000_000_000, dashboard=False))
            return
        except Exception as exc:  # Ray raises a bare Exception for the start-up timeout
            print(f"Ray did not start ({exc}); attempt {attempt + 1} of 3", file=sys.stderr)
            ray.shutdown()
    raise SystemExit("Ray did not start")


def cpu_per_clip(server: LoopbackServer, workdir: Path, clips: int) -> dict:
    from clipsynth_platform.fetch.config import default_format_selector
    from clipsynth_platform.fetch.process import DownloaderProcess
    from clipsynth_platform.fetch.ytdlp import DownloaderSettings

    scratch = workdir / "cpu_scratch"
    scratch.mkdir()
    settings = DownloaderSettings(str(scratch), default_format_selector(360), extractors=("generic",))
    process = DownloaderProcess(settings)
    try:
        assert process.download(server.url("vid000.mp4"), "first", 0.0, 10.0, 300.0).ok
        assert process.proc is not None
        start_cpu, t0 = cpu_seconds(process.proc.pid), time.perf_counter()
        first_cpu = start_cpu
        for k in range(clips):
            start = float(WINDOWS[k % len(WINDOWS)])
            reply = process.download(server.url(f"vid{k % NAMES:03d}.mp4"), f"c{k}", start, start + 10.0, 300.0)
            assert reply.ok, reply.message
            os.unlink(reply.path)
        cpu = cpu_seconds(process.proc.pid) - start_cpu
        wall = time.perf_counter() - t0
    finally:
        process.close()
    return {
        "clips": clips,
        "child_start_and_first_clip_cpu_seconds": round(first_cpu, 3),
        "cpu_seconds_per_clip": round(cpu / clips, 3),
        "wall_seconds_per_clip": round(wall / clips, 3),
    }


def memory_run(url_template: str, manifest: Path, out: Path) -> None:
    """--memory-run: one fetch in this process (its own local Ray); prints its result as JSON."""
    start_ray()
    print(json.dumps(fetch(url_template, manifest, out, 8)))


def measure_memory(server: LoopbackServer, workdir: Path, clips: int) -> dict:
    manifest = write_manifest(workdir / f"memory_{clips}.csv", clips)
    out = workdir / f"memory_{clips}"
    cmd = [sys.executable, __file__, "--memory-run", str(manifest), str(out), server.url("{id}.mp4")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    samples: list[tuple[float, float]] = []
    t0 = time.perf_counter()
    while proc.poll() is None:
        samples.append((time.perf_counter() - t0, tree_pss_mib(proc.pid)))
        time.sleep(0.25)
    result = json.loads(proc.stdout.read().strip().splitlines()[-1]) if proc.returncode == 0 else None
    if result is None:
        raise RuntimeError(f"the memory run of {clips} clips failed ({proc.returncode})")
    # The fetch itself is the run's last `seconds`: its quarters, by time.
    fetch_start = samples[-1][0] - result["seconds"]
    during = [(t, m) for t, m in samples if t >= fetch_start]
    quarter_peaks = []
    for q in range(4):
        lo, hi = fetch_start + q * result["seconds"] / 4, fetch_start + (q + 1) * result["seconds"] / 4
        quarter_peaks.append(round(max((m for t, m in during if lo <= t < hi), default=0.0), 1))
    shutil.rmtree(out, ignore_errors=True)
    return {
        **result,
        "concurrency": 8,
        "peak_tree_pss_mib": round(max(m for _, m in samples), 1),
        "peak_tree_pss_mib_by_quarter_of_the_fetch": quarter_peaks,
        "samples": len(samples),
    }


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--memory-run":
        memory_run(sys.argv[4], Path(sys.argv[2]), Path(sys.argv[3]))
        return
    p = benchmark_parser(__doc__)
    p.add_argument("--videos", type=int, default=10, help="distinct source videos (60 s each)")
    p.add_argument("--clips", type=int, default=96, help="clips per rate run")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16], help="downloads at once")
    p.add_argument("--repeats", type=int, default=2, help="rate runs per concurrency (median quoted)")
    p.add_argument("--cpu-clips", type=int, default=20, help="clips of the CPU measurement")
    p.add_argument("--memory-clips", type=int, nargs="+", default=[200, 1000], help="clips of the memory runs")
    p.add_argument("--out", default=None, help="result JSON (default benchmarks/results/fetch_cpu.json)")
    args = p.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="clipsynth-fetch-bench-"))
    t0, load_before = time.perf_counter(), os.getloadavg()[0]
    try:
        site = make_site(workdir, args.videos)
        with LoopbackServer(site) as server:
            template = server.url("{id}.mp4")
            cpu = cpu_per_clip(server, workdir, args.cpu_clips)
            print(f"CPU per clip: {cpu}", file=sys.stderr)
            memory = []
            for clips in args.memory_clips:
                memory.append(measure_memory(server, workdir, clips))
                print(f"memory run, {clips} clips: {memory[-1]}", file=sys.stderr)
            start_ray()
            rate_manifest = write_manifest(workdir / "rate.csv", args.clips)
            runs: dict[int, list[dict]] = {c: [] for c in args.concurrency}
            for repeat in range(args.repeats):
                order = args.concurrency if repeat % 2 == 0 else list(reversed(args.concurrency))
                for c in order:
                    out = workdir / f"rate_{c}_{repeat}"
                    before = server.total_requests
                    runs[c].append(
                        {**fetch(template, rate_manifest, out, c), "requests": server.total_requests - before}
                    )
                    shutil.rmtree(out)
                    print(f"concurrency {c}, repeat {repeat}: {runs[c][-1]}", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    rates = {
        str(c): {
            "median_clips_per_second": statistics.median(r["clips_per_second"] for r in rs),
            "median_in_actor_clips_per_second": statistics.median(r["in_actor_clips_per_second"] for r in rs),
            "runs": rs,
        }
        for c, rs in runs.items()
    }
    first = rates[str(args.concurrency[0])]
    result = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "load_average_at_start_and_end": [round(load_before, 1), round(os.getloadavg()[0], 1)],
            "note": "2 cores shared with other jobs (see the load): compare within this run",
        },
        "settings": vars(args),
        "clips_per_second": rates,
        "ratio_to_first": {
            c: {
                "run": round(r["median_clips_per_second"] / first["median_clips_per_second"], 2),
                "in_actors": round(
                    r["median_in_actor_clips_per_second"] / first["median_in_actor_clips_per_second"], 2
                ),
            }
            for c, r in rates.items()
        },
        "cpu_per_clip": cpu,
        "memory": memory,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    rate_text = ", ".join(
        f"{c}: {r['median_clips_per_second']:.2f} (in actors {r['median_in_actor_clips_per_second']:.2f})"
        for c, r in rates.items()
    )
    mem_text = ", ".join(f"{m['clips']} clips {m['peak_tree_pss_mib']:.0f} MiB" for m in memory)
    emit(
        result,
        "fetch_cpu",
        f"clips/s by concurrency {rate_text}; {cpu['cpu_seconds_per_clip']:.2f} CPU s per clip in the download child; "
        f"peak PSS of a whole run: {mem_text}",
        args.out,
    )


if __name__ == "__main__":
    main()
