"""The fetch job on Ray Data: manifest -> plan (ledger, output) -> download actors -> files or shards, ledger,
summary.

The driver reads the manifest and the ledger, hands the clips still to fetch to an actor pool of --concurrency
yt-dlp actors (stage.py), and records each outcome as it streams back: the ledger is rewritten every
--ledger-flush-seconds and at the end (also when the run is interrupted), so a re-run starts where this one
stopped."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator

import pyarrow as pa

from clipsynth_platform.datasets.manifest import MANIFEST_FILE, Clip, Manifest, load_manifest
from clipsynth_platform.datasets.manifest.load import read_source
from clipsynth_platform.runtime.console import progress_bar
from clipsynth_platform.runtime.logs import LogFn, progress
from clipsynth_platform.runtime.ray_cluster import LocalRay, connect_ray
from clipsynth_platform.runtime.s3_requests import s3_request_counts
from clipsynth_platform.runtime.uri import exists, join, makedirs, write_atomically

from .attempts import ClipRequest
from .config import FetchConfig
from .ledger import SUMMARY_FILE, Ledger, LedgerRow
from .output import ShardWriter, list_output, next_shard_index
from .plan import FetchPlan, plan_fetch
from .stage import ClipFetcher
from .summary import FetchSummary, RunCounts, summarize
from .ytdlp import TOOL


def ensure_ray(config: FetchConfig) -> str:
    return connect_ray(config.address, LocalRay(num_cpus=config.num_cpus or 0, dashboard=False))


def _store_manifest(manifest: Manifest, output: str, log: LogFn) -> None:
    """Write the run's manifest into the output; say so when it differs from the one an earlier run wrote."""
    uri = join(output, MANIFEST_FILE)
    if exists(uri):
        earlier = Manifest.read(uri)
        if earlier.digest() == manifest.digest():
            return
        ids, old_ids = {c.clip_id for c in manifest}, {c.clip_id for c in earlier}
        log(
            f"the manifest changed since the last run: {len(ids - old_ids)} clips added, {len(old_ids - ids)} "
            "removed (the ledger keeps their rows; the summary counts this manifest's clips)"
        )
    manifest.write(uri)


def _dataset(config: FetchConfig, requests: list[ClipRequest], cookies: bytes | None, worker_env: dict | None):
    import ray.data

    blocks = math.ceil(len(requests) / config.clips_per_task)
    ds = ray.data.from_items([vars(r) for r in requests], override_num_blocks=blocks)
    settings = {
        "format_selector": config.selector,
        "cut": config.cut,
        "proxy": config.proxy,
        "sleep_interval": config.sleep_interval,
        "socket_timeout": min(30.0, config.timeout_seconds),
        "extractors": config.extractors,
    }
    policy = {
        "retries": config.retries,
        "backoff_seconds": config.backoff_seconds,
        "max_backoff_seconds": config.max_backoff_seconds,
        "timeout_seconds": config.timeout_seconds,
    }
    return ds.map_batches(
        ClipFetcher,
        batch_size=None,  # a whole block: --clips-per-task clips, fetched one after the other
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=min(config.concurrency, blocks)),
        num_cpus=config.download_cpus,
        fn_constructor_kwargs={
            "settings": settings,
            "policy": policy,
            "output": config.output,
            "output_format": config.output_format,
            "cookies": cookies,
        },
        runtime_env={"env_vars": dict(worker_env)} if worker_env else None,
    )


def _sidecar(clip: Clip, row: dict) -> dict:
    """The `{clip_id}.json` beside a clip in a WebDataset shard: what the manifest says and what was fetched."""
    return {
        **{k: v for k, v in clip.to_dict().items() if k not in ("line", "listed_split")},
        "url": row["url"],
        "duration": row["duration"],
        "video_codec": row["video_codec"],
        "audio_codec": row["audio_codec"],
        "tool_version": row["tool_version"],
    }


class _Recorder:
    """Turns result rows into ledger rows (through shards for a WebDataset output) and counts them."""

    def __init__(self, ledger: Ledger, run: int, clips: dict[str, Clip], shards: ShardWriter | None) -> None:
        self.ledger, self.run, self.clips, self.shards = ledger, run, clips, shards
        self.waiting: dict[str, dict] = {}  # ok rows whose shard is not written yet
        self.ok = self.failed = self.attempts = self.bytes = 0

    def _record(self, row: dict) -> None:
        old = self.ledger.get(row["clip_id"])
        fields = {k: v for k, v in row.items() if k != "payload"}
        fields["attempts"] += old.attempts if old is not None else 0
        self.ledger.record(LedgerRow(**fields, run=self.run))
        self.attempts += row["attempts"]
        if row["status"] == "ok":
            self.ok += 1
            self.bytes += row["bytes"]
        else:
            self.failed += 1

    def add(self, row: dict) -> None:
        if row["status"] != "ok" or self.shards is None:
            self._record(row)
            return
        payload = row.pop("payload")
        self.waiting[row["clip_id"]] = row
        self._shard_done(self.shards.add(row["clip_id"], payload, _sidecar(self.clips[row["clip_id"]], row)))

    def _shard_done(self, committed: tuple[str, list[str]] | None) -> None:
        if committed is None:
            return
        name, clip_ids = committed
        for clip_id in clip_ids:
            self._record({**self.waiting.pop(clip_id), "location": name})

    def finish(self) -> None:
        if self.shards is not None:
            self._shard_done(self.shards.commit())


