"""The decoder child's side of isolated.py's protocol: `python -m clipsynth_platform.ingest.decode_child` reads
one JSON request per video from stdin and answers each with the video's rows (decode.process_video).

Nothing in the package imports this module, so running it with -m never finds it already imported."""

from __future__ import annotations

import json
import sys

import pyarrow as pa

from .decode import mel_frontend, process_video
from .isolated import write_frame
from .settings import DecodeSettings


def serve() -> None:
    """The child: decode each requested video (decode.process_video) and answer with its rows."""
    import torch

    mel_frontend()
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # decoders that print must not corrupt the protocol
    threads = None
    for line in sys.stdin.buffer:
        request = json.loads(line)
        settings = DecodeSettings(**request["settings"])
        if threads != settings.threads:
            threads = settings.threads
            torch.set_num_threads(max(1, threads))
        tables = list(process_video(request["source"], settings))
        write_frame(out, pa.concat_tables(tables))


if __name__ == "__main__":
    serve()
