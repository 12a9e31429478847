"""Which CLIP the demo runs with: pretrained weights when this machine has them (cache, path or download), else
the offline encoder trained here once; and how well it names the corpus frames."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from clipsynth_platform.runtime.logs import LogFn, progress

from .config import DemoConfig
from .report import BANNER_WIDTH, banner


@dataclass(frozen=True)
class DemoClip:
    """The CLIP the demo runs with, and what kind it is (the banner and every MLflow run say which)."""

    model: str
    pretrained: str  # an open_clip tag, a weights path, or "none"
    kind: str  # "pretrained" | "offline-toy" | "random"
    note: str = ""  # for the offline encoder: its zero-shot accuracy on fresh pictures

    @property
    def identity(self) -> str:
        return f"{self.model}/{self.pretrained}"

    def tags(self) -> dict[str, str]:
        return {"clip": self.identity, "clip_encoder": self.kind, "clip_random": str(self.kind == "random").lower()}


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def pretrained_clip_missing(config: DemoConfig, allow_download: bool) -> str | None:
    """Why the configured pretrained CLIP cannot be loaded (no file, not in the cache, no download), or None
    when it loads. The demo's choice between pretrained and offline CLIP is this answer; its test asks it too."""
    from clipsynth_core import ClipConfig, ClipQueryEncoder, ClipWeightsError

    try:
        ClipQueryEncoder(
            ClipConfig(model_name=config.clip_model, pretrained=config.clip_pretrained, allow_download=allow_download)
        )
    except ClipWeightsError as exc:
        return str(exc).splitlines()[0]
    return None


def resolve_clip(config: DemoConfig, log: LogFn | None = None) -> DemoClip:
    """Pretrained weights from the cache, a path or a download; else the offline encoder, trained once and cached."""
    say = log or progress("demo")
    choice = config.clip_pretrained.lower()
    if choice == "none":
        return DemoClip(config.clip_model, "none", "random")
    reason = "--clip-pretrained offline"
    if choice != "offline":
        missing = pretrained_clip_missing(config, allow_download=_hub_reachable())
        if missing is None:
            say(f"CLIP {config.clip_model}/{config.clip_pretrained}: pretrained weights found")
            return DemoClip(config.clip_model, config.clip_pretrained, "pretrained")
        reason = missing
    from clipsynth_platform.experiments.offline_clip import OfflineClipConfig, offline_clip

    clip_config = OfflineClipConfig(pictures_per_class=config.offline_clip_pictures, steps=config.offline_clip_steps)
    # its own "[offline-clip] ..." lines: to the caller's callback when there is one, else to its default
    trained = offline_clip(clip_config, log=log) if log else offline_clip(clip_config)
    note = f"zero-shot {trained.report.heldout_zero_shot:.2f} on fresh pictures"
    banner(
        [
            "NO PRETRAINED CLIP WEIGHTS: the demo runs its OFFLINE CLIP, a small dual encoder trained here once",
            "(and cached) with open_clip's contrastive loss on synthetic captioned instrument pictures. Like the",
            "paper's CLIP it never saw audio, nor a corpus frame. Text queries mean something for the instruments",
            f"it knows ({len(trained.report.classes)}; {note}), not beyond.",
            f"Reason: {reason[: BANNER_WIDTH - 10]}",
            "For real CLIP: put ViT-B-32/openai in the open_clip cache, or pass --clip-pretrained /path/to/weights",
        ],
        say,
    )
    return DemoClip(trained.clip_config.model_name, trained.clip_config.pretrained, "offline-toy", note)


def frames_zero_shot(clip: DemoClip, shards: Path, log: LogFn) -> dict:
    """CLIP's zero-shot accuracy on the corpus frames ingestion embedded ("a photo of playing {class}")."""
    from clipsynth_core import ClipConfig, ClipQueryEncoder
    from clipsynth_platform.experiments.offline_clip import dataset_zero_shot

    encoder = ClipQueryEncoder(ClipConfig(model_name=clip.model, pretrained=clip.pretrained, allow_download=False))
    result = dataset_zero_shot(encoder, str(shards))
    worst = min(result.per_class, key=lambda name: result.per_class[name])
    log(
        f"CLIP zero-shot on {result.frames} corpus frames: {result.accuracy:.3f} "
        f"({len(result.classes)} classes; lowest {worst} {result.per_class[worst]:.2f})"
    )
    return result.to_dict()
