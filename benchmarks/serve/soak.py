"""Serving soak: the Ray Serve app under sustained closed-loop load for minutes. Per time window: latency
percentiles and throughput of the syntheses, and the memory of every Serve process (each replica, the HTTP
proxy, the controller), to see what grows over time and by how much.

    .venv/bin/python benchmarks/serve/soak.py                          # 5 minutes, 4 clients, 10 steps
    .venv/bin/python benchmarks/serve/soak.py --minutes 30 --out /tmp/soak.json

Each client sends one request after another, a mix like a real page's: text queries (every one different, some
combined "a + b"), image uploads (PNG), and a share of bad requests (invalid JSON, out-of-range fields, a
non-image upload) that must get 4xx. Memory is read from /proc (Linux): RSS, and USS (the process's private
pages, which is what a leak grows; RSS also counts shared libraries). Growth is measured after a warm-up: the
last window minus the first, and the least-squares slope over all windows after the warm-up (MB per hour).
The model is random (weights do not change speed or memory); run.py builds it. Prints one JSON object and a
one-line summary; writes the JSON to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run.py, next to this file
from run import MODELS, REPO, build_bundle, local_service, pct

APP = "soak"
BAD_REQUESTS = [  # (path, keyword arguments of httpx's post, the status it must get)
    ("/synthesize", {"content": b'{"query": "a', "headers": {"content-type": "application/json"}}, 400),
    ("/synthesize", {"json": {"query": "a dog", "steps": 100_000}}, 422),
    ("/synthesize", {"json": {"query": "piano + "}}, 422),
    ("/synthesize/image", {"files": {"image": ("x.png", b"not an image", "image/png")}}, 415),
]
QUERIES = ["a dog barking", "rain on a roof", "playing violin", "a church bell", "playing cello + thunder"]


@dataclass
class SoakConfig:
    model: str = "micro"
    minutes: float = 5.0
    clients: int = 4
    steps: int = 10
    window_s: float = 15.0
    warmup_s: float = 30.0  # windows ending before this are left out of the growth figures
    image_share: float = 0.1
    bad_share: float = 0.1
    max_batch_size: int = 16
    batch_wait_s: float = 0.05
    ray_cpus: int = 4
    seed: int = 0
    machine_note: str = ""  # e.g. "shared with other jobs": stored with the result
    out: str = str(REPO / "benchmarks" / "results" / "serve_soak_cpu.json")


@dataclass
class Window:
    """What finished during one window."""

    latencies: list[float] = field(default_factory=list)  # of 200 answers to synthesis requests
    statuses: dict[str, int] = field(default_factory=dict)
    unexpected: int = 0  # answers whose status was not the one the request must get
    unexpected_examples: list[str] = field(default_factory=list)

    def count(self, status: int) -> None:
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1


def parse_args() -> SoakConfig:
    d = SoakConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in d.__dataclass_fields__.values():
        if f.name == "model":
            p.add_argument("--model", choices=sorted(MODELS), default=d.model)
        else:
            p.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(d, f.name)), default=getattr(d, f.name))
    return SoakConfig(**vars(p.parse_args()))


def parent_pid(pid: int) -> int:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state, past the parenthesised name


def descends_from(pid: int, root: int) -> bool:
    while pid > 1:
        if pid == root:
            return True
        pid = parent_pid(pid)
    return False


def serve_processes() -> dict[str, int]:
    """Name -> pid of this run's Serve processes: ServeReplica:<APP>:<deployment>, ProxyActor, ServeController
    (Ray names its worker processes `ray::<actor>.<method>`). Only descendants of this process count: other Ray
    clusters on a shared machine have their own proxy and controller."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::") and not descends_from(int(entry.name), os.getpid()):
            continue
        if not title.startswith("ray::"):
            continue
        actor = title.removeprefix("ray::").split(".")[0].strip()
        if actor.startswith(f"ServeReplica:{APP}:"):
            found[actor.rsplit(":", 1)[1]] = int(entry.name)
        elif actor in ("ProxyActor", "ServeController"):
            found[actor] = int(entry.name)
    return found


