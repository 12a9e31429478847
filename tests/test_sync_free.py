"""The hot paths never synchronise with the host: one diffusion training step (forward, backward through micro-
batches, clipping, AdamW, EMA, the loop's device metric sums), one HiFi-GAN step (in its mel-only warm-up and with
the discriminators) and one guided sampling step run with the model on
the meta device under tests/sync_guard.py's HostSyncGuard, which fails on any tensor copied between the host and
the device, any CPU tensor mixed in, any value read back and any CPU generator drawing on the device. The guard
itself is shown to catch each of those."""

from __future__ import annotations

import contextlib

import pytest
import torch
from sync_guard import META, HostSyncError, HostSyncGuard

from clipsynth_core import (
    EMA,
    ConditionalUNet,
    DiffusionConfig,
    GaussianDiffusion,
    HiFiGANDiscriminator,
    HiFiGANGenerator,
    HiFiGANStep,
    MelFrontend,
    Synthesizer,
    SynthesizerConfig,
    hifigan_config,
    unet_config,
)
from clipsynth_core.diffusion import guided_model
from clipsynth_core.hifigan_step import LOSS_KEYS
from clipsynth_core.noise import device_generator, example_keys
from clipsynth_core.training import DiffusionStep, adamw
from clipsynth_platform.train.loop import IntervalSums


