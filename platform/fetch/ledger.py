"""The fetch ledger: one row per clip a fetch has tried, kept in the output as `_fetch_ledger.parquet`, so a re-run
knows what is done (ok), what to leave alone (a permanent failure) and what to try again (a transient one).

The ledger is rewritten whole and atomically (write_atomically): a reader sees the previous version or the new
one. Attempts add up over runs; the other columns say how the clip's last try ended."""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import asdict, dataclass, fields

import pyarrow as pa
import pyarrow.parquet as pq

from clipsynth_platform.runtime.uri import exists, fsspec_filesystem, join, strip_scheme, write_atomically

LEDGER_FILE = "_fetch_ledger.parquet"
SUMMARY_FILE = "_fetch_summary.json"
STATUS_OK = "ok"
STATUS_FAILED = "failed"

LEDGER_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("url", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error_class", pa.string()),
        pa.field("permanent", pa.bool_(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
        pa.field("attempts", pa.int64(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("seconds", pa.float64(), nullable=False),
        pa.field("duration", pa.float64()),
        pa.field("video_codec", pa.string()),
        pa.field("audio_codec", pa.string()),
        pa.field("location", pa.string()),
        pa.field("tool_version", pa.string(), nullable=False),
        pa.field("run", pa.int64(), nullable=False),
    ]
)


@dataclass(frozen=True)
class LedgerRow:
    clip_id: str
    url: str
    status: str  # "ok" | "failed"
    error_class: str | None  # failures.ERROR_CLASSES; None when ok
    permanent: bool
    message: str  # the tool's own message ("" when ok; how an adopted file was found)
    attempts: int  # tries over all runs
    bytes: int
    seconds: float  # this clip's last fetch, waits between tries included
    duration: float | None  # seconds of media in the file
    video_codec: str | None
    audio_codec: str | None
    location: str | None  # the file name, or "shard.tar" for a WebDataset shard
    tool_version: str
    run: int  # the run that wrote this row (1, 2, ...)

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    def to_dict(self) -> dict:
        return asdict(self)


class Ledger:
    """The rows by clip id; `read(output)` and `write(output)` keep it in the output folder."""

    def __init__(self, rows: dict[str, LedgerRow] | None = None) -> None:
        self.rows: dict[str, LedgerRow] = dict(rows or {})

    @property
    def last_run(self) -> int:
        return max((r.run for r in self.rows.values()), default=0)

    @classmethod
    def read(cls, output: str) -> Ledger:
        uri = join(output, LEDGER_FILE)
        if not exists(uri):
            return cls()
        with fsspec_filesystem(uri).open(strip_scheme(uri), "rb") as f:
            table = pq.read_table(f)
        names = [f.name for f in fields(LedgerRow)]
        return cls({d["clip_id"]: LedgerRow(**d) for d in table.select(names).to_pylist()})

    def to_arrow(self) -> pa.Table:
        return pa.Table.from_pylist([r.to_dict() for r in self.rows.values()], schema=LEDGER_SCHEMA)

    def write(self, output: str) -> None:
        sink = io.BytesIO()
        pq.write_table(self.to_arrow(), sink)
        write_atomically(join(output, LEDGER_FILE), sink.getvalue())

    def record(self, row: LedgerRow) -> None:
        self.rows[row.clip_id] = row

    def get(self, clip_id: str) -> LedgerRow | None:
        return self.rows.get(clip_id)

    def counts(self, clip_ids: list[str]) -> tuple[int, Counter[str]]:
        """(ok, failures by class) over `clip_ids` (the manifest's clips; a clip without a row is not counted)."""
        ok, failed = 0, Counter[str]()
        for clip_id in clip_ids:
            row = self.rows.get(clip_id)
            if row is None:
                continue
            if row.ok:
                ok += 1
            else:
                failed[row.error_class or "other"] += 1
        return ok, failed
