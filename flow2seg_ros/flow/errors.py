"""Optical flow error measures: end-point error and KITTI's outlier rate (Fl).

Fl counts a pixel as an outlier when its end-point error is above 3 px **and** above 5 % of the
true flow's magnitude (KITTI 2015). :class:`FlowErrors` sums both over valid pixels of many
pairs, separately on all valid pixels, independently moving objects and the static scene;
averages are over pixels (every valid pixel of every pair counts once).
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ['FlowErrors', 'REGIONS', 'flow_errors']

#: Regions scored: every valid pixel, valid pixels of moving objects, valid static pixels.
REGIONS = ('all', 'moving', 'static')


def flow_errors(pred: np.ndarray, flow: np.ndarray, valid: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel end-point error and outlier flag of the valid pixels.

    Args:
        pred: (2, H, W) estimated flow in pixels.
        flow: (2, H, W) ground truth in pixels.
        valid: (H, W) bool, the pixels to score.

    Returns:
        ``epe`` (float, px) and ``outlier`` (bool) of the valid pixels, 1-D.
    """
    if pred.shape != flow.shape or flow.shape[1:] != valid.shape:
        raise ValueError(f'flow shapes differ: estimate {pred.shape}, truth {flow.shape}, '
                         f'valid {valid.shape}')
    epe = np.sqrt(((pred - flow) ** 2).sum(0))[valid]
    mag = np.sqrt((flow ** 2).sum(0))[valid]
    return epe, (epe > 3.0) & (epe > 0.05 * mag)


class FlowErrors:
    """Sums of EPE and outliers over pairs, per region (:data:`REGIONS`)."""

    def __init__(self) -> None:
        self.sums = {r: [0.0, 0, 0] for r in REGIONS}  # epe sum, outliers, pixels
        self.pairs = 0

    def update(self, pred: np.ndarray, flow: np.ndarray, valid: np.ndarray,
               moving: np.ndarray) -> None:
        """Add one pair: estimate, truth (2, H, W), ``valid`` and ``moving`` (H, W) bool."""
        for region, mask in (('all', valid), ('moving', valid & moving),
                             ('static', valid & ~moving)):
            epe, out = flow_errors(pred, flow, mask)
            acc = self.sums[region]
            acc[0] += float(epe.sum())
            acc[1] += int(out.sum())
            acc[2] += int(epe.size)
        self.pairs += 1

    def summary(self) -> dict[str, Any]:
        """``epe_<region>`` (px) and ``fl_<region>`` (%) per region, ``pixels_<region>``,
        ``pairs``; None where a region had no pixels."""
        out: dict[str, Any] = {'pairs': self.pairs}
        for region, (e, o, n) in self.sums.items():
            out[f'epe_{region}'] = round(e / n, 4) if n else None
            out[f'fl_{region}'] = round(100.0 * o / n, 3) if n else None
            out[f'pixels_{region}'] = n
        return out
