"""URIs for every location: a local path or `s3://bucket/prefix`, with filesystems for pyarrow and fsspec.

S3 endpoint and credentials come from the environment (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`), which s3fs and botocore read themselves; nothing here
takes or logs a secret.

Retries against a throttling or flaky object store are set here, once, for everything the platform reads and
writes on S3 (ingestion, fetching, checkpoints through Ray Train, shards through Ray Data, run records): every
request gets botocore's "standard" retries (503 SlowDown and other throttling, 5xx, reset and timed-out
connections; exponential back-off with full jitter, at most 20 s) for up to S3_MAX_ATTEMPTS attempts, and s3fs
retries the whole call S3FS_RETRIES times more (back-off 0.1 s x 1.7^i) on SlowDown, connection errors and a
body cut mid-read. `AWS_RETRY_MODE` and `AWS_MAX_ATTEMPTS` in the environment override botocore's part. pyarrow
reaches S3 through the same s3fs filesystem (`pyarrow_filesystem`), so it inherits the same retries; the
attempts are counted per process (runtime/s3_requests.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import fsspec
import pyarrow.fs as pafs


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def strip_scheme(uri: str) -> str:
    """`s3://bucket/key` -> `bucket/key`; local paths are made absolute."""
    uri = str(uri)
    if is_s3(uri):
        return uri[len("s3://") :]
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return str(Path(uri).expanduser().resolve())


S3_MAX_ATTEMPTS = 10
S3FS_RETRIES = 5


def botocore_retries() -> dict:
    """botocore's retry settings for every S3 client the platform makes."""
    return {
        "mode": os.environ.get("AWS_RETRY_MODE", "standard"),
        "max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS", S3_MAX_ATTEMPTS)),
    }


def fsspec_filesystem(uri: str) -> fsspec.AbstractFileSystem:
    if is_s3(uri):
        from .s3_requests import CountingS3FileSystem

        # A fresh instance: s3fs caches instances per process, which goes stale across forked workers.
        return CountingS3FileSystem(
            skip_instance_cache=True, call_retries=S3FS_RETRIES, config_kwargs={"retries": botocore_retries()}
        )
    return fsspec.filesystem("file")


def pyarrow_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the scheme-less path for `uri` (s3fs under pyarrow for S3)."""
    if is_s3(uri):
        return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec_filesystem(uri))), strip_scheme(uri)
    return pafs.LocalFileSystem(), strip_scheme(uri)


def join(uri: str, *parts: str) -> str:
    base = str(uri).rstrip("/")
    return "/".join([base, *[p.strip("/") for p in parts]])


def exists(uri: str) -> bool:
    return fsspec_filesystem(uri).exists(strip_scheme(uri))


def makedirs(uri: str) -> None:
    if not is_s3(uri):
        os.makedirs(strip_scheme(uri), exist_ok=True)
