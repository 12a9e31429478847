"""HiFi-GAN (Kong et al., 2020) for CLIPSynth's mels: 64 bands, hop 1024, 16 kHz.

The generator upsamples mel frames to samples by factors that multiply to the hop (8 * 8 * 4 * 4 = 1024), so
its output has exactly frames x 1024 samples. Discriminators: multi-period (periods 2, 3, 5, 7, 11) and
multi-scale (3 scales). Losses: least-squares adversarial, feature matching, and mel L1 (weight 45) on the
project's one mel function, so the vocoder is trained on exactly the mels the diffusion model generates.
"""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import asdict, dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

from .model_presets import config_from_preset


@dataclass(frozen=True)
class HiFiGANConfig:
    n_mels: int = 64
    upsample_rates: tuple[int, ...] = (8, 8, 4, 4)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 8, 8)
    upsample_initial_channel: int = 512
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    mpd_periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    msd_scales: int = 3
    disc_channels: int = 1024  # width cap of the discriminators (the original uses 1024)
    lambda_mel: float = 45.0
    lambda_fm: float = 2.0

    @property
    def hop_length(self) -> int:
        return math.prod(self.upsample_rates)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> HiFiGANConfig:
        d = dict(d)
        for k in ("upsample_rates", "upsample_kernel_sizes", "resblock_kernel_sizes", "mpd_periods"):
            if k in d:
                d[k] = tuple(d[k])
        if "resblock_dilations" in d:
            d["resblock_dilations"] = tuple(tuple(x) for x in d["resblock_dilations"])
        return cls(**d)


HIFIGAN_PRESETS: dict[str, dict] = {
    "paper": {},  # V1 of the original paper, with upsampling factors for hop 1024
    "small": dict(upsample_initial_channel=128, disc_channels=256),
    "cpu": dict(
        upsample_initial_channel=64,
        resblock_kernel_sizes=(3, 7),
        resblock_dilations=((1, 3), (1, 3)),
        mpd_periods=(2, 3, 5),
        msd_scales=2,
        disc_channels=64,
    ),
    "tiny": dict(
        upsample_initial_channel=32,
        resblock_kernel_sizes=(3,),
        resblock_dilations=((1, 3),),
        mpd_periods=(2, 3),
        msd_scales=2,
        disc_channels=32,
    ),
}


def hifigan_config(preset: str = "paper", **overrides) -> HiFiGANConfig:
    return config_from_preset(HiFiGANConfig, HIFIGAN_PRESETS, preset, "HiFi-GAN", **overrides)


LRELU = 0.1


def _pad(kernel: int, dilation: int = 1) -> int:
    return (kernel * dilation - dilation) // 2


class ResBlock(nn.Module):
    def __init__(self, ch: int, kernel: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            [weight_norm(nn.Conv1d(ch, ch, kernel, dilation=d, padding=_pad(kernel, d))) for d in dilations]
        )
        self.convs2 = nn.ModuleList([weight_norm(nn.Conv1d(ch, ch, kernel, padding=_pad(kernel))) for _ in dilations])

    def forward(self, x: Tensor) -> Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU)), LRELU))
        return x


