"""bf16 sampling (clipsynth_core.precision): the U-Net's passes run in bfloat16 under autocast, the sampler sees
float32, and the samples stay close to fp32's. CPU autocast supports bfloat16, so this runs without a GPU."""

from __future__ import annotations

import pytest
import torch

from clipsynth_core import ConditionalUNet, unet_config
from clipsynth_core.diffusion import DiffusionConfig
from clipsynth_core.precision import AutocastDenoiser, resolve_precision
from clipsynth_core.synthesizer import SamplingDefaults, Synthesizer, SynthesizerConfig


def test_auto_is_bf16_on_cuda_and_fp32_elsewhere():
    assert resolve_precision("auto", torch.device("cuda", 0)) == "bf16"
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("fp32", torch.device("cuda")) == "fp32"
    with pytest.raises(ValueError, match="precision must be auto or one of"):
        resolve_precision("fp16", torch.device("cpu"))


def test_the_denoiser_runs_its_convolutions_in_bf16_and_returns_float32():
    torch.manual_seed(0)
    unet = ConditionalUNet(unet_config("tiny", cond_dim=16)).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))  # zero-initialised output layers would hide any difference
    seen: list[torch.dtype] = []
    convs = [m for m in unet.modules() if isinstance(m, torch.nn.Conv2d)]
    hooks = [c.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype)) for c in convs]
    x, t = torch.randn(2, 1, 64, 64), torch.tensor([10, 900])
    cond = torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
    with torch.no_grad():
        reference = unet(x, t, cond, None)
        seen.clear()
        out = AutocastDenoiser(unet, "cpu")(x, t, cond, None)
    for h in hooks:
        h.remove()
    assert len(seen) == len(convs) and set(seen) == {torch.bfloat16}
    assert out.dtype == torch.float32 and out.shape == reference.shape
    # bfloat16 keeps 8 bits of mantissa: a relative error of a few parts in a hundred over the whole output
    relative = (out - reference).norm() / reference.norm()
    assert 0 < relative < 0.05


@pytest.mark.slow  # 9 s on 2 shared cores: out of make test-fast
def test_bf16_samples_stay_close_to_fp32_samples_of_the_same_seeds():
    config = SynthesizerConfig.tiny(diffusion=DiffusionConfig(num_steps=100), sampling=SamplingDefaults(steps=4))
    synth = Synthesizer.untrained(config, weight_noise=0.02)
    cond = torch.nn.functional.normalize(torch.randn(3, config.unet.cond_dim), dim=-1)
    fp32 = synth.sample_in("fp32").sample_mels(cond, seed=7)
    assert synth.denoiser is synth.unet
    bf16 = synth.sample_in("bf16").sample_mels(cond, seed=7)
    assert isinstance(synth.denoiser, AutocastDenoiser)
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    # same noise, same schedule: the two differ only by the U-Net's rounding, far less than the mels' spread
    assert 0 < (bf16 - fp32).abs().mean() < 0.05 * fp32.std()
    synth.sample_in("auto")  # on a CPU: back to fp32
    assert synth.denoiser is synth.unet
