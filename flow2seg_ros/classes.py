"""Class sets: names, colours and dataset label ids of the classes a model predicts.

A model predicts *train ids* 0..C-1; 255 means ignore/unknown. Datasets such as Cityscapes store
*label ids* in their annotation PNGs; :class:`ClassSet` maps between the two with look-up tables.
The Cityscapes set comes straight from ``cityscapesscripts`` so names, colours and ids match the
official tools; other data declare their classes in a small YAML or JSON file.
"""
from __future__ import annotations

from dataclasses import dataclass
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import yaml

__all__ = ['IGNORE_INDEX', 'ClassSet', 'cityscapes_classes', 'load_class_set']

IGNORE_INDEX = 255


@dataclass(frozen=True)
class ClassSet:
    """The classes of a segmentation model.

    Args:
        names: class name of each train id.
        colors: RGB colour of each train id.
        label_ids: dataset label id of each train id (Cityscapes ``labelIds``), or None when the
            dataset stores train ids directly.
        ignore_index: the label that marks pixels to ignore (never a class).
    """

    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    label_ids: Optional[tuple[int, ...]] = None
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError('a class set needs at least one class')
        if len(self.colors) != len(self.names):
            raise ValueError(f'{len(self.names)} class names but {len(self.colors)} colours')
        if self.label_ids is not None and len(self.label_ids) != len(self.names):
            raise ValueError(f'{len(self.names)} class names but {len(self.label_ids)} label ids')
        if len(self.names) > 255:
            raise ValueError(f'at most 255 classes fit a mono8 label image, got {len(self.names)}')
        if not 0 <= self.ignore_index <= 255 or self.ignore_index < len(self.names):
            raise ValueError(f'ignore_index must be in [{len(self.names)}, 255], '
                             f'got {self.ignore_index}')
        for name, color in zip(self.names, self.colors):
            if len(color) != 3 or not all(0 <= int(c) <= 255 for c in color):
                raise ValueError(f'class {name!r}: colour must be three values in 0..255, '
                                 f'got {color!r}')

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def palette(self) -> np.ndarray:
        """(256, 3) uint8 colour of every label value; ignore and unused values are black."""
        pal = np.zeros((256, 3), np.uint8)
        pal[:self.num_classes] = np.asarray(self.colors, np.uint8)
        return pal

    def label_to_train_lut(self) -> np.ndarray:
        """(256,) uint8 map from dataset label id to train id (ignore for unmapped ids)."""
        lut = np.full(256, self.ignore_index, np.uint8)
        if self.label_ids is None:
            lut[:self.num_classes] = np.arange(self.num_classes, dtype=np.uint8)
        else:
            for train_id, label_id in enumerate(self.label_ids):
                lut[label_id] = train_id
        return lut

    def train_to_label_lut(self) -> np.ndarray:
        """(256,) uint8 map from train id to dataset label id (ignore -> 0, 'unlabeled')."""
        lut = np.zeros(256, np.uint8)
        ids = self.label_ids if self.label_ids is not None else range(self.num_classes)
        lut[:self.num_classes] = np.asarray(list(ids), np.uint8)
        return lut

    def to_dict(self) -> dict[str, Any]:
        return {
            'names': list(self.names),
            'colors': [list(c) for c in self.colors],
            'label_ids': None if self.label_ids is None else list(self.label_ids),
            'ignore_index': self.ignore_index,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> 'ClassSet':
        try:
            return cls(
                names=tuple(str(n) for n in d['names']),
                colors=tuple(tuple(int(v) for v in c) for c in d['colors']),
                label_ids=None if d.get('label_ids') is None
                else tuple(int(i) for i in d['label_ids']),
                ignore_index=int(d.get('ignore_index', IGNORE_INDEX)),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f'class table needs "names" and "colors" lists: {exc}') from exc

    def table(self) -> list[dict[str, Any]]:
        """One entry per class: ``{"id", "name", "color"}`` (what the node publishes)."""
        return [{'id': i, 'name': n, 'color': list(c)}
                for i, (n, c) in enumerate(zip(self.names, self.colors))]


def cityscapes_classes() -> ClassSet:
    """Cityscapes' 19 evaluation classes, from cityscapesscripts' label table."""
    from cityscapesscripts.helpers.labels import labels

    train = sorted((lb for lb in labels if 0 <= lb.trainId < 255), key=lambda lb: lb.trainId)
    return ClassSet(names=tuple(lb.name for lb in train),
                    colors=tuple(tuple(lb.color) for lb in train),
                    label_ids=tuple(lb.id for lb in train))


def load_class_set(path: str | Path) -> ClassSet:
    """Read a custom class list from YAML or JSON.

    The file holds a list (or ``{"classes": [...]}``) of ``{name, color, id}`` entries in train-id
    order; ``id`` is the dataset's label id and may be left out when labels are train ids.

    Args:
        path: the YAML or JSON file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'class list not found: {path}')
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f'{path}: not valid YAML/JSON: {exc}') from exc
    entries: Sequence[Any] = doc.get('classes', []) if isinstance(doc, dict) else doc
    if not isinstance(entries, list) or not entries:
        raise ValueError(f'{path}: expected a non-empty list of classes')
    try:
        names = tuple(str(e['name']) for e in entries)
        colors = tuple(tuple(int(v) for v in e['color']) for e in entries)
    except (KeyError, TypeError) as exc:
        raise ValueError(f'{path}: every class needs "name" and "color" ([r, g, b]): {exc}') \
            from exc
    has_ids = [('id' in e) for e in entries]
    if any(has_ids) and not all(has_ids):
        raise ValueError(f'{path}: give "id" for every class or for none')
    label_ids = tuple(int(e['id']) for e in entries) if all(has_ids) else None
    try:
        return ClassSet(names, colors, label_ids)
    except ValueError as exc:
        raise ValueError(f'{path}: {exc}') from exc


def class_set_json(classes: ClassSet) -> str:
    """The class table as the JSON string the node publishes without vision_msgs."""
    return json.dumps({'classes': classes.table(), 'ignore_index': classes.ignore_index})
