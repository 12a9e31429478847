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
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

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


def write_atomically(uri: str, data: bytes) -> None:
    """`uri` holds `data` whole, or keeps what it held (see `_atomic_local_write`; an S3 object appears only when
    its upload completes: S3 never shows a partial object)."""
    if is_s3(uri):
        fsspec_filesystem(uri).pipe_file(strip_scheme(uri), data)
    else:
        _atomic_local_write(strip_scheme(uri), lambda f: f.write(data))


def copy_atomically(local_file: str, uri: str) -> None:
    """Copy a local file to `uri`, atomically as `write_atomically` says (the source stays where it is)."""
    if is_s3(uri):
        fsspec_filesystem(uri).put_file(local_file, strip_scheme(uri))
        return

    def copy(f: BinaryIO) -> None:
        with open(local_file, "rb") as src:
            shutil.copyfileobj(src, f, 1 << 20)

    _atomic_local_write(strip_scheme(uri), copy)


def _atomic_local_write(path: str, write: Callable[[BinaryIO], object]) -> None:
    """Write under a temporary name beside `path`, then rename it over `path` (a rename within one directory is
    atomic): a reader sees the old file or the whole new one, and a crash leaves only a `.partial-*` file."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".partial-", dir=directory)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would make the file private, unlike any other written here
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
