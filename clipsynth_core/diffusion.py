"""Gaussian diffusion after Nichol & Dhariwal (2021), "Improved denoising diffusion probabilistic models".

What the paper uses and this module implements:
- the cosine noise schedule (`cosine_betas`), 4,000 training steps;
- a model that predicts the noise eps and, in a second set of channels, a value v in [-1, 1] that
  interpolates the log-variance between the posterior variance beta~_t and beta_t (learned range);
- the hybrid loss L_simple + lambda * L_vlb, where L_vlb sees the predicted mean through a stop-gradient,
  so the mean is trained by L_simple only and the variance by L_vlb only;
- timestep respacing (`GaussianDiffusion.respaced`) that keeps alphas_cumprod exactly at the kept steps;
- ancestral (DDPM) and DDIM sampling, seeded and batched, with optional classifier-free guidance.

The schedule arithmetic runs in float64 (numpy-free torch), as the cumulative products lose precision in
float32 at 4,000 steps; results are cast to the model's dtype when used. The tables are computed once, on the
CPU, and copied to a device once (`GaussianDiffusion.to`, or at their first use there): a step on a GPU gathers
from tables already on it, and neither the training step nor the sampler copies anything from the host.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from .noise import seeded_normal

ModelFn = Callable[[Tensor, Tensor], Tensor]


def cosine_alpha_bar(t: Tensor | float, s: float = 0.008) -> Tensor:
    """alpha_bar(t) for t in [0, 1]: cos^2(((t + s) / (1 + s)) * pi / 2)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2


def cosine_betas(num_steps: int, max_beta: float = 0.999, s: float = 0.008) -> Tensor:
    """beta_i = min(1 - alpha_bar((i+1)/T) / alpha_bar(i/T), max_beta), i = 0..T-1 (float64)."""
    if num_steps < 1:
        raise ValueError("num_steps must be >= 1")
    i = torch.arange(num_steps, dtype=torch.float64)
    betas = 1 - cosine_alpha_bar((i + 1) / num_steps, s) / cosine_alpha_bar(i / num_steps, s)
    return torch.clamp(betas, max=max_beta)


def linear_betas(num_steps: int) -> Tensor:
    """Ho et al.'s linear schedule, scaled so that any step count spans the same noise range."""
    scale = 1000 / num_steps
    return torch.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=torch.float64)


def space_timesteps(num_steps: int, count: int | str) -> list[int]:
    """Which of `num_steps` steps to keep for `count` sampling steps, evenly spaced, always keeping 0 and T-1.

    `count` may be an int or "ddimN" (strided as in DDIM, start at 0) for compatibility with common CLIs.
    """
    if isinstance(count, str):
        if count.startswith("ddim"):
            n = int(count[4:])
            stride = max(num_steps // n, 1)
            return sorted(set(range(0, num_steps, stride)))[:n]
        count = int(count)
    if not 1 <= count <= num_steps:
        raise ValueError(f"cannot respace {num_steps} steps to {count}; choose 1..{num_steps}")
    if count == 1:
        return [num_steps - 1]
    # round() of an even grid over [0, T-1]: deterministic and includes both ends.
    return sorted({round(i * (num_steps - 1) / (count - 1)) for i in range(count)})


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_standard_normal_cdf(x: Tensor) -> Tensor:
    # The tanh approximation used by improved-diffusion; keeps the decoder NLL smooth and cheap.
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(
    x: Tensor, means: Tensor, log_scales: Tensor, bin_width: float = 2.0 / 255.0
) -> Tensor:
    """log p(x) of data x in [-1, 1] under a Gaussian discretised into bins of `bin_width`.

    The edge bins extend to -inf / +inf. `bin_width` is 2/255 for 8-bit images; mels are continuous, and the
    same discretisation gives the paper's decoder term L_0 on the same scale as improved-diffusion.
    """
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    half = bin_width / 2
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + half))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - half))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))),
    )


def mean_flat(x: Tensor) -> Tensor:
    return x.mean(dim=tuple(range(1, x.dim())))


