"""Flow2SegLoss and the temporal-consistency term against their formulas, computed by hand."""
import math

import pytest
import torch
import torch.nn.functional as F

from flow2seg_ros.losses import (Flow2SegLoss, flow_consistency_mask, TemporalConsistencyLoss,
                                 warp_to_current)

C, IGNORE = 4, 255


def _heads(names=('image', 'fused', 'flow', 'aux'), seed=0):
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(2, C, 5, 6, generator=g, requires_grad=True) for name in names}


def _target(seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, C, (2, 5, 6), generator=g)
    target[0, :2] = IGNORE
    target[1, :, 0] = IGNORE
    return target


def _manual_ce(logits, target):
    # Mean over non-ignored pixels of -log softmax at the true class.
    logp = torch.log_softmax(logits, dim=1)
    valid = target != IGNORE
    picked = logp.permute(0, 2, 3, 1)[valid]  # (P, C)
    return -picked.gather(1, target[valid][:, None]).mean()


def test_full_loss_is_the_formula():
    heads, target = _heads(), _target()
    loss = Flow2SegLoss(alpha=0.3, beta=0.7)
    total, parts = loss(heads, target)

    def ce(name):
        return F.cross_entropy(heads[name], target, ignore_index=IGNORE)

    expected = ce('image') + ce('fused') + 0.3 * ce('flow') + 0.7 * ce('aux')
    torch.testing.assert_close(total, expected)
    assert set(parts) == {'image', 'fused', 'flow', 'aux'}
    for name in parts:
        torch.testing.assert_close(parts[name], _manual_ce(heads[name], target))
        assert not parts[name].requires_grad
    total.backward()
    assert all(h.grad is not None and h.grad.abs().sum() > 0 for h in heads.values())
    # Ignored pixels get no gradient.
    assert heads['image'].grad[0, :, :2].abs().sum() == 0


def test_default_weights():
    loss = Flow2SegLoss()
    assert (loss.alpha, loss.beta, loss.ignore_index) == (0.5, 0.4, 255)


def test_missing_heads_contribute_nothing():
    heads, target = _heads(('image', 'fused', 'flow')), _target(1)
    total, parts = Flow2SegLoss(alpha=0.5, beta=0.4)(heads, target)
    expected = sum(w * _manual_ce(heads[n], target)
                   for n, w in (('image', 1.0), ('fused', 1.0), ('flow', 0.5)))
    torch.testing.assert_close(total, expected)
    assert set(parts) == {'image', 'fused', 'flow'}


def test_without_fusion_the_image_loss_counts_once():
    heads, target = _heads(('image', 'aux')), _target(2)
    heads['fused'] = heads['image']  # what the model returns without flow
    total, parts = Flow2SegLoss(alpha=0.5, beta=0.4)(heads, target)
    expected = _manual_ce(heads['image'], target) + 0.4 * _manual_ce(heads['aux'], target)
    torch.testing.assert_close(total, expected)
    assert set(parts) == {'image', 'aux'}


def test_all_pixels_ignored_gives_zero_not_nan():
    heads = _heads()
    target = torch.full((2, 5, 6), IGNORE)
    total, _ = Flow2SegLoss()(heads, target)
    assert total.item() == 0.0
    total.backward()
    assert torch.isfinite(heads['fused'].grad).all()


def test_bad_inputs_are_refused():
    loss = Flow2SegLoss()
    heads = _heads()
    with pytest.raises(ValueError, match=r'target should be \(N, H, W\), got \(2, 1, 5, 6\)'):
        loss(heads, _target()[:, None])
    with pytest.raises(ValueError, match='integer class ids, got torch.float32'):
        loss(heads, _target().float())
    with pytest.raises(ValueError, match=r'aux logits \(2, 4, 3, 3\).*\(2, 5, 6\)'):
        loss({**heads, 'aux': torch.randn(2, C, 3, 3)}, _target())
    with pytest.raises(ValueError, match='"fused" head'):
        loss({'image': heads['image']}, _target())
    with pytest.raises(ValueError, match='non-negative, got -1'):
        Flow2SegLoss(alpha=-1)