def process_memory_mb(pid: int) -> dict[str, float] | None:
    """RSS and USS (private clean + dirty pages) of a process, in MB; None when it is gone."""
    try:
        status = (Path("/proc") / str(pid) / "status").read_text()
        rollup = (Path("/proc") / str(pid) / "smaps_rollup").read_text()
    except OSError:
        return None

    def kb(text: str, key: str) -> int:
        line = next(x for x in text.splitlines() if x.startswith(key + ":"))
        return int(line.split()[1])

    uss = kb(rollup, "Private_Clean") + kb(rollup, "Private_Dirty")
    return {"rss": round(kb(status, "VmRSS") / 1024, 1), "uss": round(uss / 1024, 1)}


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds a process has used; None when it is gone."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def png_bytes(rng: np.random.Generator) -> bytes:
    from PIL import Image

    h, w = rng.integers(16, 128, size=2)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


async def client_loop(base: str, k: int, cfg: SoakConfig, stop: float, current: list[Window]) -> None:
    import httpx

    rng = random.Random(cfg.seed * 1000 + k)
    images = [png_bytes(np.random.default_rng(cfg.seed * 1000 + k + i)) for i in range(4)]
    n = 0
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:
        while time.monotonic() < stop:
            n += 1
            draw = rng.random()
            t = time.perf_counter()
            if draw < cfg.bad_share:
                path, kwargs, expected = BAD_REQUESTS[n % len(BAD_REQUESTS)]
                r = await client.post(path, **kwargs)
            elif draw < cfg.bad_share + cfg.image_share:
                files = {"image": ("frame.png", images[n % len(images)], "image/png")}
                path, expected = "/synthesize/image", 200
                r = await client.post(path, files=files, data={"steps": str(cfg.steps)})
            else:
                query = f"{QUERIES[n % len(QUERIES)]} {k}-{n}"  # never the same text twice
                path, expected = "/synthesize", 200
                r = await client.post(path, json={"query": query, "steps": cfg.steps, "seed": n})
            window = current[0]  # the window this answer finished in
            window.count(r.status_code)
            if r.status_code != expected:
                window.unexpected += 1
                if len(window.unexpected_examples) < 5:
                    window.unexpected_examples.append(f"{path}: {r.status_code} (expected {expected}) {r.text[:120]}")
            elif expected == 200:
                window.latencies.append(time.perf_counter() - t)


def summarize_window(t_end: float, window: Window, wall: float) -> dict:
    lat = window.latencies
    return {
        "t_end_s": round(t_end, 1),
        "answers": sum(window.statuses.values()),
        "statuses": dict(sorted(window.statuses.items())),
        "unexpected": window.unexpected,
        "unexpected_examples": window.unexpected_examples,
        "syntheses_per_s": round(len(lat) / wall, 3),
        "p50_s": round(pct(lat, 50), 4) if lat else None,
        "p90_s": round(pct(lat, 90), 4) if lat else None,
        "p99_s": round(pct(lat, 99), 4) if lat else None,
        "max_s": round(max(lat), 4) if lat else None,
    }


async def soak(base: str, cfg: SoakConfig, t0: float) -> list[dict]:
    stop = time.monotonic() + cfg.minutes * 60
    current = [Window()]
    windows: list[dict] = []
    cpu_before: dict[str, float] = {}
    clients = [asyncio.create_task(client_loop(base, k, cfg, stop, current)) for k in range(cfg.clients)]
    start = time.monotonic()
    while not all(c.done() for c in clients):
        await asyncio.wait(clients, timeout=max(0.0, start + cfg.window_s * (len(windows) + 1) - time.monotonic()))
        finished, current[0] = current[0], Window()
        now = time.monotonic()
        wall = now - (start + cfg.window_s * len(windows))
        row = summarize_window(now - t0, finished, wall)
        row["partial"] = wall < 0.9 * cfg.window_s  # the last one: requests in flight when the time ran out
        pids = serve_processes()
        row["memory_mb"] = {
            name: mem for name, pid in sorted(pids.items()) if (mem := process_memory_mb(pid)) is not None
        }
        # CPU each process got in this window, and the machine's load: a window where the sampler got little CPU
        # while the load was high was slowed by other work, not by the service.
        cpu = {name: used for name, pid in pids.items() if (used := process_cpu_s(pid)) is not None}
        row["cpu_s"] = {name: round(used - cpu_before.get(name, 0.0), 2) for name, used in sorted(cpu.items())}
        cpu_before.update(cpu)
        row["load_1m"] = round(os.getloadavg()[0], 2)
        row["pids"] = pids
        windows.append(row)
        print(
            json.dumps({k: row[k] for k in ("t_end_s", "answers", "p50_s", "p99_s")} | {"memory_mb": row["memory_mb"]}),
            flush=True,
        )
    for c in clients:
        c.result()  # a client that raised (a refused connection, a timeout) fails the run
    return windows


