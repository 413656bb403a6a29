"""Timing samples: per-stage wall times of a frame, and the one definition of percentiles the
reports, replay and benchmarks use."""
from __future__ import annotations

import time
from typing import Iterable, Optional

import numpy as np
import torch

__all__ = ['StageTimer', 'percentile', 'percentiles']


def percentile(values: Iterable[float], q: float) -> float:
    """Percentile ``q`` (0..100, linear interpolation) of ``values``; nan when there are none.

    Args:
        values: the samples (e.g. per-frame milliseconds).
        q: the percentile.
    """
    a = np.asarray(list(values), np.float64)
    return float(np.percentile(a, q)) if a.size else float('nan')


def percentiles(values: Iterable[float]) -> dict[str, Optional[float]]:
    """``n``, ``mean``, ``p50``, ``p90``, ``p99``, ``max`` of a list of numbers (None when empty).

    Args:
        values: the samples (e.g. per-frame milliseconds).
    """
    a = np.asarray(list(values), np.float64)
    if a.size == 0:
        return {'n': 0, 'mean': None, 'p50': None, 'p90': None, 'p99': None, 'max': None}
    p50, p90, p99 = (percentile(a, q) for q in (50, 90, 99))
    return {'n': int(a.size), 'mean': float(a.mean()), 'p50': p50, 'p90': p90, 'p99': p99,
            'max': float(a.max())}


class StageTimer:
    """Per-stage wall times in ms, added into ``times``; synchronises CUDA first so GPU stages
    are timed honestly.

    Args:
        cuda: the stages run on a CUDA device.
        times: the dict to add to (a frame's ``timings``); None = a new one.
    """

    def __init__(self, cuda: bool, times: Optional[dict[str, float]] = None) -> None:
        self.cuda = cuda
        self.times: dict[str, float] = {} if times is None else times
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        """Close ``stage``: the time since the last lap (or the start) is added to it."""
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.times[stage] = self.times.get(stage, 0.0) + 1000.0 * (now - self._t)
        self._t = now
