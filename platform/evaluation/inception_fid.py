"""Inception FID on mel spectrograms, as the paper computes it: the mels treated as images.

Images: every non-overlapping `window_frames`-frame window of a normalised mel ([-1, 1]) becomes an 8-bit
grayscale picture, level round((m + 1) * 127.5), low frequencies at the bottom as mels are shown, repeated
over three channels. That is exactly the tensor pytorch-fid builds from a PNG written by `write_mel_pngs`
(PIL's convert("RGB"), then ToTensor's division by 255), so `python -m pytorch_fid DIR_A DIR_B` on those
files and this module agree (tests/test_inception_fid.py checks it).

Network: pytorch-fid's FID Inception-v3 (TensorFlow's 2015-12-05 Inception graph, ported): torchvision's
Inception3 with 1008 classes and no auxiliary head, its Mixed_5b..5d, 6b..6e, 7b and 7c blocks replaced by
pytorch-fid's FIDInceptionA/C/E_1/E_2. Input resized to 299x299 (bilinear, align_corners=False) and scaled to
[-1, 1]; the 2048-d pool3 features (after the final average pool) are the embedding, as pytorch-fid's
InceptionV3(output_blocks=[3]) returns. pytorch-fid's own constructor downloads its weights; here the same
architecture is built from pytorch-fid's blocks without them, and the weights file
`pt_inception-2015-12-05-6726825d.pth` (FID_INCEPTION_URL) is loaded by path (torch.load with
weights_only=True): --fid-backbone PATH, $CLIPSYNTH_FID_INCEPTION_WEIGHTS, or a default location. Without it
`fid` is not computed (the run records why), never replaced by something else.

`tiny-random[:SEED]` is a two-layer random CNN behind the same rendering and pre-processing, for unit tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .embedders import (
    BackboneWeightsError,
    file_sha256,
    load_state_dict_file,
    resolve_weights_path,
    source_digest,
)
from .frozen_network import FrozenNetwork, float_tensor
from .mel_classifier import mel_windows

FID_INCEPTION_ENV = "CLIPSYNTH_FID_INCEPTION_WEIGHTS"
FID_INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_INCEPTION_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_INCEPTION_FILE}"
# The first is the project's cache; the second is where pytorch-fid itself (torch.hub) leaves the file.
DEFAULT_FID_INCEPTION_PATHS = (
    Path("~/.cache/clipsynth") / FID_INCEPTION_FILE,
    Path("~/.cache/torch/hub/checkpoints") / FID_INCEPTION_FILE,
)
# Bumped when the rendering of mels to images or the pre-processing changes; with a digest of this file's
# source and the torchvision / pytorch-fid versions it keys the reference statistics.
MEL_IMAGE_FID_VERSION = "mel-image-fid/1"
INCEPTION_SIZE = 299
POOL3_DIM = 2048


def fid_inception_v3() -> nn.Module:
    """pytorch-fid's FID Inception-v3 architecture with no weights loaded (nothing is downloaded)."""
    import torchvision
    from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2

    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE_1(1280)
    net.Mixed_7c = FIDInceptionE_2(2048)
    return net


class InceptionPool3(nn.Module):
    """The FID Inception-v3 up to its final average pool: [B, 3, 299, 299] in [-1, 1] -> [B, 2048].

    The layers pytorch-fid's InceptionV3 chains for output block 3, in its order (torchvision's maxpool1 and
    maxpool2 are the MaxPool2d(3, 2) it inserts)."""

    def __init__(self, inception: nn.Module) -> None:
        super().__init__()
        self.inception = inception
        n: Any = inception  # pytorch-fid's Inception: its blocks read as Tensor | Module to the checker
        self.layers = (
            n.Conv2d_1a_3x3,
            n.Conv2d_2a_3x3,
            n.Conv2d_2b_3x3,
            n.maxpool1,
            n.Conv2d_3b_1x1,
            n.Conv2d_4a_3x3,
            n.maxpool2,
            n.Mixed_5b,
            n.Mixed_5c,
            n.Mixed_5d,
            n.Mixed_6a,
            n.Mixed_6b,
            n.Mixed_6c,
            n.Mixed_6d,
            n.Mixed_6e,
            n.Mixed_7a,
            n.Mixed_7b,
            n.Mixed_7c,
            n.avgpool,
        )

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x.flatten(1)


class FIDImageNetwork(nn.Module):
    """pytorch-fid's pre-processing, then `body`: [B, 3, H, W] in [0, 1] -> features [B, D].

    Bilinear resize to 299x299 (align_corners=False) and 2x - 1, as InceptionV3(resize_input=True,
    normalize_input=True)."""

    def __init__(self, body: nn.Module, size: int = INCEPTION_SIZE) -> None:
        super().__init__()
        self.body = body
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.body(2 * x - 1).flatten(1)


def load_fid_inception(path: str | os.PathLike) -> FIDImageNetwork:
    """The FID Inception-v3 with the state dict at `path` (pytorch-fid's weights file), strictly loaded."""
    state = load_state_dict_file(path)
    with torch.device("meta"):  # no random initialisation of 24M parameters that are overwritten at once
        net = fid_inception_v3()
    try:
        net.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise ValueError(f"{path} is not the FID Inception-v3 state dict ({FID_INCEPTION_FILE}): {exc}") from exc
    return FIDImageNetwork(InceptionPool3(net.eval())).eval()


