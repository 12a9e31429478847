"""One clip's tries: download, classify a failure, wait and try again while it is transient.

The wait before retry k (1-based) is `backoff_seconds * 2**(k-1)`, times a random factor in [0.5, 1.5) so that
actors throttled together do not come back together, capped at `max_backoff_seconds`. A permanent failure
(failures.PERMANENT) is not retried: the video will not come back."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from .failures import Failure, classify, clean_message
from .ytdlp import DownloadReply

# (url, clip_id, start, end, timeout) -> reply: DownloaderProcess.download, or a test's stand-in.
Download = Callable[[str, str, float | None, float | None, float], DownloadReply]


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3
    backoff_seconds: float = 10.0
    max_backoff_seconds: float = 600.0
    timeout_seconds: float = 300.0

    def delay(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number `retry` (1-based)."""
        base = self.backoff_seconds * 2 ** (retry - 1)
        return min(self.max_backoff_seconds, base * (0.5 + rng()))


@dataclass(frozen=True)
class ClipRequest:
    clip_id: str
    url: str
    start: float | None
    end: float | None


@dataclass(frozen=True)
class ClipAttempts:
    """How a clip's tries ended: the file (ok), or the last failure; the waits in between."""

    request: ClipRequest
    reply: DownloadReply
    failure: Failure | None
    attempts: int
    seconds: float  # wall time of all tries, waits included
    waits: tuple[float, ...]


def failure_of(reply: DownloadReply) -> Failure:
    """The class and message of a failed reply (the parent's own kinds first: timeout, crashed)."""
    message = clean_message(reply.message)
    if reply.error_kind in ("timeout", "crashed"):
        return Failure(reply.error_kind, message)
    return Failure(classify(message, reply.http_status), message)


def fetch_with_retries(
    request: ClipRequest,
    download: Download,
    policy: RetryPolicy,
    sleep: Callable[[float], None] = time.sleep,
    rng: Callable[[], float] = random.random,
) -> ClipAttempts:
    t0 = time.monotonic()
    waits: list[float] = []
    attempt = 0
    while True:
        attempt += 1
        reply = download(request.url, request.clip_id, request.start, request.end, policy.timeout_seconds)
        failure = None if reply.ok else failure_of(reply)
        if failure is None or failure.permanent or attempt > policy.retries:
            return ClipAttempts(request, reply, failure, attempt, time.monotonic() - t0, tuple(waits))
        wait = policy.delay(attempt, rng)
        waits.append(wait)
        sleep(wait)
