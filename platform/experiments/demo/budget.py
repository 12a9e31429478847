"""How long the demo's diffusion model trains: its step target, within its time cap and within what the
demo's whole time budget leaves it once the stages before it are done.

The stages before it take very different times: a first run on a fresh machine trains the offline CLIP
(about 3 minutes on 2 cores) and a later one reuses it from the cache. A fixed training time would either
overrun the budget on a first run or waste minutes of training on every later one.
"""

from __future__ import annotations

from .config import DemoConfig


def diffusion_train_seconds(config: DemoConfig, elapsed: float) -> float:
    """Training seconds for the diffusion stage, `elapsed` seconds into the demo.

    The cap (`diffusion_train_seconds`), lowered so that the demo ends within `demo_seconds` given that the
    stages after training take `after_diffusion_seconds`; never below `min_diffusion_seconds` (a model trained
    for less is not worth serving), and never above the cap. `demo_seconds` 0: the cap alone.
    """
    if elapsed < 0:
        raise ValueError(f"elapsed seconds must be >= 0, got {elapsed}")
    cap = config.diffusion_train_seconds
    if not config.demo_seconds:
        return cap
    left = config.demo_seconds - elapsed - config.after_diffusion_seconds
    return max(min(cap, left), min(config.min_diffusion_seconds, cap))
