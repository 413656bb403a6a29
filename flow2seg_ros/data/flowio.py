"""Optical flow files in KITTI's format: 16-bit 3-channel PNG.

Channels in the PNG's own order: R = u, G = v, each stored as ``value * 64 + 2**15`` (clipped to
0..65535, so +-512 px at 1/64 px resolution), B = valid (1 or 0). OpenCV reads and writes BGR,
so the array it sees is (valid, v, u); both functions here handle that. The synthetic generator
writes ``<stem>_flow.png`` and ``<stem>_moving.png`` (:data:`FLOW_SUFFIX`,
:data:`MOVING_SUFFIX`). Flow is (2, H, W) float32 (dx, dy) in pixels, the convention of
:mod:`flow2seg_ros.flow` when written by the generator.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import cv2
import numpy as np

__all__ = ['FLOW_SUFFIX', 'FlowFileError', 'MOVING_SUFFIX', 'read_flow_png', 'read_moving_png',
           'write_flow_png']

#: File name endings beside a frame's stem in ``<root>/flow/<split>/<city>/``: its flow to the
#: previous frame and its mask of independently moving pixels (8-bit 0/1).
FLOW_SUFFIX = '_flow.png'
MOVING_SUFFIX = '_moving.png'

_SCALE = 64.0
_OFFSET = 2.0 ** 15


class FlowFileError(ValueError):
    """A flow file is missing, unreadable or not what was expected (the message names it)."""


def write_flow_png(path: str | Path, flow: np.ndarray, valid: np.ndarray) -> None:
    """Write flow and its validity as a KITTI flow PNG.

    Args:
        path: the ``.png`` file to write (its folder must exist).
        flow: (2, H, W) float flow in pixels; values beyond +-512 px are clipped.
        valid: (H, W) bool validity; invalid pixels are stored with zero flow.
    """
    flow = np.asarray(flow)
    valid = np.asarray(valid, bool)
    if flow.ndim != 3 or flow.shape[0] != 2:
        raise ValueError(f'flow must be (2, H, W), got shape {flow.shape}')
    if valid.shape != flow.shape[1:]:
        raise ValueError(f'valid must be {flow.shape[1:]} like the flow, got {valid.shape}')
    enc = np.where(valid, flow.astype(np.float64) * _SCALE + _OFFSET, _OFFSET)
    enc = np.clip(np.rint(enc), 0, 65535).astype(np.uint16)
    bgr = np.stack([valid.astype(np.uint16), enc[1], enc[0]], axis=-1)
    if not cv2.imwrite(str(path), bgr):
        raise OSError(f'could not write flow file {path}')


def read_flow_png(path: str | Path, expected_size: Optional[tuple[int, int]] = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Read a KITTI flow PNG.

    Args:
        path: the flow file.
        expected_size: (width, height) it must have; None accepts any size.

    Returns:
        flow: (2, H, W) float32 (dx, dy) in pixels; valid: (H, W) bool.

    Raises:
        FlowFileError: the file is missing, not a readable image, not a 16-bit 3-channel PNG, or
            not of the expected size.
    """
    path = Path(path)
    if not path.is_file():
        raise FlowFileError(f'flow file not found: {path}')
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise FlowFileError(f'cannot read flow file {path}: not a readable PNG image')
    channels = 1 if img.ndim == 2 else img.shape[2]
    if img.dtype != np.uint16 or channels != 3:
        bits = img.dtype.itemsize * 8
        raise FlowFileError(f'flow file {path}: expected a 16-bit 3-channel KITTI flow PNG, got '
                            f'{bits}-bit with {channels} channel(s)')
    height, width = img.shape[:2]
    if expected_size is not None and (width, height) != tuple(expected_size):
        raise FlowFileError(f'flow file {path}: expected {expected_size[0]}x{expected_size[1]} '
                            f'(WxH), got {width}x{height}')
    flow = np.empty((2, height, width), np.float32)
    flow[0] = (img[..., 2].astype(np.float32) - _OFFSET) / _SCALE
    flow[1] = (img[..., 1].astype(np.float32) - _OFFSET) / _SCALE
    return flow, img[..., 0] > 0


def read_moving_png(path: str | Path, expected_size: Optional[tuple[int, int]] = None
                    ) -> np.ndarray:
    """Read a mask of independently moving pixels (8-bit single-channel PNG, nonzero = moving).

    Args:
        path: the mask file (``<stem>_moving.png``).
        expected_size: (width, height) it must have; None accepts any size.

    Returns:
        (H, W) bool.

    Raises:
        FlowFileError: the file is missing, unreadable, not single-channel or not of the
            expected size.
    """
    path = Path(path)
    if not path.is_file():
        raise FlowFileError(f'moving-object mask not found: {path}')
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None or mask.ndim != 2:
        got = 'unreadable' if mask is None else f'{mask.shape[2]} channels'
        raise FlowFileError(f'moving-object mask {path} must be a single-channel PNG, got {got}')
    height, width = mask.shape
    if expected_size is not None and (width, height) != tuple(expected_size):
        raise FlowFileError(f'moving-object mask {path}: expected {expected_size[0]}x'
                            f'{expected_size[1]} (WxH), got {width}x{height}')
    return mask > 0
