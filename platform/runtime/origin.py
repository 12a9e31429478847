"""Where the running code comes from: both project packages must load from one source tree.

A job submitted with `--working-dir` must run the uploaded code, never a mix of the upload and an installed
copy (see clipsynth_platform.py at the repository root). Jobs print this; the rehearsal asserts it inside a job.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class CodeOrigin:
    core_root: str  # the folder that holds clipsynth_core/
    platform_root: str  # the folder that holds platform/ (the code of clipsynth_platform)

    @property
    def consistent(self) -> bool:
        return self.core_root == self.platform_root

    def to_dict(self) -> dict:
        return {**asdict(self), "consistent": self.consistent}


def code_origin() -> CodeOrigin:
    import clipsynth_core

    return CodeOrigin(
        core_root=str(Path(clipsynth_core.__file__).resolve().parents[1]),
        # this file is platform/runtime/origin.py: three levels up is the folder that holds platform/
        platform_root=str(Path(__file__).resolve().parents[2]),
    )


def require_consistent_origin() -> CodeOrigin:
    """The origin, or RuntimeError when the two packages come from different trees (mixed code)."""
    origin = code_origin()
    if not origin.consistent:
        raise RuntimeError(
            f"mixed code: clipsynth_core from {origin.core_root}, clipsynth_platform from {origin.platform_root}. "
            "Submit from the repository root (its clipsynth_platform.py maps the package to the uploaded platform/)."
        )
    return origin
