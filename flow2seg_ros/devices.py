"""Which torch device a setting names: the one parser for the pipeline, node, training, tools."""
from __future__ import annotations

from typing import Union

import torch

__all__ = ['DEVICE_CHOICES', 'resolve_device']

#: What a device setting may say (``cuda:N`` for a numbered GPU).
DEVICE_CHOICES = ('auto', 'cpu', 'cuda', 'cuda:N')


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    """``auto`` -> CUDA when present, else the CPU; ``cpu``; ``cuda[:N]``, which must exist.

    Args:
        device: the setting (a string or a ``torch.device``).

    Raises:
        ValueError: not one of :data:`DEVICE_CHOICES`, or a CUDA device that is not there.
    """
    text = str(device)
    if text == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f'device must be auto, cpu, cuda or cuda:N, got {text!r}') from exc
    if dev.type not in ('cpu', 'cuda'):
        raise ValueError(f'device must be auto, cpu, cuda or cuda:N, got {text!r}')
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            raise ValueError(f'device {text!r} asked for, but no CUDA device is available')
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f'device {text!r} asked for, but only '
                             f'{torch.cuda.device_count()} CUDA device(s) exist')
    return dev
