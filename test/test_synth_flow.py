"""Ground-truth flow of the synthetic generator: warping, analytic camera motions, occlusion."""
import math

import cv2
import numpy as np
import pytest

from flow2seg_ros.data import synth
from flow2seg_ros.data.synth_flow import ground_truth_flow, RenderedFrame
from flow2seg_ros.data.synth_world import HFOV_DEG

SIZE = (128, 64)


def _warp(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample ``img`` (the previous frame) at each pixel + flow: the current frame, predicted."""
    h, w = flow.shape[1:]
    mx = (np.arange(w, dtype=np.float32)[None, :] + flow[0]).astype(np.float32)
    my = (np.arange(h, dtype=np.float32)[:, None] + flow[1]).astype(np.float32)
    return cv2.remap(img, mx, my, cv2.INTER_LINEAR).astype(np.float32)


@pytest.mark.parametrize('seed', [11, 21])
def test_warping_previous_frame_with_ground_truth_reproduces_current(seed: int) -> None:
    with synth.SynthSequence(seed, 4, SIZE) as scene:
        scene.noise_sigma = 0.0        # sensor noise is not motion; flow does not depend on it
        scene.blur = False
        frames = [scene.render_frame(f) for f in range(4)]
    err = {'exact': [], 'none': [], 'dx1': [], 'dy1': [], 'moving': [], 'moving_none': []}
    moving_labels = set(synth.MOVING_LABEL_IDS)
    for prev, cur in zip(frames, frames[1:]):
        flow, valid, moving = ground_truth_flow(prev, cur)
        assert flow.shape == (2, SIZE[1], SIZE[0]) and flow.dtype == np.float32
        assert valid.mean() > 0.8
        assert set(np.unique(cur.labels[moving]).tolist()) <= moving_labels
        grey = cv2.cvtColor(cur.rgb, cv2.COLOR_RGB2GRAY)
        textured = valid & (np.abs(cv2.Laplacian(grey, cv2.CV_32F)) > 10)
        rgb = cur.rgb.astype(np.float32)

        def abs_err(f: np.ndarray) -> np.ndarray:
            return np.abs(_warp(prev.rgb, f) - rgb).mean(-1)

        exact = abs_err(flow)
        still = abs_err(np.zeros_like(flow))
        err['exact'].append(exact[textured])
        err['none'].append(still[textured])
        err['dx1'].append(abs_err(flow + np.float32([1, 0])[:, None, None])[textured])
        err['dy1'].append(abs_err(flow + np.float32([0, 1])[:, None, None])[textured])
        err['moving'].append(exact[textured & moving])
        err['moving_none'].append(still[textured & moving])
    mean = {k: float(np.concatenate(v).mean()) for k, v in err.items()}
    assert sum(len(v) for v in err['moving']) > 100, 'too few moving pixels to check'
    assert mean['exact'] < 0.8 * mean['none'], mean
    # The exact flow beats the same flow off by one pixel either way: it is not just roughly right.
    assert mean['exact'] < mean['dx1'] and mean['exact'] < mean['dy1'], mean
    assert mean['moving'] < 0.8 * mean['moving_none'], mean


class _WallScene(synth.SynthSequence):
    """A textured wall facing the camera at ``distance`` metres (its top at 3 m, sky above), a
    post in front of it, no moving objects; the camera moves as ``motion(frame)`` says."""

    def __init__(self, motion, *, distance: float = 10.0, post: bool = False) -> None:
        self._motion, self._distance, self._post = motion, distance, post
        super().__init__(0, 2, SIZE)

    def _build(self) -> None:
        tex = self._load_texture('checker', np.array([150.0, 120.0, 90.0]))
        d = self._distance
        # Front face at x = d: a box 0.2 m deep centred 0.1 m behind it.
        self._body(21, 'box', (0.1, 40.0, 11.5), (d + 0.1, 0.0, -8.5), 0.0, tex, [1, 1, 1, 1])
        if self._post:
            self._body(17, 'box', (0.1, 0.15, 5.0), (d / 2, 0.0, 0.0), 0.0, None,
                       [0.2, 0.2, 0.2, 1])
        self.movers = []
        self.light_dir, self.light_color = [0.5, 0.5, 1.0], [1.0, 1.0, 1.0]
        self.ambient, self.diffuse, self.shadow = 0.6, 0.4, 0
        self.sky_top = self.sky_horizon = np.array([100.0, 150.0, 220.0])
        self.gain, self.noise_sigma, self.blur, self.shake = 1.0, 0.0, False, 0.0
        self._sky_img = None
        self._lut = np.full(max(self._labels) + 2, synth.LABEL_IDS['sky'], np.uint8)
        for body, label in self._labels.items():
            self._lut[body + 1] = label

    def camera_pose(self, frame: int):
        (x, y, z), yaw = self._motion(frame)
        return (x, y, z), yaw, 0.0


def _render_pair(motion, **kwargs) -> tuple[RenderedFrame, RenderedFrame]:
    with _WallScene(motion, **kwargs) as scene:
        return scene.render_frame(0), scene.render_frame(1)


def _focal_px() -> float:
    return SIZE[0] / 2 / math.tan(math.radians(HFOV_DEG / 2))


def test_sideways_camera_translation_gives_analytic_flow() -> None:
    b = 0.3                                            # metres to the right per frame
    prev, cur = _render_pair(lambda f: ((0.0, -b * f, 1.5), 0.0))
    flow, valid, moving = ground_truth_flow(prev, cur)
    wall = cur.body_ids >= 0
    sky = ~wall
    assert wall.mean() > 0.5 and sky.mean() > 0.1
    # A point of the wall (depth 10 m) was f * b / 10 px further right; the sky did not move.
    expect = _focal_px() * b / 10.0
    np.testing.assert_allclose(flow[0][wall], expect, atol=1e-2)
    np.testing.assert_allclose(flow[1][wall], 0.0, atol=1e-2)
    np.testing.assert_allclose(flow[:, sky], 0.0, atol=1e-3)
    assert not moving.any()
    # Valid except where the wall point was right of the previous image.
    cols = np.arange(SIZE[0])[None, :].repeat(SIZE[1], 0)
    out_of_view = wall & (cols + expect > SIZE[0] - 1)
    assert not valid[out_of_view].any()
    assert valid[wall & ~out_of_view].all()


def test_forward_camera_translation_gives_analytic_flow() -> None:
    s = 0.5                                            # metres forward per frame
    prev, cur = _render_pair(lambda f: ((s * f, 0.0, 1.5), 0.0))
    flow, valid, _ = ground_truth_flow(prev, cur)
    wall = cur.body_ids >= 0
    # Radial from the principal point (pixel column W/2, row H/2 - 1 in TinyRenderer's grid):
    # an offset r from it at depth D - s was r (D - s) / D before.
    cx, cy = SIZE[0] / 2, SIZE[1] / 2 - 1
    rows, cols = np.mgrid[0:SIZE[1], 0:SIZE[0]].astype(np.float64)
    k = (10.0 - s) / 10.0 - 1.0
    np.testing.assert_allclose(flow[0][wall], ((cols - cx) * k)[wall], atol=1e-2)
    np.testing.assert_allclose(flow[1][wall], ((rows - cy) * k)[wall], atol=1e-2)
    assert valid[wall].mean() > 0.95


def test_pure_camera_rotation_gives_analytic_flow_on_wall_and_sky() -> None:
    theta = math.radians(2.0)                          # the camera turns left by 2 degrees
    prev, cur = _render_pair(lambda f: ((0.0, 0.0, 1.5), theta * f))
    flow, valid, _ = ground_truth_flow(prev, cur)
    w, h = SIZE
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    a = (2 * cols / w - 1) / cur.proj_x                 # the pixel's ray (a, b, -1) now
    b = (1 - 2 * (rows + 1) / h) / cur.proj_y
    depth = math.cos(theta) + a * math.sin(theta)       # the same ray in the previous camera
    x_prev = (cur.proj_x * (a * math.cos(theta) - math.sin(theta)) / depth + 1) * w / 2
    y_prev = (1 - cur.proj_y * b / depth) * h / 2 - 1
    np.testing.assert_allclose(flow[0], x_prev - cols, atol=1e-2)
    np.testing.assert_allclose(flow[1], y_prev - rows, atol=1e-2)
    assert flow[0].mean() < -3.0                       # turning left: the scene moves right
    assert (cur.body_ids < 0).mean() > 0.1 and (cur.body_ids >= 0).mean() > 0.5
    inside = (x_prev >= 0) & (x_prev <= w - 1) & (y_prev >= 0) & (y_prev <= h - 1)
    assert valid[inside].all()
    assert not valid[~inside].any()


def test_points_hidden_in_the_previous_frame_are_invalid() -> None:
    b = 0.3
    prev, cur = _render_pair(lambda f: ((0.0, -b * f, 1.5), 0.0), post=True)
    flow, valid, _ = ground_truth_flow(prev, cur)
    wall_id, post_id = 0, 1
    wall = cur.body_ids == wall_id
    assert (cur.body_ids == post_id).any()
    # Where a wall pixel was in the previous frame: the four pixels around that position show
    # the post (hidden), the wall (visible) or both (the post's edge: either is right).
    x0 = np.floor(np.arange(SIZE[0])[None, :] + flow[0]).astype(int).clip(0, SIZE[0] - 2)
    y0 = np.floor(np.arange(SIZE[1])[:, None] + flow[1]).astype(int).clip(0, SIZE[1] - 2)
    around = np.stack([prev.body_ids[y0 + dy, x0 + dx] for dy in (0, 1) for dx in (0, 1)])
    hidden = wall & (around == post_id).all(0)
    seen = wall & (around == wall_id).all(0)
    assert hidden.sum() >= SIZE[1] // 2, 'the post hides no part of the wall'
    assert not valid[hidden].any()
    in_view = np.arange(SIZE[0])[None, :] + flow[0] <= SIZE[0] - 1
    assert valid[seen & in_view].all()
    assert (seen & in_view).sum() > 0.8 * wall.sum()
    # The post's front face is at 4.9 m: it moves about twice as far in the image as the wall.
    post = cur.body_ids == post_id
    np.testing.assert_allclose(flow[0][post], _focal_px() * b / 4.9, atol=1e-2)


def test_moving_mask_marks_walking_and_driving_bodies_only() -> None:
    person, car = synth.LABEL_IDS['person'], synth.LABEL_IDS['car']
    with synth.SynthSequence(14, 2, SIZE) as scene:     # a sequence with a standing pedestrian
        prev, cur = scene.render_frame(0), scene.render_frame(1)
        going = [b for m in scene.movers if m.gait > 0 or m.label == car for b, _ in m.parts]
        standing = [b for m in scene.movers if m.gait == 0 and m.label == person
                    for b, _ in m.parts]
    _, _, moving = ground_truth_flow(prev, cur)
    assert np.isin(cur.body_ids, standing).sum() > 10, 'no standing pedestrian in view'
    assert moving.any()
    # Standing pedestrians are part of the static scene.
    np.testing.assert_array_equal(moving, np.isin(cur.body_ids, going))


def test_frames_of_other_sizes_are_refused() -> None:
    with synth.SynthSequence(5, 1, SIZE) as a, synth.SynthSequence(5, 1, (64, 32)) as b:
        fa, fb = a.render_frame(0), b.render_frame(0)
    with pytest.raises(ValueError, match='frames differ in size'):
        ground_truth_flow(fa, fb)
