"""How the decode stage cuts and samples one video: the settings every decoder (decode.py, frames.py) and the
decoder child (decode_child.py) read, sent to the child as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class DecodeSettings:
    chunk_samples: int = 160_000
    min_chunk_samples: int = 66_560
    frames_per_second: float = 1.0
    frame_sampling: str = "exact"
    image_size: int = 224
    jpeg_quality: int = 90
    with_audio: bool = True
    silence_db: float = -60.0  # a clip quieter than this (RMS dBFS) is rejected as silent
    threads: int = 1
    test_hooks: bool = False

    def to_dict(self) -> dict:
        return asdict(self)
