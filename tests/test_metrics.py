"""Fréchet distance and embedding statistics (clipsynth_core.metrics) against closed forms and scipy, and
the FAD backbones (VGGish frontend and network, its pre-activation embedding against the layers run by hand,
weights loading, the pluggable interface)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from clipsynth_core.metrics import (
    GaussianStats,
    StatsAccumulator,
    embedding_statistics,
    frechet_distance,
    frechet_distance_features,
)
from clipsynth_platform.datasets.synthetic import tone
from clipsynth_platform.evaluation.embedders import (
    VGGISH_ENV,
    VGGISH_WEIGHTS_FILE,
    VGGISH_WEIGHTS_URL,
    AudioEmbedder,
    BackboneWeightsError,
    VGGish,
    VGGishConfig,
    VGGishFrontend,
    build_audio_embedder,
    register_audio_embedder,
)


def random_spd(d: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T + 0.1 * np.eye(d)


def scipy_frechet(mu1, s1, mu2, s2) -> float:
    """The textbook formula with scipy's general matrix square root (an independent computation)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_equal_gaussians_give_zero():
    rng = np.random.default_rng(0)
    mu, s = rng.standard_normal(8), random_spd(8, rng)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9)


def test_shifted_means_give_the_squared_distance():
    rng = np.random.default_rng(1)
    s = random_spd(6, rng)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    assert frechet_distance(mu1, s, mu2, s) == pytest.approx(float(np.sum((mu1 - mu2) ** 2)), rel=1e-9)


def test_diagonal_covariances_closed_form():
    a, b = np.array([1.0, 4.0, 9.0, 0.25]), np.array([4.0, 1.0, 9.0, 1.0])
    mu1, mu2 = np.zeros(4), np.array([1.0, 0.0, 2.0, 0.0])
    expected = 1.0 + 4.0 + float(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_matches_scipy_and_is_symmetric_on_full_covariances():
    rng = np.random.default_rng(2)
    for d in (3, 16):
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        s1, s2 = random_spd(d, rng), random_spd(d, rng)
        ours = frechet_distance(mu1, s1, mu2, s2)
        assert ours == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-8)
        assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(ours, rel=1e-10)


def test_rank_one_covariances_closed_form():
    # S1 = u u^T, S2 = v v^T: S1 S2 has the one nonzero eigenvalue (u.v)^2, so d = |u|^2 + |v|^2 - 2 |u.v|.
    u, v = np.array([1.0, 2.0, 0.0, -1.0]), np.array([0.5, -1.0, 3.0, 2.0])
    expected = u @ u + v @ v - 2 * abs(u @ v)
    got = frechet_distance(np.zeros(4), np.outer(u, u), np.zeros(4), np.outer(v, v))
    assert got == pytest.approx(expected, rel=1e-7, abs=1e-9)


def test_near_singular_covariances_stay_finite_and_exact():
    # Fewer samples than dimensions (the usual case for 512 samples of wide features): rank-deficient.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((10, 40))
    stats = embedding_statistics(x)
    assert np.linalg.matrix_rank(stats.sigma) < 40
    assert frechet_distance(stats.mu, stats.sigma, stats.mu, stats.sigma) == pytest.approx(0.0, abs=1e-8)
    shifted = embedding_statistics(x + 0.5)
    assert frechet_distance(stats.mu, stats.sigma, shifted.mu, shifted.sigma) == pytest.approx(40 * 0.25, rel=1e-6)


def test_statistics_match_numpy_and_the_streaming_accumulator_matches_one_pass():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((101, 5)) * np.array([1, 2, 3, 4, 5]) + 7.0
    stats = embedding_statistics(x)
    np.testing.assert_allclose(stats.mu, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(x.T), rtol=1e-12)
    acc = StatsAccumulator()
    for chunk in (x[:1], x[1:40], x[40:41], x[41:]):
        acc.update(chunk)
    streamed = acc.stats()
    assert streamed.count == 101
    np.testing.assert_allclose(streamed.mu, stats.mu, rtol=1e-12)
    np.testing.assert_allclose(streamed.sigma, stats.sigma, rtol=1e-10)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="at least 2"):
        embedding_statistics(np.ones((1, 3)))
    with pytest.raises(ValueError, match="NaN"):
        embedding_statistics(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="one width"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match=r"\[2, 2\]"):
        frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="width changed"):
        StatsAccumulator().update(np.ones((2, 3))).update(np.ones((2, 4)))
    with pytest.raises(ValueError):
        GaussianStats(np.zeros(3), np.eye(2), 5)


