"""The download child, parent side: yt-dlp runs in a child process of the Ray actor so that a clip that hangs
past its time can be stopped (the child's whole process group, ffmpeg included, is killed) without losing the
actor, and a crash loses one clip.

Protocol (child.py): one JSON line of settings, a {"ready": tool} line back once yt-dlp is built, then one JSON
line per clip each way. The child is reused for every clip of the actor, restarted after a kill or a crash."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time

from .ytdlp import DownloaderSettings, DownloadReply

# Building yt-dlp in a fresh child (imports, ffmpeg's version probe): generous, it is not a clip's time.
START_TIMEOUT_SECONDS = 120.0


class DownloaderProcess:
    """`download(url, clip_id, start, end, timeout)` -> DownloadReply; a timeout or a dead child is a reply too."""

    def __init__(self, settings: DownloaderSettings, env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.tool = ""
        self.starts = 0

    def _start(self) -> None:
        # The child imports this package the way the worker did: same interpreter and PYTHONPATH (a job's
        # working dir), in a session of its own so that a kill reaches ffmpeg too.
        # The interpreter's bin/ leads PATH: tools installed beside it (Deno, for YouTube's challenges) are found.
        env = {**os.environ, **(self.env or {}), "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        env["PATH"] = os.pathsep.join(p for p in (os.path.dirname(sys.executable), env.get("PATH", "")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "clipsynth_platform.fetch.child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        self.starts += 1
        self._send(self.settings.to_dict())
        ready = self._receive(START_TIMEOUT_SECONDS)
        if ready is None or "ready" not in ready:
            self.close()
            raise RuntimeError("the yt-dlp child process did not start (see the worker's stderr)")
        self.tool = ready["ready"]

    def _send(self, message: dict) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        self.proc.stdin.flush()

    def _receive(self, timeout: float) -> dict | None:
        """The child's next line, or None when it sent nothing within `timeout` or died."""
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, timeout))
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return json.loads(line) if line else None

    def download(self, url: str, clip_id: str, start: float | None, end: float | None, timeout: float) -> DownloadReply:
        if self.proc is None or self.proc.poll() is not None:
            self.close()
            self._start()
        t0 = time.monotonic()
        try:
            self._send({"url": url, "clip_id": clip_id, "start": start, "end": end})
            reply = self._receive(timeout)
        except (BrokenPipeError, OSError, ValueError):
            reply = None
        if reply is not None:
            return DownloadReply(**reply)
        proc = self.proc
        alive = proc is not None and proc.poll() is None
        code = None if alive or proc is None else proc.returncode
        self.close()
        if alive:
            return DownloadReply(
                ok=False, error_kind="timeout", message=f"no result after {timeout:g} s: the download was stopped"
            )
        return DownloadReply(
            ok=False,
            error_kind="crashed",
            message=f"the yt-dlp process exited (code {code}) after {time.monotonic() - t0:.1f} s",
        )

    def close(self) -> None:
        """Stop the child and everything it started (ffmpeg); a no-op when there is none."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self.proc = None
