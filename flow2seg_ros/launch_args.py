"""Launch-argument helpers for ``seg.launch.py``: camera lists and input remappings.

A leaf module (PyYAML only), so a launch file imports it without loading torch.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import yaml

__all__ = ['camera_remappings', 'is_true', 'parse_name_list']


def is_true(text: str) -> bool:
    """A launch argument's boolean: true/1/yes/on (any case) is True, anything else False."""
    return text.strip().lower() in ('true', '1', 'yes', 'on')


def parse_name_list(text: str) -> List[str]:
    """A launch argument listing names: ``'[front, left]'``, ``'front,left'`` or ``''``.

    Args:
        text: the argument's text.

    Raises:
        ValueError: not a flat list of names.
    """
    text = text.strip()
    if not text:
        return []
    if text.startswith('['):
        try:
            items = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f'cannot read {text!r} as a list: {exc}') from exc
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError(f'expected a list of names like [front, left], got {text!r}')
        return [i.strip() for i in items]
    return [part.strip() for part in text.split(',') if part.strip()]


def camera_remappings(cameras: Sequence[str], camera_topics: Sequence[str],
                      image_topic: str) -> List[Tuple[str, str]]:
    """The node's input remappings for a launch file.

    Args:
        cameras: camera names ([] = the one unnamed camera on ``image``).
        camera_topics: one input topic per camera ([] = leave ``<name>/image`` as it is).
        image_topic: the one camera's topic when ``cameras`` is empty.

    Raises:
        ValueError: ``camera_topics`` is given but does not have one topic per camera.
    """
    if not cameras:
        return [('image', image_topic)]
    if not camera_topics:
        return []
    if len(camera_topics) != len(cameras):
        raise ValueError(f'camera_topics lists {len(camera_topics)} topics for '
                         f'{len(cameras)} cameras {list(cameras)}')
    return [(f'{name}/image', topic) for name, topic in zip(cameras, camera_topics)]