def _meta_step(cond_drop_prob: float, microbatch: int) -> tuple[DiffusionStep, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = ConditionalUNet(unet_config("tiny", cond_dim=16, dropout=0.1)).to(META)
    diffusion = GaussianDiffusion.from_config(DiffusionConfig(num_steps=50)).to(META)  # as the loop places it
    step = DiffusionStep(
        model,
        diffusion,
        adamw(model.parameters(), META, lr=1e-4),  # what the loop builds ("fused" on CUDA and CPU)
        EMA(model, 0.999, warmup=True),
        grad_clip=1.0,
        cond_drop_prob=cond_drop_prob,
        generator=device_generator(META, 7),
        microbatch=microbatch,
    )
    mel = torch.empty(4, 1, 64, 16, device=META)  # the batch is on the device before the step, as in the loop
    cond = torch.empty(4, 16, device=META)
    return step, mel, cond


@pytest.mark.parametrize(("cond_drop_prob", "microbatch"), [(0.0, 0), (0.2, 2)])
def test_a_diffusion_training_step_never_touches_the_host(cond_drop_prob, microbatch):
    step, mel, cond = _meta_step(cond_drop_prob, microbatch)
    sums = IntervalSums(("loss", "mse", "vb", "grad_norm"), META)
    for number in (1, 2):  # the first step also creates the optimiser's state
        with HostSyncGuard() as guard:
            terms = step(mel, cond, number)
            sums.add(terms)
        assert guard.device_ops > 300  # forward, backward, AdamW and EMA of every parameter tensor ran under it
    assert {k: (v.device, v.shape) for k, v in terms.items()} == {
        k: (META, torch.Size([])) for k in ("loss", "mse", "vb", "grad_norm")
    }


def test_a_guided_sampling_step_never_touches_the_host():
    torch.manual_seed(0)
    unet = ConditionalUNet(unet_config("tiny", cond_dim=16)).to(META).eval()
    process = GaussianDiffusion.from_config(DiffusionConfig(num_steps=50)).respaced(2).to(META)
    cond = torch.empty(3, 16, device=META)
    keys = example_keys([5, 6, 7], META)  # per request: the seeds go to the device once
    model = guided_model(unet, cond, [0.0, 1.5, 3.0])  # per request: the scales and the drop mask, once
    for sampler, eta in (("ddpm", 0.0), ("ddim", 1.0)):
        with HostSyncGuard() as guard:
            x = process.sample(model, (3, 1, 64, 16), sampler=sampler, eta=eta, seeds=keys)
        assert x.device == META and x.shape == (3, 1, 64, 16)
        assert guard.device_ops > 200  # two U-Net passes (conditional and null) per step


def test_a_request_copies_only_its_own_parameters_whatever_its_steps():
    """Through Synthesizer.sample_mels, as serving calls it: the host-to-device copies of a request are its
    seeds and its guidance scales, the same count for 2 or 8 sampling steps (none per step)."""
    config = SynthesizerConfig.tiny(diffusion=DiffusionConfig(num_steps=100, cond_drop_prob=0.1))
    synth = Synthesizer(config, device=META)
    cond = torch.empty(2, config.unet.cond_dim, device=META)
    seen = {}
    for steps in (2, 8):
        synth.process(steps)  # a step count's tables go to the device at its first use, once per process
        with HostSyncGuard(raise_at_once=False) as guard:
            synth.sample_mels(cond, steps=steps, seed=[3, 4], guidance=[0.0, 2.0])
        seen[steps] = [(v.kind, v.op) for v in guard.violations]
    assert seen[2] == seen[8]
    assert seen[2] == [("copy", "aten._to_copy"), ("copy", "aten._to_copy")]  # seeds -> keys, guidance scales


def test_the_guard_catches_each_kind_of_host_sync():
    x = torch.empty(4, device=META)
    offences = {
        "copy": lambda: torch.ones(4).to(META),
        "cpu operand": lambda: x + torch.tensor(2.0),
        "host data": lambda: torch.tensor([1.0, 2.0], device=META),
        "cpu generator": lambda: torch.randn(4, device=META, generator=torch.Generator().manual_seed(0)),
        "readback": lambda: x[x > 0],
    }
    for kind, offence in offences.items():
        with pytest.raises(HostSyncError, match=kind), HostSyncGuard():
            offence()
    # meta has no value to give (it raises); the guard saw the attempt first
    with HostSyncGuard(raise_at_once=False) as guard, contextlib.suppress(RuntimeError, NotImplementedError):
        x.sum().item()
    assert [v.kind for v in guard.violations] == ["readback"]
    # the step's old habits: a CPU generator for the training draws, a float64 table gathered from the host
    step, mel, cond = _meta_step(0.0, 0)
    step.generator = torch.Generator().manual_seed(0)
    with pytest.raises(HostSyncError, match="cpu generator"), HostSyncGuard():
        step(mel, cond, 1)
    cold = GaussianDiffusion.from_config(DiffusionConfig(num_steps=50))  # tables not placed on the device
    with pytest.raises(HostSyncError, match="copy"), HostSyncGuard():
        cold.q_sample(mel, torch.zeros(4, dtype=torch.long, device=META))
    # host-only work passes: an optimiser's step counter on the CPU is no sync
    with HostSyncGuard() as guard:
        torch.ones(2).add_(1)
    assert guard.host_ops == 2 and guard.device_ops == 0 and guard.violations == []


@pytest.mark.parametrize("step_number", [1, 3])  # in the mel-only warm-up, and with the discriminators
def test_a_hifigan_step_never_touches_the_host(step_number):
    torch.manual_seed(0)
    cfg = hifigan_config("tiny")
    gen, disc = HiFiGANGenerator(cfg).to(META), HiFiGANDiscriminator(cfg).to(META)
    # SGD keeps no step counter (AdamW's sits on the CPU unless fused or capturable, which meta lacks)
    step = HiFiGANStep(
        gen,
        disc,
        MelFrontend().to(META),
        cfg,
        torch.optim.SGD(gen.parameters(), 1e-3, momentum=0.9),
        torch.optim.SGD(disc.parameters(), 1e-3, momentum=0.9),
        warmup_steps=2,
    )
    wave = torch.empty(2, 8 * 1024, device=META)  # the batch is on the device before the step, as in the loop
    mel = step.mel_of(wave)
    sums = IntervalSums(LOSS_KEYS, META)
    with HostSyncGuard() as guard:
        losses = step(mel, wave, step_number)
        sums.add(losses)
    assert guard.device_ops > 100  # the generator's forward, backward and update ran under it
    assert {k: (v.device, v.shape) for k, v in losses.items()} == {k: (META, torch.Size([])) for k in LOSS_KEYS}
