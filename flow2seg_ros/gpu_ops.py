"""The pipeline's per-frame picture work in torch, so that it can stay on a GPU.

Each function here is the device twin of a CPU step of :class:`~flow2seg_ros.pipeline.
FramePipeline` (OpenCV/numpy), written to give the same pixels: labels identical, pictures
within one level (OpenCV rounds in fixed point, torch in float). They run on any torch device,
so the CPU tests compare them with the OpenCV path directly; on CUDA they run inside the
pipeline's device path (:mod:`flow2seg_ros.device_path`), where every shape is fixed by the
camera and network sizes and nothing synchronises with the host, so they can be captured in a
CUDA graph.

Shapes: frames are (H, W, 3) uint8 as they come from the camera; network-side images are
(N, 3, h, w) float holding 0..255 values; labels are (h, w) or (N, h, w) integers.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ['frame_to_nchw', 'resize_to_network', 'normalise', 'nearest_indices',
           'resize_nearest', 'resize_linear_u8', 'colorize', 'blend', 'full_size',
           'labels_and_confidence',
           'fast_atan2_deg', 'flow_picture', 'round_half_up']


def round_half_up(x: torch.Tensor) -> torch.Tensor:
    """``floor(x + 0.5)``: OpenCV's fixed-point resizes round halves up, torch.round to even."""
    return torch.floor(x + 0.5)


def frame_to_nchw(frame: torch.Tensor, *, bgr: bool = False) -> torch.Tensor:
    """(H, W, 3) uint8 camera frame -> (1, 3, H, W) float32 RGB holding 0..255.

    Args:
        frame: the frame as the camera sent it.
        bgr: the frame's channels are blue, green, red (``bgr8``); they are swapped here.
    """
    if frame.dim() != 3 or frame.shape[2] != 3 or frame.dtype != torch.uint8:
        raise ValueError(f'frame must be an (H, W, 3) uint8 tensor, got {tuple(frame.shape)} '
                         f'{frame.dtype}')
    x = frame.permute(2, 0, 1).unsqueeze(0)
    if bgr:
        x = x.flip(1)
    return x.float()


def _linear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    # bilinear with pixel-centre alignment and no anti-aliasing: OpenCV's INTER_LINEAR
    return F.interpolate(x, size=tuple(size), mode='bilinear', align_corners=False)


