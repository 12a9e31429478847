"""Split hygiene: one source video with clips in both train and test is a leak (the model trains on the video it
is tested on). Each leak is reported and the video's clips are kept in one split.

The rule: all of the video's clips go to test. The dataset's published test list then stays whole (results stay
comparable with others'), and no training clip shares a video with a test clip. A clip of such a video that the
source listed without a split goes to test too."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from .clip import Clip

LEAK_RULE = "test"


@dataclass(frozen=True)
class SplitLeak:
    """A video listed with clips in both splits, and where its clips went."""

    video_id: str
    train_clips: tuple[str, ...]
    test_clips: tuple[str, ...]
    kept_in: str = LEAK_RULE

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "train_clips": list(self.train_clips), "test_clips": list(self.test_clips)}


def find_leaks(clips: Sequence[Clip]) -> list[SplitLeak]:
    """The videos with clips listed in both train and test, in the order their first clip is listed."""
    by_video: dict[str, dict[str, list[str]]] = defaultdict(lambda: {"train": [], "test": []})
    for clip in clips:
        if clip.listed_split in ("train", "test"):
            by_video[clip.video_id][clip.listed_split].append(clip.clip_id)
    return [
        SplitLeak(video, tuple(splits["train"]), tuple(splits["test"]))
        for video, splits in by_video.items()
        if splits["train"] and splits["test"]
    ]


def resolve_leaks(clips: Sequence[Clip]) -> tuple[list[Clip], list[SplitLeak]]:
    """The clips with each leaking video's clips moved to test (LEAK_RULE), and the leaks found."""
    leaks = find_leaks(clips)
    leaking = {leak.video_id for leak in leaks}
    resolved = [
        dataclasses.replace(c, split=LEAK_RULE) if c.video_id in leaking and c.split != LEAK_RULE else c for c in clips
    ]
    return resolved, leaks
