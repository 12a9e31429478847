"""Named model sizes as data: a preset is a dict of a config's fields, and overrides win over it.

The U-Net and the HiFi-GAN both name their sizes this way ("paper" is the published model, the small ones are
for CPUs and tests), so both look a size up through `config_from_preset` and fail alike on an unknown name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

ConfigT = TypeVar("ConfigT")


def config_from_preset(
    make: Callable[..., ConfigT], presets: Mapping[str, Mapping[str, Any]], preset: str, what: str, **overrides: Any
) -> ConfigT:
    """`make(**presets[preset], **overrides)`; ValueError naming `what` and the known presets otherwise."""
    if preset not in presets:
        raise ValueError(f"unknown {what} preset {preset!r}; choose from {sorted(presets)}")
    return make(**{**presets[preset], **overrides})
