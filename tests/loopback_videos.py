"""Videos made with ffmpeg and an HTTP server on loopback, for the fetch tests, the fetch benchmark and the
fetch demonstration: yt-dlp's real code path (its generic extractor, ffmpeg cutting the window) without the
internet.

The videos' audio says what second it is: during second s the tone is 200 + 25 * s Hz, so a fetched clip's
seconds can be read back (`tone_seconds`). The server serves a folder with byte ranges (as real video hosts do,
so a window costs only its bytes), counts requests and bytes per path, and can answer a path with an HTTP
status for its first N requests or never answer it (a hang).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from collections import Counter
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
SAMPLE_RATE = 16000
BASE_HZ, STEP_HZ = 200.0, 25.0


def tone_hz(second: int) -> float:
    return BASE_HZ + STEP_HZ * second


def tone_video(path: str | Path, seconds: int = 60, size: str = "160x120", gray: int = 128) -> Path:
    """An H.264/AAC mp4 (faststart, a keyframe every second) whose tone encodes the second (see module doc)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tone = f"0.5*sin(2*PI*({BASE_HZ}+{STEP_HZ}*floor(t))*t)"
    cmd = [FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    cmd += ["-f", "lavfi", "-i", f"color=c=0x{gray:02x}{gray:02x}{gray:02x}:s={size}:r=25:d={seconds}"]
    cmd += ["-f", "lavfi", "-i", f"aevalsrc='{tone}':s={SAMPLE_RATE}:d={seconds}"]
    cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-pix_fmt", "yuv420p"]
    cmd += ["-c:a", "aac", "-b:a", "64k", "-movflags", "+faststart", "-shortest", str(path)]
    subprocess.run(cmd, check=True, capture_output=True)
    return path


def audio_of(path: str | Path) -> np.ndarray:
    """16 kHz mono float32 samples of a media file's audio (ffmpeg)."""
    cmd = [FFMPEG, "-nostdin", "-loglevel", "error", "-i", str(path), "-ac", "1", "-ar", str(SAMPLE_RATE)]
    out = subprocess.run([*cmd, "-f", "f32le", "-"], check=True, capture_output=True).stdout
    return np.frombuffer(out, dtype=np.float32)


def tone_seconds(path: str | Path) -> list[int]:
    """The source second each whole second of the file's audio carries (the tone's peak, mid-second)."""
    audio = audio_of(path)
    found = []
    for k in range(len(audio) // SAMPLE_RATE):
        part = audio[k * SAMPLE_RATE + SAMPLE_RATE // 4 : k * SAMPLE_RATE + 3 * SAMPLE_RATE // 4]
        spectrum = np.abs(np.fft.rfft(part * np.hanning(len(part))))
        peak_hz = np.argmax(spectrum) * SAMPLE_RATE / len(part)
        found.append(round((peak_hz - BASE_HZ) / STEP_HZ))
    return found


_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client closing its connection early (ffmpeg, once it has its window) is no error here


class LoopbackServer:
    """An HTTP server on 127.0.0.1 (a free port) serving `root`; use as a context manager."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.requests: Counter[str] = Counter()
        self.bytes_sent: Counter[str] = Counter()
        self.fail_first: dict[str, tuple[int, int]] = {}  # path -> (how many requests, HTTP status)
        self.hang: set[str] = set()
        self.log: list[tuple[str, str, int]] = []  # (path, Range header, bytes sent) per request, in order
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.httpd = _QuietServer(("127.0.0.1", 0), self._handler())
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                path = self.path.split("?", 1)[0].lstrip("/")
                with server._lock:
                    server.requests[path] += 1
                    seen = server.requests[path]
                if path in server.hang:
                    server._stop.wait(600)
                    return
                failing = server.fail_first.get(path)
                if failing is not None and seen <= failing[0]:
                    self.send_error(failing[1])
                    return
                file = (server.root / path).resolve()
                if server.root.resolve() not in file.parents or not file.is_file():
                    self.send_error(HTTPStatus.NOT_FOUND, "File not found")
                    return
                data = file.read_bytes()
                start, end = 0, len(data) - 1
                match = _RANGE.fullmatch(self.headers.get("Range", "").strip())
                if match and (match[1] or match[2]):
                    if match[1]:
                        start, end = int(match[1]), int(match[2]) if match[2] else len(data) - 1
                    else:
                        start = max(0, len(data) - int(match[2]))
                    end = min(end, len(data) - 1)
                    if start > end:
                        self.send_error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                        return
                    self.send_response(HTTPStatus.PARTIAL_CONTENT)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                else:
                    self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", "video/mp4" if path.endswith(".mp4") else "application/octet-stream")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(end - start + 1))
                self.end_headers()
                if not body:
                    return
                sent = 0
                try:
                    for at in range(start, end + 1, 1 << 16):
                        piece = data[at : min(at + (1 << 16), end + 1)]
                        self.wfile.write(piece)
                        sent += len(piece)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client had what it wanted (ffmpeg stops reading after the window)
                finally:
                    with server._lock:
                        server.bytes_sent[path] += sent
                        server.log.append((path, self.headers.get("Range", ""), sent))

        return Handler
