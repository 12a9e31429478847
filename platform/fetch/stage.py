"""The download stage's Ray actor (a Ray Data actor-pool UDF): each actor owns one yt-dlp child (process.py) and
fetches the clips of its blocks one at a time, so the pool's size is the number of downloads at once across the
cluster.

A clip's file goes from the child's scratch folder into the output (files: atomically, by this actor) or back to
the driver in the result row (webdataset: the driver writes the shards). The actor never raises for a clip:
every outcome is a row of RESULT_SCHEMA."""

from __future__ import annotations

import os
import shutil
import tempfile

import pyarrow as pa

from clipsynth_platform.runtime.uri import copy_atomically, join

from .attempts import ClipRequest, RetryPolicy, fetch_with_retries
from .ledger import LEDGER_SCHEMA, STATUS_FAILED, STATUS_OK
from .output import clip_file_name
from .process import DownloaderProcess
from .ytdlp import DownloaderSettings

# A result row: the ledger's columns (attempts of this run only; `run` left to the driver) and the video's bytes
# for a WebDataset output.
RESULT_SCHEMA = pa.schema([f for f in LEDGER_SCHEMA if f.name != "run"] + [pa.field("payload", pa.binary())])


class ClipFetcher:
    def __init__(
        self,
        settings: dict,
        policy: dict,
        output: str,
        output_format: str,
        cookies: bytes | None = None,
    ) -> None:
        self.scratch = tempfile.mkdtemp(prefix="clipsynth-fetch-")
        cookies_file = None
        if cookies:
            cookies_file = os.path.join(self.scratch, "cookies.txt")
            fd = os.open(cookies_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(cookies)
        downloads = os.path.join(self.scratch, "downloads")
        os.makedirs(downloads)
        self.process = DownloaderProcess(DownloaderSettings(scratch=downloads, cookies_file=cookies_file, **settings))
        self.policy = RetryPolicy(**policy)
        self.output = output
        self.to_files = output_format == "files"

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [self.fetch(ClipRequest(**item)) for item in batch.to_pylist()]
        return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)

    def fetch(self, request: ClipRequest) -> dict:
        done = fetch_with_retries(request, self.process.download, self.policy)
        reply = done.reply
        row: dict[str, object] = {
            "clip_id": request.clip_id,
            "url": request.url,
            "status": STATUS_OK if done.failure is None else STATUS_FAILED,
            "error_class": done.failure.error_class if done.failure else None,
            "permanent": done.failure.permanent if done.failure else False,
            "message": done.failure.message if done.failure else "",
            "attempts": done.attempts,
            "bytes": reply.bytes,
            "seconds": round(done.seconds, 3),
            "duration": reply.duration,
            "video_codec": reply.video_codec,
            "audio_codec": reply.audio_codec,
            "location": None,
            "tool_version": self.process.tool,
            "payload": None,
        }
        if done.failure is None and reply.path is not None:
            try:
                if self.to_files:
                    name = clip_file_name(request.clip_id)
                    copy_atomically(reply.path, join(self.output, name))
                    row["location"] = name
                else:
                    with open(reply.path, "rb") as f:
                        row["payload"] = f.read()
            except Exception as exc:  # the output refused the file (OSError, an S3 client error): transient
                row.update(status=STATUS_FAILED, error_class="network", message=f"writing the clip: {exc}")
            finally:
                os.unlink(reply.path)
        return row

    def __del__(self) -> None:
        process = getattr(self, "process", None)
        if process is not None:
            process.close()
        shutil.rmtree(getattr(self, "scratch", ""), ignore_errors=True)
