"""Sequence folders in Cityscapes' layout as the tools see them: the camera rate they were
recorded at (``sequence_info.json``, which ``flow2seg-synth`` writes), else Cityscapes' 17 Hz."""
from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ['DEFAULT_FPS', 'dataset_fps', 'dataset_scenes']

#: Camera rate when the dataset does not say (Cityscapes' video is 17 frames/s).
DEFAULT_FPS = 17.0


def dataset_fps(root: str | os.PathLike) -> float:
    """The camera rate in ``<root>/sequence_info.json``, else :data:`DEFAULT_FPS`.

    Args:
        root: the dataset root.

    Raises:
        ValueError: the file exists but holds no valid ``fps``.
    """
    info = Path(root) / 'sequence_info.json'
    if info.is_file():
        try:
            return float(json.loads(info.read_text()).get('fps', DEFAULT_FPS))
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise ValueError(f'{info}: no valid "fps": {exc}') from exc
    return DEFAULT_FPS


def dataset_scenes(root: str | os.PathLike, split: str) -> str | None:
    """The ``flow2seg-synth`` scene family (``v1``, ``v2``) a split was generated with, from
    ``<root>/sequence_info.json``; None for other data (Cityscapes) or an unreadable file.

    Args:
        root: the dataset root.
        split: the split folder name.
    """
    info = Path(root) / 'sequence_info.json'
    try:
        split_info = json.loads(info.read_text()).get('splits', {}).get(split, {})
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    scenes = split_info.get('scenes') if isinstance(split_info, dict) else None
    return scenes if isinstance(scenes, str) else None
