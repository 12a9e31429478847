"""Core training pieces: a tiny model overfits one batch, EMA arithmetic, exact save/restore of training state."""

from __future__ import annotations

import pytest
import torch

from clipsynth_core import (
    EMA,
    ConditionalUNet,
    DiffusionConfig,
    GaussianDiffusion,
    diffusion_losses,
    load_training_state,
    save_training_state,
    unet_config,
)
from clipsynth_core.training import clip_and_step


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mel = torch.rand(4, 1, 64, 64, generator=g) * 2 - 1
    cond = torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=-1)
    return mel, cond


@pytest.mark.slow  # hundreds of optimiser steps: the full suite runs it, `make test-fast` does not
def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = ConditionalUNet(unet_config("tiny", cond_dim=16))
    diffusion = GaussianDiffusion.from_config(DiffusionConfig(num_steps=1000))
    mel, cond = _batch()
    mel, cond = mel[:2, :, :, :16], cond[:2]  # 64 x 16 mels keep this quick on a CPU
    # One fixed batch: fixed timesteps and noise, so the target is a fixed function to memorise.
    t = torch.tensor([100, 600])
    noise = torch.randn(mel.shape, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = last = None
    for _ in range(30):
        terms = diffusion.training_losses(lambda x, tt: model(x, tt, cond), mel, t, noise)
        loss = terms["loss"].mean()
        loss.backward()
        clip_and_step(model.parameters(), opt, 1.0)
        first = float(loss.detach()) if first is None else first
        last = float(loss.detach())
    assert last < first / 10, (first, last)


def test_diffusion_losses_with_condition_dropout_is_finite_and_seeded():
    model = ConditionalUNet(unet_config("tiny", cond_dim=16))
    diffusion = GaussianDiffusion.from_config(DiffusionConfig(num_steps=100))
    mel, cond = _batch()
    a = diffusion_losses(model, diffusion, mel, cond, cond_drop_prob=0.5, generator=torch.Generator().manual_seed(3))
    b = diffusion_losses(model, diffusion, mel, cond, cond_drop_prob=0.5, generator=torch.Generator().manual_seed(3))
    assert set(a) == {"loss", "mse", "vb"}
    assert all(torch.isfinite(v) for v in a.values())
    assert float(a["loss"].detach()) == float(b["loss"].detach())


def test_ema_arithmetic():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for k, v in ema.state_dict().items():
        torch.testing.assert_close(v, 0.9 * before[k] + 0.1 * model.state_dict()[k])
    with pytest.raises(ValueError):
        EMA(model, decay=1.5)


def test_ema_lerps_float_tensors_and_copies_integer_buffers():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))  # float and int64 buffers
    ema = EMA(model, decay=0.75)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3))  # moves the running stats and counts a batch
        for p in model.parameters():
            p.mul_(-2.0)
    ema.update(model)
    now = model.state_dict()
    for k, v in ema.state_dict().items():
        if v.dtype.is_floating_point:
            torch.testing.assert_close(v, 0.75 * before[k] + 0.25 * now[k])
        else:
            assert torch.equal(v, now[k]), k  # num_batches_tracked is copied, not averaged


def test_unclipped_step_returns_the_global_gradient_norm():
    model = torch.nn.Linear(5, 3)
    model(torch.randn(7, 5)).pow(2).sum().backward()
    expected = sum(float(p.grad.pow(2).sum()) for p in model.parameters()) ** 0.5
    grads = [p.grad.clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    norm = clip_and_step(model.parameters(), opt, None)
    assert float(norm) == pytest.approx(expected, rel=1e-6)
    assert all(p.grad is None for p in model.parameters())  # zeroed for the next step
    assert all(float(g.abs().sum()) > 0 for g in grads)


@pytest.mark.slow  # trains, saves, restores and trains again: the full suite runs it, `make test-fast` does not
def test_training_state_restores_exactly(tmp_path):
    torch.manual_seed(0)
    diffusion = GaussianDiffusion.from_config(DiffusionConfig(num_steps=100))

    def make():
        m = ConditionalUNet(unet_config("tiny", cond_dim=16, dropout=0.0))
        return m, torch.optim.AdamW(m.parameters(), lr=1e-3), EMA(m, 0.99)

    def step(m, opt, ema, seed):
        mel, cond = _batch(seed)
        loss = diffusion_losses(m, diffusion, mel, cond, generator=torch.Generator().manual_seed(seed))["loss"]
        loss.backward()
        clip_and_step(m.parameters(), opt, 1.0)
        ema.update(m)

    m, opt, ema = make()
    for s in range(2):
        step(m, opt, ema, s)
    save_training_state(tmp_path / "ckpt", model=m, ema=ema, optimizer=opt, step=2, extra={"run_id": "abc"})
    m2, opt2, ema2 = make()
    state = load_training_state(tmp_path / "ckpt", model=m2, ema=ema2, optimizer=opt2)
    assert state == {"step": 2, "run_id": "abc"}
    for s in range(2, 4):
        step(m, opt, ema, s)
        step(m2, opt2, ema2, s)
    for (k, a), b in zip(m.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    for a, b in zip(ema.state_dict().values(), ema2.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match=r"state\.json"):
        load_training_state(tmp_path / "nothing", model=m2)