@dataclass(frozen=True)
class DiffusionConfig:
    """Paper defaults: 4,000 cosine steps, learned-range variance, hybrid loss."""

    num_steps: int = 4000
    schedule: str = "cosine"  # "cosine" | "linear"
    learn_sigma: bool = True
    # lambda in L_simple + lambda * L_vlb. improved-diffusion uses lambda = 0.001 on L_vlb summed over the
    # T steps, i.e. weight T/1000 on the single-step term it samples; `None` selects exactly that.
    vlb_weight: float | None = None
    clip_denoised: bool = True
    # Probability of replacing the condition with the null condition in training (classifier-free
    # guidance). 0 = off, as in the paper.
    cond_drop_prob: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def resolved_vlb_weight(self) -> float:
        return self.num_steps / 1000.0 if self.vlb_weight is None else float(self.vlb_weight)


class GaussianDiffusion:
    """Schedules, losses and samplers; holds no learnable parameters (the model is passed in).

    `timestep_map` maps this (possibly respaced) process's step index to the step index the model was
    trained with, so a model trained with 4,000 steps is always called with its own timesteps.
    """

    def __init__(
        self,
        betas: Tensor,
        learn_sigma: bool = True,
        vlb_weight: float = 4.0,
        clip_denoised: bool = True,
        timestep_map: Sequence[int] | None = None,
        base_num_steps: int | None = None,
        alphas_cumprod: Tensor | None = None,
    ) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.dim() != 1 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must be a 1-D tensor in (0, 1]")
        self.betas = betas
        self.num_timesteps = int(betas.shape[0])
        self.learn_sigma = learn_sigma
        self.vlb_weight = vlb_weight
        self.clip_denoised = clip_denoised
        self.timestep_map = torch.as_tensor(
            list(timestep_map) if timestep_map is not None else list(range(self.num_timesteps)),
            dtype=torch.long,
        )
        self.base_num_steps = base_num_steps or self.num_timesteps

        alphas = 1.0 - betas
        # A respaced process passes its alphas_cumprod: the kept values exactly, not a re-multiplied product.
        self.alphas_cumprod = (
            torch.cumprod(alphas, dim=0)
            if alphas_cumprod is None
            else torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        )
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1).sqrt()
        # q(x_{t-1} | x_t, x_0)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The posterior variance is 0 at t = 0; its log is clipped to the value at t = 1.
        if self.num_timesteps > 1:
            first = self.posterior_variance[1:2]
        else:
            first = betas[:1]
        self.posterior_log_variance_clipped = torch.log(torch.cat([first, self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * alphas.sqrt() / (1.0 - self.alphas_cumprod)
        self.log_betas = torch.log(betas)
        # Ho et al.'s fixed large variance, with beta~_1 at t = 0 (the model without learned variance)
        self.fixed_log_variance = torch.log(torch.cat([self.posterior_variance[1:2], betas[1:]]))
        self.log_one_minus_alphas_cumprod = torch.log(1.0 - self.alphas_cumprod)
        # Every table above, copied to a device once and gathered from there (see `to` and `_extract`).
        self._on_device: dict[torch.device, dict[str, Tensor]] = {}

    _TABLES = (
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
        "log_betas",
        "fixed_log_variance",
        "log_one_minus_alphas_cumprod",
        "timestep_map",
    )

    def to(self, device: torch.device | str) -> GaussianDiffusion:
        """Copy every schedule table to `device` now (once), so that no step there copies one; returns self."""
        self._tables(torch.device(device))
        return self

    def _tables(self, device: torch.device) -> dict[str, Tensor]:
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device not in self._on_device:
            self._on_device[device] = {name: getattr(self, name).to(device) for name in self._TABLES}
        return self._on_device[device]

    def _extract(self, name: str, t: Tensor, shape: Sequence[int], dtype: torch.dtype) -> Tensor:
        """table[t] in `dtype`, reshaped to broadcast against a batch of `shape`; gathered on t's device."""
        out = self._tables(t.device)[name][t].to(dtype)
        return out.reshape(-1, *([1] * (len(shape) - 1)))

    # ----------------------------------------------------------------------------------------- building
    @classmethod
    def from_config(cls, config: DiffusionConfig) -> GaussianDiffusion:
        if config.schedule == "cosine":
            betas = cosine_betas(config.num_steps)
        elif config.schedule == "linear":
            betas = linear_betas(config.num_steps)
        else:
            raise ValueError(f"unknown schedule {config.schedule!r}; use 'cosine' or 'linear'")
        return cls(
            betas,
            learn_sigma=config.learn_sigma,
            vlb_weight=config.resolved_vlb_weight(),
            clip_denoised=config.clip_denoised,
        )

    def respaced(self, steps: int | str | Sequence[int]) -> GaussianDiffusion:
        """A process over a subset of this one's steps, with the same alphas_cumprod at the kept steps."""
        if isinstance(steps, (int, str)):
            keep = space_timesteps(self.num_timesteps, steps)
        else:
            keep = sorted(set(int(s) for s in steps))
            if not keep or keep[0] < 0 or keep[-1] >= self.num_timesteps:
                raise ValueError(f"kept steps must lie in 0..{self.num_timesteps - 1}")
        new_betas = []
        last = 1.0
        for i in keep:
            ac = float(self.alphas_cumprod[i])
            new_betas.append(1.0 - ac / last)
            last = ac
        return GaussianDiffusion(
            torch.tensor(new_betas, dtype=torch.float64),
            learn_sigma=self.learn_sigma,
            vlb_weight=self.vlb_weight,
            clip_denoised=self.clip_denoised,
            timestep_map=[int(self.timestep_map[i]) for i in keep],
            base_num_steps=self.base_num_steps,
            alphas_cumprod=self.alphas_cumprod[keep].clone(),
        )

    # ------------------------------------------------------------------------------------- the process
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)."""
        noise = torch.randn_like(x0) if noise is None else noise
        return (
            self._extract("sqrt_alphas_cumprod", t, x0.shape, x0.dtype) * x0
            + self._extract("sqrt_one_minus_alphas_cumprod", t, x0.shape, x0.dtype) * noise
        )

    def q_posterior(self, x0: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = (
            self._extract("posterior_mean_coef1", t, xt.shape, xt.dtype) * x0
            + self._extract("posterior_mean_coef2", t, xt.shape, xt.dtype) * xt
        )
        var = self._extract("posterior_variance", t, xt.shape, xt.dtype)
        logvar = self._extract("posterior_log_variance_clipped", t, xt.shape, xt.dtype)
        return mean, var, logvar

    def predict_x0_from_eps(self, xt: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return (
            self._extract("sqrt_recip_alphas_cumprod", t, xt.shape, xt.dtype) * xt
            - self._extract("sqrt_recipm1_alphas_cumprod", t, xt.shape, xt.dtype) * eps
        )

    def predict_eps_from_x0(self, xt: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        recip = self._extract("sqrt_recip_alphas_cumprod", t, xt.shape, xt.dtype)
        return (recip * xt - x0) / self._extract("sqrt_recipm1_alphas_cumprod", t, xt.shape, xt.dtype)

    def model_timesteps(self, t: Tensor) -> Tensor:
        """The training-time step indices the model expects for this process's steps t."""
        return self._tables(t.device)["timestep_map"][t]

    def split_model_output(self, out: Tensor, x: Tensor) -> tuple[Tensor, Tensor | None]:
        c = x.shape[1]
        if self.learn_sigma:
            if out.shape[1] != 2 * c:
                raise ValueError(f"learn_sigma needs {2 * c} output channels, the model gave {out.shape[1]}")
            return out[:, :c], out[:, c:]
        return out, None

    def p_mean_variance_from_output(
        self, out: Tensor, xt: Tensor, t: Tensor, clip_denoised: bool | None = None
    ) -> dict[str, Tensor]:
        """Mean and log-variance of p(x_{t-1} | x_t) from a raw model output (eps, v)."""
        out = out.to(xt.dtype)
        eps, v = self.split_model_output(out, xt)
        if v is not None:
            # Learned range: log sigma^2 = frac * log beta_t + (1 - frac) * log beta~_t, frac = (v + 1) / 2.
            min_log = self._extract("posterior_log_variance_clipped", t, xt.shape, xt.dtype)
            max_log = self._extract("log_betas", t, xt.shape, xt.dtype)
            frac = (v + 1) / 2
            logvar = frac * max_log + (1 - frac) * min_log
        else:
            logvar = self._extract("fixed_log_variance", t, xt.shape, xt.dtype)
        x0 = self.predict_x0_from_eps(xt, t, eps)
        clip = self.clip_denoised if clip_denoised is None else clip_denoised
        if clip:
            x0 = x0.clamp(-1, 1)
        mean, _, _ = self.q_posterior(x0, xt, t)
        return {"mean": mean, "logvar": logvar, "pred_x0": x0, "eps": eps}

    # ------------------------------------------------------------------------------------------ losses
    def vlb_terms(self, x0: Tensor, xt: Tensor, t: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
        """Per-example L_t in bits per dimension: KL for t > 0, decoder NLL for t = 0."""
        true_mean, _, true_logvar = self.q_posterior(x0, xt, t)
        kl = mean_flat(normal_kl(true_mean, true_logvar, mean, logvar)) / math.log(2.0)
        nll = -mean_flat(discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar)) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(self, model: ModelFn, x0: Tensor, t: Tensor, noise: Tensor | None = None) -> dict[str, Tensor]:
        """Hybrid loss per example: {"loss", "mse", "vb"}.

        `model(x_t, model_timesteps)` returns eps (and v when learn_sigma). The vb term sees the mean
        through a stop-gradient: only the variance channels get gradient from it.
        """
        noise = torch.randn_like(x0) if noise is None else noise
        xt = self.q_sample(x0, t, noise)
        out = model(xt, self.model_timesteps(t))
        out = out.to(x0.dtype)
        eps, v = self.split_model_output(out, xt)
        terms: dict[str, Tensor] = {"mse": mean_flat((noise - eps) ** 2)}
        if v is not None:
            frozen = torch.cat([eps.detach(), v], dim=1)
            pm = self.p_mean_variance_from_output(frozen, xt, t, clip_denoised=False)
            terms["vb"] = self.vlb_terms(x0, xt, t, pm["mean"], pm["logvar"]) * self.vlb_weight
            terms["loss"] = terms["mse"] + terms["vb"]
        else:
            terms["vb"] = torch.zeros_like(terms["mse"])
            terms["loss"] = terms["mse"]
        return terms

    def sample_timesteps(self, batch: int, device: torch.device | str, generator: torch.Generator | None = None):
        """Uniform t in 0..T-1 (the paper's sampler)."""
        return torch.randint(0, self.num_timesteps, (batch,), device=device, generator=generator)

    @torch.no_grad()
    def calc_bpd(self, model: ModelFn, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The full variational bound in bits/dim per example (sum over all T terms plus the prior term)."""
        total = torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device)
        for i in reversed(range(self.num_timesteps)):
            t = torch.full((x0.shape[0],), i, device=x0.device, dtype=torch.long)
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            xt = self.q_sample(x0, t, noise)
            pm = self.p_mean_variance_from_output(model(xt, self.model_timesteps(t)), xt, t)
            total += self.vlb_terms(x0, xt, t, pm["mean"], pm["logvar"]).double()
        tT = torch.full((x0.shape[0],), self.num_timesteps - 1, device=x0.device, dtype=torch.long)
        qm = self._extract("sqrt_alphas_cumprod", tT, x0.shape, x0.dtype) * x0
        qlv = self._extract("log_one_minus_alphas_cumprod", tT, x0.shape, x0.dtype)
        prior = mean_flat(normal_kl(qm, qlv, torch.zeros_like(qm), torch.zeros_like(qlv))) / math.log(2.0)
        return total + prior.double()

    # ----------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(
        self,
        model: ModelFn,
        shape: Sequence[int],
        sampler: str = "ddpm",
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        eta: float = 0.0,
        noise: Tensor | None = None,
        seeds: Tensor | None = None,
    ) -> Tensor:
        """x_T (given, or drawn) -> x_0 through every step of this process, by ancestral sampling ("ddpm", the
        paper's) or DDIM (Song et al., 2021; eta = 0 is deterministic given x_T).

        The noise: with `seeds` (per-example keys from `clipsynth_core.noise.example_keys`, on the device), example
        i's draws depend on its own key only, and are the same on every device (`seeded_normal`: x_T is draw 0,
        step i's noise draw i + 1); otherwise one stream for the batch from `generator` (on the device).
        Nothing is copied from the host and nothing read back within the loop.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; use one of {SAMPLERS}")
        if seeds is not None and seeds.shape != (shape[0],):
            raise ValueError(f"{tuple(seeds.shape)} seeds for a batch of {shape[0]}")
        device = torch.device(device) if seeds is None else seeds.device

        def draw(counter: int, like: Sequence[int], dtype: torch.dtype) -> Tensor:
            if seeds is not None:
                return seeded_normal(seeds, counter, tuple(like[1:]), dtype)
            return torch.randn(tuple(like), generator=generator, device=device, dtype=dtype)

        x = noise if noise is not None else draw(0, shape, torch.float32)
        n = x.shape[0]
        for i in reversed(range(self.num_timesteps)):
            t = torch.full((n,), i, device=x.device, dtype=torch.long)
            pm = self.p_mean_variance_from_output(model(x, self.model_timesteps(t)), x, t)
            if sampler == "ddpm":
                # x_{t-1} ~ N(mean, exp(logvar)); the mean itself at the last step
                x = pm["mean"] if i == 0 else pm["mean"] + torch.exp(0.5 * pm["logvar"]) * draw(i + 1, x.shape, x.dtype)
            else:
                x = self._ddim_step(x, t, pm, eta, draw(i + 1, x.shape, x.dtype) if i > 0 and eta > 0 else None)
        return x

    def _ddim_step(self, x: Tensor, t: Tensor, pm: dict[str, Tensor], eta: float, noise: Tensor | None) -> Tensor:
        """DDIM's x_{t-1} from the predicted x_0 and the eps it implies; noise of scale sigma(eta) when given."""
        eps = self.predict_eps_from_x0(x, t, pm["pred_x0"])
        abar = self._extract("alphas_cumprod", t, x.shape, x.dtype)
        abar_prev = self._extract("alphas_cumprod_prev", t, x.shape, x.dtype)
        sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
        mean = pm["pred_x0"] * abar_prev.sqrt() + torch.sqrt((1 - abar_prev - sigma**2).clamp(min=0)) * eps
        return mean if noise is None else mean + sigma * noise


# The samplers `GaussianDiffusion.sample` runs: ancestral (the paper's) and DDIM.
SAMPLERS = ("ddpm", "ddim")


def guided_model(
    model: Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor],
    cond: Tensor,
    guidance: float | Sequence[float] | Tensor = 0.0,
    learn_sigma: bool = True,
) -> ModelFn:
    """Wrap a conditional model `model(x, t, cond, drop_mask)` as `fn(x, t)` with classifier-free guidance.

    eps = eps_uncond + (1 + w) * (eps_cond - eps_uncond); w = 0 is the plain conditional model (one forward
    pass). `guidance` may be per example, so requests with different scales share a batch. The variance
    channels come from the conditional pass. Whether to guide is decided on the host, from `guidance` as given;
    the scales, the doubled condition and the drop mask go to cond's device once, so a step copies nothing.
    """
    w = torch.as_tensor(guidance, dtype=torch.float32)
    if w.device.type != "cpu":
        w = w.cpu()  # once per call: the decision below is the host's
    if not bool((w != 0).any()):
        return lambda x, t: model(x, t, cond, None)
    n = cond.shape[0]
    w = (w.expand(n) if w.dim() == 0 else w).to(cond.device)
    both = torch.cat([cond, cond])
    drop = torch.arange(2 * n, device=cond.device) >= n  # the second half gets the null condition

    def fn(x: Tensor, t: Tensor) -> Tensor:
        out = model(torch.cat([x, x]), torch.cat([t, t]), both, drop)
        cond_out, uncond_out = out[:n], out[n:]
        c = x.shape[1]
        ww = w.to(out.dtype).view(-1, *([1] * (x.dim() - 1)))
        eps = uncond_out[:, :c] + (1 + ww) * (cond_out[:, :c] - uncond_out[:, :c])
        if learn_sigma:
            return torch.cat([eps, cond_out[:, c:]], dim=1)
        return eps

    return fn
