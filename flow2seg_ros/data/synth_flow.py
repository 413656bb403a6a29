"""Exact optical flow of a rendered synthetic frame, from its geometry.

The generator knows, for every frame, the camera's pose and projection, every pixel's depth and
body id (pybullet's segmentation mask) and the pose of every moving body. A pixel of the current
frame is lifted to its 3D point with its depth, carried back to where that point was one frame
earlier (static bodies do not move; a moving body's point moves with the body's rigid motion from
the previous frame to the current one) and projected with the previous frame's camera. The flow is
that position minus the pixel's, the convention of :mod:`flow2seg_ros.flow` (for each pixel of the
current frame, the offset (dx, dy) to where it was in the previous frame).

Validity: a pixel is invalid where its point was behind the previous camera, out of the previous
image, or hidden there: among the (up to four) pixels of the previous frame around its projected
position, none shows the same body at the projected depth (within a tolerance). Sky pixels are
points at infinity: their flow comes from the camera's rotation alone, and they are valid where the
previous frame showed sky around the projected position.

Pixel convention of pybullet's TinyRenderer (checked by rendering edges at sub-pixel positions):
column ``i`` samples the normalised device coordinate ``x = 2 i / W - 1`` and row ``r`` samples
``y = 1 - 2 (r + 1) / H``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ['RenderedFrame', 'ground_truth_flow', 'pixel_rays']


@dataclass
class RenderedFrame:
    """One rendered frame with the geometry behind it.

    Attributes:
        rgb: (H, W, 3) uint8 RGB image as written.
        labels: (H, W) uint8 Cityscapes label ids.
        body_ids: (H, W) int32 pybullet body id per pixel, -1 for sky.
        depth: (H, W) float32 depth along the optical axis in metres (inf for sky).
        view: (4, 4) float64 world -> camera transform (OpenGL camera: x right, y up, looking
            down -z).
        proj_x: focal term of the projection: ``x_ndc = proj_x * x_cam / -z_cam``.
        proj_y: focal term of the projection: ``y_ndc = proj_y * y_cam / -z_cam``.
        near: near clipping distance in metres.
        poses: (4, 4) world-from-body transform of every moving object's body at this frame.
    """

    rgb: np.ndarray
    labels: np.ndarray
    body_ids: np.ndarray
    depth: np.ndarray
    view: np.ndarray
    proj_x: float
    proj_y: float
    near: float
    poses: dict[int, np.ndarray] = field(default_factory=dict)


def pixel_rays(width: int, height: int, proj_x: float, proj_y: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame ray slopes of the pixel grid: the point at depth z of pixel (r, i) is
    ``(a[i] * z, b[r] * z, -z)``.

    Returns:
        a: (W,) float64, b: (H,) float64.
    """
    ndc_x = 2.0 * np.arange(width, dtype=np.float64) / width - 1.0
    ndc_y = 1.0 - 2.0 * (np.arange(height, dtype=np.float64) + 1.0) / height
    return ndc_x / proj_x, ndc_y / proj_y


def _rigid_motions(prev: RenderedFrame, cur: RenderedFrame) -> tuple[list[int], np.ndarray]:
    """Bodies that moved between the frames and their (4, 4) motion, world now -> world before."""
    bodies, motions = [], []
    for body, pose in cur.poses.items():
        before = prev.poses.get(body)
        if before is None:
            raise ValueError(f'body {body} has a pose in the current frame but not in the '
                             'previous one')
        if np.allclose(before, pose, rtol=0.0, atol=1e-9):
            continue
        bodies.append(int(body))
        motions.append(before @ np.linalg.inv(pose))
    return bodies, np.asarray(motions).reshape(-1, 4, 4)


