"""The offline encoder, trained once per machine and kept: `offline_clip(config)` returns its weights file.

The cache key covers the training config and the source of this package and of the corpus drawings, so a
change to either trains a new encoder instead of reusing a stale one. Files are written atomically (weights,
then the report that marks them complete), so an interrupted run trains again rather than loading half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import save_file

from clipsynth_core import ClipConfig
from clipsynth_platform.runtime.logs import LogFn, progress

from .train import OfflineClipConfig, OfflineClipReport, train_offline_clip

CACHE_ENV = "CLIPSYNTH_CACHE"
DEFAULT_CACHE = Path("~/.cache/clipsynth").expanduser()


@dataclass(frozen=True)
class OfflineClip:
    """A trained offline encoder on disk: its weights, the ClipConfig that loads them, and its report."""

    weights: Path
    report: OfflineClipReport
    reused: bool

    @property
    def clip_config(self) -> ClipConfig:
        return ClipConfig(model_name="toy", pretrained=str(self.weights), allow_download=False)

    @property
    def identity(self) -> str:
        return self.clip_config.identity


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser() / "offline-clip"


def cache_key(config: OfflineClipConfig) -> str:
    # What the pictures and captions are drawn from counts too: a change there is another training set.
    from clipsynth_platform.datasets import captions
    from clipsynth_platform.datasets.corpus import config as corpus_config
    from clipsynth_platform.datasets.corpus import drawing

    here = Path(__file__).parent
    sources = [*sorted(here.glob("*.py")), *(Path(str(m.__file__)) for m in (captions, drawing, corpus_config))]
    h = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    for path in sources:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def offline_clip(
    config: OfflineClipConfig | None = None, root: str | os.PathLike | None = None, log: LogFn | None = None
) -> OfflineClip:
    """The cached encoder for `config`, trained now if the cache does not hold it."""
    config = config or OfflineClipConfig()
    log = log or progress("offline-clip")
    directory = Path(root).expanduser() if root else cache_root()
    key = cache_key(config)
    weights, report_file = directory / f"toy-{key}.safetensors", directory / f"toy-{key}.json"
    if weights.is_file() and report_file.is_file():
        report = OfflineClipReport(**json.loads(report_file.read_text())["report"])
        log(f"reusing {weights} (zero-shot on fresh pictures {report.heldout_zero_shot:.3f})")
        return OfflineClip(weights, report, reused=True)
    log(f"training the offline encoder once; it is kept at {weights}")
    encoder, report = train_offline_clip(config, log)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.model.state_dict().items()}
    tmp = weights.with_name(f".{weights.name}.partial")
    save_file(state, str(tmp))
    os.replace(tmp, weights)
    tmp = report_file.with_name(f".{report_file.name}.partial")
    tmp.write_text(json.dumps({"config": config.to_dict(), "report": report.to_dict()}, indent=2))
    os.replace(tmp, report_file)
    return OfflineClip(weights, report, reused=False)
