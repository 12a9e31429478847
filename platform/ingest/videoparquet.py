"""Parquet files with a column of video bytes (mirrors of VGG-Sound and kin): list their rows, read rows back.

The video column is binary, or a struct with a "bytes" field (and maybe "path": Hugging Face's layout). A row's
name, which the label index is joined on, comes from the id column (--parquet-id-column, or the first of
config.PARQUET_ID_COLUMNS present), else the struct's "path", else its row number. String "label" and "split"
columns, when present, serve rows the index does not list. One task reads one row group: the bytes of a row
group's video column are in memory together, so a worker holds at most one row group's videos.
"""

from __future__ import annotations

import io
import posixpath
import time
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from clipsynth_platform.runtime.uri import fsspec_filesystem, strip_scheme

from .config import PARQUET_ID_COLUMNS
from .failures import short_error
from .members import Fetched, Listing, Member, TempFiles, metadata_of


def _bytes_field(schema: pa.Schema, column: str, uri: str) -> tuple[str, bool]:
    """The column path that holds the bytes ("video" or "video.bytes") and whether a "path" field is beside."""
    if column not in schema.names:
        raise ValueError(
            f"{uri} has no column {column!r} (columns: {', '.join(schema.names)}); name the video-bytes column "
            "with --parquet-video-column"
        )
    tp = schema.field(column).type
    if pa.types.is_binary(tp) or pa.types.is_large_binary(tp):
        return column, False
    if pa.types.is_struct(tp) and tp.get_field_index("bytes") >= 0:
        fields = {tp.field(i).name for i in range(tp.num_fields)}
        return f"{column}.bytes", "path" in fields
    raise ValueError(f"{uri}: column {column!r} is {tp}, not binary nor a struct with a 'bytes' field")


def list_parquet(uri: str, column: str, id_column: str | None, listing: Listing) -> None:
    """Fill `listing` with one member per row (its row group and index); reads the id, label and split columns
    only, never the video bytes."""
    fs = fsspec_filesystem(uri)
    with fs.open(strip_scheme(uri), "rb") as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        _, has_path = _bytes_field(pf.schema_arrow, column, uri)
        if id_column and id_column not in names:
            raise ValueError(f"{uri} has no id column {id_column!r} (columns: {', '.join(names)})")
        id_col = id_column or next((c for c in PARQUET_ID_COLUMNS if c in names), None)
        name_col = id_col or (f"{column}.path" if has_path else None)
        meta = [c for c in ("label", "split") if c in names and c != id_col]
        number = 0
        for g in range(pf.num_row_groups):
            wanted = [c for c in (name_col, *meta) if c]
            table = pf.read_row_group(g, columns=wanted) if wanted else None
            names_of = _column(table, 0, column) if name_col else None
            labels = table.column("label").to_pylist() if "label" in meta and table is not None else None
            splits = table.column("split").to_pylist() if "split" in meta and table is not None else None
            for i in range(pf.metadata.row_group(g).num_rows):
                name = str(names_of[i]) if names_of is not None and names_of[i] is not None else f"row{number:09d}"
                try:
                    label, split = metadata_of(
                        {"label": labels[i] if labels else None, "split": splits[i] if splits else None},
                        f"{uri} row {number}",
                    )
                except ValueError:
                    label, split = None, None
                    listing.bad_metadata += 1
                listing.add(name, row_group=g, row=i, label=label, split=split)
                number += 1


def _column(table: pa.Table | None, index: int, video_column: str) -> list | None:
    """Column `index` as Python values; a nested selection ("video.path") arrives as a struct: its one field."""
    if table is None:
        return None
    col = table.column(index).combine_chunks()
    if pa.types.is_struct(col.type):
        col = col.field(0)
        return [posixpath.basename(v) if isinstance(v, str) else v for v in col.to_pylist()]
    return col.to_pylist()


def read_parquet_rows(
    uri: str, column: str, members: list[Member], files: TempFiles
) -> Iterator[tuple[Member, Fetched]]:
    """Each member's video bytes in a temporary file (one at a time), row group by row group."""
    fs = fsspec_filesystem(uri)
    by_group: dict[int, list[Member]] = {}
    for m in members:
        by_group.setdefault(m.row_group, []).append(m)
    for group, todo in sorted(by_group.items()):
        t0 = time.perf_counter()
        try:
            with fs.open(strip_scheme(uri), "rb") as f:
                pf = pq.ParquetFile(f)
                path_in_file, _ = _bytes_field(pf.schema_arrow, column, uri)
                col = pf.read_row_group(group, columns=[path_in_file]).column(0).combine_chunks()
        except Exception as exc:
            reason = f"cannot read row group {group}: {short_error(exc)}"
            yield from ((m, Fetched(failure=reason)) for m in todo)
            continue
        if pa.types.is_struct(col.type):
            col = col.field(0)
        read_seconds = (time.perf_counter() - t0) / len(todo)
        for m in sorted(todo, key=lambda m: m.row):
            value = col[m.row].as_py() if m.row < len(col) else None
            if value is None:
                yield m, Fetched(failure="no video bytes in this row (null)")
                continue
            path, n = files.copy(m.name, io.BytesIO(value))
            yield m, Fetched(path, n, read_seconds)
        del col
