"""Reading a preprocessed split (evaluation, the gap fit, the demo): streamed, in a fixed order, from a local path or s3://.

Rows are numbered by their position in the split read file by file in sorted path order, so a row number
(`global index`) names the same chunk in every pass and every process. Large columns (audio, mel, frames) are
read in batches of rows, so a test split never has to fit in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from clipsynth_platform.datasets.schema import split_dir
from clipsynth_platform.runtime.uri import pyarrow_filesystem


def split_files(root: str, split: str) -> tuple[pafs.FileSystem, list[str]]:
    """The split's Parquet files, sorted; raises FileNotFoundError when there are none."""
    uri = split_dir(root, split)
    fs, path = pyarrow_filesystem(uri)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"no {split} split at {uri} (expected a directory of Parquet shards)")
    files = sorted(
        f.path
        for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
        if f.type == pafs.FileType.File and f.path.endswith(".parquet")
    )
    if not files:
        raise FileNotFoundError(f"the {split} split at {uri} holds no .parquet files")
    return fs, files


def iter_split_batches(
    root: str, split: str, columns: Sequence[str], batch_rows: int = 64
) -> Iterator[tuple[int, list[dict]]]:
    """(global index of the first row, rows as dicts) over the split, in the fixed order."""
    fs, files = split_files(root, split)
    offset = 0
    for path in files:
        with fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            missing = [c for c in columns if c not in pf.schema_arrow.names]
            if missing:
                raise ValueError(f"{path} lacks columns {missing}")
            for batch in pf.iter_batches(batch_size=batch_rows, columns=list(columns)):
                rows = batch.to_pylist()
                yield offset, rows
                offset += len(rows)


def iter_split_rows(root: str, split: str, columns: Sequence[str], batch_rows: int = 64) -> Iterator[dict]:
    for _, rows in iter_split_batches(root, split, columns, batch_rows):
        yield from rows


def gather_rows(root: str, split: str, columns: Sequence[str], indices: Iterable[int]) -> dict[int, dict]:
    """The rows with the given global indices (one streamed pass, keeping only those)."""
    wanted = set(int(i) for i in indices)
    found: dict[int, dict] = {}
    for start, rows in iter_split_batches(root, split, columns):
        for k, row in enumerate(rows):
            if start + k in wanted:
                found[start + k] = row
        if len(found) == len(wanted):
            break
    lost = wanted - found.keys()
    if lost:
        raise IndexError(f"rows {sorted(lost)[:5]} are not in the {split} split of {root}")
    return found


def _row_group_nulls(group, column: str) -> int | None:
    """Null rows of a list column in one row group from its statistics, or None when they cannot tell.

    The statistics belong to the list's leaf (its elements) and count null lists and null elements alike:
    0 means no null list; null_count == num_values == num_rows means every row is a null list.
    """
    for j in range(group.num_columns):
        chunk = group.column(j)
        if chunk.path_in_schema.split(".")[0] != column:
            continue
        st = chunk.statistics
        if st is None or not st.has_null_count:
            return None
        if st.null_count == 0:
            return 0
        if st.null_count == chunk.num_values == group.num_rows:
            return group.num_rows
        return None
    return None


def column_null_count(root: str, split: str, column: str) -> tuple[int, int]:
    """(null rows, rows) of a column: from Parquet statistics when they tell, else by reading the column."""
    fs, files = split_files(root, split)
    nulls = rows = 0
    for path in files:
        with fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            if column not in pf.schema_arrow.names:
                raise ValueError(f"{path} lacks column {column!r}")
            meta = pf.metadata
            counts = [_row_group_nulls(meta.row_group(g), column) for g in range(meta.num_row_groups)]
            known = [c for c in counts if c is not None]
            if len(known) == len(counts):
                nulls += sum(known)
            else:
                nulls += pf.read(columns=[column]).column(column).null_count
            rows += meta.num_rows
    return nulls, rows


def dataset_fingerprint(root: str, split: str, mode: str = "footer") -> str:
    """A content hash of the split's shards.

    "footer" (default): file names, sizes and the Parquet footers (which record every column chunk's byte
    offsets, sizes and min/max statistics), cheap even on S3; "full": every byte of every shard.
    """
    if mode not in ("footer", "full"):
        raise ValueError(f"unknown fingerprint mode {mode!r}; use 'footer' or 'full'")
    fs, files = split_files(root, split)
    h = hashlib.sha256()
    base = files[0].rsplit("/", 1)[0] if files else ""
    for path in files:
        size = fs.get_file_info(path).size
        h.update(f"{path.removeprefix(base)}\0{size}\0".encode())
        with fs.open_input_file(path) as f:
            if mode == "full":
                while block := f.read(1 << 20):
                    h.update(block)
            else:
                tail = min(size, 1 << 16)
                f.seek(size - tail)
                h.update(f.read(tail))
    return h.hexdigest()
