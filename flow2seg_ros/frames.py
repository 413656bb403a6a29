"""Synthetic camera frames for timing and smoke runs: a smooth textured scene panning sideways.

The benchmark, the demo's quick mode and the benchmark scripts use these when no recording is at
hand; the motion is known (3 pixels a frame to the left), so the flow state never resets.
"""
from __future__ import annotations

import cv2
import numpy as np

__all__ = ['PAN_PX', 'scene_frames']

#: How far the scene moves between two frames, in pixels.
PAN_PX = 3


def scene_frames(count: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """Frames of a smooth textured scene panning :data:`PAN_PX` pixels a frame (RGB uint8).

    Args:
        count: number of frames.
        size: (width, height).
        seed: texture seed.
    """
    w, h = size
    rng = np.random.default_rng(seed)
    width = w + PAN_PX * count
    small = rng.integers(0, 255, (max(2, h // 8), max(2, width // 8), 3), np.uint8)
    scene = cv2.resize(small, (small.shape[1] * 8, small.shape[0] * 8),
                       interpolation=cv2.INTER_CUBIC)
    scene = cv2.resize(scene, (width, h))
    return [np.ascontiguousarray(scene[:, PAN_PX * i:PAN_PX * i + w]) for i in range(count)]
