"""One clip through yt-dlp's Python API, in the download child (child.py): the clip's window only, H.264/AAC
where offered, into a scratch folder; then ffprobe says what the file holds.

One `YoutubeDL` serves every clip of a child: building one costs a few tenths of a second and its first URL
match compiles every extractor's pattern. What differs per clip (its id, its window) reaches yt-dlp as extra
info fields that the output template and the download-range function read."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import tempfile
from dataclasses import asdict, dataclass

import yt_dlp
from yt_dlp.utils import DownloadError

TOOL = f"yt-dlp {yt_dlp.version.__version__}"
# The extra info fields a clip brings (read by the output template and `_window`).
_CLIP_ID, _START, _END = "clipsynth_clip_id", "clipsynth_start", "clipsynth_end"
# Less than this many seconds of media in a finished download is no clip (a window past the video's end).
MIN_MEDIA_SECONDS = 0.05


@dataclass(frozen=True)
class DownloaderSettings:
    """What every clip of one download child shares (sent once, when the child starts)."""

    scratch: str  # a folder of this child's own: downloads land here first
    format_selector: str
    cut: bool = True
    cookies_file: str | None = None
    proxy: str | None = None
    sleep_interval: float = 0.0
    socket_timeout: float = 30.0
    extractors: tuple[str, ...] = ("default",)

    def to_dict(self) -> dict:
        return {**asdict(self), "extractors": list(self.extractors)}

    @classmethod
    def from_dict(cls, d: dict) -> DownloaderSettings:
        return cls(**{**d, "extractors": tuple(d["extractors"])})


@dataclass(frozen=True)
class DownloadReply:
    """The child's answer for one clip: a file in the scratch folder, or yt-dlp's (and ffmpeg's) message."""

    ok: bool
    path: str | None = None
    bytes: int = 0
    duration: float | None = None
    video_codec: str | None = None
    audio_codec: str | None = None
    message: str = ""
    http_status: int | None = None
    error_kind: str | None = None  # set by the parent for what the child cannot say: "timeout", "crashed"

    def to_dict(self) -> dict:
        return asdict(self)


class _Messages:
    """yt-dlp's logger: keeps its warnings and errors (the last error is the failure's message)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def debug(self, msg: str) -> None:
        pass

    def info(self, msg: str) -> None:
        pass

    def warning(self, msg: str) -> None:
        self.warnings.append(msg)

    def error(self, msg: str) -> None:
        if msg.strip():
            self.errors.append(msg)


def _window(info: dict, ydl: object) -> list[dict]:
    """yt-dlp's download_ranges: the clip's [start, end), or everything for a whole video (yt-dlp's "no section"
    is one empty section; an empty list would download nothing)."""
    start, end = info.get(_START), info.get(_END)
    if start is None or end is None:
        return [{}]
    return [{"start_time": float(start), "end_time": float(end)}]


def probe(path: str) -> tuple[float | None, str | None, str | None]:
    """(duration in seconds, video codec, audio codec) of a media file, by ffprobe; Nones when unreadable."""
    proc = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-show_entries",
            "format=duration:stream=codec_type,codec_name",
            "-of",
            "json",
            path,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        return None, None, None
    data = json.loads(proc.stdout or "{}")
    streams = data.get("streams", [])
    codec = {s.get("codec_type"): s.get("codec_name") for s in reversed(streams)}
    try:
        duration = float(data.get("format", {}).get("duration"))
    except (TypeError, ValueError):
        duration = None
    return duration, codec.get("video"), codec.get("audio")


def _ffmpeg_last_words(stderr_file: str) -> str:
    """The last lines ffmpeg (run by yt-dlp, which lets it write to our stderr) wrote: its reason to stop."""
    try:
        with open(stderr_file, encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f.read().splitlines() if line.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-3:])


class ClipDownloader:
    """yt-dlp for one child: `download(url, clip_id, start, end)` -> DownloadReply."""

    def __init__(self, settings: DownloaderSettings) -> None:
        self.settings = settings
        self.messages = _Messages()
        params: dict = {
            "outtmpl": os.path.join(settings.scratch, f"%({_CLIP_ID})s.%(ext)s"),
            "format": settings.format_selector,
            "merge_output_format": "mp4",
            "postprocessors": [{"key": "FFmpegVideoRemuxer", "preferedformat": "mp4"}],
            "logger": self.messages,
            "noprogress": True,
            "noplaylist": True,
            "socket_timeout": settings.socket_timeout,
            # The retries with back-off are this stage's (attempts.py), over the whole clip.
            "retries": 0,
            "fragment_retries": 0,
            "extractor_retries": 0,
            "allowed_extractors": list(settings.extractors),
            # ffmpeg prints its error only: the reason a broken file failed, without progress lines.
            "external_downloader_args": {"ffmpeg": ["-loglevel", "error", "-nostats"]},
            "overwrites": True,
        }
        if settings.cut:
            params["download_ranges"] = _window
        if settings.cookies_file:
            params["cookiefile"] = settings.cookies_file
        if settings.proxy:
            params["proxy"] = settings.proxy
        if settings.sleep_interval > 0:
            params["sleep_interval"] = settings.sleep_interval
        self.ydl = yt_dlp.YoutubeDL(params)

    def _clear(self, clip_id: str) -> None:
        for leftover in glob.glob(os.path.join(glob.escape(self.settings.scratch), glob.escape(clip_id) + ".*")):
            os.unlink(leftover)

    def download(self, url: str, clip_id: str, start: float | None, end: float | None) -> DownloadReply:
        self._clear(clip_id)
        self.messages.errors.clear()
        extra = {_CLIP_ID: clip_id, _START: start, _END: end}
        stderr_fd, stderr_file = tempfile.mkstemp(prefix="ffmpeg-", suffix=".log", dir=self.settings.scratch)
        saved_stderr = os.dup(2)
        os.dup2(stderr_fd, 2)  # ffmpeg inherits it: its reason to fail is read back below
        try:
            info = self.ydl.extract_info(url, download=True, extra_info=extra)
        except DownloadError as exc:
            return self._failure(str(exc), exc, stderr_file)
        except Exception as exc:  # a yt-dlp bug or an unexpected page: still one clip's failure, recorded
            return self._failure(f"{type(exc).__name__}: {exc}", exc, stderr_file)
        finally:
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
            os.close(stderr_fd)
        try:
            return self._result(info, clip_id, stderr_file)
        finally:
            os.unlink(stderr_file)

    def _failure(self, message: str, exc: BaseException, stderr_file: str) -> DownloadReply:
        cause = exc.exc_info[1] if isinstance(exc, DownloadError) and exc.exc_info else exc
        status = getattr(cause, "status", None)
        last_words = _ffmpeg_last_words(stderr_file)
        os.unlink(stderr_file)
        if last_words and "ffmpeg" in message.lower():
            message = f"{message}: {last_words}"
        return DownloadReply(ok=False, message=message, http_status=status if isinstance(status, int) else None)

    def _result(self, info: dict | None, clip_id: str, stderr_file: str) -> DownloadReply:
        paths = [d.get("filepath") for d in (info or {}).get("requested_downloads") or [] if d.get("filepath")]
        path = next((p for p in paths if os.path.exists(p)), None)
        if path is None:
            found = glob.glob(os.path.join(glob.escape(self.settings.scratch), glob.escape(clip_id) + ".*"))
            path = next((p for p in found if not p.endswith((".part", ".log"))), None)
        if path is None:
            detail = self.messages.errors[-1] if self.messages.errors else _ffmpeg_last_words(stderr_file)
            return DownloadReply(ok=False, message=f"yt-dlp reported success but wrote no file ({detail})")
        duration, video, audio = probe(path)
        if duration is None or duration < MIN_MEDIA_SECONDS:
            os.unlink(path)
            reason = "ffprobe cannot read it" if duration is None else f"{duration:.3f} s"
            return DownloadReply(
                ok=False,
                message=f"the downloaded file holds no media ({reason}): the window may lie past the video's end, "
                f"or the source is not a video. {_ffmpeg_last_words(stderr_file)}".strip(),
            )
        return DownloadReply(
            ok=True,
            path=path,
            bytes=os.path.getsize(path),
            duration=duration,
            video_codec=video,
            audio_codec=audio,
        )

    def close(self) -> None:
        self.ydl.close()
