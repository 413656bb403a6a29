"""Flow2SegLoss against its formula, computed by hand."""
import pytest
import torch
import torch.nn.functional as F

from flow2seg_ros.losses import Flow2SegLoss

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
