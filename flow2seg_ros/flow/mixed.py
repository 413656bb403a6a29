"""A flow estimator that answers each call with one of several estimators, drawn at random.

For training one model on several flows (``flow_method: mixed``), e.g. DIS medium (the CPU's
flow) and the learned network (the GPU's), so that the model works with either at inference:
each training sample gets the flow of one of them. Draws use torch's global random generator,
which the DataLoader seeds per worker, so a seeded run repeats. Not meant for inference: a model
card that names a mix runs one of its parts (:func:`flow2seg_ros.weights.card_flow`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from flow2seg_ros.flow.base import FlowEstimator

__all__ = ['DEFAULT_MIX', 'MixedFlow', 'parse_mix']

#: The default mix: DIS medium and the bundled learned flow.
DEFAULT_MIX = 'dis/medium+learned'


def parse_mix(preset: str) -> list[tuple[str, str]]:
    """``"dis/medium+learned"`` -> [('dis', 'medium'), ('learned', '')].

    Raises:
        ValueError: fewer than two parts, or a part that is itself ``mixed``.
    """
    parts = [p.strip() for p in (preset or DEFAULT_MIX).split('+') if p.strip()]
    if len(parts) < 2:
        raise ValueError(f"a mixed flow needs two or more 'method/preset' parts joined by '+', "
                         f'got {preset!r}')
    out = []
    for part in parts:
        method, _, sub = part.partition('/')
        if method == 'mixed':
            raise ValueError(f'a mixed flow cannot contain another mixed flow: {preset!r}')
        out.append((method, sub))
    return out


class MixedFlow(FlowEstimator):
    """Each call returns the flow of one of ``estimators``, chosen uniformly at random.

    Args:
        estimators: the estimators (all on one device).
        names: their labels (``method/preset``), for ``last``.
    """

    def __init__(self, estimators: Sequence[FlowEstimator], names: Sequence[str]) -> None:
        if len(estimators) < 2 or len(names) != len(estimators):
            raise ValueError('MixedFlow needs two or more estimators, each with a name')
        super().__init__(estimators[0].device)
        self.estimators = list(estimators)
        self.names = list(names)
        self.name = 'mixed:' + '+'.join(self.names)
        #: the name of the estimator that answered the last call
        self.last = ''

    def estimate(self, prev_rgb: np.ndarray, cur_rgb: np.ndarray) -> torch.Tensor:
        i = int(torch.randint(len(self.estimators), ()))
        self.last = self.names[i]
        return self.estimators[i].estimate(prev_rgb, cur_rgb)