def tiny_random_image_network(seed: int = 0) -> FIDImageNetwork:
    """Two strided convolutions and a global average pool with seeded random weights (unit tests only)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        body = nn.Sequential(
            nn.Conv2d(3, 8, 5, stride=4),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
    return FIDImageNetwork(body).eval()


def mel_images(mels: Tensor | np.ndarray, window_frames: int = 64) -> Tensor:
    """Normalised mels [B, n_mels, T] -> 8-bit grayscale images [B * W, n_mels, window_frames] (uint8) of
    their non-overlapping windows, low frequencies in the bottom row."""
    windows, _ = mel_windows(float_tensor(mels), window_frames)
    return torch.round((windows.clamp(-1.0, 1.0) + 1.0) * 127.5).to(torch.uint8).flip(-2)


def images_to_tensor(gray: Tensor) -> Tensor:
    """uint8 images [B, H, W] -> [B, 3, H, W] float in [0, 1]: what ToTensor gives for their RGB PNGs."""
    return (gray.float() / 255.0)[:, None].expand(-1, 3, -1, -1)


def write_mel_pngs(mels: Tensor | np.ndarray, directory: str | os.PathLike, window_frames: int = 64) -> list[Path]:
    """The images of `mel_images` as grayscale PNG files (input for pytorch-fid's own command line)."""
    from PIL import Image

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(mel_images(mels, window_frames).numpy()):
        path = d / f"{i:06d}.png"
        Image.fromarray(image).save(path)  # 2-D uint8: mode "L"
        paths.append(path)
    return paths


def _package_versions() -> str:
    import torchvision

    try:
        from importlib.metadata import version

        fid = version("pytorch-fid")
    except Exception:  # not installed as a distribution: the blocks' source still pins it below
        fid = "unknown"
    return f"torchvision:{torchvision.__version__}/pytorch-fid:{fid}"


class MelImageFID(FrozenNetwork):
    """MelFeatureExtractor of Inception FID: mel windows rendered as images -> pool3 features [M, 2048]."""

    metric_name = "fid"

    def __init__(
        self,
        network: nn.Module,
        identity: str,
        device: str | torch.device | None = "auto",
        batch_size: int = 50,
        window_frames: int = 64,
        random: bool = False,
    ) -> None:
        super().__init__(network, identity, device, batch_size, random)
        self.window_frames = window_frames
        self.version = f"{MEL_IMAGE_FID_VERSION}/src:{source_digest(__file__)}/{_package_versions()}"

    @torch.no_grad()
    def features(self, mels: Tensor | np.ndarray) -> np.ndarray:
        gray = mel_images(mels, self.window_frames)
        return self.in_batches(lambda g: self.model(images_to_tensor(g)), gray).double().numpy()


def resolve_fid_inception_path(path: str | os.PathLike | None = None) -> tuple[Path | None, str]:
    """The FID Inception weights file: `path`, else $CLIPSYNTH_FID_INCEPTION_WEIGHTS, else the first of
    DEFAULT_FID_INCEPTION_PATHS."""
    return resolve_weights_path(path, FID_INCEPTION_ENV, DEFAULT_FID_INCEPTION_PATHS)


def fid_inception_help(reason: str) -> str:
    return (
        f"FID Inception weights are not available: {reason}\n"
        f"Nothing is downloaded by the evaluation. Get pytorch-fid's {FID_INCEPTION_FILE} ({FID_INCEPTION_URL}) "
        f"and give it as --fid-backbone /path/to/{FID_INCEPTION_FILE} or ${FID_INCEPTION_ENV}, or put it at "
        + " or ".join(str(p) for p in DEFAULT_FID_INCEPTION_PATHS)
        + "."
    )


def build_mel_image_fid(
    spec: str, device: str | torch.device | None = "auto", window_frames: int = 64, batch_size: int = 50
) -> MelImageFID:
    """'inception' (weights from $CLIPSYNTH_FID_INCEPTION_WEIGHTS or a default location), 'inception:PATH' or a
    path to the weights file, or 'tiny-random[:SEED]'. Raises BackboneWeightsError when the file is absent."""
    spec = str(spec).strip()
    if spec == "tiny-random" or spec.startswith("tiny-random:"):
        seed = int(spec.split(":", 1)[1]) if ":" in spec else 0
        return MelImageFID(
            tiny_random_image_network(seed),
            f"tiny-random-image-cnn/seed:{seed}",
            device,
            batch_size,
            window_frames,
            random=True,
        )
    if spec == "inception" or spec.startswith("inception:"):
        given = spec.partition(":")[2] or None
    elif spec.endswith((".pth", ".pt", ".safetensors")) or os.sep in spec:
        given = spec
    else:
        raise ValueError(f"unknown FID backbone {spec!r}; use 'inception', a weights path, 'tiny-random' or 'none'")
    p, where = resolve_fid_inception_path(given)
    if p is None:
        raise BackboneWeightsError(fid_inception_help(f"no file at {where}"))
    identity = f"fid-inception-v3/sha256:{file_sha256(p)[:16]}"
    return MelImageFID(load_fid_inception(p), identity, device, batch_size, window_frames)
