"""Fetching: the clips a manifest lists (VGG-Sound's CSV, MUSIC's JSON, a table) downloaded with yt-dlp by a
pool of Ray actors, into `{clip_id}.mp4` files or WebDataset shards, with a per-clip ledger and a summary.

    from clipsynth_platform.fetch import FetchConfig, run_fetch
    summary = run_fetch(FetchConfig(manifest="vggsound.csv", output="videos/"))

Modules: config (the dataclass), failures (error classes), ytdlp (one clip through yt-dlp, in the child),
child/process (the child process and its parent side), attempts (retries, back-off), stage (the Ray actor),
plan (what a run fetches), output (files, shards), ledger, summary, tracking (MLflow), pipeline (the job).
"""

from .config import FetchConfig
from .failures import ERROR_CLASSES, PERMANENT, TRANSIENT, classify
from .ledger import LEDGER_FILE, SUMMARY_FILE, Ledger, LedgerRow
from .pipeline import run_fetch
from .summary import FetchSummary

__all__ = [
    "ERROR_CLASSES",
    "LEDGER_FILE",
    "PERMANENT",
    "SUMMARY_FILE",
    "TRANSIENT",
    "FetchConfig",
    "FetchSummary",
    "Ledger",
    "LedgerRow",
    "classify",
    "run_fetch",
]
