"""Pairs of consecutive frames with their ground-truth flow, for training and scoring flow.

Reads what ``flow2seg-synth`` writes (Cityscapes layout plus ``flow/``; ``<stem>`` is
``<city>_<seq>_<frame>``)::

    <root>/leftImg8bit_sequence/<split>/<city>/<stem>_leftImg8bit.png   frames (cur and prev)
    <root>/flow/<split>/<city>/<stem>_flow.png      KITTI flow PNG, cur -> prev (flowio)
    <root>/flow/<split>/<city>/<stem>_moving.png    8-bit 0/1, independently moving pixels
    <root>/gtFine/<split>/<city>/<stem>_gtFine_labelIds.png   labels of cur (optional)

Use::

    from flow2seg_ros.data.flow_pairs import FlowPairs

    pairs = FlowPairs('data/synthetic', 'flowtest')
    for sample in pairs:                 # or pairs[i]; len(pairs) pairs
        sample['prev'], sample['cur']    # (H, W, 3) uint8 RGB, the previous and current frames
        sample['flow']                   # (2, H, W) float32 (dx, dy) px: for each pixel of cur,
                                         # the offset to where it was in prev (flow2seg_ros.flow)
        sample['valid']                  # (H, W) bool: False where out of view/hidden in prev
        sample['moving']                 # (H, W) bool: pixels of independently moving objects
        sample['labels']                 # (H, W) uint8 Cityscapes label ids of cur; only
                                         # present when cur is annotated
        sample['name']                   # the stem of cur, e.g. 'synth5150_000003_000007'

Every pair is one whose current frame has a flow file (each sequence's first frame has none).
The index is built and checked when the dataset is made: a missing folder or file raises
:class:`~flow2seg_ros.data.cityscapes.DatasetError` naming the path; a corrupt or wrong-size flow
file raises :class:`~flow2seg_ros.data.flowio.FlowFileError` (a ``ValueError``) when read.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import re
from typing import Any, Iterator, Optional

from flow2seg_ros.data.cityscapes import DatasetError, read_label, read_rgb
from flow2seg_ros.data.flowio import (FLOW_SUFFIX, FlowFileError, MOVING_SUFFIX,
                                      read_flow_png, read_moving_png)

__all__ = ['FlowPair', 'FlowPairs']

_IMAGE_SUFFIX = '_leftImg8bit.png'
_LABEL_SUFFIX = '_gtFine_labelIds.png'
_STEM = re.compile(r'^(?P<city>.+)_(?P<seq>\d+)_(?P<frame>\d+)$')


@dataclass(frozen=True)
class FlowPair:
    """The files of one pair (``label`` is None when the current frame is not annotated)."""

    name: str
    prev: Path
    cur: Path
    flow: Path
    moving: Path
    label: Optional[Path]


class FlowPairs:
    """Consecutive frame pairs with ground-truth flow, validity and moving-object masks.

    Args:
        root: dataset root (``flow2seg-synth --out``).
        split: split folder name (e.g. ``flowtest``).
    """

    def __init__(self, root: str | Path, split: str) -> None:
        self.root = Path(root)
        self.split = split
        if not self.root.is_dir():
            raise DatasetError(f'dataset folder not found: {self.root}')
        flow_dir = self.root / 'flow' / split
        if not flow_dir.is_dir():
            raise DatasetError(f'no ground-truth flow for split {split!r}: {flow_dir} does not '
                               'exist (generate it with flow2seg-synth, without --no-flow)')
        img_dir = self.root / 'leftImg8bit_sequence' / split
        lbl_dir = self.root / 'gtFine' / split
        self.pairs: list[FlowPair] = []
        for flow in sorted(flow_dir.glob(f'*/*{FLOW_SUFFIX}')):
            stem = flow.name[:-len(FLOW_SUFFIX)]
            m = _STEM.match(stem)
            if m is None:
                raise DatasetError(f'file name does not look like <city>_<seq>_<frame>'
                                   f'{FLOW_SUFFIX}: {flow}')
            city, frame = m['city'], int(m['frame'])
            if frame < 1:
                raise DatasetError(f'flow file of a first frame (no previous frame): {flow}')
            prev_stem = f"{city}_{m['seq']}_{frame - 1:0{len(m['frame'])}d}"
            cur = img_dir / city / f'{stem}{_IMAGE_SUFFIX}'
            prev = img_dir / city / f'{prev_stem}{_IMAGE_SUFFIX}'
            moving = flow.with_name(f'{stem}{MOVING_SUFFIX}')
            for path, what in ((cur, 'current frame'), (prev, 'previous frame'),
                               (moving, 'moving-object mask')):
                if not path.is_file():
                    raise DatasetError(f'{what} of flow file {flow} not found: {path}')
            label = lbl_dir / city / f'{stem}{_LABEL_SUFFIX}'
            self.pairs.append(FlowPair(stem, prev, cur, flow, moving,
                                       label if label.is_file() else None))
        if not self.pairs:
            raise DatasetError(f'no *{FLOW_SUFFIX} files in {flow_dir}/<city>/')

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = self.pairs[index]
        prev = read_rgb(pair.prev)
        cur = read_rgb(pair.cur)
        height, width = cur.shape[:2]
        if prev.shape != cur.shape:
            raise DatasetError(f'{pair.prev} is {prev.shape[1]}x{prev.shape[0]} but {pair.cur} '
                               f'is {width}x{height}')
        flow, valid = read_flow_png(pair.flow, expected_size=(width, height))
        try:
            moving = read_moving_png(pair.moving, expected_size=(width, height))
        except FlowFileError as e:
            raise DatasetError(str(e)) from None
        sample = {'name': pair.name, 'prev': prev, 'cur': cur, 'flow': flow, 'valid': valid,
                  'moving': moving}
        if pair.label is not None:
            labels = read_label(pair.label)
            if labels.shape != (height, width):
                raise DatasetError(f'label {pair.label} is {labels.shape[1]}x{labels.shape[0]}, '
                                   f'its image {width}x{height}')
            sample['labels'] = labels
        return sample

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]
