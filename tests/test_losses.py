"""Losses against naive loops; tag-loss behaviour; gradients; collation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from grmpose.losses import (
    LossWeights,
    collate_targets,
    heatmap_focal_loss,
    heatmap_loss,
    offset_loss,
    tag_loss,
    total_loss,
)
from grmpose.targets import build_targets


def naive_smooth_l1(d, beta=1 / 9):
    return 0.5 * d * d / beta if abs(d) < beta else abs(d) - 0.5 * beta


def naive_tag_loss(tags, index):
    """tags B×K×H×W (numpy), index B×N×K; loops over images, people, joints."""
    b, k, h, w = tags.shape
    pulls, pushes = [], []
    for i in range(b):
        means, pull_terms = [], []
        for person in index[i]:
            vals = [tags[i, j].reshape(-1)[person[j]] for j in range(k) if person[j] >= 0]
            if not vals:
                continue
            m = sum(vals) / len(vals)
            means.append(m)
            pull_terms.append(sum((v - m) ** 2 for v in vals) / len(vals))
        pulls.append(sum(pull_terms) / len(pull_terms) if pull_terms else 0.0)
        pairs = [
            math.exp(-((a - c) ** 2)) for x, a in enumerate(means) for y, c in enumerate(means) if x != y
        ]
        pushes.append(sum(pairs) / len(pairs) if pairs else 0.0)
    return np.array(pulls), np.array(pushes)


def test_heatmap_loss_matches_loop():
    g = torch.Generator().manual_seed(0)
    pred, gt, wt = (torch.rand(2, 3, 4, 5, generator=g) for _ in range(3))
    total = sum(float((pred[idx] - gt[idx]) ** 2 * wt[idx]) for idx in np.ndindex(*pred.shape)) / pred.numel()
    assert math.isclose(heatmap_loss(pred, gt, wt).item(), total, rel_tol=1e-5)


def test_offset_loss_matches_loop():
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(2, 4, 5, 6, generator=g) * 0.3
    gt = torch.randn(2, 4, 5, 6, generator=g) * 0.3
    wt = torch.rand(2, 4, 5, 6, generator=g) * (torch.rand(2, 4, 5, 6, generator=g) > 0.6)
    num, count = 0.0, 0
    for idx in np.ndindex(*pred.shape):
        num += naive_smooth_l1(float(pred[idx] - gt[idx])) * float(wt[idx])
        count += float(wt[idx]) != 0
    assert math.isclose(offset_loss(pred, gt, wt).item(), num / count, rel_tol=1e-5)
    assert offset_loss(pred, gt, torch.zeros_like(wt)).item() == 0.0


def test_tag_loss_matches_loop():
    rng = np.random.default_rng(2)
    b, k, h, w = 3, 4, 6, 7
    tags = rng.normal(size=(b, k, h, w))
    index = rng.integers(0, h * w, size=(b, 5, k))
    index[rng.uniform(size=index.shape) < 0.3] = -1
    index[0, 3:] = -1  # padded people
    index[1, :] = -1  # image without people
    index[2, 1:] = -1  # image with one person
    pull, push = tag_loss(torch.tensor(tags), torch.tensor(index))
    ref_pull, ref_push = naive_tag_loss(tags, index)
    np.testing.assert_allclose(pull.numpy(), ref_pull, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(push.numpy(), ref_push, rtol=1e-6, atol=1e-12)
    # the list-of-tensors form gives the same result
    as_list = [torch.tensor(index[i][(index[i] >= 0).any(1)]) for i in range(b)]
    pull2, push2 = tag_loss(torch.tensor(tags), as_list)
    np.testing.assert_allclose(pull2.numpy(), ref_pull, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(push2.numpy(), ref_push, rtol=1e-6, atol=1e-12)


def test_tag_loss_pull_zero_and_push_small():
    k, h, w = 3, 8, 8
    index = torch.tensor([[[0, 9, 18], [30, 40, 50], [60, 61, -1]]])
    tags = torch.zeros(1, k, h, w)
    for person, value in zip(index[0], (0.0, 10.0, 20.0)):
        for j, flat in enumerate(person.tolist()):
            if flat >= 0:
                tags[0, j].view(-1)[flat] = value
    pull, push = tag_loss(tags, index)
    assert pull.item() == 0.0
    assert push.item() < 1e-20
    pull, push = tag_loss(torch.zeros(1, k, h, w), index)
    assert pull.item() == 0.0 and math.isclose(push.item(), 1.0)
    pull, push = tag_loss(tags, torch.full((1, 0, k), -1))
    assert pull.item() == 0.0 and push.item() == 0.0


def make_batch(k=3, h=16, w=16):
    rng = np.random.default_rng(3)
    people = []
    for n in (2, 0, 1):
        p = np.zeros((n, k, 3))
        p[..., 0] = rng.uniform(0, 4 * w, (n, k))
        p[..., 1] = rng.uniform(0, 4 * h, (n, k))
        p[..., 2] = 2
        people.append(p)
    return collate_targets([build_targets(p, (h, w)) for p in people])


def test_collate_shapes():
    t = make_batch()
    assert t["heatmaps"].shape == (3, 4, 16, 16) and t["offsets"].shape == (3, 6, 16, 16)
    assert t["tag_index"].shape == (3, 2, 3)
    assert (t["tag_index"][1] == -1).all() and (t["tag_index"][2, 1] == -1).all()


@pytest.mark.parametrize("factors", [LossWeights(), LossWeights(1.0, 1.0, 1.0, 1.0)])
def test_total_loss_gradients_flow(factors):
    t = make_batch()
    g = torch.Generator().manual_seed(4)
    heat = torch.randn(t["heatmaps"].shape, generator=g, requires_grad=True)
    off = torch.randn(t["offsets"].shape, generator=g, requires_grad=True)
    tags = torch.randn(3, 3, 16, 16, generator=g, requires_grad=True)
    loss, parts = total_loss((heat, off, tags), t, factors)
    loss.backward()
    assert set(parts) == {"heatmap", "offset", "pull", "push"}
    assert math.isclose(loss.item(), sum(v.item() for v in parts.values()), rel_tol=1e-6)
    for x in (heat, off, tags):
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # a perfect prediction of heatmaps/offsets leaves only the tag terms
    loss, parts = total_loss({"heatmaps": t["heatmaps"], "offsets": t["offsets"], "tags": tags}, t)
    assert parts["heatmap"].item() == 0.0 and parts["offset"].item() == 0.0


def test_each_weighted_term_is_its_factor_times_the_unweighted_loss():
    """total_loss scales each term by its own factor (distinct factors, so a swap is caught).

    The unweighted losses are written out here (DESIGN.md §2): heatmap ``mean((p-g)^2 w)``,
    offsets ``sum(smoothL1(p-g) w) / #(w != 0)``, pull and push from the naive loop, batch means.
    """
    assert LossWeights() == LossWeights(heatmap=1.0, offset=0.03, pull=1e-3, push=1e-3)  # DEKR's factors
    t = make_batch()
    g = torch.Generator().manual_seed(5)
    heat = torch.randn(t["heatmaps"].shape, generator=g, dtype=torch.float64)
    off = torch.randn(t["offsets"].shape, generator=g, dtype=torch.float64)
    tags = torch.randn(3, 3, 16, 16, generator=g, dtype=torch.float64)
    hp, hg, hw = heat.numpy(), t["heatmaps"].double().numpy(), t["heat_weights"].double().numpy()
    op, og, ow = off.numpy(), t["offsets"].double().numpy(), t["offset_weights"].double().numpy()
    d = np.abs(op - og)
    beta = 1 / 9
    unweighted = {
        "heatmap": float(((hp - hg) ** 2 * hw).mean()),
        "offset": float(
            (np.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta) * ow).sum() / (ow != 0).sum()
        ),
        "pull": float(naive_tag_loss(tags.numpy(), t["tag_index"].numpy())[0].mean()),
        "push": float(naive_tag_loss(tags.numpy(), t["tag_index"].numpy())[1].mean()),
    }
    assert all(v > 0 for v in unweighted.values()), unweighted
    factors = LossWeights(heatmap=2.0, offset=0.3, pull=0.07, push=5.0)
    loss, parts = total_loss((heat, off, tags), t, factors)
    for name, value in unweighted.items():
        expected = getattr(factors, name) * value
        assert math.isclose(parts[name].item(), expected, rel_tol=1e-9), name
    assert math.isclose(
        loss.item(), sum(getattr(factors, n) * v for n, v in unweighted.items()), rel_tol=1e-9
    )
    # the default factors, the same way
    loss, parts = total_loss((heat, off, tags), t)
    for name, value in unweighted.items():
        assert math.isclose(parts[name].item(), getattr(LossWeights(), name) * value, rel_tol=1e-9), name


def test_focal_heatmap_loss_matches_loop_over_cornernet_rule():
    """CornerNet's eq. 1 written as a loop: a joint's own cell (nearest the joint) is a positive, every
    other cell with weight > 0 a negative reduced by (1 - y)^4; the sum divided by the joints."""
    k, h, w = 3, 16, 16
    rng = np.random.default_rng(7)
    people = rng.uniform(2, 4 * w - 2, (2, k, 3))
    people[..., 2] = 2
    t = build_targets(people, (h, w))
    gt, wt = t["heatmaps"][None].double(), t["heat_weights"][None].double()
    wt[0, :, :2] = 0.0  # an ignored band
    g = torch.Generator().manual_seed(8)
    prob = torch.rand(gt.shape, generator=g, dtype=torch.float64) * 0.98 + 0.01
    own = set()  # the cell nearest each joint and each centre (map = input / 4; cell centres at integers)
    cells = [(j, people[n, j, :2] / 4.0) for n in range(2) for j in range(k)]
    cells += [(k, people[n, :, :2].mean(0) / 4.0) for n in range(2)]
    for c, (x, y) in cells:
        own.add((c, int(math.floor(y + 0.5)), int(math.floor(x + 0.5))))
    total, peaks = 0.0, 0
    for c, y, x in np.ndindex(*gt.shape[1:]):
        p, yv = float(prob[0, c, y, x]), float(gt[0, c, y, x])
        if float(wt[0, c, y, x]) == 0:
            continue
        if (c, y, x) in own:
            total += -((1 - p) ** 2) * math.log(p)
            peaks += 1
        else:
            total += -((1 - yv) ** 4) * p**2 * math.log(1 - p)
    got = heatmap_focal_loss(prob, gt, wt).item()
    assert peaks == sum(y >= 2 for _, y, _ in own) > 0  # own cells in the ignored band do not count
    assert math.isclose(got, total / peaks, rel_tol=1e-9)
    # a near-perfect prediction costs far less than the random one
    perfect = torch.zeros_like(gt)
    for c, y, x in own:
        perfect[0, c, y, x] = 1.0
    assert heatmap_focal_loss(perfect, gt, wt).item() < 1e-3 * got


def test_focal_loss_trains_a_sigmoid_head_from_the_prior():
    from grmpose.model.heads import HEATMAP_PRIOR, HeatmapTagHead
    from grmpose.model.init_weights import init_weights

    head = init_weights(HeatmapTagHead(8, 8, 3, activation="sigmoid"))
    heat, _ = head(torch.randn(1, 8, 5, 5))
    assert torch.allclose(heat, torch.full_like(heat, HEATMAP_PRIOR), atol=0.01)
    raw, _ = init_weights(HeatmapTagHead(8, 8, 3))(torch.randn(1, 8, 5, 5))
    assert raw.abs().max() < 0.05  # DEKR's head: raw maps near 0
    t = make_batch()
    heat = torch.zeros(t["heatmaps"].shape, requires_grad=True)
    _, parts = total_loss((heat.sigmoid(), torch.zeros(t["offsets"].shape), torch.zeros(3, 3, 16, 16)), t,
                          LossWeights(heatmap_form="focal"))  # fmt: skip
    assert parts["heatmap"].item() > 0
    with pytest.raises(ValueError, match="unknown heatmap loss"):
        total_loss((heat, torch.zeros(t["offsets"].shape), torch.zeros(3, 3, 16, 16)), t, LossWeights(heatmap_form="l1"))
