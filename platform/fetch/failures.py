"""Why a clip could not be fetched, in classes a re-run can act on.

Permanent (the video will not come back; a re-run skips them unless --retry-failed): unavailable, private,
removed, login_required, geo_blocked, invalid_media, unsupported. Transient (retried with back-off within a run,
and again by a re-run): rate_limited, bot_check, network, timeout, crashed, other.

The class is read from the tool's own message (yt-dlp's error line, ffmpeg's last words), which is also
recorded whole: the patterns below are what yt-dlp 2026.11 and YouTube say, and an unrecognised message is
"other" (transient: a second try costs one request, a wrong "permanent" would lose the clip)."""

from __future__ import annotations

import re
from dataclasses import dataclass

PERMANENT = (
    "unavailable",
    "private",
    "removed",
    "login_required",
    "geo_blocked",
    "invalid_media",
    "unsupported",
)
TRANSIENT = ("rate_limited", "bot_check", "network", "timeout", "crashed", "other")
ERROR_CLASSES = PERMANENT + TRANSIENT

# First match wins: the bot check before other sign-in prompts, "private" and "removed" before the generic
# "unavailable" that YouTube puts in front of both.
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern, re.IGNORECASE))
    for name, pattern in (
        ("bot_check", r"not a bot|captcha|unusual traffic"),
        ("rate_limited", r"HTTP Error 429|Too Many Requests|rate.?limit|content isn.t available, try again later"),
        ("private", r"private video|video is private"),
        (
            "removed",
            r"removed|terminated|no longer available|copyright|blocked it|violat(es|ing)|account .* closed",
        ),
        ("geo_blocked", r"not (made this video )?available in your country|geo.?restrict"),
        ("login_required", r"confirm your age|age.?restricted|inappropriate|members.only|join this channel|sign in"),
        # Before "unavailable": ffmpeg's "moov atom not found" is a broken file, not a missing one.
        (
            "invalid_media",
            r"invalid data found|moov atom not found|no video formats found|requested format is not available|"
            r"holds no media|not a video|does not contain any stream|could not find codec",
        ),
        (
            "unavailable",
            r"video unavailable|is not available|does not exist|HTTP Error (404|410)|premieres in|"
            r"live event will begin",
        ),
        ("unsupported", r"unsupported url"),
        (
            "network",
            r"timed out|connection|temporary failure|name or service|network is unreachable|reset by peer|"
            r"HTTP Error 5\d\d|incomplete ?read|transport ?error|ssl|unable to download",
        ),
    )
)


@dataclass(frozen=True)
class Failure:
    """A classified failure: its class, whether a re-run should leave it alone, and the tool's message."""

    error_class: str
    message: str

    @property
    def permanent(self) -> bool:
        return self.error_class in PERMANENT


def classify(message: str, http_status: int | None = None) -> str:
    """The error class of a failed download, from the tool's message (and the HTTP status when known)."""
    if http_status == 429:
        return "rate_limited"
    if http_status in (404, 410):
        return "unavailable"
    for name, pattern in _PATTERNS:
        if pattern.search(message):
            return name
    if http_status is not None and http_status >= 500:
        return "network"
    return "other"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def clean_message(message: str, limit: int = 2000) -> str:
    """The tool's message as recorded: colour codes and the "ERROR: " prefix gone, one line, bounded."""
    text = _ANSI.sub("", message).strip()
    text = re.sub(r"^ERROR:\s*", "", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