# ------------------------------------------------------------------------------------------------ FAD
def tones(n: int, seconds: float = 2.0) -> np.ndarray:
    return np.stack([tone(200.0 * 1.2**i, seconds, seed=i) for i in range(n)])


def test_fad_of_a_set_against_itself_is_zero_and_grows_with_noise():
    embedder = build_audio_embedder("tiny-random:3", device="cpu")
    waves = tones(12)
    clean = embedder.embed(waves)
    assert frechet_distance_features(clean, clean) == pytest.approx(0.0, abs=1e-12)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(waves.shape).astype(np.float32)
    fads = [frechet_distance_features(clean, embedder.embed(waves + level * noise)) for level in (0.01, 0.1, 0.5)]
    assert 0 < fads[0] < fads[1] < fads[2]


def test_vggish_frontend_examples_and_mel_peak():
    frontend = VGGishFrontend()
    c = frontend.config
    # 4.16 s: 1 + (66,560 - 400) // 160 = 414 frames of 10 ms -> four 96-frame (0.96 s) examples.
    assert c.frames_for_samples(66_560) == 414 and c.examples_for_samples(66_560) == 4
    t = np.arange(16_000 * 2) / 16_000
    wave = torch.from_numpy(np.sin(2 * np.pi * 1000.0 * t).astype(np.float32))[None]
    examples, per_clip = frontend(wave)
    assert per_clip == 2 and tuple(examples.shape) == (2, 1, 96, 64)
    # Independently: HTK mel band centres over 125-7500 Hz; a 1 kHz sine peaks in the band centred nearest it.
    mel = lambda f: 1127.0 * math.log1p(f / 700.0)  # noqa: E731
    centres_mel = np.linspace(mel(125.0), mel(7500.0), 66)[1:-1]
    centres_hz = 700.0 * (np.exp(centres_mel / 1127.0) - 1.0)
    assert int(examples[0, 0].mean(dim=0).argmax()) == int(np.abs(centres_hz - 1000.0).argmin())
    with pytest.raises(ValueError, match="shorter than one VGGish example"):
        frontend(torch.zeros(1, 8000))


def test_vggish_has_the_published_architecture():
    model = VGGish()
    convs = [(1, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512)]
    fcs = [(512 * 6 * 4, 4096), (4096, 4096), (4096, 128)]
    expected = sum(9 * i * o + o for i, o in convs) + sum(i * o + o for i, o in fcs)
    assert expected == 72_141_184
    assert sum(p.numel() for p in model.parameters()) == expected
    with torch.no_grad():
        assert tuple(model(torch.zeros(2, 1, 96, 64)).shape) == (2, 128)


def vggish_by_hand(state: dict[str, torch.Tensor], examples: torch.Tensor) -> np.ndarray:
    """VGGish run layer by layer from a state dict, written out independently of the VGGish module: 3x3 convs
    (ReLU) in groups of 1, 1, 2, 2 each closed by a 2x2 max pool, the NHWC flatten TensorFlow's weights
    expect, FC + ReLU layers, and the last FC layer's output as it is (no activation)."""
    x = examples.double()
    conv_ids = sorted({int(k.split(".")[1]) for k in state if k.startswith("features.") and k.endswith(".weight")})
    assert len(conv_ids) == 6
    for k, i in enumerate(conv_ids):
        x = F.relu(F.conv2d(x, state[f"features.{i}.weight"].double(), state[f"features.{i}.bias"].double(), padding=1))
        if k in (0, 1, 3, 5):  # the last conv of each group
            x = F.max_pool2d(x, 2)
    x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
    fc_ids = sorted({int(k.split(".")[1]) for k in state if k.startswith("embeddings.") and k.endswith(".weight")})
    for n, i in enumerate(fc_ids):
        x = F.linear(x, state[f"embeddings.{i}.weight"].double(), state[f"embeddings.{i}.bias"].double())
        if n < len(fc_ids) - 1:
            x = F.relu(x)
    return x.numpy()


