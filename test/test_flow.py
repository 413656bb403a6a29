"""Optical flow estimators: direction convention, accuracy, scaling, RAFT plumbing."""
import cv2
import numpy as np
import pytest
import torch

from flow2seg_ros.flow import (DISFlow, make_flow_estimator, RAFTFlow, scale_flow)
from flow2seg_ros.flow.raft import find_raft_weights


def textured(h=128, w=192, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h // 4, w // 4, 3), np.uint8)
    img = cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC)
    return cv2.GaussianBlur(img, (3, 3), 0)


def shifted(img, dx, dy):
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), borderMode=cv2.BORDER_REFLECT)


@pytest.mark.parametrize('preset', ['ultrafast', 'fast', 'medium'])
def test_dis_recovers_a_known_translation_within_half_a_pixel(preset):
    prev = textured()
    cur = shifted(prev, 3.0, -2.0)  # content moved by (+3, -2) from prev to cur
    flow = make_flow_estimator('dis', preset)(prev, cur)
    assert flow.shape == (2, 128, 192) and flow.dtype == torch.float32
    # current -> previous: each pixel of cur came from (x - 3, y + 2) in prev
    inner = flow[:, 16:-16, 16:-16]
    err = torch.sqrt((inner[0] + 3.0) ** 2 + (inner[1] - 2.0) ** 2)
    assert err.mean() < 0.5, f'mean end-point error {err.mean():.3f} px'


def test_farneback_follows_the_same_direction_convention():
    prev = textured(seed=1)
    cur = shifted(prev, 2.0, 1.0)
    flow = make_flow_estimator('farneback')(prev, cur)[:, 16:-16, 16:-16]
    assert abs(flow[0].median().item() + 2.0) < 0.5
    assert abs(flow[1].median().item() + 1.0) < 0.5


def test_scale_is_fixed_relative_to_width_not_per_frame():
    flow = torch.full((1, 2, 8, 16), 4.0)
    assert torch.allclose(scale_flow(flow, 20.0), torch.full_like(flow, 4.0 * 20.0 / 16))
    small_motion = torch.full((1, 2, 8, 16), 0.5)
    assert torch.allclose(scale_flow(small_motion, 20.0), small_motion * 20.0 / 16)


def test_bad_frames_and_names_are_refused():
    est = DISFlow()
    with pytest.raises(ValueError, match='one size'):
        est(textured(64, 64), textured(64, 96))
    with pytest.raises(ValueError, match='uint8'):
        est(np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match='unknown flow method'):
        make_flow_estimator('lucas-kanade')
    with pytest.raises(ValueError, match='unknown DIS preset'):
        make_flow_estimator('dis', 'turbo')


def test_raft_without_weights_fails_at_construction_naming_where_to_put_them(
        tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    with pytest.raises(FileNotFoundError, match='raft_small.safetensors'):
        make_flow_estimator('raft_small')
    with pytest.raises(FileNotFoundError, match='missing.safetensors'):
        find_raft_weights('raft_large', tmp_path / 'missing.safetensors')


def test_raft_refuses_a_file_that_is_not_safetensors(tmp_path):
    bad = tmp_path / 'raft_small.safetensors'
    bad.write_bytes(b'\x80\x04not a safetensors file')
    with pytest.raises(ValueError, match='not a valid safetensors'):
        RAFTFlow('raft_small', weights=bad)


def test_raft_loads_local_safetensors_and_returns_current_to_previous_flow(tmp_path):
    from safetensors.torch import save_file
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    path = tmp_path / 'raft_small.safetensors'
    save_file(raft_small(weights=None).state_dict(), str(path))
    est = make_flow_estimator('raft_small', '2', weights=str(path))
    prev = textured(130, 134)  # not divisible by 8: padded and cropped back
    flow = est(prev, shifted(prev, 1.0, 0.0))
    assert flow.shape == (2, 130, 134) and torch.isfinite(flow).all()
