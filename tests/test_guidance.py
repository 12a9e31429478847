"""Classifier-free guidance against hand computations: w = 0 is the unguided sampler, and the guided output is
eps_u + (1 + w) (eps_c - eps_u) with the variance channels of the conditional pass."""

from __future__ import annotations

import pytest
import torch

from clipsynth_core import GaussianDiffusion, Synthesizer, SynthesizerConfig
from clipsynth_core.diffusion import DiffusionConfig, guided_model
from clipsynth_core.noise import example_keys


def test_guided_output_matches_the_formula_per_example():
    def model(x, t, cond, drop):
        # eps 3 for conditioned examples, 1 for dropped ones; the variance channel says which pass it came from
        n = x.shape[0]
        eps = torch.where(drop[:, None, None, None], 1.0, 3.0) if drop is not None else torch.full((n, 1, 1, 1), 3.0)
        var = torch.where(drop[:, None, None, None], -5.0, 5.0) if drop is not None else torch.full((n, 1, 1, 1), 5.0)
        return torch.cat([eps.expand(n, 1, 2, 2), var.expand(n, 1, 2, 2)], dim=1)

    x, t, cond = torch.zeros(3, 1, 2, 2), torch.zeros(3, dtype=torch.long), torch.zeros(3, 4)
    out = guided_model(model, cond, torch.tensor([0.0, 1.0, 2.5]))(x, t)
    expected = torch.tensor([3.0, 1 + 2 * 2, 1 + 3.5 * 2])  # 1 + (1 + w) * (3 - 1)
    torch.testing.assert_close(out[:, 0, 0, 0], expected)
    torch.testing.assert_close(out[:, 1], torch.full((3, 2, 2), 5.0))  # variance of the conditional pass
    plain = guided_model(model, cond, 0.0)(x, t)
    torch.testing.assert_close(plain, model(x, t, cond, None))


@pytest.mark.slow  # 10 s on 2 shared cores: out of make test-fast
def test_guidance_zero_is_the_unguided_sampler_exactly():
    config = SynthesizerConfig.tiny(diffusion=DiffusionConfig(num_steps=100, cond_drop_prob=0.1))
    synth = Synthesizer.untrained(config)
    cond = synth.encode(["a violin", "a dog"])
    got = synth.sample_mels(cond, steps=4, seed=[3, 4], guidance=0.0)
    process = GaussianDiffusion.from_config(config.diffusion).respaced(4)
    shape = (2, 1, config.mel.n_mels, 64)
    with torch.no_grad():
        ref = process.sample(lambda x, t: synth.unet(x, t, cond), shape, seeds=example_keys([3, 4]))
    torch.testing.assert_close(got, ref[:, 0].clamp(-1, 1), atol=0, rtol=0)
    assert not torch.equal(synth.sample_mels(cond, steps=4, seed=[3, 4], guidance=2.0), got)
