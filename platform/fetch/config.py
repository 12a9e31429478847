"""The fetch job's configuration (jobs/fetch.py): one typed dataclass; each field is one flag
(clipsynth_platform.runtime.options)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from clipsynth_platform.datasets.manifest import FORMATS
from clipsynth_platform.runtime.options import check_all, check_choices, opt

OUTPUT_FORMATS = ("files", "webdataset")
YOUTUBE_WATCH = "https://www.youtube.com/watch?v={id}"
TEMPLATE_FIELDS = ("id", "clip_id", "start", "end")
EXPERIMENT = "clipsynth-fetch"


def default_format_selector(max_height: int) -> str:
    """yt-dlp's format selection: H.264 video with AAC audio at most `max_height` tall where the source offers
    them, else the best streams at most that tall, else the best there is. `<=?` lets a source that does not
    say its height (a plain file on an HTTP server) through."""
    h = f"[height<=?{max_height}]"
    return "/".join(
        (
            f"bv*[vcodec^=avc1]{h}+ba[acodec^=mp4a]",
            f"b[vcodec^=avc1][acodec^=mp4a]{h}",
            f"bv*{h}+ba",
            f"b{h}",
            "bv*+ba",
            "b",
        )
    )


def render_url(template: str, video_id: str, clip_id: str, start: float | None, end: float | None) -> str:
    """The URL of a clip's video: the template's {id}, {clip_id}, {start}, {end} filled in (whole seconds as
    integers; an empty string for the window of a whole video)."""

    def seconds(value: float | None) -> str:
        if value is None:
            return ""
        return str(int(value)) if value == int(value) else f"{value:g}"

    return template.format(id=video_id, clip_id=clip_id, start=seconds(start), end=seconds(end))


@dataclass
class FetchConfig:
    """One fetch run: which clips, from where, into where, how fast and how patiently."""

    # What and where.
    manifest: str = opt(
        "", "the clips: vggsound.csv, a MUSIC JSON video list, or a table (CSV/TSV/JSONL/Parquet); required"
    )
    format: str = opt("auto", "the manifest's format (auto: detected from the file)", choices=FORMATS)
    output: str = opt("", "local directory or s3:// prefix for the clips, _fetch_ledger.parquet and the summary")
    output_format: str = opt(
        "files",
        "files: {clip_id}.mp4 (what jobs/preprocess.py --input reads); webdataset: tar shards of "
        "{clip_id}.mp4 + {clip_id}.json",
        choices=OUTPUT_FORMATS,
    )
    url_template: str = opt(
        YOUTUBE_WATCH,
        "the URL of a clip's video: {id} (the video id), {clip_id}, {start}, {end}; a mirror or any HTTP server "
        "works the same way (a table's url column is used as is)",
    )
    cut: bool = opt(
        True,
        "download only the clip's window (yt-dlp's download sections); --no-cut: the URL serves the clip itself",
    )
    limit: int | None = opt(None, "fetch at most this many of the clips still to fetch (smoke runs)")
    retry_failed: bool = opt(
        False, "fetch clips whose earlier failure was permanent (unavailable, private, removed, ...) again"
    )
    shard_clips: int = opt(500, "clips per WebDataset tar shard (--output-format webdataset)")

    # How fast: the cluster-wide rate limit is the number of downloads at once.
    concurrency: int = opt(4, "downloads at once across the cluster, one Ray actor each: the rate limit")
    sleep_interval: float = opt(0.0, "seconds each download actor waits before each download (yt-dlp's)")
    download_cpus: float = opt(0.25, "CPUs reserved per download actor (downloading is mostly waiting)")
    clips_per_task: int = opt(4, "clips per Ray Data block handed to an actor")

    # How patiently.
    retries: int = opt(3, "retries of a transient failure (HTTP 429, bot check, network, timeout) within a run")
    backoff_seconds: float = opt(10.0, "the first retry's wait; it doubles per retry (times 0.5-1.5 at random)")
    max_backoff_seconds: float = opt(600.0, "the longest wait between two tries of one clip")
    timeout_seconds: float = opt(300.0, "a clip still downloading after this is stopped and failed as timeout")

    # yt-dlp.
    cookies: str | None = opt(
        None, "a Netscape cookies file for yt-dlp (local or s3://; YouTube's bot check, age gates); never logged"
    )
    proxy: str | None = opt(None, "proxy URL for yt-dlp (http://, socks5://); never logged")
    max_height: int = opt(360, "tallest video stream to download")
    format_selector: str | None = opt(
        None, "yt-dlp format selector (default: H.264 + AAC up to --max-height where offered, else the best)"
    )
    extractors: tuple[str, ...] = opt(
        ("default",),
        "yt-dlp extractors a URL is matched against (its --use-extractors): 'youtube' or 'generic' spare each "
        "worker matching ~1,900 site patterns on its first clip",
    )

    # Where it runs and is tracked.
    address: str | None = opt(None, "Ray cluster address (default: RAY_ADDRESS, else a local cluster)")
    num_cpus: int | None = opt(None, "CPUs of the local cluster the job starts (default: all cores)")
    tracking_uri: str | None = opt(
        None, "MLflow tracking URI for the manifest, ledger and summary (default: $MLFLOW_TRACKING_URI; else none)"
    )
    experiment: str = opt(EXPERIMENT, "MLflow experiment")
    ledger_flush_seconds: float = opt(30.0, "how often a running fetch rewrites its ledger (and at the end)")

    def validate(self) -> None:
        check_choices(self)
        if not self.manifest:
            raise ValueError("--manifest is required (vggsound.csv, a MUSIC JSON, or a table)")
        if not self.output:
            raise ValueError("--output is required (a local directory or an s3:// prefix)")
        try:
            render_url(self.url_template, "ID", "CLIP", 1.0, 11.0)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"--url-template {self.url_template!r} is not a template of {', '.join(TEMPLATE_FIELDS)}: {exc!r}"
            ) from None
        if "{id}" not in self.url_template and "{clip_id}" not in self.url_template:
            raise ValueError("--url-template must contain {id} or {clip_id}")
        checks = [
            (1 <= self.concurrency <= 4096, "--concurrency must be in [1, 4096]"),
            (0 <= self.retries <= 100, "--retries must be in [0, 100]"),
            (self.backoff_seconds >= 0, "--backoff-seconds must be >= 0"),
            (self.max_backoff_seconds >= self.backoff_seconds, "--max-backoff-seconds must be >= --backoff-seconds"),
            (self.timeout_seconds > 0, "--timeout-seconds must be > 0"),
            (self.sleep_interval >= 0, "--sleep-interval must be >= 0"),
            (self.download_cpus > 0, "--download-cpus must be > 0"),
            (1 <= self.clips_per_task <= 10_000, "--clips-per-task must be in [1, 10000]"),
            (1 <= self.shard_clips <= 1_000_000, "--shard-clips must be in [1, 1000000]"),
            (16 <= self.max_height <= 4320, "--max-height must be in [16, 4320]"),
            (self.limit is None or self.limit >= 1, "--limit must be >= 1"),
            (self.num_cpus is None or self.num_cpus >= 1, "--num-cpus must be >= 1"),
            (self.ledger_flush_seconds > 0, "--ledger-flush-seconds must be > 0"),
            (bool(self.extractors), "--extractors needs at least one name ('default' for all)"),
        ]
        check_all(checks)

    def check(self) -> None:
        self.validate()

    @property
    def selector(self) -> str:
        return self.format_selector or default_format_selector(self.max_height)

    @property
    def resolved_tracking_uri(self) -> str | None:
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None

    def to_dict(self) -> dict:
        """The settings as logged: secrets left out (the cookie file's path and whether a proxy is set only)."""
        d = asdict(self)
        d["extractors"] = list(self.extractors)
        d["proxy"] = "set" if self.proxy else None
        return d

    def describe(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
