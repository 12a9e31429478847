"""Video frames at given source times, behind one interface (`FrameDecoder`), opened by `open_frame_decoder`.

Three decoders, one class each:
- `DecordFrames`: decord's index and decoder. "exact" sampling gives the frame on screen at each time (decoding
  forward from the previous keyframe), "keyframe" the keyframe of decord's index nearest to it.
- `DecordIndexedKeyframes`: keyframe sampling with decord's index, but torchcodec decodes the keyframes (decord's
  decoder thread runs ahead past every frame it seeks to, which cost 1.8x the CPU); decord decodes them when
  torchcodec cannot open the file or fails on it.
- `TorchcodecFrames`: exact frames from torchcodec, for files decord cannot open (e.g. AV1, which its bundled
  FFmpeg lacks).
All scale inside FFmpeg to the CLIP size (a 4K frame never exists at full size in Python). `name` says which
decoder served; a fallback while decoding changes it, and says why in the video's notes.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import numpy as np

from .failures import DecodeFailure, short_error
from .records import STAGE_DECODE
from .settings import DecodeSettings

# Each chunk's picks: (key into `decoded`, the frame's source time) per distinct frame, in order.
ChunkPicks = list[list[tuple[int, float]]]


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


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if (frame.shape[1], frame.shape[0]) == size:
        return frame
    return np.asarray(
        Image.fromarray(np.ascontiguousarray(frame)).resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    )


@dataclass(frozen=True)
class VideoFile:
    """A local video file and what its container's header says about the video stream."""

    path: str
    size: tuple[int, int] | None  # the frames' (width, height) at the CLIP size, when the header states it
    start: float = 0.0  # the stream's first timestamp (s) on the container's clock


class FrameDecoder(abc.ABC):
    """Frames of one video at given source times, opened once per video."""

    name: str  # the decoder that serves: "decord" or "torchcodec"
    sampling: str  # "exact" or "keyframe"
    size: tuple[int, int]  # (width, height) of the frames it hands out

    def __init__(self, notes: list[str]) -> None:
        self.notes = notes
        self.decoded: dict[int, np.ndarray] = {}  # the frames of the last `frames_for` call, by key

    @abc.abstractmethod
    def frames_for(self, times_per_chunk: list[np.ndarray]) -> ChunkPicks:
        """For each chunk's sample times: (key into `self.decoded`, source time) per distinct frame, in order.

        All chunks of a block are served by one decoder call, so a frame that two chunks share (keyframe
        snapping often picks the same keyframe for the end of one chunk and the start of the next) is decoded,
        resized and encoded once.
        """

    def close(self) -> None:
        self.decoded = {}


class DecordFrames(FrameDecoder):
    """decord's index and decoder: the frame on screen at each time, or (keyframe sampling) the nearest keyframe."""

    name = "decord"

    def __init__(self, video: VideoFile, settings: DecodeSettings, notes: list[str]) -> None:
        import decord

        super().__init__(notes)
        size = video.size
        kwargs: dict[str, Any] = {"num_threads": settings.threads}
        if size is not None:
            kwargs.update(width=size[0], height=size[1])
        self._reader: Any = decord.VideoReader(video.path, ctx=decord.cpu(0), **kwargs)
        n = len(self._reader)
        if n == 0:
            raise RuntimeError("no frames")
        # decord counts time from the video stream's first timestamp; the rest of the decode stage (audio chunks,
        # torchcodec) uses the container's clock, as the timestamps are written. They differ by the stream's
        # start time: 1.48 s in a typical MPEG-TS file, which would put every frame 1.48 s late.
        self.frame_starts = self._reader.get_frame_timestamp(np.arange(n))[:, 0].astype(np.float64) + video.start
        self.sampling = settings.frame_sampling
        self.key_indices: np.ndarray | None = None
        if settings.frame_sampling == "keyframe":
            self.key_indices = np.asarray(self._reader.get_key_indices(), dtype=np.int64)
            if len(self.key_indices) == 0:
                raise RuntimeError("no keyframes in the index")
        if size is None:
            first = self._reader[0].asnumpy()
            size = frame_size(first.shape[1], first.shape[0], settings.image_size)
            self._reader.seek(0)
        self.size = size

    def frames_for(self, times_per_chunk: list[np.ndarray]) -> ChunkPicks:
        self.decoded = {}
        picks = [unique_in_order(select_frames(self.frame_starts, t, self.key_indices)) for t in times_per_chunk]
        wanted = sorted({int(i) for p in picks for i in p})  # decoders decode forward: ask in ascending order
        batch = self._fetch(wanted)
        for j, index in enumerate(wanted):
            self.decoded[index] = resize_frame(batch[j], self.size)
        return [[(int(i), float(self.frame_starts[i])) for i in p] for p in picks]

    def _fetch(self, wanted: list[int]) -> np.ndarray:
        """RGB frames [n, H, W, 3] at frame indices `wanted` (ascending) from decord."""
        batch = self._reader.get_batch(wanted).asnumpy()
        # decord's decoder thread keeps decoding past the last requested frame until the next seek: measured
        # here, one get_batch on a 30 s 360p video burnt another second of CPU in the background. A seek to the
        # start stops it at once (and costs nothing: the next get_batch seeks anyway).
        self._reader.seek(0)
        return batch

    def close(self) -> None:
        super().close()
        self._reader = None


