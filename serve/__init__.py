"""The CLIPSynth Ray Serve application: `serve run serve:app` from the repository root.

`app` and `app_builder` are loaded on first access, so a replica that imports one module of this package (the
ingress needs no torch) does not import the model deployments.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app", "app_builder", "build_app"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import application as app_module

        return getattr(app_module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
