"""The embedded default: run the whole platform end to end on the built-in sample corpus (`make demo`).

Builds a labelled instrument-video corpus offline, starts a local Ray, preprocesses it (Ray Data), trains the
HiFi-GAN and the diffusion model (image variant) for a few CPU minutes each (Ray Train), trains the mel
classifier, evaluates (FAD, FID, relevance, retriever baseline), logs everything to MLflow in a local SQLite
file, starts the Ray Serve app and synthesizes a few text queries into wav files. Re-running reuses what is
already built. See clipsynth_platform.demo.DemoConfig for every setting.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from clipsynth_platform.demo import DemoConfig, main


def parse(argv: list[str] | None = None) -> DemoConfig:
    d = DemoConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(DemoConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(d, f.name)
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=f"(default {default})")
        elif isinstance(default, tuple):
            p.add_argument(flag, default=",".join(default), help=f"comma-separated (default {','.join(default)})")
        else:
            p.add_argument(flag, type=type(default), default=default, help=f"(default {default})")
    args = vars(p.parse_args(argv))
    for f in fields(DemoConfig):
        if isinstance(getattr(d, f.name), tuple):
            args[f.name] = tuple(x.strip() for x in args[f.name].split(",") if x.strip())
    return DemoConfig(**args)


if __name__ == "__main__":
    sys.exit(main(parse()))
