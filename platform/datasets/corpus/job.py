"""The corpus job's main() (jobs/build_corpus.py): flags -> CorpusConfig -> build_corpus -> a JSON summary line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from clipsynth_platform.runtime.console import open_console
from clipsynth_platform.runtime.logs import progress
from clipsynth_platform.runtime.options import build_parser, config_from_namespace

from .build import build_corpus
from .config import INSTRUMENTS, CorpusConfig, CorpusToolError


def parser(description: str | None) -> argparse.ArgumentParser:
    """CorpusConfig's options, and two that are not settings of the corpus: --rebuild and --list-classes."""
    p = build_parser(CorpusConfig, description)
    p.add_argument("--rebuild", action="store_true", help="build every video again even if the corpus is current")
    p.add_argument("--list-classes", action="store_true", help="print the available classes and exit")
    return p


def main(argv: Sequence[str] | None = None, description: str | None = None) -> int:
    open_console("corpus")
    p = parser(description)
    args = p.parse_args(argv)
    if args.list_classes:
        for name, inst in sorted(INSTRUMENTS.items()):
            print(f"{name:16s} General MIDI program {inst.program:3d}, notes {inst.low}-{inst.high}")
        return 0
    if not args.out:
        p.error("--out is required")
    config = config_from_namespace(CorpusConfig, args)  # build_corpus checks it (CorpusConfig.validate)
    log = progress("corpus")
    log("config: " + json.dumps(config.to_dict(), sort_keys=True))
    try:
        manifest = build_corpus(config, rebuild=args.rebuild, progress=log)
    except (ValueError, CorpusToolError, NotADirectoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = {
        "root": manifest.root,
        "videos": len(manifest.videos),
        "built": len(manifest.built),
        "reused": len(manifest.reused),
        "config_hash": manifest.config_hash,
        "elapsed_seconds": manifest.elapsed_seconds,
    }
    print(json.dumps(summary), flush=True)
    return 0
