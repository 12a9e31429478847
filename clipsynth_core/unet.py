"""The conditional U-Net of CLIPSynth.

Following the paper (sec. 2.1, after Ho et al.'s U-Net), the condition vector c (a CLIP embedding) is
concatenated to the output features of every layer and passed to the next layer: every block here sees
`cat([h, broadcast(c')])` as input, where c' is c through one shared linear projection (so the cost of the
concatenation does not grow with CLIP's width). The timestep embedding enters every residual block as in
improved-diffusion. `cond_in_embedding` adds a second path, beyond the paper: an MLP of c added to the
timestep embedding, so the condition also scales and shifts every block's features.

Inputs are [B, 1, 64, T] log-mels; T = 64 (4.16 s) or 128 (8.32 s), any multiple of 2^(levels - 1).
The output has 2 channels with learned variance (eps and v).
For classifier-free guidance a learned null condition replaces c where `drop_mask` is True.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .model_presets import config_from_preset


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 1
    out_channels: int = 2  # eps + variance interpolation v (learned range)
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16, 8)  # feature-map heights (64 input) that get attention
    num_head_channels: int = 64
    dropout: float = 0.1
    cond_dim: int = 512  # CLIP ViT-B/32 embedding width
    cond_channels: int = 64  # width of the projected condition concatenated to every layer's output
    use_scale_shift_norm: bool = True
    input_height: int = 64
    cond_in_embedding: bool = False  # beyond the paper: c also enters the timestep embedding (see the docstring)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        d = dict(d)
        d.setdefault("cond_in_embedding", True)  # bundles written before the option had the path
        for k in ("channel_mult", "attention_resolutions"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


# Presets: "paper" follows improved-diffusion's 64x64 model; the small ones are for CPUs and tests.
UNET_PRESETS: dict[str, dict] = {
    "paper": {},
    "small": dict(model_channels=64, channel_mult=(1, 2, 2, 4), num_res_blocks=2, num_head_channels=32),
    # Measured on 2 CPU cores (benchmarks/learning): narrow but four levels deep, so the receptive field
    # spans the whole 64-row mel; 3-4.4 steps/s of batch 16 in bf16 (50-70 samples/s, the machine's speed varies
    # by day), and it learns the 8 demo classes in 5-8 min. torch.compile: 1.34x the steps/s after 207 s compiling.
    "cpu": dict(
        model_channels=8,
        channel_mult=(1, 2, 4, 8),
        num_res_blocks=1,
        attention_resolutions=(8,),
        num_head_channels=32,
        cond_channels=8,
        dropout=0.0,
    ),
    "tiny": dict(
        model_channels=32,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(32,),
        num_head_channels=32,
        cond_channels=16,
        dropout=0.0,
    ),
}


def unet_config(preset: str = "paper", **overrides) -> UNetConfig:
    return config_from_preset(UNetConfig, UNET_PRESETS, preset, "U-Net", **overrides)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding [B, dim] of integer timesteps."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _norm(channels: int) -> nn.GroupNorm:
    groups = 32
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, channels)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, scale_shift: bool) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(_norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_ch if scale_shift else out_ch))
        self.out_norm = _norm(out_ch)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1)))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x)
        e = self.emb(emb).to(h.dtype)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + e)
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions (scaled_dot_product_attention)."""

    def __init__(self, channels: int, head_channels: int) -> None:
        super().__init__()
        self.heads = max(channels // head_channels, 1)
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, h * w))  # [B, 3C, L]
        # [3, B, heads, L, d], made contiguous: the fused attention kernels (flash, memory-efficient; the CPU's
        # flash kernel too) need stride 1 in the last dimension, and fall back to the slow math kernel otherwise.
        qkv = qkv.reshape(b, 3, self.heads, c // self.heads, h * w).permute(1, 0, 2, 4, 3).contiguous()
        q, k, v = qkv.unbind(0)
        a = F.scaled_dot_product_attention(q, k, v)  # [B, heads, L, d]
        a = a.permute(0, 1, 3, 2).reshape(b, c, h * w)
        return x + self.proj(a).reshape(b, c, h, w)


class Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Layer(nn.Module):
    """One U-Net layer: an optional residual block, attention, and resampling, applied in that order.

    Its input already carries the concatenated condition; its output is the plain feature map.
    """

    def __init__(self, res: ResBlock | None, attn: AttentionBlock | None = None, resample: nn.Module | None = None):
        super().__init__()
        self.res, self.attn, self.resample = res, attn, resample

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.res is not None:
            x = self.res(x, emb)
        if self.attn is not None:
            x = self.attn(x)
        if self.resample is not None:
            x = self.resample(x)
        return x


class ConditionalUNet(nn.Module):
    """eps/v prediction network: forward(x [B, C, H, W], t [B], cond [B, cond_dim], drop_mask [B] | None)."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or UNetConfig()
        ch, cc = cfg.model_channels, cfg.cond_channels
        emb_dim = 4 * ch
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.cond_embed = (
            nn.Sequential(nn.Linear(cfg.cond_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            if cfg.cond_in_embedding
            else None
        )
        self.cond_proj = nn.Linear(cfg.cond_dim, cfg.cond_channels)
        # Learned stand-in for "no condition" (classifier-free guidance); unused when guidance is off.
        self.null_cond = nn.Parameter(torch.zeros(cfg.cond_dim))

        def res(i: int, o: int) -> ResBlock:
            return ResBlock(i + cc, o, emb_dim, cfg.dropout, cfg.use_scale_shift_norm)

        def attn(c: int, height: int) -> AttentionBlock | None:
            return AttentionBlock(c, cfg.num_head_channels) if height in cfg.attention_resolutions else None

        self.input_conv = nn.Conv2d(cfg.in_channels + cc, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [ch]
        cur, height = ch, cfg.input_height
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.down.append(Layer(res(cur, mult * ch), attn(mult * ch, height)))
                cur = mult * ch
                skips.append(cur)
            if level != len(cfg.channel_mult) - 1:
                # The downsampling layer sees the condition too; a 1x1 conv brings the width back.
                self.down.append(Layer(None, None, nn.Sequential(Downsample(cur + cc), nn.Conv2d(cur + cc, cur, 1))))
                skips.append(cur)
                height //= 2
        self.middle = nn.ModuleList(
            [
                Layer(res(cur, cur), AttentionBlock(cur, cfg.num_head_channels)),
                Layer(res(cur, cur)),
            ]
        )
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                skip = skips.pop()
                resample = None
                if level and i == cfg.num_res_blocks:
                    resample = Upsample(mult * ch)
                self.up.append(Layer(res(cur + skip, mult * ch), attn(mult * ch, height), resample))
                cur = mult * ch
            if level:
                height *= 2
        self.out = nn.Sequential(_norm(cur + cc), nn.SiLU(), _zero(nn.Conv2d(cur + cc, cfg.out_channels, 3, padding=1)))

    def condition(self, cond: Tensor, drop_mask: Tensor | None) -> Tensor:
        # Always routed through the mask (all False when None) so `null_cond` stays in the graph: DDP requires
        # every parameter to take part in the backward pass, even when guidance training is off.
        if drop_mask is None:
            drop_mask = torch.zeros(cond.shape[0], dtype=torch.bool, device=cond.device)
        return torch.where(drop_mask[:, None].to(cond.device), self.null_cond.to(cond.dtype)[None], cond)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor, drop_mask: Tensor | None = None) -> Tensor:
        cfg = self.config
        levels = len(cfg.channel_mult) - 1
        if x.shape[-2] % (2**levels) or x.shape[-1] % (2**levels):
            raise ValueError(f"input {tuple(x.shape[-2:])} must be divisible by {2**levels} in both dimensions")
        if cond.shape != (x.shape[0], cfg.cond_dim):
            raise ValueError(f"cond must be [{x.shape[0]}, {cfg.cond_dim}], got {tuple(cond.shape)}")
        cond = self.condition(cond.float(), drop_mask)
        emb = self.time_embed(timestep_embedding(t, cfg.model_channels))
        if self.cond_embed is not None:
            emb = emb + self.cond_embed(cond)
        c = self.cond_proj(cond)[:, :, None, None]

        def with_cond(h: Tensor) -> Tensor:
            # "the condition vector is concatenated to the output features of each layer"
            return torch.cat([h, c.to(h.dtype).expand(-1, -1, h.shape[-2], h.shape[-1])], dim=1)

        h = self.input_conv(with_cond(x))
        hs = [h]
        for layer in self.down:
            h = layer(with_cond(h), emb)
            hs.append(h)
        for layer in self.middle:
            h = layer(with_cond(h), emb)
        for layer in self.up:
            h = layer(with_cond(torch.cat([h, hs.pop()], dim=1)), emb)
        return self.out(with_cond(h))