def _slope(t: np.ndarray, values: np.ndarray) -> float | None:
    """Least-squares slope in MB per hour, None with fewer than 3 points."""
    return round(float(np.polyfit(t, values, 1)[0]) * 3600, 1) if len(t) >= 3 else None


def growth(windows: list[dict], warmup_s: float) -> dict:
    """Per process: memory at the first window after warm-up and at the last, their difference, and the slope."""
    steady = [w for w in windows if w["t_end_s"] >= warmup_s and not w["partial"]] or windows
    out = {}
    for name in steady[-1]["memory_mb"]:
        rows = [(w["t_end_s"], w["memory_mb"][name]) for w in steady if name in w["memory_mb"]]
        t = np.array([r[0] for r in rows])
        entry = {"windows": len(rows), "restarted": len({w["pids"].get(name) for w in steady}) > 1}
        half = len(rows) // 2
        for kind in ("rss", "uss"):
            values = np.array([r[1][kind] for r in rows])
            entry[kind] = {
                "start_mb": float(values[0]),
                "end_mb": float(values[-1]),
                "growth_mb": round(float(values[-1] - values[0]), 1),
                "slope_mb_per_hour": _slope(t, values),
                # Growth that slows down (allocator pools, caches filling) differs from a leak's steady line.
                "first_half_slope_mb_per_hour": _slope(t[: half + 1], values[: half + 1]),
                "second_half_slope_mb_per_hour": _slope(t[half:], values[half:]),
            }
        out[name] = entry
    return out


def main() -> None:
    cfg = parse_args()
    print(json.dumps({"config": asdict(cfg)}), flush=True)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    load_at_start = os.getloadavg()[0]
    bundle = build_bundle(cfg.model, Path(tempfile.mkdtemp(prefix="clipsynth-serve-soak-")))

    with local_service(bundle, cfg.ray_cpus, APP, cfg.steps, cfg.max_batch_size, cfg.batch_wait_s) as base:
        t0 = time.monotonic()
        windows = asyncio.run(soak(base, cfg, t0))

    full = [w for w in windows if not w["partial"]] or windows
    latencies_p99 = [w["p99_s"] for w in full if w["p99_s"] is not None]
    statuses: dict[str, int] = {}
    for w in windows:
        for status, n in w["statuses"].items():
            statuses[status] = statuses.get(status, 0) + n
    unexpected = sum(w["unexpected"] for w in windows)
    steady = [w for w in full if w["t_end_s"] >= cfg.warmup_s] or full
    result = {
        "benchmark": "serve_soak",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_1m_at_start": round(load_at_start, 2),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
            # Record it: on a shared machine other work sets the latencies (memory is this run's own).
            "note": cfg.machine_note,
        },
        "config": asdict(cfg),
        "statuses": dict(sorted(statuses.items())),
        "unexpected_answers": unexpected,
        "latency": {
            "first_steady_window": {k: steady[0][k] for k in ("t_end_s", "p50_s", "p99_s")},
            "last_full_window": {k: full[-1][k] for k in ("t_end_s", "p50_s", "p99_s")},
            "median_window_p50_s": round(float(np.median([w["p50_s"] for w in steady if w["p50_s"]])), 4),
            "median_window_p99_s": round(float(np.median(latencies_p99)), 4),
            "worst_window_p99_s": max(latencies_p99),
        },
        "memory_growth_after_warmup": growth(windows, cfg.warmup_s),
        "windows": windows,
    }
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    grown = ", ".join(
        f"{name} {g['uss']['growth_mb']:+.1f} MB (second half {g['uss']['second_half_slope_mb_per_hour']:+.0f} MB/h)"
        + (" RESTARTED" if g["restarted"] else "")
        for name, g in result["memory_growth_after_warmup"].items()
    )
    lat = result["latency"]
    print(
        f"serve soak ({cfg.model} U-Net, {cfg.steps} steps, {cfg.clients} clients, {cfg.minutes:g} min): answers "
        f"{result['statuses']}, {unexpected} unexpected; window p50 median {lat['median_window_p50_s']:.2f} s, "
        f"p99 median {lat['median_window_p99_s']:.2f} s (first steady window {lat['first_steady_window']['p99_s']} s, "
        f"last {lat['last_full_window']['p99_s']} s); private memory (USS) after {cfg.warmup_s:g} s of warm-up: {grown}"
    )


if __name__ == "__main__":
    main()
