"""The decode stage: one video -> 10 s chunks with log-mel, JPEG frames and 16 kHz mono PCM.

Audio: torchcodec's AudioDecoder resamples to 16 kHz mono inside FFmpeg (decord's AudioReader leaks about
2 MB per file and is 4x slower); when torchcodec cannot read a file, an `ffmpeg` subprocess does.
Frames: decord's VideoReader seeks to the sampled times only, and scales inside FFmpeg to the CLIP size (a 4K
frame never exists at full size in Python). "exact" sampling gives the frame on screen at each time, which
means decoding forward from the previous keyframe; "keyframe" sampling snaps each time to the nearest keyframe
of decord's index (get_key_indices) and has torchcodec decode just those keyframes (decord's decoder thread
runs ahead past every frame it seeks to, which cost 1.8x the CPU), several times faster but coarser: a snapped
frame may even lie outside its chunk (frame_times < 0 or > duration). When decord cannot read a file (e.g. AV1,
which its bundled FFmpeg lacks), torchcodec's VideoDecoder serves the exact frames. Which decoders served is
recorded per row (audio_decoder, video_decoder), the sampling per video in the manifests and the summary.

Everything that goes wrong with one file becomes a "failed" video row with a stage and a clear reason, so a
bad file never fails the job. A native crash cannot be caught in-process: decode_videos runs each video in a
child process (isolated.py) and records a crash there as that video's failure.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import posixpath
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from ..schema import pcm16
from ..uri import fsspec_filesystem, is_s3, strip_scheme
from .isolated import DecoderProcess
from .records import (
    CRASHED_REASON,
    RECORD_CHUNK,
    STAGE_CHUNK,
    STAGE_DECODE,
    STAGE_READ,
    STATUS_FAILED,
    STATUS_OK,
    record_table,
    video_row,
)

SAMPLE_RATE = 16_000
# A chunk whose samples all stay below this is digital silence (3 LSB of 16-bit PCM): accepted, but counted.
SILENCE_PEAK = 1e-4
# Chunks whose frames are decoded and yielded as one block: bounds a worker's memory on hour-long videos.
CHUNKS_PER_BLOCK = 6
# Test-only file-name markers, honoured only with DecodeSettings.test_hooks.
SEGFAULT_MARKER = "__segfault__"
NO_TORCHCODEC_AUDIO_MARKER = "__no_torchcodec_audio__"


@dataclass(frozen=True)
class DecodeSettings:
    chunk_samples: int = 160_000
    min_chunk_samples: int = 66_560
    frames_per_second: float = 1.0
    frame_sampling: str = "exact"
    image_size: int = 224
    jpeg_quality: int = 90
    with_audio: bool = True
    threads: int = 1
    test_hooks: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


class DecodeFailure(Exception):
    """A file that cannot be used, with the stage that found out and a reason for the failures table."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


# Source locations that decord ("[12:00:00] /github/.../video_reader.cc:151: Check failed: ...") and torchcodec
# ("SingleStreamDecoder, /__w/.../SingleStreamDecoder.cpp:41, ...") put in front of their messages.
_SOURCE_LOCATION = re.compile(r"(\[\d\d:\d\d:\d\d\] )?(\w+, )?/\S+\.(cc|cpp|h|c):\d+[:,] (Check failed: )?")


def short_error(exc: BaseException, limit: int = 200) -> str:
    """One line of an exception for a failure reason: FFmpeg/decord messages are long and multi-line."""
    text = _SOURCE_LOCATION.sub("", " ".join(str(exc).split()))
    for noise in ("This should never happen.", "Please report an issue"):
        text = text.split(noise)[0].strip()
    text = text or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------------------------- sampling


