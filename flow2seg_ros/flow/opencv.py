"""OpenCV optical flow: DIS (fast, the CPU default) and Farneback (the paper's GF-flow)."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from flow2seg_ros.flow.base import FlowEstimator

__all__ = ['DIS_PRESETS', 'DISFlow', 'FarnebackFlow']

DIS_PRESETS = {
    'ultrafast': cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    'fast': cv2.DISOPTICAL_FLOW_PRESET_FAST,
    'medium': cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def _to_tensor(flow_hw2: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(flow_hw2.transpose(2, 0, 1))).to(device)


class DISFlow(FlowEstimator):
    """OpenCV's Dense Inverse Search flow.

    Args:
        preset: ``ultrafast``, ``fast`` or ``medium``.
        device: device of the returned tensor.
    """

    def __init__(self, preset: str = 'ultrafast', *, device: str | torch.device = 'cpu') -> None:
        super().__init__(device)
        if preset not in DIS_PRESETS:
            raise ValueError(f'unknown DIS preset {preset!r}; choose one of '
                             f'{", ".join(DIS_PRESETS)}')
        self.preset = preset
        self.name = f'dis/{preset}'
        self._dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])

    def estimate(self, prev_rgb: np.ndarray, cur_rgb: np.ndarray) -> torch.Tensor:
        # calc(I0, I1) gives u with I0(x) ~ I1(x + u(x)): current -> previous on the current grid.
        flow = self._dis.calc(_gray(cur_rgb), _gray(prev_rgb), None)
        return _to_tensor(flow, self.device)


class FarnebackFlow(FlowEstimator):
    """OpenCV Farneback flow with the parameters (0.5, 3, 15, 3, 5, 1.2)."""

    name = 'farneback'

    def estimate(self, prev_rgb: np.ndarray, cur_rgb: np.ndarray) -> torch.Tensor:
        flow = cv2.calcOpticalFlowFarneback(_gray(cur_rgb), _gray(prev_rgb), None,
                                            0.5, 3, 15, 3, 5, 1.2, 0)
        return _to_tensor(flow, self.device)
