"""A cache of reference-set statistics (mu, sigma), so the test split is embedded once per backbone.

The key is the SHA-256 of a canonical JSON of everything that determines the statistics (runner.py's
`_ref_parts`): the data URI and split, the content fingerprint of its shards, the backbone's identity (its
weights' hash) and its code version (a version constant per embedder and a digest of the source that
computes it, front end included), what the reference is (raw audio, vocoded mels with which vocoder, mel
windows of what length) and how many clips it takes; plus this cache's own format version. Nothing about the
machine (device, batch size, threads) is in it: those do not change the statistics. Entries are `<key>.npz`
(numpy arrays only, loaded with allow_pickle=False) beside a `<key>.json` that records the key's parts.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from clipsynth_core.metrics import GaussianStats

DEFAULT_CACHE_DIR = Path("~/.cache/clipsynth/eval_stats")
CACHE_FORMAT = "clipsynth-ref-stats/2"


def cache_key(parts: dict) -> str:
    payload = {"cache_format": CACHE_FORMAT, **parts}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class StatsCache:
    """get_or_compute(parts, compute) -> (stats, hit). A directory of None disables caching."""

    def __init__(self, directory: str | os.PathLike | None = DEFAULT_CACHE_DIR) -> None:
        self.directory = Path(directory).expanduser() if directory else None
        self.hits = 0
        self.misses = 0

    def path_for(self, parts: dict) -> Path | None:
        return self.directory / f"{cache_key(parts)}.npz" if self.directory else None

    def load(self, parts: dict) -> GaussianStats | None:
        path = self.path_for(parts)
        if path is None or not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as z:
            return GaussianStats(z["mu"], z["sigma"], int(z["count"]))

    def store(self, parts: dict, stats: GaussianStats) -> None:
        path = self.path_for(parts)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: concurrent evaluations never read a half-written entry.
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, mu=stats.mu, sigma=stats.sigma, count=np.int64(stats.count))
        os.replace(tmp, path)
        path.with_suffix(".json").write_text(json.dumps(parts, indent=2, sort_keys=True, default=str))

    def get_or_compute(self, parts: dict, compute: Callable[[], GaussianStats]) -> tuple[GaussianStats, bool]:
        cached = self.load(parts)
        if cached is not None:
            self.hits += 1
            return cached, True
        self.misses += 1
        stats = compute()
        self.store(parts, stats)
        return stats, False