def _rows(batches: Iterator[pa.Table]) -> Iterator[dict]:
    for batch in batches:
        yield from batch.to_pylist()


def run_fetch(config: FetchConfig, worker_env: dict[str, str] | None = None, log: LogFn | None = None) -> FetchSummary:
    """Fetch what the manifest lists and the output does not hold yet; returns (and writes) the summary.

    `worker_env`: environment variables for the download actors (a cluster whose workers lack the driver's)."""
    log = log or progress("fetch")
    config.validate()
    t_start, s3_start = time.perf_counter(), s3_request_counts()
    manifest = load_manifest(config.manifest, config.format)
    if not manifest.clips:
        raise ValueError(f"the manifest {config.manifest} lists no clips")
    report = manifest.report()
    log(
        f"manifest {config.manifest} ({manifest.format}): {report.clips} clips of {report.videos} videos, "
        f"splits {report.by_split}, {report.labels} labels; {len(report.conflicts)} conflicting and "
        f"{report.duplicates} repeated listings; {len(report.leaks)} videos in both splits (moved to "
        f"{report.leak_rule})"
    )
    makedirs(config.output)
    _store_manifest(manifest, config.output, log)
    ledger = Ledger.read(config.output)
    run = ledger.last_run + 1
    present = list_output(config.output)
    plan: FetchPlan = plan_fetch(manifest, ledger, present, config, run, TOOL)
    log(
        f"run {run}: {len(plan.to_fetch)} clips to fetch; {plan.skipped_ok} done, {plan.skipped_permanent} failed "
        f"permanently (--retry-failed tries them), {plan.adopted} found in the output, {plan.missing_outputs} "
        f"done but missing from the output, {plan.limited} left by --limit"
    )
    shards = (
        ShardWriter(config.output, config.shard_clips, next_shard_index(present))
        if config.output_format == "webdataset"
        else None
    )
    recorder = _Recorder(ledger, run, {c.clip_id: c for c, _ in plan.to_fetch}, shards)
    t_fetch = time.perf_counter()
    if plan.to_fetch:
        cookies = read_source(config.cookies) if config.cookies else None
        log(f"Ray: {ensure_ray(config)}; {min(config.concurrency, len(plan.to_fetch))} download actor(s)")
        t_fetch = time.perf_counter()  # the fetch's own time: not the cluster's start
        ds = _dataset(config, [r for _, r in plan.to_fetch], cookies, worker_env)
        batches = iter(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
        last_flush = time.monotonic()
        try:
            with progress_bar(len(plan.to_fetch), "fetch", "clips", log) as bar:
                for row in _rows(batches):
                    recorder.add(row)
                    bar.update(1)
                    bar.set_postfix_str(f"{recorder.failed} failed", refresh=False)
                    if time.monotonic() - last_flush >= config.ledger_flush_seconds:
                        ledger.write(config.output)
                        last_flush = time.monotonic()
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()
            recorder.finish()  # an interrupted run keeps the clips it has: the open shard is written too
            ledger.write(config.output)
    else:
        ledger.write(config.output)
    counts = RunCounts(
        run=run,
        to_fetch=len(plan.to_fetch),
        fetched_ok=recorder.ok,
        fetched_failed=recorder.failed,
        skipped_ok=plan.skipped_ok,
        skipped_permanent=plan.skipped_permanent,
        adopted=plan.adopted,
        missing_outputs=plan.missing_outputs,
        limited=plan.limited,
        attempts=recorder.attempts,
        bytes=recorder.bytes,
        seconds=round(time.perf_counter() - t_fetch, 3),
        s3_requests_driver=s3_request_counts().since(s3_start).to_dict(),
    )
    summary = summarize(manifest, ledger, counts, config.output, config.output_format, TOOL)
    write_atomically(join(config.output, SUMMARY_FILE), json.dumps(summary.to_dict(), indent=2).encode())
    if config.resolved_tracking_uri:
        from .tracking import log_fetch

        run_id = log_fetch(config, manifest, ledger, summary)
        log(f"MLflow run {run_id} ({config.resolved_tracking_uri})")
    log(f"done in {time.perf_counter() - t_start:.1f} s: {summary.line()} -> {config.output}")
    return summary
