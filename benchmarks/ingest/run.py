"""Benchmark: the ingestion decode stage (decode + 10 s chunks + log-mel + JPEG frames) against the research-code
baseline, per CPU core, and its memory as the corpus grows 10x.

    python benchmarks/ingest/run.py                      # 6 and 60 synthetic 30 s 360p videos, two corpora
    python benchmarks/ingest/run.py --videos 2 --repeats 1 --scale 3 --grain 6   # a quick look

Methods (each pass runs in a fresh child process, one file after another, torch on one thread):
- baseline: per file one ffmpeg subprocess writing 16 kHz mono WAV, one writing JPEG frames at 1 fps, then the
  mel of each 10 s chunk from the WAV (the research code's way);
- exact / keyframe: the job's decode stage (`clipsynth_platform.ingest.decode.process_video`) with exact frame
  seeking (decord) or keyframe snapping (decord's index, torchcodec's decoding), torchcodec audio, 1 thread.
Two corpora by default: a clean synthetic pattern and the same with heavy film grain. Grain makes every
keyframe several times as costly to decode while P-frames stay cheap, so it moves the keyframe method's
speedup most; real footage lies between the two.
"chunks per CPU-second" counts user + system CPU time of the process and its children (ffmpeg uses several
threads, so wall time alone would flatter it): it is throughput per core. Figures are medians over passes.
Results: benchmarks/results/ingest_cpu.json and one summary line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as std_platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import benchmark_parser

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "ingest_cpu.json"
CHUNK_SAMPLES = 160_000
MIN_CHUNK_SAMPLES = 66_560


def make_corpus(
    workdir: Path, videos: int, scale: int, seconds: int, size: str, grain: int
) -> tuple[list[str], list[str]]:
    """`videos` distinct synthetic videos (moving test pattern, film grain of strength `grain`, a tone, stereo
    AAC, H.264 with a keyframe every 5 s), and a `scale`x corpus of hard links to them under other names."""
    small, large = [], []
    (workdir / "small").mkdir(parents=True, exist_ok=True)
    (workdir / "large").mkdir(parents=True, exist_ok=True)
    for i in range(videos):
        out = workdir / "small" / f"video_{i:03d}.mp4"
        cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
        cmd += [
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size={size}:rate=30:duration={seconds},hue=h={37 * i},noise=alls={grain}:allf=t",
        ]
        cmd += ["-f", "lavfi", "-i", f"sine=frequency={220 + 55 * i}:sample_rate=44100:duration={seconds}"]
        cmd += ["-c:v", "libx264", "-preset", "veryfast", "-g", "150", "-pix_fmt", "yuv420p"]
        cmd += ["-c:a", "aac", "-ac", "2", "-shortest", str(out)]
        subprocess.run(cmd, check=True)
        small.append(str(out))
    for j in range(videos * scale):
        link = workdir / "large" / f"video_{j:04d}.mp4"
        os.link(small[j % videos], link)
        large.append(str(link))
    return small, large


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _baseline_file(path: str, tmp: Path, mel) -> int:
    import numpy as np
    import soundfile
    import torch

    wav = tmp / "audio.wav"
    frames = tmp / "frames"
    shutil.rmtree(frames, ignore_errors=True)
    frames.mkdir()
    ff = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", path]
    subprocess.run([*ff, "-vn", "-ac", "1", "-ar", "16000", str(wav)], check=True)
    subprocess.run([*ff, "-an", "-vf", "fps=1", "-q:v", "2", str(frames / "%06d.jpg")], check=True)
    wave, _ = soundfile.read(str(wav), dtype="float32")
    chunks = 0
    for start in range(0, len(wave), CHUNK_SAMPLES):
        piece = wave[start : start + CHUNK_SAMPLES]
        if len(piece) < MIN_CHUNK_SAMPLES:
            break
        with torch.inference_mode():
            mel(torch.from_numpy(np.ascontiguousarray(piece))[None])
        chunks += 1
    return chunks


def worker(method: str, files: list[str]) -> dict:
    """One pass over `files` in this process; prints what it measured."""
    import torch

    torch.set_num_threads(1)
    from clipsynth_core import MelFrontend
    from clipsynth_platform.ingest.decode import process_video
    from clipsynth_platform.ingest.settings import DecodeSettings

    mel = MelFrontend().eval()
    settings = DecodeSettings(frame_sampling=method if method != "baseline" else "exact", threads=1)
    # Warm up imports and decoders on the first file (not timed), as a long-running worker would be.
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    if method == "baseline":
        _baseline_file(files[0], tmp, mel)
    else:
        list(process_video({"uri": files[0], "video_id": "w", "split": "train", "label": None}, settings))
    rss_start = _rss_mb()
    rss_after = []
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    chunks = 0
    for i, path in enumerate(files):
        if method == "baseline":
            chunks += _baseline_file(path, tmp, mel)
        else:
            for table in process_video({"uri": path, "video_id": f"v{i}", "split": "train", "label": None}, settings):
                rec = table["record"].to_pylist()
                if rec[0] == "video" and table["status"][0].as_py() != "ok":
                    raise RuntimeError(f"{path}: {table['fail_reason'][0].as_py()}")
                chunks += rec.count("chunk")
        rss_after.append(round(_rss_mb(), 1))
    cpu, wall = _cpu_seconds() - cpu0, time.perf_counter() - wall0
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "method": method,
        "files": len(files),
        "chunks": chunks,
        "cpu_seconds": round(cpu, 3),
        "wall_seconds": round(wall, 3),
        "chunks_per_cpu_second": round(chunks / cpu, 3),
        "chunks_per_wall_second": round(chunks / wall, 3),
        "rss_start_mb": round(rss_start, 1),
        "rss_after_each_file_mb": rss_after,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3, 1),
        "peak_child_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e3, 1),
    }


def run_pass(method: str, files: list[str], workdir: Path) -> dict:
    listing = workdir / f"files-{method}-{len(files)}.json"
    listing.write_text(json.dumps(files))
    cmd = [sys.executable, __file__, "--worker", method, "--files", str(listing)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} pass failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def growth_mb_per_file(rss: list[float]) -> float:
    """Least-squares slope of RSS over files, after the first quarter (allocator warm-up)."""
    ys = rss[len(rss) // 4 :]
    if len(ys) < 2:
        return 0.0
    xs = list(range(len(ys)))
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--videos", type=int, default=6, help="distinct videos in the small corpus")
    p.add_argument("--scale", type=int, default=10, help="the large corpus is this many times the small one")
    p.add_argument("--seconds", type=int, default=30, help="length of each video")
    p.add_argument("--size", default="640x360", help="video resolution")
    p.add_argument(
        "--grain",
        default="0,6",
        help="comma-separated film-grain strengths, one corpus each (0: a clean pattern; 6: heavy sensor noise, "
        "which makes keyframes expensive to decode)",
    )
    p.add_argument("--repeats", type=int, default=3, help="passes over the small corpus per method (median quoted)")
    p.add_argument("--methods", default="baseline,exact,keyframe", help="comma-separated methods")
    p.add_argument("--out", default=str(RESULTS), help="where to write the JSON results")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--files", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, json.loads(Path(args.files).read_text()))))
        return

    t0 = time.perf_counter()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    grains = [int(g) for g in str(args.grain).split(",") if g.strip()]
    corpora = [measure_corpus(args, methods, grain) for grain in grains]
    report = {
        "benchmark": "ingest decode stage (decode + chunk + log-mel + JPEG frames), CPU",
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": std_platform.platform()},
        "corpus": {
            "videos": args.videos,
            "scale": args.scale,
            "seconds": args.seconds,
            "size": args.size,
            "grains": grains,
            "codec": "h264 (x264 veryfast, keyframe every 5 s) / stereo aac 44.1 kHz",
        },
        "repeats": args.repeats,
        "corpora": corpora,
        "target": {
            "speedup_per_core": 10.0,
            "met_by": {f"grain {c['grain']}": sorted(m for m, x in c["speedup"].items() if x >= 10.0) for c in corpora},
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print("ingest benchmark: " + " | ".join(summary_of(c, args.scale) for c in corpora))


def measure_corpus(args: argparse.Namespace, methods: list[str], grain: int) -> dict:
    """Every method on one synthetic corpus (film grain `grain`), and the memory pass on a `scale`x corpus."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-corpus-"))
    try:
        small, large = make_corpus(workdir, args.videos, args.scale, args.seconds, args.size, grain)
        results: dict = {}
        for method in methods:
            passes = [run_pass(method, small, workdir) for _ in range(args.repeats)]
            entry = {
                "passes": passes,
                "median_chunks_per_cpu_second": statistics.median(r["chunks_per_cpu_second"] for r in passes),
                "median_chunks_per_wall_second": statistics.median(r["chunks_per_wall_second"] for r in passes),
                "peak_rss_mb_small": max(r["peak_rss_mb"] for r in passes),
            }
            if method != "baseline":  # memory as the corpus grows: the job's decode stage only
                big = run_pass(method, large, workdir)
                entry["large_pass"] = {k: v for k, v in big.items() if k != "rss_after_each_file_mb"}
                entry["peak_rss_mb_large"] = big["peak_rss_mb"]
                entry["peak_rss_ratio_large_vs_small"] = round(big["peak_rss_mb"] / entry["peak_rss_mb_small"], 3)
                entry["rss_growth_mb_per_file_large"] = round(growth_mb_per_file(big["rss_after_each_file_mb"]), 3)
            results[method] = entry
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    base = results.get("baseline", {}).get("median_chunks_per_cpu_second")
    speedup = {
        m: round(r["median_chunks_per_cpu_second"] / base, 2) for m, r in results.items() if base and m != "baseline"
    }
    return {"grain": grain, "methods": results, "speedup": speedup}


def summary_of(corpus: dict, scale: int) -> str:
    parts = [f"{m} {r['median_chunks_per_cpu_second']:.1f}" for m, r in corpus["methods"].items()]
    parts += [f"{m} {x:.1f}x baseline" for m, x in corpus["speedup"].items()]
    parts += [
        f"{m} peak RSS {r['peak_rss_mb_small']:.0f} -> {r['peak_rss_mb_large']:.0f} MB at {scale}x files"
        for m, r in corpus["methods"].items()
        if "peak_rss_mb_large" in r
    ]
    return f"grain {corpus['grain']}: chunks/CPU-s " + ", ".join(parts)


if __name__ == "__main__":
    main()