class DecordIndexedKeyframes(DecordFrames):
    """Keyframe sampling: decord's index names the keyframes, torchcodec decodes them (decord when it cannot).

    decord decodes a keyframe at about 1.8x the CPU of torchcodec (measured on 360p H.264): its decoder
    thread runs ahead past each frame it seeks to. torchcodec decodes on the calling thread and stops at
    the frame asked for; it scales to the CLIP size inside FFmpeg, as decord does.
    """

    def __init__(self, video: VideoFile, settings: DecodeSettings, notes: list[str]) -> None:
        super().__init__(video, settings, notes)
        self.path, self.threads = video.path, settings.threads
        self._keys: Any = None
        try:
            self._open_keyframe_decoder()
            self.name = "torchcodec"
        except Exception as exc:
            notes.append(f"keyframes from decord: torchcodec cannot open the file ({short_error(exc, 160)})")

    def _open_keyframe_decoder(self) -> None:
        from torchcodec.decoders import VideoDecoder
        from torchcodec.transforms import Resize

        width, height = self.size
        self._keys = VideoDecoder(
            self.path,
            dimension_order="NHWC",
            num_ffmpeg_threads=self.threads,
            seek_mode="approximate",  # no scan of the file: decord's index already says where the keyframes are
            transforms=[Resize((height, width))],
        )

    def _fetch(self, wanted: list[int]) -> np.ndarray:
        if self._keys is not None:
            starts = self.frame_starts[wanted]
            try:
                # "played at" a time just after the keyframe's start is the keyframe itself: the seek lands on it
                # and nothing before it is decoded. 0.1 ms is far below any frame's duration.
                got = self._keys.get_frames_played_at(seconds=(starts + 1e-4).tolist())
                gap = float(np.abs(got.pts_seconds.numpy().astype(np.float64) - starts).max())
                if gap > 1e-3:
                    raise RuntimeError(f"torchcodec and decord disagree on keyframe times by {gap:.3f} s")
                return got.data.numpy()
            except Exception as exc:
                self.notes.append(f"keyframes fallback to decord after: {short_error(exc, 160)}")
                self._keys = None
                self.name = "decord"
        return super()._fetch(wanted)

    def close(self) -> None:
        self._keys = None
        super().close()


class TorchcodecFrames(FrameDecoder):
    """torchcodec alone: the exact frames, for files decord cannot open."""

    name = "torchcodec"
    sampling = "exact"  # keyframe snapping is a decord option

    def __init__(self, video: VideoFile, settings: DecodeSettings, notes: list[str]) -> None:
        from torchcodec.decoders import VideoDecoder

        super().__init__(notes)
        size = video.size
        self._decoder: Any = VideoDecoder(video.path, dimension_order="NHWC", num_ffmpeg_threads=settings.threads)
        meta = self._decoder.metadata
        if size is None:
            if meta.width is None or meta.height is None:
                raise RuntimeError("the video stream states no frame size")
            size = frame_size(int(meta.width), int(meta.height), settings.image_size)
        self.size = size
        self._begin = float(meta.begin_stream_seconds or 0.0)
        self._end = float(meta.end_stream_seconds) if meta.end_stream_seconds is not None else None

    def frames_for(self, times_per_chunk: list[np.ndarray]) -> ChunkPicks:
        self.decoded = {}
        hi = self._end - 1e-3 if self._end is not None else None
        out = []
        for times in times_per_chunk:
            clipped = np.clip(times, self._begin, hi if hi is not None else np.inf)
            got = self._decoder.get_frames_played_at(seconds=clipped.tolist())
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
        super().close()
        self._decoder = None


def open_frame_decoder(video: VideoFile, settings: DecodeSettings, notes: list[str]) -> FrameDecoder:
    """decord (with torchcodec decoding the keyframes under keyframe sampling); torchcodec when decord cannot
    open the file."""
    try:
        if settings.frame_sampling == "keyframe":
            return DecordIndexedKeyframes(video, settings, notes)
        return DecordFrames(video, settings, notes)
    except Exception as exc:
        decord_error = f"decord: {short_error(exc, 160)}"
    try:
        decoder = TorchcodecFrames(video, settings, notes)
    except Exception as exc:
        reason = f"cannot decode video ({decord_error}; torchcodec: {short_error(exc, 160)})"
        raise DecodeFailure(STAGE_DECODE, reason) from None
    notes.append(f"video fallback to torchcodec after: {decord_error}")
    return decoder