def ground_truth_flow(prev: RenderedFrame, cur: RenderedFrame, *, rel_tol: float = 0.01,
                      abs_tol: float = 0.03) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact flow of ``cur`` to ``prev``, its validity and the independently moving pixels.

    Args:
        prev: the previous frame.
        cur: the current frame.
        rel_tol: depth tolerance of the occlusion test, relative to the projected depth.
        abs_tol: depth tolerance of the occlusion test in metres, added to the relative one.

    Returns:
        flow: (2, H, W) float32 (dx, dy) in pixels from each pixel of ``cur`` to where it was
            in ``prev``.
        valid: (H, W) bool, False where the point was out of view or hidden in ``prev``.
        moving: (H, W) bool, pixels of bodies that moved on their own between the frames.
    """
    if prev.depth.shape != cur.depth.shape:
        raise ValueError(f'frames differ in size: {prev.depth.shape} and {cur.depth.shape}')
    height, width = cur.depth.shape
    ids = cur.body_ids
    sky = ids < 0
    a, b = pixel_rays(width, height, cur.proj_x, cur.proj_y)
    z = np.where(sky, 1.0, cur.depth.astype(np.float64))
    # The static scene: one rigid motion from the current camera's frame to the previous one's.
    # A pixel's point is z * (a, b, -1) in the current camera; sky points are directions.
    static = prev.view @ np.linalg.inv(cur.view)
    cam_prev = np.empty((3, height, width))
    for i in range(3):
        m = static[i]
        cam_prev[i] = (m[0] * a[None, :] + m[1] * b[:, None] - m[2]) * z
        cam_prev[i][~sky] += m[3]

    bodies, motions = _rigid_motions(prev, cur)
    moving = np.zeros((height, width), bool)
    if bodies:
        lut = np.full(max(int(ids.max()), max(bodies)) + 2, -1, np.int64)
        lut[np.asarray(bodies) + 1] = np.arange(len(bodies))
        which = lut[ids + 1]
        moving = which >= 0
        # Their points move with their body: world now -> world before, seen by the previous
        # camera: V_prev @ motion @ V_cur^-1.
        per_body = prev.view @ motions @ np.linalg.inv(cur.view)
        k = which[moving]
        zm = z[moving]
        pts = np.stack([np.broadcast_to(a[None, :], moving.shape)[moving] * zm,
                        np.broadcast_to(b[:, None], moving.shape)[moving] * zm, -zm,
                        np.ones_like(zm)], axis=1)
        cam_prev[:, moving] = np.einsum('nij,nj->in', per_body[k, :3], pts)
    zp = -cam_prev[2]
    front = np.where(sky, zp > 1e-6, zp > prev.near)
    zs = np.where(front, zp, 1.0)
    xp = (prev.proj_x * cam_prev[0] / zs + 1.0) * (width / 2.0)
    yp = (1.0 - prev.proj_y * cam_prev[1] / zs) * (height / 2.0) - 1.0
    cols = np.arange(width, dtype=np.float64)[None, :]
    rows = np.arange(height, dtype=np.float64)[:, None]
    flow = np.stack([xp - cols, yp - rows]).astype(np.float32)

    inside = front & (xp >= 0) & (xp <= width - 1) & (yp >= 0) & (yp <= height - 1)
    x0 = np.clip(np.floor(np.where(inside, xp, 0)).astype(np.int64), 0, width - 1)
    y0 = np.clip(np.floor(np.where(inside, yp, 0)).astype(np.int64), 0, height - 1)
    tol = abs_tol + rel_tol * zs
    seen = np.zeros((height, width), bool)
    lo = np.full((height, width), np.inf)
    hi = np.full((height, width), -np.inf)
    for dy in (0, 1):
        for dx in (0, 1):
            yy = np.minimum(y0 + dy, height - 1)
            xx = np.minimum(x0 + dx, width - 1)
            same = prev.body_ids[yy, xx] == ids
            d = prev.depth[yy, xx].astype(np.float64)
            seen |= same
            lo = np.where(same, np.minimum(lo, d), lo)
            hi = np.where(same, np.maximum(hi, d), hi)
    at_depth = (zp >= lo - tol) & (zp <= hi + tol)
    valid = inside & seen & (sky | at_depth)
    flow[:, ~front] = 0.0          # behind the previous camera: no image position
    return flow, valid, moving
