"""The fetch half of issue 26's demonstration: a VGG-Sound-format CSV of 232 clips (some missing: HTTP 404; some
broken: not video) fetched from a loopback HTTP server with the job's own command line, the ledger's counts, and
a re-run's request count; every fetched clip's window checked against the tone that encodes its source second.

    python benchmarks/fetch/demo_vggsound.py                      # output in /work/fetch_demo
    python benchmarks/fetch/demo_vggsound.py --out-dir /tmp/demo --videos 6 --ids-per-video 2

The site: --videos distinct 60 s 160x120 H.264/AAC videos (tests/loopback_videos.py: the audio's tone says the
second), each served under --ids-per-video YouTube-like ids (hard links); every id has --windows clips (10 s
windows at different starts, VGG-Sound's layout); --missing ids are not served (404), --broken ids serve text.
One id's clips are listed in both splits (a leak the manifest reports and resolves). Labels: 6 classes; 1 id in
10 is in test.

Runs `python jobs/fetch.py --manifest vggsound.csv --format vggsound --output OUT/videos --url-template
http://127.0.0.1:PORT/{id}.mp4` twice (the second must ask the server for nothing), then once more into
WebDataset shards (OUT/shards): the job's main() with those flags, in this process, so that the three runs share
one local Ray (its lines go to OUT/fetch_log.txt). Result: benchmarks/results/fetch_demo.json and a summary line.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
from common import benchmark_parser, emit  # noqa: E402
from loopback_videos import LoopbackServer, tone_seconds, tone_video  # noqa: E402

CLASSES = ("dog barking", "playing violin, fiddle", "cat meowing", "church bell ringing", "rain", "lions roaring")
ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


def youtube_like_ids(n: int, rng: random.Random) -> list[str]:
    ids: set[str] = set()
    while len(ids) < n:
        ids.add("".join(rng.choice(ID_CHARS) for _ in range(11)))
    return sorted(ids)


def build_site(site: Path, args, rng: random.Random) -> tuple[list[str], list[str], list[str]]:
    """The served files; returns (good ids, missing ids, broken ids)."""
    n_good = args.videos * args.ids_per_video
    ids = youtube_like_ids(n_good + args.missing + args.broken, rng)
    good, missing, broken = ids[:n_good], ids[n_good : n_good + args.missing], ids[n_good + args.missing :]
    sources = [tone_video(site / f"_source_{i:02d}.mp4", 60, gray=30 + 7 * i) for i in range(args.videos)]
    for k, ytid in enumerate(good):
        os.link(sources[k % args.videos], site / f"{ytid}.mp4")
    for ytid in broken:
        (site / f"{ytid}.mp4").write_bytes(b"<!DOCTYPE html><title>Video unavailable</title>\n" * 50)
    return good, missing, broken


def write_csv(path: Path, good: list[str], missing: list[str], broken: list[str], windows: int, rng) -> int:
    """vggsound.csv rows (youtube_id,start_seconds,label,split; quoted labels with commas); returns the count."""
    rows = []
    starts = list(range(0, 50, 5))
    for n, ytid in enumerate(good + missing + broken):
        label = CLASSES[n % len(CLASSES)]
        split = "test" if n % 10 == 0 else "train"
        for start in sorted(rng.sample(starts, windows)):
            rows.append((ytid, start, label, split))
    # A leak: the first good id (a test video) gets one of its clips listed in train.
    first = good[0]
    rows = [(y, s, lab, "train" if (y == first and k == 0) else sp) for k, (y, s, lab, sp) in enumerate(rows)]
    with path.open("w") as f:
        for ytid, start, label, split in rows:
            quoted = f'"{label}"' if "," in label else label
            f.write(f"{ytid},{start},{quoted},{split}\n")
    return len(rows)


def fetch_flags(csv_path: Path, output: Path, url_template: str, concurrency: int, *extra: str) -> list[str]:
    return [
        "--manifest",
        str(csv_path),
        "--format",
        "vggsound",
        "--output",
        str(output),
        "--url-template",
        url_template,
        "--concurrency",
        str(concurrency),
        "--extractors",
        "generic",
        *extra,
    ]


def run_job(flags: list[str], log_file: Path) -> float:
    """jobs/fetch.py's main() with these flags, in this process (one local Ray for all runs), its lines logged."""
    import contextlib

    from clipsynth_platform.fetch.job import main as fetch_main

    t0 = time.perf_counter()
    with log_file.open("a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        print("$ python jobs/fetch.py " + " ".join(flags), flush=True)
        if fetch_main(flags) != 0:
            raise RuntimeError(f"jobs/fetch.py {' '.join(flags)} failed: see {log_file}")
    return round(time.perf_counter() - t0, 1)


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--out-dir", default="/work/fetch_demo", help="where the fetched clips stay (emptied first)")
    p.add_argument("--videos", type=int, default=24, help="distinct source videos")
    p.add_argument("--ids-per-video", type=int, default=3, help="YouTube-like ids serving each source video")
    p.add_argument("--windows", type=int, default=3, help="10 s clips listed per id")
    p.add_argument("--missing", type=int, default=10, help="ids the server does not have (404)")
    p.add_argument("--broken", type=int, default=6, help="ids the server answers with text, not video")
    p.add_argument("--concurrency", type=int, default=4, help="downloads at once")
    p.add_argument("--no-webdataset", action="store_true", help="skip the third run into WebDataset shards")
    p.add_argument("--out", default=None, help="result JSON (default benchmarks/results/fetch_demo.json)")
    args = p.parse_args()

    rng = random.Random(26)
    out_dir = Path(args.out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    site = Path(tempfile.mkdtemp(prefix="clipsynth-fetch-site-"))
    log_file = out_dir / "fetch_log.txt"
    try:
        good, missing, broken = build_site(site, args, rng)
        csv_path = out_dir / "vggsound.csv"
        clips = write_csv(csv_path, good, missing, broken, args.windows, rng)
        videos = out_dir / "videos"
        with LoopbackServer(site) as server:
            template = server.url("{id}.mp4")
            flags = fetch_flags(csv_path, videos, template, args.concurrency)
            first_seconds = run_job(flags, log_file)
            first_requests = server.total_requests
            second_seconds = run_job(flags, log_file)
            rerun_requests = server.total_requests - first_requests
            shard_stats = None
            if not args.no_webdataset:
                before = server.total_requests
                shards = out_dir / "shards"
                shard_flags = fetch_flags(
                    csv_path, shards, template, args.concurrency, "--output-format", "webdataset", "--shard-clips", "64"
                )
                shard_seconds = run_job(shard_flags, log_file)
                members = []
                for tar_path in sorted(shards.glob("shard-*.tar")):
                    with tarfile.open(tar_path) as tar:
                        members += tar.getnames()
                shard_stats = {
                    "seconds": shard_seconds,
                    "requests": server.total_requests - before,
                    "shards": len(list(shards.glob("shard-*.tar"))),
                    "clips_in_shards": sum(m.endswith(".mp4") for m in members),
                    "sidecars_in_shards": sum(m.endswith(".json") for m in members),
                }
    finally:
        shutil.rmtree(site, ignore_errors=True)

    ledger = pq.read_table(videos / "_fetch_ledger.parquet").to_pylist()
    summary = json.loads((videos / "_fetch_summary.json").read_text())
    statuses = Counter(r["status"] for r in ledger)
    classes = Counter(r["error_class"] for r in ledger if r["status"] != "ok")
    examples = {}
    for r in ledger:
        if r["status"] != "ok" and r["error_class"] not in examples:
            examples[r["error_class"]] = r["message"]
    # Every fetched clip holds its own window: the tone of each second is its source second.
    verified, wrong = 0, []
    for r in ledger:
        if r["status"] == "ok":
            start = int(r["clip_id"].rsplit("_", 1)[1])
            found = tone_seconds(videos / r["location"])
            if found == list(range(start, start + 10)):
                verified += 1
            else:
                wrong.append((r["clip_id"], found))
    result = {
        "manifest": {"rows": clips, **summary["manifest"]},
        "served": {"ids": len(good), "missing_ids": len(missing), "broken_ids": len(broken)},
        "first_run": {
            "seconds": first_seconds,
            "requests": first_requests,
            "ledger_rows": len(ledger),
            "ledger_status": dict(statuses),
            "failed_by_class": dict(classes),
            "messages": examples,
            "summary": {k: summary[k] for k in ("clips_in", "ok", "failed", "not_tried", "failed_by_class")},
        },
        "rerun": {"seconds": second_seconds, "requests": rerun_requests, "run": summary["run"]},
        "windows_verified": {"ok_clips": statuses["ok"], "tone_matches_window": verified, "wrong": wrong[:5]},
        "webdataset_run": shard_stats,
        "output": {"files": str(videos), "shards": str(out_dir / "shards"), "csv": str(csv_path), "log": str(log_file)},
        "command": "python jobs/fetch.py " + " ".join(flags),
        "machine_note": "2 cores shared with other jobs; the first run's seconds include starting the local Ray",
    }
    line = (
        f"{clips} clips listed; run 1: {statuses['ok']} ok, {statuses['failed']} failed {dict(classes)}, "
        f"{first_requests} requests; re-run: {rerun_requests} requests; windows verified {verified}/{statuses['ok']}"
    )
    emit(result, "fetch_demo", line, args.out)


if __name__ == "__main__":
    main()
