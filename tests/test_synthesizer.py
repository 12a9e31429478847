"""The synthesizer end to end on tiny models: seeded, batched, bundle round trip, errors that name the fix."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from clipsynth_core import (
    ClipConfig,
    ClipQueryEncoder,
    ClipRetriever,
    ClipWeightsError,
    DiffusionConfig,
    SamplingDefaults,
    Synthesizer,
    SynthesizerConfig,
    frames_for_seconds,
)


def tiny_config(**diffusion) -> SynthesizerConfig:
    return SynthesizerConfig.tiny(
        diffusion=DiffusionConfig(num_steps=100, **diffusion), sampling=SamplingDefaults(steps=4)
    )


@pytest.fixture(scope="module")
def synth():
    return Synthesizer.untrained(tiny_config(), weight_noise=0.02)


def test_tiny_config_and_untrained_weights_are_seeded():
    config = SynthesizerConfig.tiny(metadata={"variant": "image"})
    assert (config.clip.model_name, config.clip.is_random, config.unet.cond_dim) == ("tiny", True, 64)
    assert (config.diffusion.num_steps, config.sampling.steps, config.metadata) == (100, 10, {"variant": "image"})
    a, b = (Synthesizer.untrained(config, seed=3).unet.state_dict() for _ in range(2))
    c = Synthesizer.untrained(config, seed=4).unet.state_dict()
    torch.manual_seed(3)
    fresh = Synthesizer(config).unet.state_dict()  # the same initialisation, before the noise
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    # Every weight moved by about weight_noise (0.05), the zero-initialised output convolutions included.
    floats = [k for k in a if a[k].is_floating_point()]
    delta = torch.cat([(a[k] - fresh[k]).flatten() for k in floats])
    assert 0.045 < float(delta.std()) < 0.055
    zero_at_init = [k for k in floats if k != "null_cond" and float(fresh[k].abs().max()) == 0]
    assert zero_at_init and all(float(a[k].abs().max()) > 0 for k in zero_at_init)


@pytest.mark.slow  # 14 s on 2 shared cores: out of make test-fast
def test_synthesize_shapes_and_durations(synth):
    wave = synth.synthesize(["violin", "cello"], steps=2, seed=0)
    # A mel of T frames describes (T - 1) * hop + n_fft samples: 66,560 for the paper's 4.16 s.
    assert wave.shape == (2, 66_560) and wave.dtype == torch.float32
    assert frames_for_seconds(4.16) == 64 and frames_for_seconds(8.32) == 128
    long = synth.synthesize(["violin"], steps=2, seed=0, seconds=8.32)
    assert long.shape == (1, 127 * 1024 + 2048)
    assert torch.isfinite(wave).all() and wave.abs().max() <= 1


# 1.04 s = 16 mel frames: a quarter of the U-Net work of the paper's 4.16 s, and enough for what the seed and
# guidance tests check (the shapes of full-length clips are checked above).
SHORT_S = 1.04


@pytest.mark.slow  # 35 s on 2 shared cores: out of make test-fast
def test_seeded_and_independent_of_batch_mates(synth):
    a = synth.synthesize(["violin", "cello"], steps=4, seed=[11, 12], seconds=SHORT_S)
    b = synth.synthesize(["violin", "cello"], steps=4, seed=[11, 12], seconds=SHORT_S)
    assert a.shape == (2, 15 * 1024 + 2048) and torch.equal(a, b)
    alone = synth.synthesize(["cello"], steps=4, seed=[12], seconds=SHORT_S)
    torch.testing.assert_close(alone[0], a[1], atol=1e-5, rtol=0)
    other = synth.synthesize(["violin", "cello"], steps=4, seed=[11, 13], seconds=SHORT_S)
    assert not torch.allclose(other[1], a[1])


@pytest.mark.slow  # 8 s on 2 shared cores: out of make test-fast
def test_a_compiled_sampler_gives_the_eager_samples(synth):
    """compile_unet (what serving.load_mel_sampler's compile_unet turns on) samples through torch.compile's
    module, which shares the U-Net's weights: the same mels (the eager backend: no kernel build in a test)."""
    cond = synth.encode(["a violin", "a dog"])
    eager = synth.sample_mels(cond, steps=2, seed=[1, 2])
    try:
        synth.compile_unet(backend="eager")
        assert synth.denoiser is not synth.unet
        torch.testing.assert_close(synth.sample_mels(cond, steps=2, seed=[1, 2]), eager)
    finally:
        synth.denoiser = synth.unet


def test_text_and_image_queries_use_one_space(synth):
    imgs = np.random.default_rng(0).integers(0, 255, (2, 40, 50, 3), dtype=np.uint8)
    cond = synth.encode(imgs)
    assert cond.shape == (2, 64)
    torch.testing.assert_close(cond.norm(dim=-1), torch.ones(2))
    assert synth.synthesize(imgs, steps=2, seed=1, sampler="ddim").shape == (2, 66_560)


@pytest.mark.slow  # 6 s on 2 shared cores: out of make test-fast
def test_bundle_round_trip_is_exact(synth, tmp_path):
    synth.config.metadata["variant"] = "image"
    path = synth.save(tmp_path / "bundle")
    assert sorted(p.name for p in path.iterdir()) == [
        "bundle.json",
        "clip.safetensors",
        "unet.safetensors",
        "vocoder.safetensors",
    ]
    meta = json.loads((path / "bundle.json").read_text())
    assert meta["format"] == "clipsynth-bundle/1" and meta["metadata"]["variant"] == "image"
    loaded = Synthesizer.load(path)
    a = synth.synthesize(["flute"], steps=4, seed=5, seconds=SHORT_S)
    b = loaded.synthesize(["flute"], steps=4, seed=5, seconds=SHORT_S)
    assert torch.equal(a, b)
    assert loaded.identity["variant"] == "image"
    for f in path.glob("*.safetensors"):  # weights are safetensors (a JSON header), never a pickle or torch zip
        data = f.read_bytes()
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        assert header and all("dtype" in v for k, v in header.items() if k != "__metadata__")
        assert not data.startswith(b"PK")


def test_bundle_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"bundle\.json"):
        Synthesizer.load(tmp_path)
    (tmp_path / "bundle.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="format"):
        Synthesizer.load(tmp_path)


@pytest.mark.slow  # 10 s on 2 shared cores: out of make test-fast
def test_guidance_needs_condition_dropout(synth):
    with pytest.raises(ValueError, match="cond_drop_prob"):
        synth.synthesize(["x"], steps=2, seed=0, guidance=3.0)
    guided = Synthesizer(tiny_config(cond_drop_prob=0.1), encoder=synth.encoder, unet=synth.unet)
    w0 = guided.synthesize(["x", "y"], steps=3, seed=[1, 2], guidance=[0.0, 0.0], seconds=SHORT_S)
    w3 = guided.synthesize(["x", "y"], steps=3, seed=[1, 2], guidance=[0.0, 3.0], seconds=SHORT_S)
    torch.testing.assert_close(w3[0], w0[0], atol=1e-5, rtol=0)  # per-example scales share a batch
    assert not torch.allclose(w3[1], w0[1])


def test_missing_clip_weights_name_the_fix(tmp_path, caplog):
    cfg = ClipConfig(model_name="ViT-B-32", pretrained="openai", cache_dir=str(tmp_path), allow_download=False)
    with caplog.at_level(logging.DEBUG), pytest.raises(ClipWeightsError) as err:
        ClipQueryEncoder(cfg)
    # open_clip's own "Failed to download weights" line is kept, at DEBUG: the error above already says it
    failed = [r for r in caplog.records if r.getMessage().startswith("Failed to download weights")]
    assert failed and all(r.levelno == logging.DEBUG for r in failed)
    msg = str(err.value)
    assert "--clip-pretrained /path/to" in msg and "--clip-pretrained none" in msg and "open_clip" in msg
    with pytest.raises(ClipWeightsError, match="no file at"):
        ClipQueryEncoder(ClipConfig(model_name="ViT-B-32", pretrained=str(tmp_path / "missing" / "w.bin")))


def test_clip_encoder_contract(tiny_clip):
    a = tiny_clip.encode_text(["violin", "cello"])
    b = tiny_clip.encode_text(["a photo of violin", "a photo of cello"], template="{query}")
    torch.testing.assert_close(a, b)
    assert a.shape == (2, 64)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(2))
    assert not any(p.requires_grad for p in tiny_clip.parameters())
    again = ClipQueryEncoder(ClipConfig(model_name="tiny", pretrained="none"))
    torch.testing.assert_close(again.encode_text(["violin"]), a[:1])  # seeded random init, same everywhere
    with pytest.raises(TypeError, match="list of strings"):
        tiny_clip.encode_text("violin")
    img = np.zeros((1, 30, 30, 3), dtype=np.uint8)
    x = tiny_clip.preprocess(img)
    assert x.shape == (1, 3, 32, 32)


def test_retriever_returns_the_nearest_clip_audio(tiny_clip):
    labels = ["violin", "cello", "flute"]
    index = tiny_clip.encode_text(labels)  # stand-ins for image embeddings of three clips
    audio = torch.stack([torch.full((100,), float(i)) for i in range(3)])
    r = ClipRetriever(tiny_clip, index, audio)
    assert r.retrieve(["cello", "flute", "violin"]).tolist() == [1, 2, 0]
    out = r.synthesize(["flute"])
    assert torch.equal(out, audio[2:3])
    with pytest.raises(ValueError, match="same M"):
        ClipRetriever(tiny_clip, index, audio[:2])
