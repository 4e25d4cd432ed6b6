"""Learning-rate schedule, run progress, DEKR's drop points and the weight EMA, each against its
formula written out here."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from grmpose.schedule import WeightEMA, drop_fractions, lr_at, run_progress
from grmpose.train import TrainConfig, build_optimizer


def test_step_schedule_drops_tenfold_at_each_fraction_reached():
    drops = (0.5, 0.75)
    expected = {0.0: 1e-3, 0.49: 1e-3, 0.5: 1e-4, 0.74: 1e-4, 0.75: 1e-5, 1.0: 1e-5, 1.3: 1e-5}
    for progress, lr in expected.items():
        assert lr_at(1e-3, progress, step=100, schedule="step", drops=drops) == pytest.approx(lr, rel=1e-12)


def test_cosine_schedule_matches_the_formula():
    lr, r = 2e-3, 0.05
    for progress in (0.0, 0.1, 0.25, 0.5, 0.9, 1.0):
        expected = lr * (r + (1 - r) * 0.5 * (1 + math.cos(math.pi * progress)))
        got = lr_at(lr, progress, step=10, schedule="cosine", min_lr_ratio=r)
        assert got == pytest.approx(expected, rel=1e-12), progress
    assert lr_at(lr, 0.0, 10, schedule="cosine", min_lr_ratio=r) == pytest.approx(lr)
    assert lr_at(lr, 1.0, 10, schedule="cosine", min_lr_ratio=r) == pytest.approx(lr * r)
    assert lr_at(lr, 1.7, 10, schedule="cosine", min_lr_ratio=r) == pytest.approx(lr * r)  # clamped


def test_linear_warmup_multiplies_either_schedule():
    lr, warmup = 1e-3, 4
    # Step k (0-based) of the warmup runs at lr * (k + 1) / warmup, then the schedule alone.
    for step, factor in [(0, 0.25), (1, 0.5), (2, 0.75), (3, 1.0), (50, 1.0)]:
        got = lr_at(lr, 0.0, step, schedule="step", drops=(0.5,), warmup_steps=warmup)
        assert got == pytest.approx(lr * factor, rel=1e-12), step
    cosine = lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.3)))
    got = lr_at(lr, 0.3, 1, schedule="cosine", warmup_steps=warmup, min_lr_ratio=0.01)
    assert got == pytest.approx(cosine * 0.5, rel=1e-12)


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="lr schedule"):
        lr_at(1e-3, 0.5, 0, schedule="linear")


def test_progress_follows_the_time_budget_then_the_step_budget_then_epochs():
    common = dict(global_step=30, epoch=2, batch=5, batches_per_epoch=10, epochs=10)
    assert run_progress(elapsed_s=90.0, max_minutes=6.0, max_steps=40, **common) == pytest.approx(90 / 360)
    assert run_progress(elapsed_s=90.0, max_minutes=None, max_steps=40, **common) == pytest.approx(30 / 40)
    assert run_progress(elapsed_s=90.0, max_minutes=None, max_steps=None, **common) == pytest.approx(2.5 / 10)


def test_dekr_drop_points():
    # COCO: 140 epochs, drops at 90 and 120; CrowdPose: 300 epochs, drops at 200 and 260 (DEKR's configs).
    assert drop_fractions("coco", 140, None, epoch_driven=True) == (90 / 140, 120 / 140)
    assert drop_fractions("crowdpose", 300, None, epoch_driven=True) == (200 / 300, 260 / 300)
    # Scaled to 10 epochs and rounded to whole epochs: round(6.43) = 6, round(8.57) = 9.
    assert drop_fractions("coco", 10, None, epoch_driven=True) == (6 / 10, 9 / 10)
    # Under a time or step budget: DEKR's exact fractions; explicit epochs are fractions of the run.
    assert drop_fractions("coco", 10, None, epoch_driven=False) == (90 / 140, 120 / 140)
    assert drop_fractions("coco", 20, (5, 15), epoch_driven=False) == (0.25, 0.75)
    # With 140 epochs, the epoch progress (epoch + batch / batches) reaches 90/140 exactly at epoch 90.
    fractions = drop_fractions("coco", 140, None, epoch_driven=True)
    for epoch, drops in [(89, 0), (90, 1), (119, 1), (120, 2)]:
        p = run_progress(elapsed_s=0, max_minutes=None, global_step=0, max_steps=None, epoch=epoch, batch=0,
                         batches_per_epoch=7, epochs=140)  # fmt: skip
        assert lr_at(1e-3, p, 99, drops=fractions) == pytest.approx(1e-3 * 0.1**drops)
    p_last = run_progress(elapsed_s=0, max_minutes=None, global_step=0, max_steps=None, epoch=89, batch=6,
                          batches_per_epoch=7, epochs=140)  # fmt: skip
    assert lr_at(1e-3, p_last, 99, drops=fractions) == pytest.approx(1e-3)


def test_ema_follows_the_recurrence_for_parameters_and_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    decay = 0.8
    ema = WeightEMA(model, decay)
    expected = {k: v.double().clone() for k, v in model.state_dict().items()}
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(8, 3))  # moves BatchNorm's running statistics and batch counter
        ema.update(model)
        for k, w in model.state_dict().items():
            if w.is_floating_point():
                expected[k] = decay * expected[k] + (1 - decay) * w.double()
            else:
                expected[k] = w.double().clone()  # the batch counter is copied, not averaged
    got = ema.state_dict()
    assert got.keys() == expected.keys()
    for k in got:
        torch.testing.assert_close(got[k].double(), expected[k], rtol=0, atol=1e-6, msg=k)
    assert int(got["1.num_batches_tracked"]) == 5
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_weight_decay_skips_norms_and_biases():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    cfg = TrainConfig(data="x", out="y", optimizer="adamw", weight_decay=0.05)
    optimizer = build_optimizer(model, cfg)
    assert isinstance(optimizer, torch.optim.AdamW)
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert decay[id(p)] == (0.05 if name.endswith("weight") and p.ndim > 1 else 0.0), name
    adam = build_optimizer(model, TrainConfig(data="x", out="y"))
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["weight_decay"] == 0.0
    assert adam.param_groups[0]["lr"] == 1e-3  # DEKR's


def test_optimizer_step_follows_the_adam_and_adamw_rules():
    """Three steps of ``build_optimizer``'s optimiser (PyTorch's fused kernel) against Adam and AdamW
    written out: m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, p -= lr m_hat / (sqrt(v_hat) + eps),
    AdamW first multiplying p by (1 - lr wd) where it decays, Adam adding wd p to g (0 here, DEKR's)."""
    torch.manual_seed(0)
    for name, wd in (("adamw", 0.05), ("adamw", 0.0), ("adam", 0.0)):
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        cfg = TrainConfig(data="x", out="y", optimizer=name, weight_decay=wd, lr=0.01)
        optimizer = build_optimizer(model, cfg)
        params = [p for p in model.parameters()]
        ref = [p.detach().double().clone() for p in params]
        m = [torch.zeros_like(r) for r in ref]
        v = [torch.zeros_like(r) for r in ref]
        b1, b2, eps, lr = 0.9, 0.999, 1e-8, 0.01
        for t in range(1, 4):
            grads = [torch.randn_like(p) for p in params]
            for p, g in zip(params, grads):
                p.grad = g.clone()
            optimizer.step()
            for i, (p, g) in enumerate(zip(params, grads)):
                decay = wd if p.ndim > 1 else 0.0
                ref[i] = ref[i] * (1 - lr * decay)
                m[i] = b1 * m[i] + (1 - b1) * g.double()
                v[i] = b2 * v[i] + (1 - b2) * g.double() ** 2
                m_hat, v_hat = m[i] / (1 - b1**t), v[i] / (1 - b2**t)
                ref[i] = ref[i] - lr * m_hat / (v_hat.sqrt() + eps)
        for p, r in zip(params, ref):
            torch.testing.assert_close(p.detach().double(), r, rtol=0, atol=1e-6, msg=name)
