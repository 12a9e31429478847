"""Reading a manifest from any of its source files (local or s3://), its format given or detected."""

from __future__ import annotations

import csv
import hashlib
import io

import pyarrow.parquet as pq

from clipsynth_platform.runtime.uri import fsspec_filesystem, strip_scheme

from .manifest import METADATA_KEY, Manifest
from .music import parse_music_json
from .table import parse_table
from .vggsound import parse_vggsound_csv

SOURCE_FORMATS = ("vggsound", "music", "table")
# "manifest": a _manifest.parquet a fetch wrote (it keeps the format it was read from).
FORMATS = ("auto", *SOURCE_FORMATS, "manifest")


def _is_manifest_parquet(data: bytes) -> bool:
    try:
        metadata = pq.read_schema(io.BytesIO(data)).metadata or {}
    except Exception:  # not Parquet at all
        return False
    return METADATA_KEY in metadata


def detect_format(name: str, data: bytes) -> str:
    """ "manifest" for a written manifest; "table" for Parquet, JSONL and TSV files; "music" for JSON; "vggsound"
    for headerless 4-column CSV rows whose second field is a number; else "table"."""
    lower = name.lower()
    if data[:4] == b"PAR1":
        return "manifest" if _is_manifest_parquet(data) else "table"
    if lower.endswith((".jsonl", ".ndjson", ".tsv", ".parquet")):
        return "table"
    text = data.decode("utf-8-sig", errors="replace")
    if lower.endswith(".json") or text.lstrip().startswith("{"):
        return "music"
    for row in csv.reader(io.StringIO(text)):
        if not row or not "".join(row).strip():
            continue
        if len(row) == 4:
            try:
                float(row[1])
                return "vggsound"
            except ValueError:
                pass
        return "table"
    return "table"


def parse_manifest(data: bytes, fmt: str, name: str = "", source_uri: str = "") -> Manifest:
    """The manifest of a source file's bytes in format `fmt` (one of FORMATS)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown manifest format {fmt!r}; use one of {FORMATS}")
    if fmt == "auto":
        fmt = detect_format(name, data)
    if fmt == "manifest":
        return Manifest.from_arrow(pq.read_table(io.BytesIO(data)))
    sha1 = hashlib.sha1(data).hexdigest()
    if fmt == "table":
        return parse_table(data, name, source_uri, sha1)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{name or 'the manifest'} is not UTF-8 text") from None
    if fmt == "vggsound":
        return parse_vggsound_csv(text, source_uri, sha1)
    return parse_music_json(text, source_uri, sha1)


def read_source(uri: str) -> bytes:
    fs = fsspec_filesystem(uri)
    path = strip_scheme(uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"{uri} does not exist")
    with fs.open(path, "rb") as f:
        return f.read()


def load_manifest(uri: str, fmt: str = "auto") -> Manifest:
    """Read and parse the manifest file at `uri` (local path or s3://)."""
    return parse_manifest(read_source(uri), fmt, uri, uri)
