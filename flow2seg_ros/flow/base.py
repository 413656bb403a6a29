"""The flow estimator interface and the fixed flow scaling the network sees."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ['FlowEstimator', 'check_pair', 'scale_flow']


class FlowEstimator:
    """Base class: ``estimator(prev_rgb, cur_rgb)`` -> (2, H, W) float32 flow, current->prev."""

    name: str = 'flow'

    def __init__(self, device: str | torch.device = 'cpu') -> None:
        self.device = torch.device(device)

    def __call__(self, prev_rgb: np.ndarray, cur_rgb: np.ndarray) -> torch.Tensor:
        check_pair(prev_rgb, cur_rgb)
        return self.estimate(prev_rgb, cur_rgb)

    def estimate(self, prev_rgb: np.ndarray, cur_rgb: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.name!r}, device={self.device})'


def check_pair(prev_rgb: np.ndarray, cur_rgb: np.ndarray) -> None:
    """Raise ValueError unless both frames are (H, W, 3) uint8 of one size."""
    for what, img in (('previous', prev_rgb), ('current', cur_rgb)):
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f'{what} frame must be (H, W, 3) uint8 RGB, '
                             f'got {img.shape} {img.dtype}')
    if prev_rgb.shape != cur_rgb.shape:
        raise ValueError(f'flow needs two frames of one size, got {prev_rgb.shape[:2]} '
                         f'and {cur_rgb.shape[:2]}')


def scale_flow(flow: torch.Tensor, scale: float) -> torch.Tensor:
    """The network's flow input: ``flow_px * scale / W`` with W the flow's width.

    A fixed factor relative to the image size (never a per-frame normalisation), so that the same
    motion gives the same input at any resolution and in every frame.

    Args:
        flow: (..., 2, H, W) flow in pixels.
        scale: the model card's ``flow.scale``.
    """
    return flow * (scale / flow.shape[-1])
