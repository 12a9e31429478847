"""Which torch device a process computes on: the one place the evaluation backbones and the Serve replicas
resolve a `--device`/`device:` setting."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch


def resolve_device(
    device: str | torch.device | None = "auto", gpu_ids: Sequence[int | str] | None = None
) -> torch.device:
    """An explicit device as given; `auto` (or None): where this process may compute.

    Outside Ray's placement (`gpu_ids` None: a job's driver, a test) that is the first GPU when there is one.
    Inside a Ray actor, pass `ray.get_gpu_ids()`: the first GPU Ray assigned it (a fraction counts), else the
    CPU even when the machine has GPUs, since another actor holds them. Ray narrows CUDA_VISIBLE_DEVICES to the
    assigned GPUs, so the first one is `cuda:0`; without that variable (RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES)
    its index is the assigned id itself.
    """
    if device is not None and str(device) != "auto":
        return torch.device(device)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if gpu_ids is None:
        return torch.device("cuda")
    if not gpu_ids:
        return torch.device("cpu")
    return torch.device("cuda", 0 if os.environ.get("CUDA_VISIBLE_DEVICES") else int(gpu_ids[0]))
