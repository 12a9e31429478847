"""Inception FID on mel images against pytorch-fid itself: the network built here (no download) against
pytorch-fid's own InceptionV3 on the same weights, and the whole metric (mels -> images -> activations ->
Fréchet distance) against pytorch-fid's file pipeline and calculate_frechet_distance on the same images."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from clipsynth_core.metrics import embedding_statistics, frechet_distance_stats
from clipsynth_platform.evaluation.embedders import BackboneWeightsError
from clipsynth_platform.evaluation.inception_fid import (
    FID_INCEPTION_ENV,
    FID_INCEPTION_FILE,
    FID_INCEPTION_URL,
    FIDImageNetwork,
    InceptionPool3,
    MelImageFID,
    build_mel_image_fid,
    fid_inception_v3,
    images_to_tensor,
    load_fid_inception,
    mel_images,
    write_mel_pngs,
)

pytorch_fid_inception = pytest.importorskip("pytorch_fid.inception")
fid_score = pytest.importorskip("pytorch_fid.fid_score")


def random_inception_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights for the FID Inception that keep activations of order one through its ~90 layers (He
    scaling of the convs, BatchNorm statistics near identity), so a comparison of outputs is meaningful."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in fid_inception_v3().state_dict().items():
        if k.endswith("conv.weight"):
            fan_in = v[0].numel()
            state[k] = torch.randn(v.shape, generator=g) * math.sqrt(2.0 / fan_in)
        elif k.endswith("bn.weight") or k.endswith("bn.running_var"):
            state[k] = 1.0 + 0.1 * torch.rand(v.shape, generator=g)
        elif k.endswith(("bn.bias", "bn.running_mean")):
            state[k] = 0.1 * torch.randn(v.shape, generator=g)
        elif v.is_floating_point():
            state[k] = 0.01 * torch.randn(v.shape, generator=g)
        else:
            state[k] = v.clone()
    return state


def pytorch_fid_model(state: dict[str, torch.Tensor], monkeypatch) -> nn.Module:
    """pytorch-fid's own InceptionV3 (pool3 block), its weights download replaced by `state`."""
    monkeypatch.setattr(pytorch_fid_inception, "load_state_dict_from_url", lambda *a, **k: state)
    return pytorch_fid_inception.InceptionV3([pytorch_fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()


def test_weights_url_is_pytorch_fids():
    assert FID_INCEPTION_URL == pytorch_fid_inception.FID_WEIGHTS_URL
    assert FID_INCEPTION_URL.endswith("/" + FID_INCEPTION_FILE)


@pytest.mark.slow  # 14 s on 2 shared cores: out of make test-fast
def test_the_network_is_pytorch_fids_fid_inception(tmp_path, monkeypatch):
    state = random_inception_state()
    # Architecture: pytorch-fid's own fid_inception_v3 (its download replaced) strict-loads the state dict of
    # the network built here, and holds exactly the same tensors under the same names.
    theirs = pytorch_fid_model(state, monkeypatch)
    their_net = pytorch_fid_inception.fid_inception_v3()
    assert {k: tuple(v.shape) for k, v in their_net.state_dict().items()} == {
        k: tuple(v.shape) for k, v in state.items()
    }
    assert len(state) > 400 and sum(v.numel() for k, v in state.items() if k.endswith("weight")) > 2e7
    # Loading by path from a torch file (weights_only) gives the same pool3 features as pytorch-fid's model.
    torch.save(state, str(tmp_path / FID_INCEPTION_FILE))
    ours = load_fid_inception(tmp_path / FID_INCEPTION_FILE)
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(images)[0].squeeze(3).squeeze(2)
        got = ours(images)
    assert got.shape == (3, 2048)
    scale = float(expected.abs().max())
    assert scale > 1e-2  # activations of order one: the comparison below is not between zeros
    max_abs = float((got - expected).abs().max())
    print(
        f"[equivalence] pool3 features vs pytorch-fid's InceptionV3: max abs difference {max_abs:.3g} (scale {scale:.3g})"
    )
    assert max_abs <= 1e-5 * scale
    torch.save({k: v for k, v in state.items() if "Mixed_7c" not in k}, str(tmp_path / "partial.pth"))
    with pytest.raises(ValueError, match="not the FID Inception-v3 state dict"):
        load_fid_inception(tmp_path / "partial.pth")


@pytest.mark.skipif(
    not Path(os.environ.get(FID_INCEPTION_ENV, "/nonexistent")).is_file(),
    reason=f"${FID_INCEPTION_ENV} does not point to {FID_INCEPTION_FILE}",
)
def test_the_released_weights_give_pytorch_fids_features(monkeypatch):
    path = Path(os.environ[FID_INCEPTION_ENV])
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    theirs = pytorch_fid_model(state, monkeypatch)
    ours = build_mel_image_fid("inception", device="cpu")
    mels = torch.rand(2, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        expected = theirs(images_to_tensor(mel_images(mels)))[0].squeeze(3).squeeze(2).double().numpy()
    np.testing.assert_allclose(ours.features(mels), expected, rtol=1e-4, atol=1e-5)


def test_mels_become_8_bit_images_with_low_frequencies_at_the_bottom():
    mels = torch.full((1, 64, 128), -1.0)
    mels[0, 0, :64] = 1.0  # the lowest band, loud, in the first window only
    mels[0, 10, 64:] = 0.0
    images = mel_images(mels)
    assert images.dtype == torch.uint8 and tuple(images.shape) == (2, 64, 64)
    assert (images[0, -1] == 255).all() and (images[0, :-1] == 0).all()  # band 0 -> bottom row
    assert (images[1, 63 - 10] == 128).all() and int(images[1].sum()) == 128 * 64
    x = images_to_tensor(images)
    assert tuple(x.shape) == (2, 3, 64, 64) and torch.equal(x[:, 0], x[:, 2])
    assert float(x.max()) == 1.0 and float(x.min()) == 0.0


def smooth_mels(n: int, frames: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """Mels with some structure (a spectral slope, a few harmonics, noise) in [-1, 1]."""
    rng = np.random.default_rng(seed)
    bands = np.arange(64)[None, :, None]
    base = -0.2 - bands / 64.0 + shift
    peaks = np.exp(-(((bands - rng.integers(5, 50, (n, 1, 1))) / 3.0) ** 2))
    noise = 0.25 * rng.standard_normal((n, 64, frames))
    return np.clip(base + peaks + noise, -1, 1).astype(np.float32)


def test_mel_fid_equals_pytorch_fid_on_the_same_images(tmp_path):
    """A tiny random network (the released Inception is not on this machine): our whole metric against
    pytorch-fid's pipeline from PNG files (ImagePathDataset, ToTensor, get_activations) and its
    calculate_frechet_distance."""
    fid = build_mel_image_fid("tiny-random:5", device="cpu", window_frames=64, batch_size=7)
    assert isinstance(fid, MelImageFID) and fid.random and fid.metric_name == "fid"
    generated = smooth_mels(40, 64, seed=0, shift=0.5)
    reference = smooth_mels(20, 192, seed=1)  # 3 windows each: 60 reference images
    ours_gen, ours_ref = fid.features(generated), fid.features(reference)
    assert ours_gen.shape == (40, 16) and ours_ref.shape == (60, 16)
    ours = frechet_distance_stats(embedding_statistics(ours_gen), embedding_statistics(ours_ref))

    class AsPytorchFid(nn.Module):  # pytorch-fid's model interface: a list of [B, D, 1, 1] maps
        def __init__(self, network: FIDImageNetwork) -> None:
            super().__init__()
            self.network = network

        def forward(self, x):
            return [self.network(x)[:, :, None, None]]

    model = AsPytorchFid(fid.model)
    stats = []
    for name, mels in (("gen", generated), ("ref", reference)):
        files = write_mel_pngs(mels, tmp_path / name)
        act = fid_score.get_activations(files, model, batch_size=50, dims=16, device="cpu", num_workers=0)
        diff = float(np.abs(act - (ours_gen if name == "gen" else ours_ref)).max())
        print(f"[equivalence] {name} activations from PNG files vs in memory: max abs difference {diff:.3g}")
        assert diff <= 1e-5 * float(np.abs(act).max())
        stats.append(fid_score.calculate_activation_statistics(files, model, 50, 16, "cpu", 0))
    theirs = float(fid_score.calculate_frechet_distance(stats[0][0], stats[0][1], stats[1][0], stats[1][1]))
    # The same activations through pytorch-fid's distance (sqrtm) and ours (eigendecompositions).
    same_acts = float(
        fid_score.calculate_frechet_distance(
            ours_gen.mean(0), np.cov(ours_gen, rowvar=False), ours_ref.mean(0), np.cov(ours_ref, rowvar=False)
        )
    )
    print(
        f"[equivalence] mel FID {ours:.6g}; pytorch-fid from files {theirs:.6g}; from our activations {same_acts:.6g}"
    )
    assert ours > 1e-3 * float(np.trace(np.cov(ours_ref, rowvar=False)))  # far from a difference of zeros
    assert ours == pytest.approx(same_acts, rel=1e-6)
    assert ours == pytest.approx(theirs, rel=1e-4)
    assert frechet_distance_stats(embedding_statistics(ours_ref), embedding_statistics(ours_ref)) == pytest.approx(
        0.0, abs=1e-9
    )


def test_absent_inception_weights_say_where_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv(FID_INCEPTION_ENV, str(tmp_path / "absent.pth"))
    with pytest.raises(BackboneWeightsError, match=f"absent.pth .*{FID_INCEPTION_ENV}") as info:
        build_mel_image_fid("inception")
    assert FID_INCEPTION_URL in str(info.value)
    with pytest.raises(BackboneWeightsError, match="the path given"):
        build_mel_image_fid(str(tmp_path / "nope" / FID_INCEPTION_FILE))
    with pytest.raises(ValueError, match="unknown FID backbone"):
        build_mel_image_fid("resnet")


def test_inception_pool3_runs_the_layers_pytorch_fid_chains():
    net = fid_inception_v3()
    pool3 = InceptionPool3(net)
    names = [n for n, m in net.named_children() if any(m is layer for layer in pool3.layers)]
    assert names == [
        "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
        "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
        "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool",
    ]  # fmt: skip
    assert isinstance(net.Mixed_7c, pytorch_fid_inception.FIDInceptionE_2)
    assert isinstance(net.Mixed_5b, pytorch_fid_inception.FIDInceptionA)
    assert net.fc.out_features == 1008 and not net.aux_logits
