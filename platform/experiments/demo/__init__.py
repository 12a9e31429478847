"""The embedded default: the whole platform end to end on the built-in sample corpus, on one machine.

    corpus (FluidSynth + ffmpeg)  ->  CLIP  ->  ingest (Ray Data)  ->  HiFi-GAN + diffusion (Ray Train)
        ->  mel classifier  ->  evaluation (Ray actors, FAD/FID)  ->  Ray Serve app  ->  a wav file per query

Everything is tracked in one MLflow experiment in a local SQLite file under the output directory. Each stage
writes `stages/<name>.json` when it finishes; a re-run reuses a finished stage whose settings are unchanged
(the corpus builder, ingestion and training also resume from partial work on their own).

CLIP: pretrained ViT-B-32 weights are used when they are in the open_clip cache, given by path, or
downloadable. Otherwise the demo trains (once; it is cached) its offline CLIP (`offline_clip/`): a small dual
encoder that learns from synthetic captioned instrument pictures what a violin looks like and is called, never
seeing audio or a corpus frame. A banner and the MLflow tag `clip_encoder` say which one ran, and the demo
measures its zero-shot accuracy on the corpus frames. `--clip-pretrained none` runs a random CLIP.

What the user hears is measured too: the service's wav files are re-analysed into mels and classified by the
demo's mel classifier (`served_audio` in demo_summary.json), and the same mels through the bundle's HiFi-GAN
and through Griffin-Lim are compared (`vocoders`): the demo's HiFi-GAN trains for under a minute, so the
bundle serves Griffin-Lim (`--serving-vocoder`).

Modules: config (DemoConfig, the flags), stage_configs (each stage's config: the "demo" preset plus the
knobs), clip (which CLIP), stages (resumable stages, also Table 1's), listening (the service asked and judged),
tracking (MLflow records), report (banners), run (run_demo, main).
"""

from .clip import DemoClip, pretrained_clip_missing, resolve_clip
from .config import DemoConfig
from .run import main, run_demo
from .stages import Stages, use_local_tracking

__all__ = [
    "DemoClip",
    "DemoConfig",
    "Stages",
    "main",
    "pretrained_clip_missing",
    "resolve_clip",
    "run_demo",
    "use_local_tracking",
]
