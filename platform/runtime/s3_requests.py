"""S3 requests counted per process, as botocore reports them: every attempt sent, the attempts that were
retries, and the calls whose retries ran out (s3fs then retries the whole call, or raises).

The count hangs on botocore's `response-received` event of each s3fs client (CountingS3FileSystem registers it), whose context carries the attempt
number; s3fs's own retries of a call show up as further calls. Read it with `s3_request_counts()`, in the
process that did the work (a driver, a Train worker): Ray workers keep their own counts.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

import s3fs


@dataclass
class S3RequestCounts:
    attempts: int = 0  # HTTP requests sent (every attempt)
    retried: int = 0  # attempts after the first of their call
    failed_attempts: int = 0  # attempts answered with an error (5xx, throttling) or none (reset, timeout)
    calls_given_up: int = 0  # calls whose last attempt failed too

    def to_dict(self) -> dict:
        return asdict(self)

    def since(self, earlier: S3RequestCounts) -> S3RequestCounts:
        """The requests counted after `earlier` (a copy taken before), e.g. those of one run of a job."""
        return S3RequestCounts(**{k: v - getattr(earlier, k) for k, v in asdict(self).items()})


_counts = S3RequestCounts()
_lock = threading.Lock()


def s3_request_counts() -> S3RequestCounts:
    """This process's counts so far (a copy)."""
    with _lock:
        return S3RequestCounts(**asdict(_counts))


def _failed(status: int) -> bool:
    return status >= 500 or status == 429


def _count_attempt(context=None, exception=None, response_dict=None, **_) -> None:
    """botocore's `response-received`: once per attempt, with the attempt's number in the context."""
    attempt = ((context or {}).get("retries") or {}).get("attempt", 1)
    with _lock:
        _counts.attempts += 1
        _counts.retried += attempt > 1
        _counts.failed_attempts += exception is not None or _failed((response_dict or {}).get("status_code", 0))


def _count_given_up(http_response=None, exception=None, **_) -> None:
    """botocore's `after-call` (with the last attempt's response) and `after-call-error` (its exception)."""
    if exception is not None or _failed(getattr(http_response, "status_code", 0)):
        with _lock:
            _counts.calls_given_up += 1


class CountingS3FileSystem(s3fs.S3FileSystem):
    """s3fs's filesystem whose botocore clients count their attempts, with `call_retries` retries of a whole call
    (s3fs's own layer; its constructor has no argument for it). runtime/uri.py builds it with the platform's
    retry settings; as a constructor argument they travel with the filesystem when Ray or pyarrow pickle it."""

    def __init__(self, *args, call_retries: int = 5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.retries = call_retries

    async def set_session(self, refresh=False, kwargs={}):  # noqa: B006 - s3fs's signature
        client = await super().set_session(refresh=refresh, kwargs=kwargs)
        if not getattr(client, "_clipsynth_counted", False):
            client.meta.events.register("response-received.s3", _count_attempt)
            client.meta.events.register("after-call.s3", _count_given_up)
            client.meta.events.register("after-call-error.s3", _count_given_up)
            client._clipsynth_counted = True
        return client