class HiFiGANGenerator(nn.Module):
    """mel [B, n_mels, T] (normalised, [-1, 1]) -> waveform [B, T * hop] in [-1, 1]."""

    def __init__(self, config: HiFiGANConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or HiFiGANConfig()
        if len(cfg.upsample_rates) != len(cfg.upsample_kernel_sizes):
            raise ValueError("upsample_rates and upsample_kernel_sizes must have the same length")
        ch = cfg.upsample_initial_channel
        self.conv_pre = weight_norm(nn.Conv1d(cfg.n_mels, ch, 7, padding=3))
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            if (k - u) % 2:
                raise ValueError(f"upsample kernel {k} and rate {u} must differ by an even number")
            c_in, c_out = ch // 2**i, ch // 2 ** (i + 1)
            # padding (k - u) / 2 makes each stage's output exactly u times its input.
            self.ups.append(weight_norm(nn.ConvTranspose1d(c_in, c_out, k, stride=u, padding=(k - u) // 2)))
            self.blocks.append(
                nn.ModuleList(
                    [ResBlock(c_out, rk, rd) for rk, rd in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilations)]
                )
            )
        self.conv_post = weight_norm(nn.Conv1d(ch // 2 ** len(cfg.upsample_rates), 1, 7, padding=3))

    def forward(self, mel: Tensor) -> Tensor:
        if mel.dim() != 3 or mel.shape[1] != self.config.n_mels:
            raise ValueError(f"expected mel [B, {self.config.n_mels}, T], got {tuple(mel.shape)}")
        x = self.conv_pre(mel)
        for up, blocks in zip(self.ups, self.blocks):
            x = up(F.leaky_relu(x, LRELU))
            x = _mean_of([b(x) for b in cast(nn.ModuleList, blocks)])
        x = torch.tanh(self.conv_post(F.leaky_relu(x)))
        return x.squeeze(1)

    def remove_weight_norm(self) -> HiFiGANGenerator:
        """Fold every weight norm into a plain weight (g * v / ||v||, computed once), for inference: the same
        outputs without recomputing the norm at every forward. Training needs the norm; a folded generator's
        state dict has plain `weight` keys and no longer loads into, or saves as, a trainable one."""
        for module in self.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        return self

    @property
    def weight_norm_removed(self) -> bool:
        return not any(parametrize.is_parametrized(m, "weight") for m in self.modules())


class PeriodDiscriminator(nn.Module):
    def __init__(self, period: int, width: int) -> None:
        super().__init__()
        self.period = period
        chans = [1, 32, 128, 512, width, width]
        chans = [min(c, width) if i else c for i, c in enumerate(chans)]
        self.convs = nn.ModuleList(
            [
                weight_norm(nn.Conv2d(chans[i], chans[i + 1], (5, 1), (3 if i < 4 else 1, 1), padding=(2, 0)))
                for i in range(5)
            ]
        )
        self.post = weight_norm(nn.Conv2d(chans[-1], 1, (3, 1), padding=(1, 0)))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        b, n = x.shape
        if n % self.period:
            x = F.pad(x, (0, self.period - n % self.period), mode="reflect")
        return _scores_and_features(self.convs, self.post, x.view(b, 1, -1, self.period))


class ScaleDiscriminator(nn.Module):
    def __init__(self, width: int, use_spectral_norm: bool = False) -> None:
        super().__init__()
        norm = spectral_norm if use_spectral_norm else weight_norm
        w = width
        spec = [(1, 128, 15, 1, 1), (128, 128, 41, 2, 4), (128, 256, 41, 2, 16), (256, 512, 41, 4, 16),
                (512, 1024, 41, 4, 16), (1024, 1024, 41, 1, 16), (1024, 1024, 5, 1, 1)]  # fmt: skip
        self.convs = nn.ModuleList(
            [
                norm(nn.Conv1d(min(i, w) if i > 1 else i, min(o, w), k, s, groups=min(g, min(i, w)), padding=k // 2))
                for i, o, k, s, g in spec
            ]
        )
        self.post = norm(nn.Conv1d(min(1024, w), 1, 3, padding=1))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        return _scores_and_features(self.convs, self.post, x.unsqueeze(1))


def _scores_and_features(convs: nn.ModuleList, post: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """A sub-discriminator's pass: leaky-ReLU convs, then the output conv; every layer's output is a feature map
    (for the feature-matching loss), the last one flattened is the score."""
    feats = []
    for c in convs:
        x = F.leaky_relu(c(x), LRELU)
        feats.append(x)
    x = post(x)
    feats.append(x)
    return x.flatten(1), feats


class HiFiGANDiscriminator(nn.Module):
    """Multi-period plus multi-scale discriminators: forward(wave) -> (scores, feature maps), one per sub-disc."""

    def __init__(self, config: HiFiGANConfig | None = None) -> None:
        super().__init__()
        cfg = config or HiFiGANConfig()
        self.mpd = nn.ModuleList([PeriodDiscriminator(p, cfg.disc_channels) for p in cfg.mpd_periods])
        self.msd = nn.ModuleList(
            [ScaleDiscriminator(cfg.disc_channels, use_spectral_norm=(i == 0)) for i in range(cfg.msd_scales)]
        )

    def forward(self, wave: Tensor) -> tuple[list[Tensor], list[list[Tensor]]]:
        scores, feats = [], []
        for d in self.mpd:
            s, f = d(wave)
            scores.append(s)
            feats.append(f)
        x = wave
        for i, d in enumerate(self.msd):
            if i:
                x = F.avg_pool1d(x.unsqueeze(1), 4, 2, padding=2).squeeze(1)
            s, f = d(x)
            scores.append(s)
            feats.append(f)
        return scores, feats


def _sum_of(terms: list[Tensor]) -> Tensor:
    """The builtin `sum`'s result (the same additions in the same order), typed as a tensor."""
    return functools.reduce(operator.add, terms)


def _mean_of(terms: list[Tensor]) -> Tensor:
    return _sum_of(terms) / len(terms)


def discriminator_loss(real_scores: list[Tensor], fake_scores: list[Tensor]) -> Tensor:
    """Least squares: sum over sub-discriminators of E[(1 - D(real))^2] + E[D(fake)^2]."""
    return _sum_of([torch.mean((1 - r) ** 2) + torch.mean(f**2) for r, f in zip(real_scores, fake_scores)])


def generator_adv_loss(fake_scores: list[Tensor]) -> Tensor:
    return _sum_of([torch.mean((1 - f) ** 2) for f in fake_scores])


def feature_matching_loss(real_feats: list[list[Tensor]], fake_feats: list[list[Tensor]]) -> Tensor:
    return _sum_of(
        [torch.mean(torch.abs(r.detach() - f)) for rd, fd in zip(real_feats, fake_feats) for r, f in zip(rd, fd)]
    )