def resize_to_network(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The CPU path's downscale to the network size, in torch (within one level of it).

    As ``FramePipeline`` does it on the CPU: with k = the whole number of times the network size
    fits in the frame, k >= 2 resizes bilinearly to k times the network size and then averages
    k x k blocks (OpenCV's area resize at an integer factor: the anti-aliased downscale); k < 2
    resizes bilinearly. Each step rounds to whole levels as OpenCV's uint8 resize does.

    Args:
        x: (N, 3, H, W) float image holding 0..255.
        size: (h, w) of the network input.

    Returns:
        (N, 3, h, w) float holding whole numbers 0..255.
    """
    h, w = int(size[0]), int(size[1])
    big_h, big_w = x.shape[-2:]
    if (big_h, big_w) == (h, w):
        return x
    k = int(min(big_w / w, big_h / h))
    if k < 2:
        return round_half_up(_linear(x, (h, w))).clamp_(0, 255)
    if (big_h, big_w) != (k * h, k * w):
        x = round_half_up(_linear(x, (k * h, k * w))).clamp_(0, 255)
    return round_half_up(F.avg_pool2d(x, k))


def normalise(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """The network input: ``x * scale + shift`` (/255, mean and std folded into one step).

    Args:
        x: (N, 3, h, w) float holding 0..255.
        scale: (1, 3, 1, 1) ``1 / (255 std)``.
        shift: (1, 3, 1, 1) ``-mean / std``.
    """
    return torch.addcmul(shift, x, scale)


def nearest_indices(src: int, dst: int) -> np.ndarray:
    """Source index of each destination pixel as OpenCV's INTER_NEAREST picks it.

    OpenCV takes ``floor(x / fx)`` with ``fx = dst / src`` in double precision (not pixel
    centres); computing the indices the same way on the host keeps labels identical to the CPU
    path at every size, where a float32 scale on the device could round across a boundary.

    Args:
        src: source length in pixels.
        dst: destination length in pixels.
    """
    ifx = 1.0 / (float(dst) / float(src))
    return np.minimum(np.floor(np.arange(dst, dtype=np.float64) * ifx), src - 1).astype(np.int64)


def resize_nearest(img: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Nearest resize by index tensors from :func:`nearest_indices` (labels stay labels).

    Args:
        img: (h, w) or (h, w, C) tensor.
        rows: (H,) int64 source row of each output row.
        cols: (W,) int64 source column of each output column.
    """
    return img.index_select(0, rows).index_select(1, cols)


def resize_linear_u8(img: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """OpenCV INTER_LINEAR of a uint8 picture, in torch (within one level).

    Args:
        img: (h, w) or (h, w, C) uint8.
        size: (H, W) wanted.

    Returns:
        uint8 tensor of the new size, same layout.
    """
    if tuple(img.shape[:2]) == tuple(size):
        return img
    x = img.unsqueeze(-1) if img.dim() == 2 else img
    x = x.permute(2, 0, 1).unsqueeze(0).float()
    y = round_half_up(_linear(x, size)).clamp_(0, 255).to(torch.uint8)
    y = y[0].permute(1, 2, 0)
    return y[..., 0].contiguous() if img.dim() == 2 else y.contiguous()


def colorize(labels: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """Labels -> RGB through a (256, 3) uint8 palette (as :func:`visualize.colorize`).

    Args:
        labels: (h, w) integer labels 0..255.
        palette: (256, 3) uint8 on the labels' device.
    """
    return palette.index_select(0, labels.reshape(-1).long()).view(*labels.shape, 3)


def blend(rgb: torch.Tensor, mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(1 - alpha) * rgb + alpha * mask`` rounded to uint8 (as :func:`visualize.overlay`).

    Args:
        rgb: (H, W, 3) uint8 RGB frame.
        mask: (H, W, 3) uint8 colour mask.
        alpha: weight of the mask, 0..1.
    """
    mixed = rgb.float() * (1.0 - alpha) + mask.float() * alpha
    return mixed.round_().clamp_(0, 255).to(torch.uint8)


def full_size(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Logits at a network stride upsampled (bilinear) to the network's input size, as the
    pipeline does before its argmax; logits already at that size are returned as they are.

    Args:
        logits: (N, C, h', w') logits.
        size: (h, w) of the network input.
    """
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return _linear(logits.float(), size)


def labels_and_confidence(logits: torch.Tensor, confidence: bool
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Argmax labels and, when asked, the softmax probability of the winner as 0..255.

    Same operations as the CPU path, so the labels are identical on the same logits.

    Args:
        logits: (N, C, h, w) logits.
        confidence: also return the confidence.

    Returns:
        ``(labels (N, h, w) uint8, confidence (N, h, w) uint8 or None)``.
    """
    if confidence:
        conf, labels = torch.softmax(logits.float(), 1).max(1)
        return labels.to(torch.uint8), (conf * 255).round().to(torch.uint8)
    return logits.max(1).indices.to(torch.uint8), None


# OpenCV's atan2 polynomial (fastAtan32f, in degrees), used by cv2.cartToPolar.
_ATAN_P = [c * (180.0 / np.pi) for c in (0.9997878412794807, -0.3258083974640975,
                                         0.1555786518463281, -0.04432655554792128)]
_EPS = float(np.float32(np.finfo(np.float64).eps))


def fast_atan2_deg(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Angle of (x, y) in degrees, 0..360, as OpenCV's cartToPolar computes it (float32)."""
    ax, ay = x.abs(), y.abs()
    steep = ay > ax
    c = torch.where(steep, ax / (ay + _EPS), ay / (ax + _EPS))
    c2 = c * c
    p1, p3, p5, p7 = _ATAN_P
    a = (((p7 * c2 + p5) * c2 + p3) * c2 + p1) * c
    a = torch.where(steep, 90.0 - a, a)
    a = torch.where(x < 0, 180.0 - a, a)
    return torch.where(y < 0, 360.0 - a, a)


# OpenCV's HSV -> RGB sector table: which of (v, p, q, t) is blue, green, red in each sector
_SECTORS = ((1, 3, 0), (1, 0, 2), (3, 0, 1), (0, 2, 1), (0, 1, 3), (2, 1, 0))


def flow_picture(flow: torch.Tensor, max_magnitude: float) -> torch.Tensor:
    """(2, h, w) flow in pixels -> (h, w, 3) uint8 RGB picture (as :func:`visualize.flow_to_rgb`).

    Hue is the direction (half degrees, truncated), saturation full, value the magnitude scaled
    by ``255 / max_magnitude`` (truncated), converted to RGB as OpenCV's 8-bit HSV2RGB does.

    Args:
        flow: (2, h, w) float flow (dx, dy).
        max_magnitude: the magnitude shown at full brightness.
    """
    fx, fy = flow[0].float(), flow[1].float()
    mag = torch.sqrt(fx * fx + fy * fy)
    hue = torch.floor(fast_atan2_deg(fy, fx) / 2)
    val = torch.floor((mag * (255.0 / float(max_magnitude))).clamp_(0, 255))
    h = hue * float(np.float32(6.0 / 180.0))
    h = torch.where(h >= 6, h - 6, h)
    sector = torch.floor(h)
    frac = h - sector
    v = val * float(np.float32(1.0 / 255.0))
    s = float(np.float32(255 * np.float32(1.0 / 255.0)))
    tab = (v, v * (1 - s), v * (1 - s * frac), v * (1 - s * (1 - frac)))
    channels = []
    for c in range(3):  # blue, green, red; where-chains rather than a table keep it capturable
        out = tab[_SECTORS[5][c]]
        for k in range(4, -1, -1):
            out = torch.where(sector == k, tab[_SECTORS[k][c]], out)
        channels.append(out)
    bgr = torch.stack(channels)  # (3, h, w)
    rgb = bgr.flip(0).permute(1, 2, 0)
    return (rgb * 255).round_().clamp_(0, 255).to(torch.uint8)
