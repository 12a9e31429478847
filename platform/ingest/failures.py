"""A file that cannot be used (`DecodeFailure`: stage and reason for the failures table) and one-line reasons."""

from __future__ import annotations

import re


class DecodeFailure(Exception):
    """A file that cannot be used, with the stage that found out and a reason for the failures table."""

    def __init__(self, stage: str, reason: str, hygiene: str | None = None) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason
        self.hygiene = hygiene  # records.HYGIENE_*: a readable clip rejected by a data-hygiene rule


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
