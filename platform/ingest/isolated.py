"""Decoding in a child process of the Ray worker, so a decoder that crashes natively loses one video, not a task.

Why: a native crash (segfault, abort) in the Ray worker itself is a system failure to Ray, the same as a node
lost to preemption. Ray Data retries those (its default, which a preempted node needs), so a file that
crashes the decoder would be retried forever; turning retries off instead turned every video of a preempted
node into "crashed". With the decoders in a child, the task survives the crash, records that video as
crashed, starts a new child and goes on, and Ray's own retries are left for lost nodes.

Protocol (one child per Ray worker process, reused; recycled every RECYCLE_AFTER videos to bound decoders'
native leaks): the parent writes one JSON line per video (source, settings); the child answers with an
8-byte length and the video's rows as one Arrow IPC stream (RECORD_SCHEMA). No pickle crosses the pipe.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from typing import IO

import pyarrow as pa

from .records import RECORD_SCHEMA

RECYCLE_AFTER = 200
_LENGTH = struct.Struct("<Q")


def write_frame(stream: IO[bytes], table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, RECORD_SCHEMA) as writer:
        writer.write_table(table)
    data = sink.getvalue().to_pybytes()
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def _read_exactly(stream: IO[bytes], n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        part = stream.read(n - got)
        if not part:
            return None
        chunks.append(part)
        got += len(part)
    return b"".join(chunks)


class DecoderProcess:
    """The parent's handle on its child: decode(source) -> the video's rows, or None when the child died."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.videos = 0

    def _start(self) -> subprocess.Popen:
        # The child imports this package the way the worker did: same interpreter, cwd and PYTHONPATH (a job's
        # working dir), so it runs the same code.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        return subprocess.Popen(
            [sys.executable, "-m", "clipsynth_platform.ingest.decode_child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )

    def decode(self, source: dict, settings: dict) -> pa.Table | None:
        if self.proc is None or self.proc.poll() is not None or self.videos >= RECYCLE_AFTER:
            self.close()
            self.proc, self.videos = self._start(), 0
        self.videos += 1
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write((json.dumps({"source": source, "settings": settings}) + "\n").encode())
            self.proc.stdin.flush()
            header = _read_exactly(self.proc.stdout, _LENGTH.size)
            data = _read_exactly(self.proc.stdout, _LENGTH.unpack(header)[0]) if header else None
        except (BrokenPipeError, OSError):
            data = None
        if data is None:  # the child died on this video
            self.close()
            return None
        return pa.ipc.open_stream(pa.BufferReader(data)).read_all()

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None
