"""The job's output and its commit protocol: what makes a run resumable and idempotent.

Layout under the output root (see schema.py):
    train/part-{h}.parquet, test/part-{h}.parquet   chunk rows of the videos of commit h
    _manifests/{h}.json                           commit h: its videos (ok, or failed with stage and reason)
    _settings.json                                the settings that shape rows; a resumed run must match them
    _summary.json, _failures.parquet              written at the end of a run, from all manifests
    _inputs/{h}.json                              the member list of a shard or Parquet input (containers.py)
    _staging/                                     temporary files, renamed into place when complete
    _staging/parts/                               shards the workers wrote, moved into place by a commit

The workers write shard files under _staging/parts/; a commit (on the driver) moves them into their split
folders (on S3 a server-side copy), then writes its manifest (temporary name, then move). The manifest is the commit point: a shard without one (an interrupted commit) is deleted when the
next run starts, and the videos of a committed manifest are never processed again (failed ones only with
--retry-failed). `h` is a hash of the commit's video ids, so shard names never collide across runs.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import time
import uuid
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from clipsynth_platform.datasets.schema import FAILURE_SCHEMA, FAILURES_FILE, SPLITS, SUMMARY_FILE, split_dir
from clipsynth_platform.runtime.uri import fsspec_filesystem, strip_scheme

MANIFEST_DIR = "_manifests"
STAGING_DIR = "_staging"
STAGED_DIR = f"{STAGING_DIR}/parts"  # shards the workers wrote, not yet committed
SETTINGS_FILE = "_settings.json"
# Rows per Parquet row group: readers can stream a shard instead of loading it whole.
ROW_GROUP_ROWS = 64


@dataclass
class VideoOutcome:
    """How one input video went; one entry of a manifest."""

    uri: str
    video_id: str
    split: str
    label: str | None
    status: str  # "ok" | "failed"
    stage: str | None = None
    reason: str | None = None
    chunks: int = 0
    silent_chunks: int = 0
    audio_decoder: str | None = None
    video_decoder: str | None = None
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CommitResult:
    name: str
    rows: dict[str, int]
    bytes: int
    seconds: float
    videos: int


class OutputStore:
    """Reads and writes one dataset root (local directory or s3:// prefix)."""

    def __init__(self, root: str) -> None:
        self.root = str(root).rstrip("/")
        self.fs = fsspec_filesystem(self.root)
        self.base = strip_scheme(self.root)

    def _path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def _write_atomic(self, relative: str, data: bytes | None = None, table: pa.Table | None = None) -> int:
        """Write bytes or a Parquet table to a temporary name under _staging/, then move it into place."""
        self.fs.invalidate_cache()
        tmp = self._path(STAGING_DIR, f"{uuid.uuid4().hex}-{posixpath.basename(relative)}")
        final = self._path(relative)
        self.fs.makedirs(posixpath.dirname(tmp), exist_ok=True)
        self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
        if table is not None:
            buf = io.BytesIO()
            pq.write_table(table, buf, row_group_size=ROW_GROUP_ROWS)
            data = buf.getvalue()
        assert data is not None
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        self.fs.mv(tmp, final)
        return len(data)

    def _read_json(self, relative: str) -> dict | None:
        path = self._path(relative)
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))

    def read_json(self, relative: str) -> dict | None:
        """A JSON file under the root (None when absent)."""
        return self._read_json(relative)

    def write_json(self, relative: str, data: dict) -> None:
        """A JSON file under the root, written to a temporary name and moved into place."""
        self._write_atomic(relative, json.dumps(data, sort_keys=True).encode())

    # ------------------------------------------------------------------------------------------ settings

    def check_settings(self, settings: dict) -> None:
        """Record the row-shaping settings on the first run; refuse to mix rows made with other ones."""
        old = self._read_json(SETTINGS_FILE)
        if old is None:
            self._write_atomic(SETTINGS_FILE, json.dumps(settings, indent=2, sort_keys=True).encode())
            return
        if old != settings:
            diff = {
                k: {"output has": old.get(k), "this run": settings.get(k)}
                for k in sorted(set(old) | set(settings))
                if old.get(k) != settings.get(k)
            }
            raise ValueError(
                f"output {self.root} holds rows made with other settings ({json.dumps(diff, sort_keys=True)}); "
                "re-run with the same settings to resume, or choose a new --output"
            )

    # ------------------------------------------------------------------------------------------ recovery

    def manifests(self) -> list[dict]:
        """Committed manifests, oldest first."""
        self.fs.invalidate_cache()
        out = []
        for path in self.fs.glob(self._path(MANIFEST_DIR, "*.json")):
            with self.fs.open(path, "rb") as f:
                out.append(json.loads(f.read().decode("utf-8")))
        return sorted(out, key=lambda m: (m["committed_at_ns"], m["name"]))

    def recover(self) -> tuple[dict[str, dict], dict]:
        """Latest outcome per video URI over all manifests; deletes uncommitted shards and staging files."""
        manifests = self.manifests()
        committed = {m["name"] for m in manifests}
        removed = 0
        for split in SPLITS:
            for path in self.fs.glob(f"{strip_scheme(split_dir(self.root, split))}/part-*.parquet"):
                # part-{commit}.parquet, or part-{commit}-{i}.parquet for a commit's further files
                name = posixpath.basename(str(path))[len("part-") : -len(".parquet")].split("-")[0]
                if name not in committed:
                    self.fs.rm(path)
                    removed += 1
        self.remove_staging()
        latest: dict[str, dict] = {}
        for m in manifests:
            for video in m["videos"]:
                latest[video["uri"]] = video
        return latest, {"manifests": len(manifests), "uncommitted_shards_removed": removed}

    def remove_staging(self) -> None:
        staging = self._path(STAGING_DIR)
        self.fs.invalidate_cache()
        if self.fs.exists(staging):
            self.fs.rm(staging, recursive=True)

    # ------------------------------------------------------------------------------------------- commits

    def stage(self, table: pa.Table, name: str) -> tuple[str, int]:
        """Write a shard under _staging/parts/ (by a worker); returns its relative path and size. Nothing
        reads a staged file until a manifest has committed it."""
        relative = f"{STAGED_DIR}/{name}"
        path = self._path(relative)
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        buf = io.BytesIO()
        pq.write_table(table, buf, row_group_size=ROW_GROUP_ROWS)
        with self.fs.open(path, "wb") as f:
            f.write(buf.getvalue())
        return relative, buf.tell()

    def read_staged(self, relative: str) -> pa.Table:
        with self.fs.open(self._path(relative), "rb") as f:
            return pq.read_table(f)

    def remove_staged(self, relative: str) -> None:
        self.fs.rm(self._path(relative))

    def commit(self, outcomes: list[VideoOutcome], chunk_table: pa.Table | None) -> CommitResult:
        """Stage the shards of these videos (one file per split) and commit them with their manifest."""
        staged: list[tuple[str, str, int]] = []
        nbytes = 0
        if chunk_table is not None and chunk_table.num_rows:
            for split in SPLITS:
                part = chunk_table.filter(pa.compute.equal(chunk_table["split"], split))
                if part.num_rows:
                    relative, size = self.stage(part, f"{uuid.uuid4().hex}-{split}.parquet")
                    staged.append((split, relative, part.num_rows))
                    nbytes += size
        result = self.commit_staged(outcomes, staged)
        result.bytes += nbytes
        return result

    def commit_staged(self, outcomes: list[VideoOutcome], staged: list[tuple[str, str, int]]) -> CommitResult:
        """Move staged shards (split, relative path, rows) into their split folders, then write the manifest
        of these videos: the commit point. Moves are server-side on S3: no shard bytes pass through here."""
        t0 = time.perf_counter()
        name = hashlib.sha1("\n".join(sorted(o.video_id for o in outcomes)).encode()).hexdigest()[:16]
        rows: dict[str, int] = {}
        files: dict[str, list[str]] = {}
        for split, relative, n in sorted(staged):
            i = len(files.get(split, []))
            final = f"{split}/part-{name}{f'-{i}' if i else ''}.parquet"
            self.fs.makedirs(posixpath.dirname(self._path(final)), exist_ok=True)
            self.fs.mv(self._path(relative), self._path(final))
            files.setdefault(split, []).append(final)
            rows[split] = rows.get(split, 0) + n
        manifest = {
            "name": name,
            "committed_at_ns": time.time_ns(),
            "files": files,
            "rows": rows,
            "videos": [o.to_dict() for o in outcomes],
        }
        nbytes = self._write_atomic(f"{MANIFEST_DIR}/{name}.json", json.dumps(manifest, sort_keys=True).encode())
        return CommitResult(name, rows, nbytes, time.perf_counter() - t0, len(outcomes))

    # ------------------------------------------------------------------------------------------ the end

    def write_failures(self, failures: list[dict]) -> None:
        rows = [{"uri": f["uri"], "stage": f["stage"], "reason": f["reason"]} for f in failures]
        self._write_atomic(FAILURES_FILE, table=pa.Table.from_pylist(rows, schema=FAILURE_SCHEMA))

    def read_summary(self) -> dict | None:
        return self._read_json(SUMMARY_FILE)

    def write_summary(self, summary: dict) -> None:
        self._write_atomic(SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True).encode())
