"""The download child's side of process.py's protocol: `python -m clipsynth_platform.fetch.child` reads its
settings (one JSON line), answers {"ready": ...} once yt-dlp is built, then reads one JSON request per clip and
answers each with one JSON line (ytdlp.DownloadReply).

Its stdout carries only the protocol: anything else that prints (yt-dlp, ffmpeg) goes to stderr. Nothing in the
package imports this module, so running it with -m never finds it already imported."""

from __future__ import annotations

import json
import os
import sys

from .ytdlp import TOOL, ClipDownloader, DownloaderSettings


def serve() -> None:
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # a stray print must not corrupt the protocol
    sys.stdout = sys.stderr
    settings = DownloaderSettings.from_dict(json.loads(sys.stdin.readline()))
    downloader = ClipDownloader(settings)
    protocol.write(json.dumps({"ready": TOOL}) + "\n")
    protocol.flush()
    for line in sys.stdin:
        request = json.loads(line)
        reply = downloader.download(request["url"], request["clip_id"], request["start"], request["end"])
        protocol.write(json.dumps(reply.to_dict()) + "\n")
        protocol.flush()
    downloader.close()


if __name__ == "__main__":
    serve()
