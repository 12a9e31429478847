"""Build the built-in sample corpus: labelled instrument videos made offline (FluidSynth + ffmpeg).

    python jobs/build_corpus.py --out corpus/
    python jobs/build_corpus.py --out corpus/ --classes violin cello flute --videos-per-class 10 --max-seconds 30
    python jobs/preprocess.py --input corpus/ --output shards/ --labels corpus/music_solo_videos.json

Re-running the same command reuses the videos already built (corpus_manifest.json records the config hash).
Needs the Debian packages fluidsynth, ffmpeg and a General MIDI soundfont (timgm6mb-soundfont by default).
"""

from __future__ import annotations

import argparse
import json
import sys

from clipsynth_platform.corpus import INSTRUMENTS, CorpusConfig, CorpusToolError, build_corpus


def build_parser() -> argparse.ArgumentParser:
    d = CorpusConfig()
    p = argparse.ArgumentParser(
        description="Render labelled instrument videos (MIDI -> FluidSynth -> H.264/AAC mp4) with a MUSIC-style "
        "JSON label index.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default=None, help="output directory (local); required unless --list-classes")
    p.add_argument(
        "--classes",
        nargs="+",
        default=list(d.classes),
        help="MUSIC class names, space- or comma-separated (see --list-classes)",
    )
    p.add_argument("--videos-per-class", type=int, default=d.videos_per_class, help="videos per class")
    p.add_argument(
        "--test-per-class", type=int, default=d.test_per_class, help="videos of each class in the test split"
    )
    p.add_argument("--min-seconds", type=float, default=d.min_seconds, help="shortest video")
    p.add_argument("--max-seconds", type=float, default=d.max_seconds, help="longest video")
    p.add_argument("--seed", type=int, default=d.seed, help="the same seed gives the same corpus")
    p.add_argument("--soundfont", default=d.soundfont, help="General MIDI .sf2 file (FluidR3_GM.sf2 sounds better)")
    p.add_argument("--workers", type=int, default=d.workers, help="videos built at once; 0: one per CPU core")
    p.add_argument("--sample-rate", type=int, default=d.sample_rate, help="audio sample rate (Hz)")
    p.add_argument("--gain", type=float, default=d.gain, help="FluidSynth master gain before normalisation")
    p.add_argument("--width", type=int, default=d.width, help="frame width (even)")
    p.add_argument("--height", type=int, default=d.height, help="frame height (even)")
    p.add_argument("--fps", type=int, default=d.fps, help="video frame rate")
    p.add_argument("--crf", type=int, default=d.crf, help="x264 constant rate factor (lower: better, bigger)")
    p.add_argument("--audio-bitrate-kbps", type=int, default=d.audio_bitrate_kbps, help="AAC bitrate")
    p.add_argument("--rebuild", action="store_true", help="build every video again even if the corpus is current")
    p.add_argument("--list-classes", action="store_true", help="print the available classes and exit")
    return p


def config_from_args(args: argparse.Namespace) -> CorpusConfig:
    classes = tuple(c.strip() for item in args.classes for c in item.split(",") if c.strip())
    return CorpusConfig(
        out=args.out,
        classes=classes,
        videos_per_class=args.videos_per_class,
        test_per_class=args.test_per_class,
        min_seconds=args.min_seconds,
        max_seconds=args.max_seconds,
        seed=args.seed,
        soundfont=args.soundfont,
        sample_rate=args.sample_rate,
        gain=args.gain,
        width=args.width,
        height=args.height,
        fps=args.fps,
        crf=args.crf,
        audio_bitrate_kbps=args.audio_bitrate_kbps,
        workers=args.workers,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_classes:
        for name, inst in sorted(INSTRUMENTS.items()):
            print(f"{name:16s} General MIDI program {inst.program:3d}, notes {inst.low}-{inst.high}")
        return 0
    if not args.out:
        parser.error("--out is required")
    config = config_from_args(args)
    print("corpus config:", json.dumps(config.to_dict(), sort_keys=True), flush=True)
    try:
        manifest = build_corpus(config, rebuild=args.rebuild, progress=lambda msg: print(msg, flush=True))
    except (ValueError, CorpusToolError, NotADirectoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "root": manifest.root,
                "videos": len(manifest.videos),
                "built": len(manifest.built),
                "reused": len(manifest.reused),
                "config_hash": manifest.config_hash,
                "elapsed_seconds": manifest.elapsed_seconds,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
