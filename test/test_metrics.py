"""Confusion-matrix metrics, nearest warping and temporal consistency on hand-made maps."""
import numpy as np
import pytest

from flow2seg_ros.classes import ClassSet
from flow2seg_ros.metrics import ConfusionMatrix, HeadsEvaluator, TemporalConsistency, \
    warp_nearest


def test_iou_matches_a_hand_count_and_skips_ignore():
    target = np.array([[0, 0, 1, 1], [2, 2, 255, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 0]], np.uint8)
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    # class 0: tp 1, fn 1, fp 1 -> 1/3; class 1: tp 2, fp 1 -> 2/3; class 2: tp 1, fn 1 -> 1/2
    np.testing.assert_allclose(cm.iou(), [1 / 3, 2 / 3, 1 / 2])
    assert cm.miou() == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert cm.pixel_accuracy() == pytest.approx(4 / 6)


def test_a_prediction_of_ignore_is_wrong_but_no_class_false_positive():
    cm = ConfusionMatrix(2)
    cm.update(np.array([[255, 1]], np.uint8), np.array([[0, 1]], np.uint8))
    np.testing.assert_allclose(cm.iou(), [0.0, 1.0])
    assert cm.pixel_accuracy() == pytest.approx(0.5)


def test_absent_class_is_nan_and_left_out_of_the_mean():
    cm = ConfusionMatrix(3)
    cm.update(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8))
    assert np.isnan(cm.iou()[1]) and cm.miou() == 1.0


def test_warp_nearest_samples_at_x_plus_flow():
    labels = np.arange(16, dtype=np.uint8).reshape(4, 4)
    flow = np.zeros((2, 4, 4), np.float32)
    flow[0] = 1.0  # look one pixel to the right
    out = warp_nearest(labels, flow)
    np.testing.assert_array_equal(out[:, :3], labels[:, 1:])
    assert (out[:, 3] == 255).all()


def test_tc_is_one_for_a_prediction_that_moves_with_the_flow_and_drops_for_flicker():
    a = np.zeros((8, 8), np.uint8)
    a[:, 4:] = 1
    moved = np.roll(a, 1, axis=1)  # the scene moved one pixel right from t to t+1
    flow = np.zeros((2, 8, 8), np.float32)
    flow[0] = 1.0
    tc = TemporalConsistency(2)
    tc.update(a, moved, flow)
    assert tc.value() == pytest.approx(1.0)
    flicker = TemporalConsistency(2)
    flicker.update(a, 1 - moved, flow)
    assert flicker.value() < 0.2


def test_heads_evaluator_scores_each_head_and_pairs_only_within_a_sequence():
    classes = ClassSet(('a', 'b'), ((0, 0, 0), (255, 255, 255)))
    still = lambda prev, cur: __import__('torch').zeros(2, *cur.shape[:2])  # noqa: E731
    ev = HeadsEvaluator(classes, tc_flow=still)
    rgb = np.zeros((4, 4, 3), np.uint8)
    target = np.zeros((4, 4), np.uint8)
    target[:, 2:] = 1
    wrong = 1 - target
    ev.update(rgb, {'fused': target, 'image': wrong, 'flow': None}, target)
    ev.update(rgb, {'fused': target, 'image': target, 'flow': target}, target)
    ev.new_sequence()
    ev.update(rgb, {'fused': wrong, 'image': target, 'flow': None}, None)
    s = ev.summary()
    assert s['frames'] == 3 and s['labelled_frames'] == 2
    assert s['heads']['fused']['miou'] == pytest.approx(1.0)
    assert s['heads']['image']['miou'] == pytest.approx(1 / 3)  # 8 tp of 24 in union, each class
    assert s['heads']['flow']['miou'] == pytest.approx(1.0)
    assert s['heads']['fused']['tc_pairs'] == 1  # no pair across the sequence boundary
    assert s['heads']['image']['tc'] == pytest.approx(0.0)
    assert 'fused' in ev.table()
