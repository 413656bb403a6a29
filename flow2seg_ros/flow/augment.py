"""Training samples for the learned flow: augmentation of ground-truth pairs, and warped pairs.

Samples are dicts as :class:`flow2seg_ros.data.flow_pairs.FlowPairs` yields them: ``prev``,
``cur`` (H, W, 3) uint8 RGB, ``flow`` (2, H, W) float32 from ``cur`` to ``prev`` in pixels,
``valid`` and ``moving`` (H, W) bool.

:class:`FlowPairTransform` applies segmentation training's augmentation
(:class:`flow2seg_ros.data.cityscapes.PairTransform`: random scale, crop, horizontal flip, colour
jitter) with the flow transformed to match: scaling multiplies it, a flip negates ``dx``.

:func:`random_warp_pair` makes a pair with exact flow from a single frame: the frame seen through
two nearby affine cameras (zoom, rotation, shift, as a moving camera), with up to a few patches
of another frame pasted on top and moving on their own (as cars and pedestrians), like the
FlyingChairs recipe on street frames. Pixels hidden in the previous frame are invalid.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import cv2
import numpy as np
import torch

from flow2seg_ros.data.cityscapes import _jitter, check_augmentation

__all__ = ['FlowPairTransform', 'random_warp_pair']


class FlowPairTransform:
    """Random scale, crop, horizontal flip and colour jitter of a flow sample.

    Both frames get the same geometry and colour change; the flow is resized with the frames and
    multiplied by the scale, negated in x by a flip; ``valid`` and ``moving`` follow with
    nearest-neighbour resizing. Padding (a crop larger than the scaled frame) is invalid.

    Args:
        crop_size: (height, width) of the output.
        scale_range: (min, max) of the random scale factor.
        hflip: flip horizontally with probability 0.5.
        color_jitter: strength of brightness, contrast and saturation jitter (0 = none), as
            :class:`~flow2seg_ros.data.cityscapes.PairTransform`.
        generator: torch.Generator for reproducible draws (the global RNG when None).
    """

    def __init__(self, crop_size: tuple[int, int], *,
                 scale_range: tuple[float, float] = (1.0, 1.0), hflip: bool = True,
                 color_jitter: float = 0.0, generator: Optional[torch.Generator] = None) -> None:
        check_augmentation(crop_size, scale_range, color_jitter)
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.hflip = hflip
        self.color_jitter = float(color_jitter)
        self.generator = generator

    def _uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=self.generator))

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        prev, cur, flow = sample['prev'], sample['cur'], sample['flow']
        valid, moving = sample['valid'], sample['moving']
        h, w = cur.shape[:2]
        if self.color_jitter > 0:
            j = self.color_jitter
            params = (self._uniform(1 - j, 1 + j), self._uniform(1 - j, 1 + j),
                      self._uniform(1 - j, 1 + j), self._uniform(-j / 10, j / 10))
            cur, prev = _jitter(cur, *params), _jitter(prev, *params)
        scale = self._uniform(*self.scale_range)
        sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
        uv = flow.transpose(1, 2, 0)
        masks = (valid.astype(np.uint8) | (moving.astype(np.uint8) << 1))
        if (sh, sw) != (h, w):
            cur = cv2.resize(cur, (sw, sh), interpolation=cv2.INTER_LINEAR)
            prev = cv2.resize(prev, (sw, sh), interpolation=cv2.INTER_LINEAR)
            uv = cv2.resize(uv, (sw, sh), interpolation=cv2.INTER_LINEAR)
            uv *= np.array([sw / w, sh / h], np.float32)
            masks = cv2.resize(masks, (sw, sh), interpolation=cv2.INTER_NEAREST)
        ch, cw = self.crop_size
        pad_h, pad_w = max(ch - sh, 0), max(cw - sw, 0)
        if pad_h or pad_w:
            border = (0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT)
            cur = cv2.copyMakeBorder(cur, *border, value=0)
            prev = cv2.copyMakeBorder(prev, *border, value=0)
            uv = cv2.copyMakeBorder(uv, *border, value=0)
            masks = cv2.copyMakeBorder(masks, *border, value=0)
        y0 = int(torch.randint(0, cur.shape[0] - ch + 1, (), generator=self.generator))
        x0 = int(torch.randint(0, cur.shape[1] - cw + 1, (), generator=self.generator))
        window = (slice(y0, y0 + ch), slice(x0, x0 + cw))
        cur, prev, uv, masks = cur[window], prev[window], uv[window], masks[window]
        if self.hflip and float(torch.rand((), generator=self.generator)) < 0.5:
            cur, prev, uv, masks = cur[:, ::-1], prev[:, ::-1], uv[:, ::-1], masks[:, ::-1]
            uv = uv * np.array([-1.0, 1.0], np.float32)
        out = dict(sample)
        out.update(cur=np.ascontiguousarray(cur), prev=np.ascontiguousarray(prev),
                   flow=np.ascontiguousarray(uv.transpose(2, 0, 1), dtype=np.float32),
                   valid=(masks & 1) > 0, moving=(masks & 2) > 0)
        return out


def _affine(rng: np.random.Generator, h: int, w: int, *, shift: float, zoom: float,
            rot_deg: float) -> np.ndarray:
    """A random 3x3 affine map of pixel coordinates: zoom and rotation about a random point
    near the centre, then a shift."""
    cx, cy = w * rng.uniform(0.3, 0.7), h * rng.uniform(0.3, 0.7)
    s = math.exp(rng.uniform(-zoom, zoom))
    a = math.radians(rng.uniform(-rot_deg, rot_deg))
    c, si = s * math.cos(a), s * math.sin(a)
    tx, ty = rng.uniform(-shift, shift, 2)
    return np.array([[c, -si, cx - c * cx + si * cy + tx],
                     [si, c, cy - si * cx - c * cy + ty],
                     [0.0, 0.0, 1.0]])


def _render(src: np.ndarray, mapping: np.ndarray, h: int, w: int) -> np.ndarray:
    """``out(x) = src(mapping @ x)`` (bilinear, reflected at the border)."""
    return cv2.warpAffine(src, mapping[:2], (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT101)


def _blob(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random ellipse or polygon mask (uint8 0/1) of object size, in the current frame."""
    mask = np.zeros((h, w), np.uint8)
    cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.25, 0.95) * h
    rx, ry = rng.uniform(0.04, 0.2) * w, rng.uniform(0.06, 0.3) * h
    if rng.random() < 0.5:
        cv2.ellipse(mask, (int(cx), int(cy)), (int(rx), int(ry)), float(rng.uniform(0, 180)),
                    0, 360, 1, -1)
    else:
        n = int(rng.integers(3, 8))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = rng.uniform(0.5, 1.0, n)
        pts = np.stack([cx + rx * rad * np.cos(ang), cy + ry * rad * np.sin(ang)], 1)
        cv2.fillPoly(mask, [pts.astype(np.int32)], 1)
    return mask