# ---- temporal consistency (ETC) ----

def test_moving_pixels_weigh_more_in_the_named_heads_by_hand():
    # One image, 1 x 3 pixels, 2 classes: logits (0, 0) everywhere in the flow head, so every
    # pixel's cross-entropy is log 2, except pixel 2, whose logits (2, 0) against class 1 give
    # log(1 + e^2). Pixel 1 is ignored; pixels 0 and 2 move.
    logits = torch.zeros(1, 2, 1, 3)
    logits[0, 0, 0, 2] = 2.0
    target = torch.tensor([[[1, IGNORE, 1]]])
    moving = torch.tensor([[[True, True, True]]])
    moving[0, 0, 0] = False
    heads = {'fused': logits.clone(), 'flow': logits.clone().requires_grad_()}
    loss = Flow2SegLoss(alpha=1.0, moving_weight=3.0, moving_heads=('flow',))
    total, parts = loss(heads, target, moving)
    # Pixel 0 weighs 1, pixel 2 weighs 1 + 3 = 4; the ignored pixel weighs nothing.
    ce0, ce2 = math.log(2.0), math.log(1.0 + math.exp(2.0))
    assert parts['flow'].item() == pytest.approx((1 * ce0 + 4 * ce2) / (1 + 4), rel=1e-6)
    # The fused head is not named: its plain mean.
    assert parts['fused'].item() == pytest.approx((ce0 + ce2) / 2, rel=1e-6)
    assert total.item() == pytest.approx(parts['fused'].item() + parts['flow'].item(), rel=1e-6)
    # Off (weight 0), or nothing moving, is the plain mean.
    plain = Flow2SegLoss(alpha=1.0)(heads, target)[1]['flow'].item()
    assert plain == pytest.approx((ce0 + ce2) / 2, rel=1e-6)
    still = loss(heads, target, torch.zeros_like(moving))[1]['flow'].item()
    assert still == pytest.approx(plain, rel=1e-6)
    total.backward()
    assert heads['flow'].grad[0, :, 0, 1].abs().sum() == 0     # the ignored pixel


