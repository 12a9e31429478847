"""URIs for every location: a local path or `s3://bucket/prefix`, with filesystems for pyarrow and fsspec.

S3 endpoint and credentials come from the environment (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`), which s3fs and botocore read themselves; nothing here
takes or logs a secret.
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


def fsspec_filesystem(uri: str) -> fsspec.AbstractFileSystem:
    if is_s3(uri):
        import s3fs

        # A fresh instance: s3fs caches instances per process, which goes stale across forked workers.
        return s3fs.S3FileSystem(skip_instance_cache=True)
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