def random_warp_pair(frame: np.ndarray, rng: np.random.Generator, *,
                     other: Optional[np.ndarray] = None, max_objects: int = 3,
                     shift: float = 6.0, object_shift: float = 15.0,
                     noise: float = 2.0) -> dict[str, Any]:
    """A frame pair with exact flow made from one frame (and ``other`` for the objects).

    Args:
        frame: (H, W, 3) uint8 RGB, the scene.
        rng: numpy random generator.
        other: (H, W, 3) uint8 RGB the moving patches are cut from (``frame`` when None).
        max_objects: up to this many independently moving patches (0 = camera motion only).
        shift: largest camera shift between the frames in pixels (each axis).
        object_shift: largest extra shift of a patch in pixels (each axis).
        noise: std of independent Gaussian pixel noise added to each frame.

    Returns:
        A sample dict (``prev``, ``cur``, ``flow``, ``valid``, ``moving``, ``name``).
    """
    h, w = frame.shape[:2]
    other = frame if other is None else other
    xs = np.arange(w, dtype=np.float32)[None, :]
    ys = np.arange(h, dtype=np.float32)[:, None]

    def apply(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = m.astype(np.float32)
        return m[0, 0] * xs + m[0, 1] * ys + m[0, 2], m[1, 0] * xs + m[1, 1] * ys + m[1, 2]

    # Current frame: scene through camera A. Motion T maps each current pixel to where the same
    # scene point is in the previous frame, whose camera is therefore B = A T^-1.
    cam = _affine(rng, h, w, shift=4.0, zoom=0.08, rot_deg=2.0)
    big = rng.random() < 0.2
    motion = _affine(rng, h, w, shift=shift * (2.5 if big else 1.0), zoom=0.03, rot_deg=1.0)
    cur = _render(frame, cam, h, w)
    prev = _render(frame, cam @ np.linalg.inv(motion), h, w)
    target = np.stack(apply(motion))
    layer_cur = np.zeros((h, w), np.int32)
    layer_prev = np.zeros((h, w), np.int32)
    for k in range(1, int(rng.integers(0, max_objects + 1)) + 1):
        mask = _blob(rng, h, w)
        src = _affine(rng, h, w, shift=w / 3, zoom=0.2, rot_deg=10.0)
        obj_motion = _affine(rng, h, w, shift=object_shift, zoom=0.05, rot_deg=3.0) @ motion
        inv = np.linalg.inv(obj_motion)
        on_cur = mask > 0
        cur[on_cur] = _render(other, src, h, w)[on_cur]
        on_prev = _render(mask, inv, h, w) > 0
        prev[on_prev] = _render(other, src @ inv, h, w)[on_prev]
        target[:, on_cur] = np.stack(apply(obj_motion))[:, on_cur]
        layer_cur[on_cur] = k
        layer_prev[on_prev] = k
    flow = target - np.stack(np.broadcast_arrays(xs, ys))
    tx, ty = np.rint(target[0]).astype(np.int64), np.rint(target[1]).astype(np.int64)
    inside = (tx >= 0) & (tx < w) & (ty >= 0) & (ty < h)
    seen = np.zeros((h, w), bool)
    seen[inside] = layer_prev[ty[inside], tx[inside]] == layer_cur[inside]
    if noise > 0:
        cur, prev = (np.clip(img + noise * rng.standard_normal(img.shape, dtype=np.float32),
                             0, 255).astype(np.uint8) for img in (cur, prev))
    return {'prev': prev, 'cur': cur, 'flow': flow, 'valid': seen, 'moving': layer_cur > 0,
            'name': 'warp'}