def chunk_bounds(num_samples: int, chunk_samples: int, min_chunk_samples: int) -> list[tuple[int, int]]:
    """[start, stop) sample ranges of the chunks: full chunks, plus a trailing one if it holds a full window."""
    bounds = [(i * chunk_samples, (i + 1) * chunk_samples) for i in range(num_samples // chunk_samples)]
    tail_start = len(bounds) * chunk_samples
    if num_samples - tail_start >= min_chunk_samples:
        bounds.append((tail_start, num_samples))
    return bounds


def frame_targets(duration_seconds: float, frames_per_second: float) -> np.ndarray:
    """Sample times relative to a chunk's start: the middle of each 1/fps interval that fits in the chunk."""
    count = max(1, math.floor(duration_seconds * frames_per_second + 1e-9))
    return (np.arange(count, dtype=np.float64) + 0.5) / frames_per_second


def select_frames(frame_starts: np.ndarray, targets: np.ndarray, key_indices: np.ndarray | None = None) -> np.ndarray:
    """Frame index for each target time (seconds, same clock as frame_starts).

    Exact (key_indices None): the frame on screen at the time, i.e. the last one starting at or before it
    (the first frame for times before it). Keyframe: the keyframe whose start is nearest to the time.
    """
    frame_starts = np.asarray(frame_starts, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if len(frame_starts) == 0:
        raise ValueError("no frames to select from")
    if key_indices is None:
        idx = np.searchsorted(frame_starts, targets, side="right") - 1
        return np.clip(idx, 0, len(frame_starts) - 1)
    keys = np.asarray(sorted(set(int(k) for k in key_indices)), dtype=np.int64)
    if len(keys) == 0:
        raise ValueError("the video has no keyframes in its index")
    key_starts = frame_starts[keys]
    nearest = np.abs(key_starts[None, :] - targets[:, None]).argmin(axis=1)
    return keys[nearest]


def unique_in_order(values: np.ndarray) -> np.ndarray:
    _, first = np.unique(values, return_index=True)
    return values[np.sort(first)]


def frame_size(width: int, height: int, shorter_side: int) -> tuple[int, int]:
    """(width, height) with the shorter side scaled to `shorter_side`, aspect kept."""
    if width <= 0 or height <= 0:
        raise ValueError(f"invalid frame size {width}x{height}")
    scale = shorter_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if (frame.shape[1], frame.shape[0]) == size:
        return frame
    return np.asarray(
        Image.fromarray(np.ascontiguousarray(frame)).resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    )


# ------------------------------------------------------------------------------------------------ decoders


@dataclass
class StreamInfo:
    has_audio: bool
    has_video: bool
    width: int | None = None
    height: int | None = None
    video_codec: str | None = None
    audio_codec: str | None = None
    audio_rate: int | None = None
    audio_channels: int | None = None
    video_start: float = 0.0  # the video stream's first timestamp (s): 1.4 s is usual in MPEG-TS, 0 in MP4


def _stream_info(meta) -> StreamInfo:
    video = next((s for s in meta.streams if s.media_type == "video"), None)
    audio = next((s for s in meta.streams if s.media_type == "audio"), None)
    return StreamInfo(
        has_audio=audio is not None,
        has_video=video is not None,
        width=getattr(video, "width", None),
        height=getattr(video, "height", None),
        video_codec=getattr(video, "codec", None),
        audio_codec=getattr(audio, "codec", None),
        audio_rate=getattr(audio, "sample_rate", None),
        audio_channels=getattr(audio, "num_channels", None),
        video_start=float(getattr(video, "begin_stream_seconds_from_header", None) or 0.0),
    )


def probe(path: str) -> StreamInfo:
    """Which streams the container holds (read from its header, no decoding)."""
    from torchcodec._core import get_container_metadata_from_header

    try:
        meta = get_container_metadata_from_header(path)
    except Exception as exc:
        raise DecodeFailure(STAGE_DECODE, f"cannot open container: {short_error(exc)}") from None
    return _stream_info(meta)


def open_media(path: str, settings: DecodeSettings) -> tuple[StreamInfo, object | None, str | None]:
    """(StreamInfo, torchcodec AudioDecoder or None, why it is None).

    Every opening of a container costs FFmpeg's stream analysis (a few ms on 360p H.264: it decodes the first
    frames), so the audio decoder is opened first and the stream table read from it. Only when torchcodec
    cannot open the file (no audio track, or a container it does not read) does the header probe run, to say
    which.
    """
    from torchcodec._core import get_container_metadata
    from torchcodec.decoders import AudioDecoder

    try:
        if settings.test_hooks and NO_TORCHCODEC_AUDIO_MARKER in posixpath.basename(path):
            raise RuntimeError("disabled by a test hook")
        decoder = AudioDecoder(path, sample_rate=SAMPLE_RATE, num_channels=1)
        return _stream_info(get_container_metadata(decoder._decoder)), decoder, None
    except Exception as exc:
        return probe(path), None, short_error(exc, 160)


def _audio_torchcodec(decoder) -> tuple[np.ndarray, float]:
    samples = decoder.get_all_samples()
    if int(samples.sample_rate) != SAMPLE_RATE:
        raise RuntimeError(f"decoder returned {samples.sample_rate} Hz instead of {SAMPLE_RATE}")
    return samples.data[0].numpy().astype(np.float32, copy=False), float(samples.pts_seconds)


def _audio_ffmpeg(path: str) -> tuple[np.ndarray, float]:
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-i", path]
    cmd += ["-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", "pipe:1"]
    proc = subprocess.run(cmd, capture_output=True, timeout=3600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(short_error(RuntimeError(proc.stderr.decode("utf-8", "replace"))))
    return np.frombuffer(proc.stdout, dtype=np.float32).copy(), 0.0


def decode_audio(path: str, decoder, open_error: str | None, notes: list[str]) -> tuple[np.ndarray, float, str]:
    """16 kHz mono float32 waveform, its start time in the source, and the decoder that served it.

    `decoder` and `open_error` come from `open_media`: torchcodec serves when it opened the file, an `ffmpeg`
    subprocess otherwise or when torchcodec fails while decoding.
    """
    errors = [f"torchcodec: {open_error}"] if decoder is None else []
    attempts = [("torchcodec", lambda: _audio_torchcodec(decoder))] if decoder is not None else []
    attempts.append(("ffmpeg", lambda: _audio_ffmpeg(path)))
    for name, fn in attempts:
        try:
            wave, start = fn()
            if errors:
                notes.append(f"audio fallback to {name} after: {'; '.join(errors)}")
            return wave, start, name
        except Exception as exc:
            errors.append(f"{name}: {short_error(exc, 160)}")
    raise DecodeFailure(STAGE_DECODE, f"cannot decode audio ({'; '.join(errors)})")


class FrameSource:
    """Frames at given source times, opened once per video.

    decord's index says which frames serve the times; decord decodes them (exact sampling) or torchcodec does
    (keyframes); torchcodec alone serves files decord cannot open.
    """

    def __init__(self, path: str, info: StreamInfo, settings: DecodeSettings, notes: list[str]) -> None:
        self.path = path
        self.settings = settings
        self.notes = notes
        self.size: tuple[int, int] | None = None
        self.video_start = info.video_start
        if info.width and info.height:
            self.size = frame_size(int(info.width), int(info.height), settings.image_size)
        self.decoder = ""
        self.sampling = settings.frame_sampling
        self._vr = None
        self._tc = None
        self._keys_tc = None  # torchcodec's decoder of the keyframes (keyframe sampling)
        self.key_indices: np.ndarray | None = None
        self.decoded: dict[int, np.ndarray] = {}  # the frames of the last `frames_for` call, by key
        errors = []
        try:
            self._open_decord()
            self.decoder = "decord"
        except Exception as exc:
            errors.append(f"decord: {short_error(exc, 160)}")
            try:
                self._open_torchcodec()
                self.decoder = "torchcodec"
                # torchcodec serves the exact frames; keyframe snapping is a decord option.
                self.sampling = "exact"
                notes.append(f"video fallback to torchcodec after: {errors[0]}")
            except Exception as exc2:
                errors.append(f"torchcodec: {short_error(exc2, 160)}")
                raise DecodeFailure(STAGE_DECODE, f"cannot decode video ({'; '.join(errors)})") from None
        if self.key_indices is not None:
            try:
                self._open_keyframe_decoder()
                self.decoder = "torchcodec"
            except Exception as exc:
                notes.append(f"keyframes from decord: torchcodec cannot open the file ({short_error(exc, 160)})")

    def _open_decord(self) -> None:
        import decord

        kwargs = {"num_threads": self.settings.threads}
        if self.size is not None:
            kwargs.update(width=self.size[0], height=self.size[1])
        self._vr = decord.VideoReader(self.path, ctx=decord.cpu(0), **kwargs)
        n = len(self._vr)
        if n == 0:
            raise RuntimeError("no frames")
        # decord counts time from the video stream's first timestamp; the rest of this module (audio chunks,
        # torchcodec) uses the container's clock, as the timestamps are written. They differ by the stream's
        # start time: 1.48 s in a typical MPEG-TS file, which would put every frame 1.48 s late.
        self.frame_starts = self._vr.get_frame_timestamp(np.arange(n))[:, 0].astype(np.float64) + self.video_start
        self.key_indices = None
        if self.settings.frame_sampling == "keyframe":
            self.key_indices = np.asarray(self._vr.get_key_indices(), dtype=np.int64)
            if len(self.key_indices) == 0:
                raise RuntimeError("no keyframes in the index")
        if self.size is None:
            first = self._vr[0].asnumpy()
            self.size = frame_size(first.shape[1], first.shape[0], self.settings.image_size)
            self._vr.seek(0)

    def _open_keyframe_decoder(self) -> None:
        """torchcodec, seeking by time to the keyframes that decord's index names.

        decord decodes a keyframe at about 1.8x the CPU of torchcodec (measured on 360p H.264): its decoder
        thread runs ahead past each frame it seeks to. torchcodec decodes on the calling thread and stops at
        the frame asked for; it scales to the CLIP size inside FFmpeg, as decord does.
        """
        from torchcodec.decoders import VideoDecoder
        from torchcodec.transforms import Resize

        width, height = self.size
        self._keys_tc = VideoDecoder(
            self.path,
            dimension_order="NHWC",
            num_ffmpeg_threads=self.settings.threads,
            seek_mode="approximate",  # no scan of the file: decord's index already says where the keyframes are
            transforms=[Resize((height, width))],
        )

    def _keyframes(self, wanted: list[int]) -> np.ndarray:
        """RGB frames [n, H, W, 3] at frame indices `wanted` (keyframes, ascending)."""
        if self._keys_tc is not None:
            starts = self.frame_starts[wanted]
            try:
                # "played at" a time just after the keyframe's start is the keyframe itself: the seek lands on it
                # and nothing before it is decoded. 0.1 ms is far below any frame's duration.
                got = self._keys_tc.get_frames_played_at(seconds=(starts + 1e-4).tolist())
                gap = float(np.abs(got.pts_seconds.numpy().astype(np.float64) - starts).max())
                if gap > 1e-3:
                    raise RuntimeError(f"torchcodec and decord disagree on keyframe times by {gap:.3f} s")
                return got.data.numpy()
            except Exception as exc:
                self.notes.append(f"keyframes fallback to decord after: {short_error(exc, 160)}")
                self._keys_tc = None
                self.decoder = "decord"
        return self._decord_batch(wanted)

    def _decord_batch(self, wanted: list[int]) -> np.ndarray:
        """RGB frames [n, H, W, 3] at frame indices `wanted` (ascending) from decord."""
        batch = self._vr.get_batch(wanted).asnumpy()
        # decord's decoder thread keeps decoding past the last requested frame until the next seek: measured
        # here, one get_batch on a 30 s 360p video burnt another second of CPU in the background. A seek to the
        # start stops it at once (and costs nothing: the next get_batch seeks anyway).
        self._vr.seek(0)
        return batch

    def _open_torchcodec(self) -> None:
        from torchcodec.decoders import VideoDecoder

        self._tc = VideoDecoder(self.path, dimension_order="NHWC", num_ffmpeg_threads=self.settings.threads)
        meta = self._tc.metadata
        if self.size is None:
            self.size = frame_size(int(meta.width), int(meta.height), self.settings.image_size)
        self._tc_begin = float(meta.begin_stream_seconds or 0.0)
        self._tc_end = float(meta.end_stream_seconds) if meta.end_stream_seconds is not None else None

    def frames_for(self, times_per_chunk: list[np.ndarray]) -> list[list[tuple[int, float]]]:
        """For each chunk's sample times: (key into `self.decoded`, source time) per distinct frame, in order.

        All chunks of a block are served by one decoder call, so a frame that two chunks share (keyframe
        snapping often picks the same keyframe for the end of one chunk and the start of the next) is decoded,
        resized and encoded once.
        """
        self.decoded = {}
        if self._vr is not None:
            picks = [unique_in_order(select_frames(self.frame_starts, t, self.key_indices)) for t in times_per_chunk]
            wanted = sorted({int(i) for p in picks for i in p})  # decoders decode forward: ask in ascending order
            batch = self._keyframes(wanted) if self.key_indices is not None else self._decord_batch(wanted)
            for j, index in enumerate(wanted):
                self.decoded[index] = resize_frame(batch[j], self.size)
            return [[(int(i), float(self.frame_starts[i])) for i in p] for p in picks]
        hi = self._tc_end - 1e-3 if self._tc_end is not None else None
        out = []
        for times in times_per_chunk:
            clipped = np.clip(times, self._tc_begin, hi if hi is not None else np.inf)
            got = self._tc.get_frames_played_at(seconds=clipped.tolist())
            chunk, seen = [], set()
            for frame, pts in zip(got.data.numpy(), got.pts_seconds.tolist()):
                key = round(pts * 1e6)  # torchcodec frames are named by their presentation time
                if key in seen:
                    continue
                seen.add(key)
                if key not in self.decoded:
                    self.decoded[key] = resize_frame(frame, self.size)
                chunk.append((key, float(pts)))
            out.append(chunk)
        return out

    def close(self) -> None:
        self.decoded = {}
        self._keys_tc = None
        self._vr = None
        self._tc = None


# ------------------------------------------------------------------------------------------------- a video


_MEL = None


def _mel_frontend():
    global _MEL
    if _MEL is None:
        from clipsynth_core import MelFrontend

        _MEL = MelFrontend().eval()
    return _MEL


def mel_of_chunks(waves: list[np.ndarray]) -> list[np.ndarray]:
    """Normalised log-mel [64, T] of each chunk (chunks of equal length go through the STFT together)."""
    import torch

    mel = _mel_frontend()
    out: list[np.ndarray | None] = [None] * len(waves)
    by_len: dict[int, list[int]] = {}
    for i, w in enumerate(waves):
        by_len.setdefault(len(w), []).append(i)
    with torch.inference_mode():
        for idx in by_len.values():
            result = mel(torch.from_numpy(np.stack([waves[i] for i in idx]))).numpy()
            for j, i in enumerate(idx):
                out[i] = result[j]
    return out  # type: ignore[return-value]


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[tuple[str, int]]:
    """A local path for `uri` (S3 objects are downloaded to a temporary file) and its size in bytes."""
    if not is_s3(uri):
        path = strip_scheme(uri)
        try:
            size = os.path.getsize(path)
        except OSError as exc:
            raise DecodeFailure(STAGE_READ, f"cannot read file: {short_error(exc)}") from None
        yield path, size
        return
    fs = fsspec_filesystem(uri)
    key = strip_scheme(uri)
    tmpdir = tempfile.mkdtemp(prefix="clipsynth-ingest-")
    try:
        try:
            size = int(fs.size(key))
            local = os.path.join(tmpdir, "video" + posixpath.splitext(key)[1])
            if size > 0:
                fs.get_file(key, local)
        except Exception as exc:
            raise DecodeFailure(STAGE_READ, f"cannot download: {short_error(exc)}") from None
        yield local, size
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _crash_for_test() -> None:
    import ctypes

    ctypes.string_at(0)  # SIGSEGV: a native crash, as a broken decoder would


def process_video(source: dict, settings: DecodeSettings) -> Iterator[pa.Table]:
    """Chunk rows of one video, in blocks, then its "video" row (ok, or failed with stage and reason)."""
    timings = {"read": 0.0, "probe": 0.0, "audio": 0.0, "video": 0.0, "mel": 0.0, "jpeg": 0.0}
    notes: list[str] = []
    info: dict = {"timings": timings, "notes": notes}
    t_start = time.perf_counter()
    audio_decoder = video_decoder = None
    try:
        t0 = time.perf_counter()
        with local_copy(source["uri"]) as (path, size):
            timings["read"] = time.perf_counter() - t0
            info["bytes"] = size
            if size == 0:
                raise DecodeFailure(STAGE_READ, "empty file (0 bytes)")
            if settings.test_hooks and SEGFAULT_MARKER in posixpath.basename(source["uri"]):
                _crash_for_test()
            t0 = time.perf_counter()
            streams, audio_reader, audio_open_error = open_media(path, settings)
            timings["probe"] = time.perf_counter() - t0
            info["streams"] = asdict(streams)
            if not streams.has_video:
                raise DecodeFailure(STAGE_DECODE, "no video track (audio-only file): frames are needed")
            if not streams.has_audio:
                raise DecodeFailure(STAGE_DECODE, "no audio track")
            t0 = time.perf_counter()
            wave, audio_start, audio_decoder = decode_audio(path, audio_reader, audio_open_error, notes)
            audio_reader = None  # its buffers are no longer needed while the frames decode
            timings["audio"] = time.perf_counter() - t0
            info["audio_seconds"] = len(wave) / SAMPLE_RATE
            if not np.all(np.isfinite(wave)):
                raise DecodeFailure(STAGE_DECODE, "audio decoded to non-finite samples")
            bounds = chunk_bounds(len(wave), settings.chunk_samples, settings.min_chunk_samples)
            if not bounds:
                raise DecodeFailure(
                    STAGE_CHUNK,
                    f"too short: {len(wave) / SAMPLE_RATE:.2f} s of audio, need "
                    f"{settings.min_chunk_samples / SAMPLE_RATE:.2f} s for one window",
                )
            t0 = time.perf_counter()
            frames = FrameSource(path, streams, settings, notes)
            timings["video"] += time.perf_counter() - t0
            video_decoder = frames.decoder
            info["frame_sampling"] = frames.sampling
            info["frame_size"] = list(frames.size) if frames.size else None
            silent = 0
            try:
                for block_start in range(0, len(bounds), CHUNKS_PER_BLOCK):
                    block = bounds[block_start : block_start + CHUNKS_PER_BLOCK]
                    rows, n_silent = _chunk_rows(
                        source, wave, audio_start, block, block_start, frames, settings, timings, audio_decoder
                    )
                    silent += n_silent
                    yield record_table(rows)
            finally:
                video_decoder = frames.decoder  # a fallback while decoding changes it
                frames.close()
            timings["total"] = time.perf_counter() - t_start
            yield record_table(
                [video_row(source, STATUS_OK, len(bounds), silent, None, None, audio_decoder, video_decoder, info)]
            )
    except DecodeFailure as failure:
        timings["total"] = time.perf_counter() - t_start
        yield record_table(
            [video_row(source, STATUS_FAILED, 0, 0, failure.stage, failure.reason, audio_decoder, video_decoder, info)]
        )
    except Exception as exc:  # a decoder error we did not anticipate: still this file's failure, not the job's
        timings["total"] = time.perf_counter() - t_start
        reason = f"unexpected {type(exc).__name__}: {short_error(exc)}"
        yield record_table(
            [video_row(source, STATUS_FAILED, 0, 0, STAGE_DECODE, reason, audio_decoder, video_decoder, info)]
        )


def _chunk_rows(
    source: dict,
    wave: np.ndarray,
    audio_start: float,
    bounds: list[tuple[int, int]],
    first_index: int,
    frames: FrameSource,
    settings: DecodeSettings,
    timings: dict,
    audio_decoder: str,
) -> tuple[list[dict], int]:
    t0 = time.perf_counter()
    waves = [wave[a:b] for a, b in bounds]
    mels = mel_of_chunks(waves)
    timings["mel"] += time.perf_counter() - t0
    starts = [audio_start + a / SAMPLE_RATE for a, _ in bounds]
    durations = [(b - a) / SAMPLE_RATE for a, b in bounds]
    t0 = time.perf_counter()
    picks = frames.frames_for(
        [s + frame_targets(d, settings.frames_per_second) for s, d in zip(starts, durations, strict=True)]
    )
    timings["video"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    jpeg_of = {key: encode_jpeg(frame, settings.jpeg_quality) for key, frame in frames.decoded.items()}
    timings["jpeg"] += time.perf_counter() - t0
    rows, silent = [], 0
    for k, (chunk, mel, picked, start, duration) in enumerate(zip(waves, mels, picks, starts, durations, strict=True)):
        index = first_index + k
        if not picked:
            raise DecodeFailure(STAGE_DECODE, f"no decodable frames for chunk {index}")
        jpegs = [jpeg_of[key] for key, _ in picked]
        is_silent = float(np.max(np.abs(chunk))) < SILENCE_PEAK
        silent += int(is_silent)
        rows.append(
            {
                "record": RECORD_CHUNK,
                "chunk_id": f"{source['video_id']}:{index:04d}",
                "video_id": source["video_id"],
                "source_uri": source["uri"],
                "chunk_index": index,
                "start_seconds": start,
                "duration_seconds": duration,
                "split": source["split"],
                "label": source.get("label"),
                "mel": mel.astype(np.float32).ravel(),
                "n_mels": mel.shape[0],
                "mel_frames": mel.shape[1],
                "frames_jpeg": jpegs,
                "frame_times": np.asarray([t - start for _, t in picked], dtype=np.float32),
                "image_embeddings": np.zeros(0, dtype=np.float32),
                "embed_dim": 0,
                "clip_model": "",
                "audio_decoder": audio_decoder,
                "video_decoder": frames.decoder,
                "audio": pcm16(chunk) if settings.with_audio else None,
            }
        )
    return rows, silent


_DECODER: DecoderProcess | None = None


def decode_videos(batch: pa.Table, settings: dict) -> Iterator[pa.Table]:
    """Ray Data UDF: a block of video sources -> their chunk rows and "video" rows (RECORD_SCHEMA).

    Each video decodes in this worker's decoder child (isolated.py): a native crash there fails that video
    (stage "decode", CRASHED_REASON) and the task goes on; the task itself is left to Ray's retries.
    """
    global _DECODER
    if _DECODER is None:
        _DECODER = DecoderProcess()
    for source in batch.to_pylist():
        rows = _DECODER.decode(source, settings)
        if rows is None:
            rows = record_table([video_row(source, STATUS_FAILED, 0, 0, STAGE_DECODE, CRASHED_REASON)])
        yield rows
