"""Percentiles of timing samples: the one definition the reports, replay and benchmarks use."""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np

__all__ = ['percentile', 'percentiles']


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
