"""A local Ray for the ingestion benchmarks, started with retries: on a machine shared by many jobs, Ray's raylet
can miss its fixed 30 s start-up deadline ("The current node timed out during startup")."""

from __future__ import annotations

import time


def start_local_ray(num_cpus: int | None, attempts: int = 5) -> str:
    import ray

    from clipsynth_platform.runtime.ray_cluster import LocalRay, connect_ray

    for attempt in range(1, attempts + 1):
        try:
            return connect_ray(None, LocalRay(num_cpus=num_cpus or 0, dashboard=False))
        except Exception as exc:  # Ray raises a bare Exception for the start-up timeout
            if attempt == attempts or "timed out during startup" not in str(exc):
                raise
            ray.shutdown()
            print(f"Ray did not start (attempt {attempt}): {exc}; trying again", flush=True)
            time.sleep(10)
    raise AssertionError("unreachable")
