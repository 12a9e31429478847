"""Serving benchmark: latency (p50/p99) and throughput of the Ray Serve app at several concurrencies, for the
paper's 1,000 sampling steps and the service's fast default, against sequential single requests.

    .venv/bin/python benchmarks/serve/run.py                      # CPU-sized defaults (a few minutes)
    .venv/bin/python benchmarks/serve/run.py --model small --requests-per-client 4 --out /tmp/serve_gpu.json

What it runs, all in one process tree so the ratios share one machine state:
  1. "direct": the core Synthesizer in this process, one request at a time (no Serve, no HTTP);
  2. the Serve app (serve:app_builder) on a local Ray, closed-loop HTTP clients at each concurrency: every client
     sends its requests one after another; concurrency 1 is the sequential-single-requests baseline of the
     service. Throughput = answered requests / wall time of the level.
The model is random (weights do not change speed): a bundle built here from a U-Net preset. Prints one JSON
object and a one-line summary; writes the JSON to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the `serve` package lives at the repository root

from clipsynth_core import (  # noqa: E402
    DiffusionConfig,
    SamplingDefaults,
    Synthesizer,
    SynthesizerConfig,
    unet_config,
)

# U-Nets for the benchmark. "micro" keeps 1,000-step runs at concurrency 32 within minutes on 2 CPU cores.
MODELS = {
    "micro": dict(model_channels=4, channel_mult=(1, 2, 4, 8), attention_resolutions=(), cond_channels=4),
    "tiny": {},
    "small": None,  # unet_config("small")
}


@dataclass
class BenchConfig:
    model: str = "micro"
    paper_steps: int = 1000  # the paper samples with 1,000 respaced steps
    fast_steps: int = 100  # the service default under test
    sampler: str = "ddpm"
    concurrency: list[int] = field(default_factory=lambda: [1, 8, 32])
    requests_per_client: int = 1  # per concurrency level: clients x this many requests (min 2 at concurrency 1)
    # Extra step counts timed at concurrency 1 only, to see how latency scales with steps ("sampler:steps").
    candidates: list[str] = field(default_factory=lambda: ["ddim:50", "ddpm:50"])
    direct_requests: int = 2
    max_batch_size: int = 32
    batch_wait_s: float = 0.05  # the service default (ServeConfig.sampler_batch_wait_s)
    sampler_cpus: float = 1.0
    ray_cpus: int = 4
    out: str = str(REPO / "benchmarks" / "results" / "serve_cpu.json")


def parse_args() -> BenchConfig:
    d = BenchConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default=d.model)
    p.add_argument("--paper-steps", type=int, default=d.paper_steps)
    p.add_argument("--fast-steps", type=int, default=d.fast_steps)
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default=d.sampler)
    p.add_argument("--concurrency", type=int, nargs="+", default=d.concurrency)
    p.add_argument("--requests-per-client", type=int, default=d.requests_per_client)
    p.add_argument("--candidates", nargs="*", default=d.candidates)
    p.add_argument("--direct-requests", type=int, default=d.direct_requests)
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size)
    p.add_argument("--batch-wait-s", type=float, default=d.batch_wait_s)
    p.add_argument("--sampler-cpus", type=float, default=d.sampler_cpus)
    p.add_argument("--ray-cpus", type=int, default=d.ray_cpus)
    p.add_argument("--out", default=d.out)
    a = p.parse_args()
    return BenchConfig(**{k.replace("-", "_"): v for k, v in vars(a).items()})


def build_bundle(model: str, root: Path) -> Path:
    unet = unet_config("small", cond_dim=64) if model == "small" else unet_config("tiny", cond_dim=64, **MODELS[model])
    config = SynthesizerConfig.tiny(
        unet=unet,
        diffusion=DiffusionConfig(num_steps=4000),  # the paper's training steps: any step count up to 1,000 fits
        sampling=SamplingDefaults(),
    )
    torch.manual_seed(0)
    return Synthesizer(config).save(root / "bundle")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def summarize(latencies: list[float], wall: float, batch_sizes: list[int]) -> dict:
    return {
        "requests": len(latencies),
        "p50_s": round(pct(latencies, 50), 4),
        "p99_s": round(pct(latencies, 99), 4),
        "mean_s": round(statistics.fmean(latencies), 4),
        "throughput_rps": round(len(latencies) / wall, 4),
        "wall_s": round(wall, 3),
        "mean_batch_size": round(statistics.fmean(batch_sizes), 2) if batch_sizes else None,
        "max_batch_size": max(batch_sizes) if batch_sizes else None,
    }


def direct_baseline(bundle: Path, steps: int, sampler: str, n: int, threads: int) -> dict:
    """Sequential single requests to the core Synthesizer in this process (no Serve)."""
    torch.set_num_threads(threads)
    synth = Synthesizer.load(bundle)
    synth.synthesize(["warm up"], steps=2, seed=[0], sampler=sampler)  # allocator, lazy init (2 steps: cheap)
    synth.process(steps)  # the respaced schedule is cached per step count, as in the service
    latencies = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        synth.synthesize([f"direct {i}"], steps=steps, seed=[i], sampler=sampler)
        latencies.append(time.perf_counter() - t)
    return summarize(latencies, time.perf_counter() - t0, [1] * n)


async def closed_loop(base: str, concurrency: int, per_client: int, steps: int, sampler: str) -> dict:
    import httpx

    latencies: list[float] = []
    batch_sizes: list[int] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=base, timeout=3600, limits=limits) as client:

        async def worker(w: int) -> None:
            for k in range(per_client):
                body = {"query": f"client {w} request {k}", "seed": 1000 * w + k, "steps": steps, "sampler": sampler}
                t = time.perf_counter()
                r = await client.post("/synthesize", json=body)
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
                    continue
                latencies.append(time.perf_counter() - t)
                batch_sizes.append(int(r.headers["x-batch-size"]))

        t0 = time.perf_counter()
        await asyncio.gather(*[worker(w) for w in range(concurrency)])
        wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]}")
    return {"concurrency": concurrency, **summarize(latencies, wall, batch_sizes)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_service(
    bundle: Path,
    ray_cpus: float,
    app: str,
    steps: int,
    max_batch_size: int,
    batch_wait_s: float,
    extra: dict[str, str] | None = None,
) -> Iterator[str]:
    """The Serve app of `bundle` on a local Ray of `ray_cpus` CPUs at a free port; yields its base URL and stops
    Serve and Ray on exit. The sampler batches up to `max_batch_size`; `extra`: more builder arguments."""
    import ray
    from ray import serve

    from serve import app_builder

    ray.init(num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {
        "model_uri": str(bundle),
        "default_steps": str(steps),
        "sampler_max_batch_size": str(max_batch_size),
        "sampler_batch_wait_s": str(batch_wait_s),
        "sampler.max_ongoing_requests": str(2 * max_batch_size),
        **{f"{part}.num_cpus": "0.5" for part in ("encoder", "vocoder", "ingress")},
        **(extra or {}),
    }
    serve.run(app_builder(args), name=app, route_prefix="/", blocking=False)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    cfg = parse_args()
    print(json.dumps({"config": asdict(cfg)}), flush=True)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    t_start = time.perf_counter()
    load_at_start = os.getloadavg()[0]  # other work on the machine skews every figure: record it
    tmp = Path(tempfile.mkdtemp(prefix="clipsynth-serve-bench-"))
    bundle = build_bundle(cfg.model, tmp)
    threads = max(1, int(cfg.sampler_cpus))
    configs = {"paper": (cfg.sampler, cfg.paper_steps), "fast_default": (cfg.sampler, cfg.fast_steps)}

    direct = {
        name: direct_baseline(bundle, steps, s, cfg.direct_requests, threads) for name, (s, steps) in configs.items()
    }

    served: dict[str, list[dict]] = {}
    candidates: dict[str, dict] = {}
    extra = {"sampler.max_queued_requests": str(4 * max(cfg.concurrency)), "sampler.num_cpus": str(cfg.sampler_cpus)}
    with local_service(
        bundle, cfg.ray_cpus, "bench", cfg.fast_steps, cfg.max_batch_size, cfg.batch_wait_s, extra
    ) as base:
        for name, (sampler, steps) in configs.items():
            asyncio.run(closed_loop(base, 1, 1, 2, sampler))  # warm up every deployment (2 steps: cheap)
            served[name] = []
            for c in cfg.concurrency:
                per_client = max(cfg.requests_per_client, 2 if c == 1 else 1)
                level = asyncio.run(closed_loop(base, c, per_client, steps, sampler))
                served[name].append(level)
                print(json.dumps({name: level}), flush=True)
        for cand in cfg.candidates:
            sampler, steps = cand.split(":")
            candidates[cand] = asyncio.run(closed_loop(base, 1, 2, int(steps), sampler))

    def level(name: str, c: int) -> dict:
        return next(x for x in served[name] if x["concurrency"] == c)

    c1, cmax = min(cfg.concurrency), max(cfg.concurrency)
    ratios = {
        name: {
            f"throughput_c{c}_vs_sequential": round(
                level(name, c)["throughput_rps"] / level(name, c1)["throughput_rps"], 2
            )
            for c in cfg.concurrency
        }
        | {"serve_c1_latency_vs_direct": round(level(name, c1)["p50_s"] / direct[name]["p50_s"], 3)}
        for name in configs
    }
    ratios["fast_vs_paper_latency_c1"] = round(level("fast_default", c1)["p50_s"] / level("paper", c1)["p50_s"], 4)
    ratios["fast_vs_paper_throughput_cmax"] = round(
        level("fast_default", cmax)["throughput_rps"] / level("paper", cmax)["throughput_rps"], 2
    )
    result = {
        "benchmark": "serve",
        "machine": {
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "load_average_1m_at_start": round(load_at_start, 2),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "config": asdict(cfg),
        "unet_parameters": sum(p.numel() for p in Synthesizer.load(bundle).unet.parameters()),
        "direct_sequential": direct,
        "served": served,
        "candidates_c1": candidates,
        "ratios": ratios,
        "total_wall_s": round(time.perf_counter() - t_start, 1),
    }
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    fast, paper = level("fast_default", cmax), level("paper", cmax)
    print(
        f"serve ({cfg.model} U-Net, {result['machine']['device']}): {cfg.sampler} {cfg.paper_steps} steps p50 "
        f"{level('paper', c1)['p50_s']:.2f} s sequential, {paper['throughput_rps']:.3f} req/s at c={cmax} "
        f"({ratios['paper'][f'throughput_c{cmax}_vs_sequential']}x sequential); {cfg.fast_steps} steps p50 "
        f"{level('fast_default', c1)['p50_s']:.2f} s, {fast['throughput_rps']:.3f} req/s at c={cmax} "
        f"({ratios['fast_default'][f'throughput_c{cmax}_vs_sequential']}x); fast/paper latency "
        f"{ratios['fast_vs_paper_latency_c1']}"
    )


if __name__ == "__main__":
    main()
