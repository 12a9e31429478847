"""The conditional U-Net: shapes, condition concatenated at every layer, guidance null condition, bf16."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clipsynth_core import ConditionalUNet, unet_config
from clipsynth_core.unet import ResBlock


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    # The output conv is zero-initialised (as in improved-diffusion); perturb so outputs carry information.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return _randomize(ConditionalUNet(unet_config("tiny", cond_dim=16))).eval()


@pytest.mark.parametrize("frames", [64, 128])
def test_accepts_64x64_and_64x128(unet, frames):
    x = torch.randn(2, 1, 64, frames)
    out = unet(x, torch.tensor([0, 3999]), torch.randn(2, 16))
    assert out.shape == (2, 2, 64, frames)
    assert torch.isfinite(out).all()


def test_condition_is_concatenated_to_every_layer():
    """Every layer's input ends with the projected condition cond_proj(c), the same at every position and
    different per sample: the paper's "concatenated to the output features of each layer"."""
    cfg = unet_config("tiny", cond_dim=16)
    net = _randomize(ConditionalUNet(cfg)).eval()
    layers = [net.input_conv, *net.down, *net.middle, *net.up, net.out]
    inputs: list[torch.Tensor] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: inputs.append(args[0])) for m in layers]
    x, cond = torch.randn(2, 1, 64, 64), torch.randn(2, 16)
    with torch.no_grad():
        net(x, torch.tensor([5, 5]), cond)
        projected = net.cond_proj(cond)[:, :, None, None]
    for hook in hooks:
        hook.remove()
    assert len(inputs) == len(layers)
    cc = cfg.cond_channels
    torch.testing.assert_close(inputs[0][:, :1], x)  # the input conv sees the noisy mel, then the condition
    for layer, h in zip(layers, inputs):
        tail = h[:, -cc:]
        torch.testing.assert_close(tail, projected.expand_as(tail))
        # and the layer reads all of it: its first convolution's width is the features plus the condition
        first_conv = (
            layer if isinstance(layer, nn.Conv2d) else next(m for m in layer.modules() if isinstance(m, nn.Conv2d))
        )
        assert first_conv.in_channels == h.shape[1] > cc
    # the two samples' conditions differ, so a constant (or zero) channel block could not pass the check above
    assert (projected[0] - projected[1]).abs().min() > 0
    resblocks = [m for m in net.modules() if isinstance(m, ResBlock)]
    assert 0 < len(resblocks) < len(layers)


def test_output_depends_on_condition_and_timestep(unet):
    x = torch.randn(2, 1, 64, 64)
    t = torch.tensor([10, 10])
    c1, c2 = torch.randn(2, 16), torch.randn(2, 16)
    with torch.no_grad():
        a, b = unet(x, t, c1), unet(x, t, c2)
        c = unet(x, torch.tensor([900, 900]), c1)
    assert (a - b).abs().mean() > 1e-4
    assert (a - c).abs().mean() > 1e-4


def test_drop_mask_uses_the_null_condition(unet):
    x = torch.randn(2, 1, 64, 64)
    t = torch.tensor([7, 7])
    c = torch.randn(2, 16)
    with torch.no_grad():
        dropped = unet(x, t, c, torch.tensor([True, False]))
        null = unet(x, t, unet.null_cond[None].expand(2, -1))
        plain = unet(x, t, c)
    torch.testing.assert_close(dropped[0], null[0])
    torch.testing.assert_close(dropped[1], plain[1])


def test_bf16_autocast_and_channels_last(unet):
    x = torch.randn(2, 1, 64, 64)
    t = torch.tensor([1, 2])
    c = torch.randn(2, 16)
    with torch.no_grad():
        ref = unet(x, t, c)
        net = unet.to(memory_format=torch.channels_last)
        cl = net(x.to(memory_format=torch.channels_last), t, c)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x.to(memory_format=torch.channels_last), t, c)
    unet.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(cl, ref, atol=1e-4, rtol=1e-4)
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() < 0.1 * ref.abs().max() + 1e-3


def test_rejects_bad_shapes(unet):
    with pytest.raises(ValueError, match="cond must be"):
        unet(torch.randn(1, 1, 64, 64), torch.tensor([0]), torch.randn(1, 15))
    with pytest.raises(ValueError, match="divisible"):
        unet(torch.randn(1, 1, 64, 63), torch.tensor([0]), torch.randn(1, 16))
    with pytest.raises(ValueError, match="unknown U-Net preset"):
        unet_config("huge")


def test_paper_preset_size():
    # improved-diffusion's 64x64 model family: ~100 M parameters with the concatenated condition.
    n = sum(p.numel() for p in ConditionalUNet(unet_config("paper")).parameters())
    assert 60e6 < n < 150e6


def test_every_parameter_takes_part_in_backward():
    # DDP (Ray Train) fails on parameters that get no gradient; guidance's null condition must be in the graph.
    net = ConditionalUNet(unet_config("tiny", cond_dim=16))
    net(torch.randn(1, 1, 64, 16), torch.tensor([3]), torch.randn(1, 16)).sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert missing == []


def test_condition_enters_the_timestep_embedding_only_when_asked():
    """The paper's U-Net (default) sees c only through the concatenation; the option adds an MLP of c to the
    timestep embedding. Old bundles (no key) had the extra path and keep it."""
    from clipsynth_core.unet import UNetConfig

    paper = ConditionalUNet(unet_config("tiny", cond_dim=16))
    extra = ConditionalUNet(unet_config("tiny", cond_dim=16, cond_in_embedding=True))
    assert paper.cond_embed is None and isinstance(extra.cond_embed, nn.Sequential)
    n_extra = sum(p.numel() for p in extra.cond_embed.parameters())
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(extra) - n(paper) == n_extra
    legacy = {k: v for k, v in unet_config("tiny", cond_dim=16).to_dict().items() if k != "cond_in_embedding"}
    assert UNetConfig.from_dict(legacy).cond_in_embedding is True
    # With the option, the timestep embedding itself depends on c: zero the concatenation and c still matters.
    _randomize(extra)
    with torch.no_grad():
        extra.cond_proj.weight.zero_()
        extra.cond_proj.bias.zero_()
        x, t = torch.randn(1, 1, 64, 64), torch.tensor([7])
        a, b = extra(x, t, torch.randn(1, 16)), extra(x, t, torch.randn(1, 16))
    assert (a - b).abs().mean() > 1e-5


def test_attention_feeds_the_fused_kernels():
    """q, k and v reach scaled_dot_product_attention contiguous, so the fused kernels take them (the CPU's flash
    kernel here; CUDA's flash and memory-efficient ones check the same stride-1 last dimension); with the fused
    kernel alone allowed, the block runs and agrees with the math kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from clipsynth_core.unet import AttentionBlock

    torch.manual_seed(0)
    block = _randomize(AttentionBlock(64, 32)).eval()
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad(), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        fused = block(x)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        reference = block(x)
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)


def test_the_unet_traces_as_one_graph(unet):
    """torch.compile (--compile, the served sampler's compile_unet) captures the whole U-Net without a graph break
    (fullgraph=True raises at the first one); the eager backend checks the capture without building kernels."""
    torch._dynamo.reset()
    compiled = torch.compile(unet, backend="eager", fullgraph=True)
    x, t, c = torch.randn(2, 1, 64, 16), torch.tensor([3, 40]), torch.randn(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            compiled(x, t, c, torch.tensor([False, True])), unet(x, t, c, torch.tensor([False, True]))
        )
