"""The one manifest of clips: every source format (VGG-Sound's CSV, MUSIC's JSON, a generic table) parsed into one
typed list (`Clip`), its split hygiene applied, written as Parquet for every later stage and resumed run.

    from clipsynth_platform.datasets.manifest import load_manifest
    manifest = load_manifest("vggsound.csv")           # format detected; or fmt="vggsound" | "music" | "table"
    clip = manifest.lookup("---g-f_I2yQ_000001")       # Clip(clip_id, video_id, start, end, label, split, ...)
    manifest.write("out/_manifest.parquet"); Manifest.read("out/_manifest.parquet")

Modules: clip (the row), manifest (the list, lookup, Parquet), hygiene (split leaks), vggsound, music, table
(one parser per source format), load (reading any of them, format detection).
"""

from .clip import CLIP_SECONDS, SPLITS, Clip, window_clip_id
from .hygiene import LEAK_RULE, SplitLeak
from .load import FORMATS, SOURCE_FORMATS, detect_format, load_manifest, parse_manifest
from .manifest import MANIFEST_FILE, Manifest, ManifestReport
from .music import parse_music_json
from .table import parse_table
from .vggsound import parse_vggsound_csv

__all__ = [
    "CLIP_SECONDS",
    "FORMATS",
    "LEAK_RULE",
    "MANIFEST_FILE",
    "SOURCE_FORMATS",
    "SPLITS",
    "Clip",
    "Manifest",
    "ManifestReport",
    "SplitLeak",
    "detect_format",
    "load_manifest",
    "parse_manifest",
    "parse_music_json",
    "parse_table",
    "parse_vggsound_csv",
    "window_clip_id",
]
