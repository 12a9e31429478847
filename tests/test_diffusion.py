"""Gaussian diffusion against closed forms written out independently here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from clipsynth_core import DiffusionConfig, GaussianDiffusion, cosine_betas, space_timesteps
from clipsynth_core.noise import example_keys


def f_cos(t: float, s: float = 0.008) -> float:
    return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2


def test_cosine_schedule_closed_form():
    T = 4000
    betas = cosine_betas(T).numpy()
    assert betas.shape == (T,) and betas.dtype == np.float64
    expected = [min(1 - f_cos((i + 1) / T) / f_cos(i / T), 0.999) for i in range(T)]
    np.testing.assert_allclose(betas, expected, rtol=1e-12, atol=1e-15)
    d = GaussianDiffusion.from_config(DiffusionConfig())
    assert d.num_timesteps == 4000
    # alpha_bar_t = f(t/T) / f(0) wherever the clip at 0.999 did not act (it acts only at the very end).
    abar = d.alphas_cumprod.numpy()
    for i in (0, 1, 100, 1999, 3500, 3990):
        assert abar[i] == pytest.approx(f_cos((i + 1) / T) / f_cos(0), rel=1e-9)
    assert betas.max() == pytest.approx(0.999)


def test_posterior_matches_gaussian_bayes_rule():
    d = GaussianDiffusion(cosine_betas(50))
    rng = np.random.default_rng(0)
    x0 = torch.from_numpy(rng.standard_normal((3, 1, 2, 2)))
    xt = torch.from_numpy(rng.standard_normal((3, 1, 2, 2)))
    t = torch.tensor([1, 17, 49])
    mean, var, logvar = d.q_posterior(x0, xt, t)
    b = cosine_betas(50).numpy()
    abar = np.cumprod(1 - b)
    for k, ti in enumerate(t.tolist()):
        # q(x_{t-1} | x0) = N(sqrt(abar_{t-1}) x0, 1 - abar_{t-1});  q(x_t | x_{t-1}) = N(sqrt(1-b_t) x_{t-1}, b_t)
        ab_prev = abar[ti - 1]
        prec = 1 / (1 - ab_prev) + (1 - b[ti]) / b[ti]
        v = 1 / prec
        m = v * (math.sqrt(ab_prev) * x0[k].numpy() / (1 - ab_prev) + math.sqrt(1 - b[ti]) * xt[k].numpy() / b[ti])
        np.testing.assert_allclose(mean[k].numpy(), m, rtol=1e-9)
        assert float(var[k].flatten()[0]) == pytest.approx(v, rel=1e-9)
        assert float(logvar[k].flatten()[0]) == pytest.approx(math.log(v), rel=1e-9)


def test_learned_range_interpolates_between_posterior_and_beta():
    d = GaussianDiffusion(cosine_betas(100), learn_sigma=True)
    x = torch.zeros(3, 1, 2, 2, dtype=torch.float64)
    t = torch.tensor([5, 5, 5])
    v = torch.tensor([-1.0, 1.0, 0.0], dtype=torch.float64).view(3, 1, 1, 1).expand(3, 1, 2, 2)
    out = torch.cat([torch.zeros_like(x), v], 1)
    lv = d.p_mean_variance_from_output(out, x, t)["logvar"][:, 0, 0, 0]
    lo = math.log(float(d.posterior_variance[5]))
    hi = math.log(float(d.betas[5]))
    assert lv.tolist() == pytest.approx([lo, hi, 0.5 * (lo + hi)], rel=1e-12)


def test_vlb_terms_closed_form():
    d = GaussianDiffusion(cosine_betas(20))
    torch.manual_seed(0)
    x0 = torch.rand(2, 1, 3, 3, dtype=torch.float64) * 1.6 - 0.8
    xt = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    mean = torch.randn(2, 1, 3, 3, dtype=torch.float64) * 0.1
    logvar = torch.full_like(mean, math.log(0.01))
    # t > 0: KL of univariate Gaussians, mean over dimensions, in bits.
    t = torch.tensor([7, 7])
    got = d.vlb_terms(x0, xt, t, mean, logvar)
    tm, _, tlv = d.q_posterior(x0, xt, t)
    q = torch.distributions.Normal(tm, torch.exp(0.5 * tlv))
    p = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    expected = torch.distributions.kl_divergence(q, p).mean(dim=(1, 2, 3)) / math.log(2)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    # t = 0: negative log-likelihood of x0 in a bin of width 2/255 under N(mean, var), in bits.
    # (means within ~2 sd of x0: the tanh approximation of the normal CDF is accurate there)
    t0 = torch.tensor([0, 0])
    mean = x0 + 0.1 * torch.randn_like(x0).clamp(-2, 2)
    got0 = d.vlb_terms(x0, xt, t0, mean, logvar)
    sd = 0.1
    cdf = norm.cdf((x0.numpy() + 1 / 255 - mean.numpy()) / sd) - norm.cdf((x0.numpy() - 1 / 255 - mean.numpy()) / sd)
    expected0 = -np.log(cdf).mean(axis=(1, 2, 3)) / math.log(2)
    np.testing.assert_allclose(got0.numpy(), expected0, rtol=5e-3)


class DirectOutput(torch.nn.Module):
    """A 'model' whose output is a free tensor, so gradients land on eps and v channels separately."""

    def __init__(self, shape):
        super().__init__()
        self.out = torch.nn.Parameter(torch.randn(shape) * 0.1)

    def forward(self, x, t):
        return self.out


def test_gradients_reach_variance_only_through_vlb():
    d = GaussianDiffusion(cosine_betas(100), learn_sigma=True, vlb_weight=0.1)
    x0 = torch.rand(4, 1, 4, 4) * 2 - 1
    t = torch.tensor([0, 3, 50, 99])
    m = DirectOutput((4, 2, 4, 4))
    terms = d.training_losses(m, x0, t, noise=torch.randn_like(x0))
    terms["mse"].sum().backward(retain_graph=True)
    assert m.out.grad[:, 1].abs().max() == 0  # L_simple never touches the variance channel
    assert m.out.grad[:, 0].abs().max() > 0
    m.out.grad = None
    terms["vb"].sum().backward()
    assert m.out.grad[:, 0].abs().max() == 0  # the stop-gradient: L_vlb never moves the mean
    assert m.out.grad[:, 1].abs().max() > 0
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])


def test_default_vlb_weight_is_improved_diffusions_lambda():
    # lambda = 0.001 on L_vlb = sum over T terms  ->  weight T / 1000 on the one sampled term.
    assert GaussianDiffusion.from_config(DiffusionConfig()).vlb_weight == pytest.approx(4.0)
    assert GaussianDiffusion.from_config(DiffusionConfig(vlb_weight=0.5)).vlb_weight == 0.5


@pytest.mark.parametrize("count", [1000, 250, 50, 25, 7])
def test_respacing_keeps_alphas_cumprod_at_kept_steps(count):
    base = GaussianDiffusion.from_config(DiffusionConfig())
    keep = space_timesteps(4000, count)
    assert len(keep) == count and keep[0] == 0 and keep[-1] == 3999
    r = base.respaced(count)
    assert r.num_timesteps == count
    assert r.timestep_map.tolist() == keep
    np.testing.assert_allclose(r.alphas_cumprod.numpy(), base.alphas_cumprod[keep].numpy(), rtol=1e-12)
    assert r.respaced(count).alphas_cumprod.shape == (count,)


def test_respacing_rejects_bad_counts():
    with pytest.raises(ValueError, match="cannot respace"):
        space_timesteps(100, 0)
    with pytest.raises(ValueError, match="cannot respace"):
        space_timesteps(100, 101)


def _oracle(d: GaussianDiffusion, target: torch.Tensor, learn_sigma: bool):
    """The exact eps predictor when all data equal `target` (base-process timesteps)."""
    sab = d.sqrt_alphas_cumprod
    s1m = d.sqrt_one_minus_alphas_cumprod

    def model(x, t_model):
        a = sab[t_model].float().view(-1, 1, 1, 1)
        s = s1m[t_model].float().view(-1, 1, 1, 1)
        eps = (x - a * target) / s
        return torch.cat([eps, torch.zeros_like(eps)], 1) if learn_sigma else eps

    return model


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_recover_a_point_mass(sampler):
    base = GaussianDiffusion.from_config(DiffusionConfig(num_steps=1000))
    target = torch.full((1, 1, 4, 4), 0.3)
    fast = base.respaced(30)
    g = torch.Generator().manual_seed(0)
    x = fast.sample(_oracle(base, target, True), (5, 1, 4, 4), sampler=sampler, generator=g)
    torch.testing.assert_close(x, target.expand(5, 1, 4, 4), atol=2e-3, rtol=0)


def test_sampling_is_seeded_and_batch_independent():
    d = GaussianDiffusion.from_config(DiffusionConfig(num_steps=200)).respaced(10)

    def model(x, t):
        return torch.cat([0.5 * x, torch.zeros_like(x)], 1)

    def keys(seeds):
        return example_keys(seeds)

    a = d.sample(model, (3, 1, 4, 4), seeds=keys([1, 2, 3]))
    b = d.sample(model, (3, 1, 4, 4), seeds=keys([1, 2, 3]))
    assert torch.equal(a, b)
    single = d.sample(model, (1, 1, 4, 4), seeds=keys([2]))
    torch.testing.assert_close(single[0], a[1])
    c = d.sample(model, (3, 1, 4, 4), seeds=keys([1, 2, 4]))
    assert torch.equal(c[:2], a[:2]) and not torch.equal(c[2], a[2])
    with pytest.raises(ValueError, match=r"\(2,\) seeds for a batch of 3"):
        d.sample(model, (3, 1, 4, 4), seeds=keys([1, 2]))


def test_ddim_draws_noise_only_when_eta_is_positive():
    d = GaussianDiffusion.from_config(DiffusionConfig(num_steps=200)).respaced(10)
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))

    def model(x, t):
        return torch.cat([0.5 * x, torch.zeros_like(x)], 1)

    def run(eta, seed):
        return d.sample(model, x_T.shape, "ddim", torch.Generator().manual_seed(seed), eta=eta, noise=x_T)

    # eta = 0: a function of x_T alone; eta = 1: the generator's draws enter every step but the last
    assert torch.equal(run(0.0, 1), run(0.0, 2))
    assert torch.equal(run(1.0, 1), run(1.0, 1)) and not torch.allclose(run(1.0, 1), run(1.0, 2))
    with pytest.raises(ValueError, match=r"unknown sampler 'plms'; use one of \('ddpm', 'ddim'\)"):
        d.sample(model, x_T.shape, "plms")


def test_full_bound_is_finite_and_smaller_for_the_oracle():
    d = GaussianDiffusion.from_config(DiffusionConfig(num_steps=40))
    target = torch.full((1, 1, 4, 4), 0.25)
    x0 = target.expand(2, 1, 4, 4).contiguous()
    g = torch.Generator().manual_seed(0)
    good = d.calc_bpd(_oracle(d, target, True), x0, generator=g)

    def zero(x, t):
        return torch.zeros(x.shape[0], 2, *x.shape[2:])

    bad = d.calc_bpd(zero, x0, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(good).all() and torch.isfinite(bad).all()
    assert (good < bad).all()
