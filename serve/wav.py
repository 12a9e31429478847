"""WAV encoding of the service's answers: 16-bit PCM, mono, with the standard library's `wave` module."""

from __future__ import annotations

import io
import wave

import numpy as np


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """Float samples in [-1, 1] (clipped beyond) -> a mono 16-bit PCM WAV file."""
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    if not np.isfinite(x).all():
        raise ValueError("audio holds NaN or infinite samples")
    pcm = np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return buf.getvalue()