def test_moving_weight_needs_a_mask_and_known_heads():
    heads, target = _heads(), _target()
    with pytest.raises(ValueError, match='moving mask'):
        Flow2SegLoss(moving_weight=1.0)(heads, target)
    with pytest.raises(ValueError, match='moving mask'):
        Flow2SegLoss(moving_weight=1.0)(heads, target, torch.zeros(2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match='moving_heads'):
        Flow2SegLoss(moving_heads=('optical',))
    with pytest.raises(ValueError, match='moving_weight'):
        Flow2SegLoss(moving_weight=-1.0)


def _softmax2(a, b):
    ea, eb = math.exp(a), math.exp(b)
    return ea / (ea + eb), eb / (ea + eb)


def test_temporal_consistency_matches_a_hand_computation():
    # 1 x 2 classes x 2 rows x 3 columns; the flow says every pixel was one column to the left
    # in frame t-1 (dx = -1): column 0 came from outside the frame and does not count, and the
    # mask drops pixel (row 1, column 2): three pixels count.
    cur = torch.tensor([[[[0.0, 1.0, 2.0], [0.5, -1.0, 3.0]],
                         [[1.0, 0.0, -2.0], [0.0, 2.0, 1.0]]]], dtype=torch.float64)
    prev = torch.tensor([[[[2.0, 0.0, 1.0], [-1.0, 1.0, 0.0]],
                          [[0.0, 0.5, 1.0], [1.0, 0.0, 2.0]]]], dtype=torch.float64)
    flow = torch.zeros(1, 2, 2, 3, dtype=torch.float64)
    flow[:, 0] = -1.0
    mask = torch.ones(1, 2, 3, dtype=torch.bool)
    mask[0, 1, 2] = False
    loss = TemporalConsistencyLoss()(cur, prev, flow, mask)
    # By hand: counted pixels (r, c) with c >= 1 and (r, c) != (1, 2); frame t-1 at (r, c - 1).
    terms = []
    for r, c in ((0, 1), (0, 2), (1, 1)):
        p = _softmax2(float(cur[0, 0, r, c]), float(cur[0, 1, r, c]))
        q = _softmax2(float(prev[0, 0, r, c - 1]), float(prev[0, 1, r, c - 1]))
        terms.append((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2)
    assert loss.item() == pytest.approx(sum(terms) / 3, rel=1e-12)


def test_temporal_consistency_gradient_and_detached_previous_frame():
    g = torch.Generator().manual_seed(3)
    cur = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    prev = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    flow = torch.randn(2, 2, 4, 5, generator=g, dtype=torch.float64) * 0.7
    mask = torch.rand(2, 4, 5, generator=g) > 0.3
    both = TemporalConsistencyLoss(detach_prev=False)
    assert torch.autograd.gradcheck(lambda a, b: both(a, b, flow, mask), (cur, prev))
    TemporalConsistencyLoss()(cur, prev, flow, mask).backward()
    assert cur.grad.abs().sum() > 0
    assert prev.grad is None                       # frame t-1 is a fixed target by default
    # Agreeing predictions of a static scene cost nothing.
    same = TemporalConsistencyLoss()(cur, cur, torch.zeros_like(flow), mask)
    assert same.item() == pytest.approx(0.0, abs=1e-15)


def test_temporal_consistency_without_counted_pixels_is_zero_and_shapes_are_checked():
    cur = torch.randn(1, 2, 3, 3, requires_grad=True)
    loss = TemporalConsistencyLoss()(cur, cur, torch.zeros(1, 2, 3, 3),
                                     torch.zeros(1, 3, 3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    with pytest.raises(ValueError, match='mask'):
        TemporalConsistencyLoss()(cur, cur, torch.zeros(1, 2, 3, 3),
                                  torch.ones(1, 3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match='differ in shape'):
        TemporalConsistencyLoss()(cur, torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 3),
                                  torch.ones(1, 3, 3, dtype=torch.bool))


def test_warp_to_current_samples_frame_t_minus_1_at_x_plus_flow():
    prev = torch.arange(12, dtype=torch.float32).view(1, 1, 3, 4)
    flow = torch.zeros(1, 2, 3, 4)
    flow[:, 0] = 1.0                               # was one column to the right
    flow[:, 1, 0] = 0.5                            # row 0: half a row down
    warped, inside = warp_to_current(prev, flow)
    assert torch.equal(warped[0, 0, 1:, :3], prev[0, 0, 1:, 1:])
    assert torch.allclose(warped[0, 0, 0, :3], (prev[0, 0, 0, 1:] + prev[0, 0, 1, 1:]) / 2)
    assert inside[0, :, :3].all() and not inside[0, :, 3].any()


def test_forward_backward_check_flags_inconsistent_flow():
    fwd = torch.zeros(1, 2, 4, 6)
    fwd[:, 0] = 2.0                                # t -> t-1: two columns right
    bwd = -fwd                                     # t-1 -> t: two columns left (consistent)
    ok = flow_consistency_mask(fwd, bwd)
    assert ok[0, :, :4].all() and not ok[0, :, 4:].any()      # columns 4, 5 leave the frame
    bad = bwd.clone()
    bad[0, :, 1:3, 3:5] = 0.0        # t-1's pixels there do not come back: occluded in t
    flagged = flow_consistency_mask(fwd, bad)
    assert not flagged[0, 1:3, 1:3].any() and flagged[0, 0, :4].all()
