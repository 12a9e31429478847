"""The decode stage: one video -> 10 s chunks with log-mel, JPEG frames and 16 kHz mono PCM.

Audio: torchcodec's AudioDecoder resamples to 16 kHz mono inside FFmpeg (decord's AudioReader leaks about
2 MB per file and is 4x slower); when torchcodec cannot read a file, an `ffmpeg` subprocess does.
Frames: the decoders of frames.py ("exact" sampling: the frame on screen at each time; "keyframe": the nearest
keyframe of decord's index, several times faster but coarser: a snapped frame may even lie outside its chunk,
frame_times < 0 or > duration). Which decoders served is recorded per row (audio_decoder, video_decoder), the
sampling per video in the manifests and the summary; the seconds each stage took in the video row's info.

Everything that goes wrong with one file becomes a "failed" video row with a stage and a clear reason, so a
bad file never fails the job. A native crash cannot be caught in-process: decode_videos runs each video in a
child process (isolated.py, decode_child.py) and records a crash there as that video's failure.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import posixpath
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from clipsynth_platform.datasets.schema import pcm16
from clipsynth_platform.runtime.batching import apply_by_group
from clipsynth_platform.runtime.uri import fsspec_filesystem, is_s3, strip_scheme

from .failures import DecodeFailure, short_error
from .frames import FrameDecoder, VideoFile, frame_size, open_frame_decoder
from .isolated import DecoderProcess
from .readers import ReadUnit, open_unit
from .records import (
    CRASHED_REASON,
    HYGIENE_SILENT,
    HYGIENE_TOO_SHORT,
    RECORD_CHUNK,
    STAGE_DECODE,
    STAGE_HYGIENE,
    STAGE_READ,
    STATUS_FAILED,
    VideoRecord,
    record_table,
    video_row,
)
from .settings import DecodeSettings
from .timing import StageTimes

SAMPLE_RATE = 16_000
# A chunk whose samples all stay below this is digital silence (3 LSB of 16-bit PCM): accepted, but counted.
SILENCE_PEAK = 1e-4
# Chunks whose frames are decoded and yielded as one block: bounds a worker's memory on hour-long videos.
CHUNKS_PER_BLOCK = 6
# Test-only file-name markers, honoured only with DecodeSettings.test_hooks.
SEGFAULT_MARKER = "__segfault__"
NO_TORCHCODEC_AUDIO_MARKER = "__no_torchcodec_audio__"


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


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


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


def rms_dbfs(wave: np.ndarray) -> float:
    """The level of a waveform in [-1, 1]: 20 log10 of its RMS (full-scale sine: -3 dBFS; silence: -inf)."""
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))) if len(wave) else 0.0
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf


def _db_text(level: float) -> str:
    return "-inf" if level == -math.inf else f"{level:.1f}"


# ------------------------------------------------------------------------------------------------- a video


_MEL = None


def mel_frontend():
    global _MEL
    if _MEL is None:
        from clipsynth_core import MelFrontend

        _MEL = MelFrontend().eval()
    return _MEL


def mel_of_chunks(waves: list[np.ndarray]) -> list[np.ndarray]:
    """Normalised log-mel [64, T] of each chunk (chunks of equal length go through the STFT together)."""
    import torch

    mel = mel_frontend()
    with torch.inference_mode():
        return apply_by_group(waves, len, lambda group: list(mel(torch.from_numpy(np.stack(group))).numpy()))


@contextlib.contextmanager
def local_copy(source: dict) -> Iterator[tuple[str, int]]:
    """A local path for the source and its size in bytes: the temporary file its reader wrote (a member of a shard
    or Parquet file: "local_path"), the file itself, or a download of an S3 object to a temporary file."""
    if source.get("local_path"):
        yield source["local_path"], os.path.getsize(source["local_path"])
        return
    uri = source["uri"]
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
    times = StageTimes("read", "probe", "audio", "video", "mel", "jpeg")
    record = VideoRecord(info={"timings": times.seconds, "notes": []})
    t_start = time.perf_counter()
    try:
        yield from _video_chunks(source, settings, times, record)
    except DecodeFailure as failure:
        record.fail(failure.stage, failure.reason)
        if failure.hygiene:
            record.info["hygiene"] = failure.hygiene
    except Exception as exc:  # a decoder error we did not anticipate: still this file's failure, not the job's
        record.fail(STAGE_DECODE, f"unexpected {type(exc).__name__}: {short_error(exc)}")
    times.seconds["total"] = time.perf_counter() - t_start
    yield record_table([video_row(source, record)])


def _video_chunks(source: dict, settings: DecodeSettings, times: StageTimes, record: VideoRecord) -> Iterator[pa.Table]:
    """The chunk rows of one video, in blocks; fills `record` as it learns (raises DecodeFailure for a bad file)."""
    info, notes = record.info, record.info["notes"]
    with contextlib.ExitStack() as files:
        with times.stage("read"):
            path, size = files.enter_context(local_copy(source))
        times.seconds["read"] += float(source.get("read_seconds") or 0.0)  # a member's read, in the worker
        info["bytes"] = size
        if size == 0:
            raise DecodeFailure(STAGE_READ, "empty file (0 bytes)")
        if settings.test_hooks and SEGFAULT_MARKER in posixpath.basename(source["uri"]):
            _crash_for_test()
        with times.stage("probe"):
            streams, audio_reader, audio_open_error = open_media(path, settings)
        info["streams"] = asdict(streams)
        if not streams.has_video:
            raise DecodeFailure(STAGE_DECODE, "no video track (audio-only file): frames are needed")
        if not streams.has_audio:
            raise DecodeFailure(STAGE_DECODE, "no audio track")
        with times.stage("audio"):
            wave, audio_start, audio_decoder = decode_audio(path, audio_reader, audio_open_error, notes)
            record.audio_decoder = audio_decoder
            audio_reader = None  # its buffers are no longer needed while the frames decode
        info["audio_seconds"] = len(wave) / SAMPLE_RATE
        if not np.all(np.isfinite(wave)):
            raise DecodeFailure(STAGE_DECODE, "audio decoded to non-finite samples")
        bounds = chunk_bounds(len(wave), settings.chunk_samples, settings.min_chunk_samples)
        if not bounds:
            raise DecodeFailure(
                STAGE_HYGIENE,
                f"too short: {len(wave) / SAMPLE_RATE:.2f} s of audio, need "
                f"{settings.min_chunk_samples / SAMPLE_RATE:.2f} s for one window",
                HYGIENE_TOO_SHORT,
            )
        level = rms_dbfs(wave)
        info["audio_rms_dbfs"] = round(level, 2) if math.isfinite(level) else None  # None: digital silence
        if level < settings.silence_db:
            raise DecodeFailure(
                STAGE_HYGIENE,
                f"silent: audio level {_db_text(level)} dBFS (RMS) is below the {settings.silence_db:g} dBFS "
                "threshold (--silence-db)",
                HYGIENE_SILENT,
            )
        header_size = (
            frame_size(int(streams.width), int(streams.height), settings.image_size)
            if streams.width and streams.height
            else None
        )
        with times.stage("video"):
            frames = open_frame_decoder(VideoFile(path, header_size, streams.video_start), settings, notes)
        record.video_decoder = frames.name
        info["frame_sampling"] = frames.sampling
        info["frame_size"] = list(frames.size)
        try:
            for block_start in range(0, len(bounds), CHUNKS_PER_BLOCK):
                block = bounds[block_start : block_start + CHUNKS_PER_BLOCK]
                rows, n_silent = _chunk_rows(
                    source, wave, audio_start, block, block_start, frames, settings, times, audio_decoder
                )
                record.silent_chunks += n_silent
                yield record_table(rows)
        finally:
            record.video_decoder = frames.name  # a fallback while decoding changes it
            frames.close()
        record.chunks = len(bounds)


def _chunk_rows(
    source: dict,
    wave: np.ndarray,
    audio_start: float,
    bounds: list[tuple[int, int]],
    first_index: int,
    frames: FrameDecoder,
    settings: DecodeSettings,
    times: StageTimes,
    audio_decoder: str,
) -> tuple[list[dict], int]:
    with times.stage("mel"):
        waves = [wave[a:b] for a, b in bounds]
        mels = mel_of_chunks(waves)
    starts = [audio_start + a / SAMPLE_RATE for a, _ in bounds]
    durations = [(b - a) / SAMPLE_RATE for a, b in bounds]
    with times.stage("video"):
        picks = frames.frames_for(
            [s + frame_targets(d, settings.frames_per_second) for s, d in zip(starts, durations, strict=True)]
        )
    with times.stage("jpeg"):
        jpeg_of = {key: encode_jpeg(frame, settings.jpeg_quality) for key, frame in frames.decoded.items()}
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
                "video_decoder": frames.name,
                "audio": pcm16(chunk) if settings.with_audio else None,
            }
        )
    return rows, silent


_DECODER: DecoderProcess | None = None


def decode_videos(batch: pa.Table, settings: dict, parquet_video_column: str = "video") -> Iterator[pa.Table]:
    """Ray Data UDF: a block of read units (readers.ReadUnit as JSON, column "unit") -> the chunk rows and "video"
    rows (RECORD_SCHEMA) of every source they hold.

    Members of shards and Parquet files are written to a temporary file here, one at a time; a member that
    cannot be read fails at stage "read". Each video decodes in this worker's decoder child (isolated.py): a
    native crash there fails that video (stage "decode", CRASHED_REASON) and the task goes on; the task itself
    is left to Ray's retries.
    """
    global _DECODER
    if _DECODER is None:
        _DECODER = DecoderProcess()
    for text in batch.column("unit").to_pylist():
        for source, fetched in open_unit(ReadUnit.from_json(text), parquet_video_column):
            row = source.to_dict()
            if fetched is not None and fetched.failure is not None:
                failed = VideoRecord(status=STATUS_FAILED, fail_stage=STAGE_READ, fail_reason=fetched.failure)
                yield record_table([video_row(row, failed)])
                continue
            if fetched is not None:
                row.update(local_path=fetched.path, read_seconds=fetched.seconds)
            rows = _DECODER.decode(row, settings)
            if rows is None:
                crashed = VideoRecord(status=STATUS_FAILED, fail_stage=STAGE_DECODE, fail_reason=CRASHED_REASON)
                rows = record_table([video_row(row, crashed)])
            yield rows