def small_vggish_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A narrow VGGish's random state dict with the port's key names (features.0 ... embeddings.4)."""
    torch.manual_seed(seed)
    model = VGGish(VGGishConfig(channels=(4, 8, 8, 16), fc_dims=(32, 24), embed_dim=12, final_relu=True))
    return {k: v.contiguous() for k, v in model.state_dict().items()}


REAL_VGGISH = os.environ.get(VGGISH_ENV, "")


@pytest.mark.parametrize("weights", ["random-small", "released"])
def test_vggish_embedding_is_the_pre_activation_output_of_the_last_layer(weights, tmp_path):
    if weights == "released":
        if not Path(REAL_VGGISH).is_file():
            pytest.skip(f"${VGGISH_ENV} does not point to {VGGISH_WEIGHTS_FILE}")
        path = Path(REAL_VGGISH)
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    else:
        state = small_vggish_state()
        path = tmp_path / VGGISH_WEIGHTS_FILE
        torch.save(state, str(path))
    waves = tones(3)
    with torch.no_grad():
        examples, _ = VGGishFrontend()(torch.from_numpy(waves))
    expected = vggish_by_hand(state, examples)
    got = build_audio_embedder(str(path), device="cpu").embed(waves)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    # Pre-activation: negative values survive (a ReLU would have zeroed them) ...
    assert (got < -1e-3 * np.abs(got).max()).mean() > 0.1
    # ... and the post-ReLU variant, asked for by name, is exactly that ReLU of it, under another identity.
    relu = build_audio_embedder(f"vggish-relu:{path}", device="cpu")
    np.testing.assert_allclose(
        relu.embed(waves), np.maximum(expected, 0.0), rtol=1e-4, atol=1e-5 * np.abs(expected).max()
    )
    pre = build_audio_embedder(f"vggish:{path}", device="cpu")
    assert pre.identity.startswith("vggish/sha256:") and relu.identity.startswith("vggish-relu/sha256:")
    assert pre.version != relu.version and pre.metric_name == "fad" and not pre.random


def test_vggish_weights_load_from_safetensors_and_torch_files(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    small = VGGish(VGGishConfig(channels=(4, 8, 8, 16), fc_dims=(32, 24), embed_dim=12)).eval()
    state = {k: v.contiguous() for k, v in small.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({**state, "pproc._pca_means": torch.zeros(12)}, str(tmp_path / "w.pt"))
    waves = tones(3)
    with torch.no_grad():
        examples, _ = VGGishFrontend()(torch.from_numpy(waves))
        expected = small(examples).double().numpy()
    for name in ("w.safetensors", "w.pt"):
        embedder = build_audio_embedder(str(tmp_path / name), device="cpu")
        assert embedder.identity.startswith("vggish/sha256:")
        np.testing.assert_allclose(embedder.embed(waves), expected, rtol=1e-6)
    monkeypatch.setenv(VGGISH_ENV, str(tmp_path / "w.safetensors"))
    np.testing.assert_allclose(build_audio_embedder("vggish", device="cpu").embed(waves), expected, rtol=1e-6)
    save_file({"features.0.weight": torch.zeros(3, 1, 3, 3)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="not a VGGish state dict"):
        build_audio_embedder(str(tmp_path / "bad.safetensors"))


def test_missing_vggish_weights_say_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.setenv(VGGISH_ENV, str(tmp_path / "absent.safetensors"))
    with pytest.raises(BackboneWeightsError, match=f"no file at .*absent.safetensors.*{VGGISH_ENV}") as info:
        build_audio_embedder("vggish")
    assert VGGISH_WEIGHTS_URL in str(info.value) and "fad_melclf" in str(info.value)
    assert VGGISH_WEIGHTS_URL.endswith("/vggish-10086976.pth")
    with pytest.raises(BackboneWeightsError, match="--fad-backbone"):
        build_audio_embedder(f"vggish:{tmp_path / 'nope.pt'}")
    with pytest.raises(ValueError, match="unknown FAD backbone"):
        build_audio_embedder("no-such-backbone")


def test_any_backbone_plugs_in_through_the_interface():
    class MeanEnergy:
        identity = "mean-energy/v1"
        sample_rate = 16_000

        def embed(self, waves):
            w = np.asarray(waves, dtype=np.float64)
            return np.stack([w.mean(axis=1), (w**2).mean(axis=1)], axis=1)

    register_audio_embedder("mean-energy", lambda device=None: MeanEnergy())
    embedder = build_audio_embedder("mean-energy")
    assert isinstance(embedder, AudioEmbedder) and embedder.identity == "mean-energy/v1"
    register_audio_embedder("broken", lambda device=None: object())
    with pytest.raises(TypeError, match="lacks identity"):
        build_audio_embedder("broken")
