"""The clip vocoders: a mel of T frames comes back as the (T - 1) * hop + n_fft samples it was analysed from,
aligned so that the project's mel of that audio has the same frames in the same places."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from clipsynth_core import (
    GriffinLimVocoder,
    HiFiGANGenerator,
    HiFiGANVocoder,
    MelConfig,
    MelFrontend,
    Synthesizer,
    SynthesizerConfig,
    build_vocoder,
    hifigan_config,
)
from clipsynth_core.synthesizer import load_bundle_vocoder, read_bundle_config


def tone(freq: float, seconds: float, sr: int = 16_000) -> torch.Tensor:
    t = np.arange(int(seconds * sr)) / sr
    return torch.from_numpy((0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32))


def test_griffin_lim_returns_the_clip_whose_mel_is_the_input():
    frontend = MelFrontend()
    mel = frontend(tone(330.0, 4.3))[..., :64]
    wave = GriffinLimVocoder(n_iter=32)(mel)
    assert wave.shape == (1, 66_560)  # 4.16 s, exactly the 64 frames' span
    error = (frontend(wave) - mel).abs().mean()
    noise = (frontend(0.1 * torch.randn(1, 66_560)) - mel).abs().mean()
    assert error < 0.08 and error < noise / 4


class FrameValues(nn.Module):
    """A stand-in generator in HiFi-GAN's convention: frame t's first band fills samples [t * hop, (t + 1) * hop)."""

    def __init__(self) -> None:
        super().__init__()
        self.config = hifigan_config("tiny")

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return mel[:, 0, :].repeat_interleave(self.config.hop_length, dim=-1)


def test_hifigan_vocoder_puts_frame_t_where_the_analysis_centres_it():
    c = MelConfig()
    mel = torch.zeros(1, 64, 10)
    mel[0, 0] = torch.arange(10, dtype=torch.float32)
    wave = HiFiGANVocoder(FrameValues(), c)(mel)
    assert wave.shape == (1, c.samples_for_frames(10))
    # The project's mel (no centre padding) centres frame t at t * hop + n_fft / 2.
    centres = torch.arange(10) * c.hop_length + c.n_fft // 2
    assert torch.equal(wave[0, centres], torch.arange(10, dtype=torch.float32))


def test_hifigan_vocoder_and_the_bundle_choice():
    torch.manual_seed(0)
    generator = HiFiGANGenerator(hifigan_config("tiny")).eval()
    mel = torch.rand(2, 64, 64) * 2 - 1
    with torch.no_grad():
        assert HiFiGANVocoder(generator)(mel).shape == (2, 66_560)
    assert isinstance(build_vocoder("griffin-lim"), GriffinLimVocoder)
    with pytest.raises(ValueError, match="unknown vocoder"):
        build_vocoder("wavenet", generator)
    with pytest.raises(ValueError, match="needs its generator"):
        build_vocoder("hifigan")


@pytest.mark.slow  # 7 s on 2 shared cores: out of make test-fast
def test_bundle_records_which_vocoder_serves_and_keeps_the_hifigan(tmp_path):
    config = SynthesizerConfig.tiny()
    config.serving_vocoder = "griffin-lim"
    synth = Synthesizer.untrained(config, seed=3)
    assert isinstance(synth.vocoder, GriffinLimVocoder) and synth.identity["vocoder"] == "griffin-lim"
    synth.save(tmp_path / "b")
    loaded = Synthesizer.load(tmp_path / "b")
    assert read_bundle_config(tmp_path / "b").serving_vocoder == "griffin-lim"
    assert isinstance(load_bundle_vocoder(tmp_path / "b", loaded.config), GriffinLimVocoder)
    # The HiFi-GAN travels in the bundle all the same, weight for weight.
    for k, v in synth.hifigan.state_dict().items():
        assert torch.equal(v, loaded.hifigan.state_dict()[k])
    wave = loaded.synthesize(["violin"], steps=2, seed=0)
    assert wave.shape == (1, 66_560) and wave.abs().max() <= 1
    config.serving_vocoder = "vocos"
    with pytest.raises(ValueError, match="serving_vocoder"):
        config.check()


def test_removing_weight_norm_keeps_the_generators_output():
    torch.manual_seed(4)
    generator = HiFiGANGenerator(hifigan_config("tiny"))
    with torch.no_grad():  # away from the initialisation, where g = ||v|| and the norm would be a no-op
        for p in generator.parameters():
            p.mul_(1.0 + 0.3 * torch.rand_like(p))
    mel = torch.rand(2, 64, 16) * 2 - 1
    with torch.no_grad():
        before = generator(mel)
    assert not generator.weight_norm_removed
    generator.remove_weight_norm()
    assert generator.weight_norm_removed
    keys = generator.state_dict().keys()
    assert not any("parametrizations" in k for k in keys) and "conv_pre.weight" in keys
    with torch.no_grad():
        torch.testing.assert_close(generator(mel), before, rtol=1e-5, atol=1e-6)


def test_switching_a_bundle_to_a_trained_hifigan_serves_it_with_its_weight_norm_folded(tmp_path):
    from clipsynth_platform.train.vocoder import bundle_with_vocoder, save_vocoder

    config = SynthesizerConfig.tiny()
    config.serving_vocoder = "griffin-lim"
    Synthesizer.untrained(config, seed=3).save(tmp_path / "demo")
    torch.manual_seed(7)
    trained = HiFiGANGenerator(hifigan_config("tiny", upsample_initial_channel=16))  # another size than the bundle's
    save_vocoder(tmp_path / "voc", trained, trained.config, step=1234)

    bundle = bundle_with_vocoder(tmp_path / "demo", tmp_path / "hifigan", "hifigan", tmp_path / "voc")
    served_config = read_bundle_config(bundle)
    assert served_config.serving_vocoder == "hifigan" and served_config.vocoder == trained.config
    assert served_config.metadata["vocoder_step"] == 1234
    served = load_bundle_vocoder(bundle, served_config)
    assert isinstance(served, HiFiGANVocoder) and served.generator.weight_norm_removed
    mel = torch.rand(2, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = HiFiGANVocoder(trained.eval())(mel)
        torch.testing.assert_close(served(mel), expected, rtol=1e-5, atol=1e-6)
    # The synthesizer keeps the trainable generator (weight norm intact) and the same audio
    loaded = Synthesizer.load(bundle)
    assert loaded.identity["vocoder"] == "hifigan" and not loaded.hifigan.weight_norm_removed
    with torch.no_grad():
        torch.testing.assert_close(loaded.vocode(mel), expected, rtol=1e-5, atol=1e-6)
    # and back: the same bundle serving Griffin-Lim keeps the trained HiFi-GAN's weights
    back = bundle_with_vocoder(bundle, tmp_path / "gl", "griffin-lim")
    assert isinstance(load_bundle_vocoder(back, read_bundle_config(back)), GriffinLimVocoder)
    assert Synthesizer.load(back).hifigan.config == trained.config
    with pytest.raises(ValueError, match="serving_vocoder"):
        bundle_with_vocoder(bundle, tmp_path / "bad", "wavenet")
    assert not (tmp_path / "bad").exists()  # nothing written for a bad choice
