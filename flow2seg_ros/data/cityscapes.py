"""Datasets in Cityscapes' layout: real Cityscapes and the synthetic sequences alike.

Layout (``<stem>`` is ``<city>_<seq>_<frame>``, both numbers zero-padded to six digits)::

    <root>/leftImg8bit_sequence/<split>/<city>/<stem>_leftImg8bit.png    every frame
    <root>/gtFine/<split>/<city>/<stem>_gtFine_labelIds.png              annotated frames

Real Cityscapes annotates the 20th frame of each 30-frame snippet; the synthetic generator can
annotate every frame or only the last. Labels are stored as Cityscapes label ids and mapped to
train ids (255 = ignore) with the class set's look-up table, which comes from cityscapesscripts'
label table.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import re
from typing import Any, Callable, Iterator, Optional, Sequence

import cv2
import numpy as np
import torch

from flow2seg_ros.classes import cityscapes_classes, ClassSet

__all__ = ['DatasetError', 'PairTransform', 'SequenceDataset', 'SequencePairDataset',
           'SequenceRecord', 'check_augmentation', 'read_label', 'read_rgb']

_LABEL_SUFFIX = '_gtFine_labelIds.png'
_IMAGE_SUFFIX = '_leftImg8bit.png'
_STEM = re.compile(r'^(?P<city>.+)_(?P<seq>\d+)_(?P<frame>\d+)$')


class DatasetError(ValueError):
    """A dataset on disk is missing, incomplete or inconsistent (the message names the path)."""


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB.

    Args:
        path: the image file.
    """
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetError(f'cannot read image {path}')
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_label(path: str | Path, lut: Optional[np.ndarray] = None) -> np.ndarray:
    """Read a label PNG as (H, W) uint8, optionally mapped through a (256,) look-up table.

    Args:
        path: the label file (Cityscapes ``*_gtFine_labelIds.png``).
        lut: label id -> train id table (``ClassSet.label_to_train_lut()``); None keeps the ids.
    """
    lbl = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lbl is None:
        raise DatasetError(f'cannot read label {path}')
    if lbl.ndim != 2 or lbl.dtype != np.uint8:
        raise DatasetError(f'label {path} must be a single-channel 8-bit PNG, got shape '
                           f'{lbl.shape} and dtype {lbl.dtype}')
    return lut[lbl] if lut is not None else lbl


def _parse_stem(path: Path, suffix: str) -> tuple[str, int, int, int]:
    """(city, sequence, frame, digits of the frame number) from a Cityscapes file name."""
    m = _STEM.match(path.name[:-len(suffix)])
    if m is None:
        raise DatasetError(f'file name does not look like <city>_<seq>_<frame>{suffix}: {path}')
    return m['city'], int(m['seq']), int(m['frame']), len(m['frame'])


def _split_dir(root: Path, kind: str, split: str) -> Path:
    if not root.is_dir():
        raise DatasetError(f'dataset folder not found: {root}')
    d = root / kind / split
    if not d.is_dir():
        raise DatasetError(f'split {split!r} not found: {d} does not exist')
    return d


def _frame_path(root: Path, split: str, city: str, seq: int, frame: int, digits: int = 6) -> Path:
    return (root / 'leftImg8bit_sequence' / split / city /
            f'{city}_{seq:06d}_{frame:0{digits}d}{_IMAGE_SUFFIX}')


class SequencePairDataset(torch.utils.data.Dataset):
    """One sample per annotated frame: the frame, its predecessor and its label.

    An annotated frame that opens its sequence (no earlier frame exists) has no pair and is left
    out (listed in ``skipped_first``); an annotated frame with earlier frames but without the one
    right before it is an error. Samples are dicts of numpy arrays: ``image`` and ``prev``
    (H, W, 3) uint8 RGB (current frame and the frame before it), ``label`` (H, W) uint8 train
    ids (255 = ignore) and ``name`` (``<city>_<seq>_<frame>``). A ``transform`` (e.g.
    :class:`PairTransform`) gets and returns that dict.

    Args:
        root: dataset root (holds ``leftImg8bit_sequence`` and ``gtFine``).
        split: split name (``train``, ``val``, ...).
        classes: class set whose label-id -> train-id table maps the labels (Cityscapes' 19
            classes when None).
        transform: callable applied to each sample dict.
    """

    def __init__(self, root: str | Path, split: str, *, classes: Optional[ClassSet] = None,
                 transform: Optional[Callable[[dict[str, Any]], dict[str, Any]]] = None) -> None:
        self.root = Path(root)
        self.split = split
        self.classes = classes if classes is not None else cityscapes_classes()
        self.transform = transform
        self._lut = self.classes.label_to_train_lut()
        label_dir = _split_dir(self.root, 'gtFine', split)
        _split_dir(self.root, 'leftImg8bit_sequence', split)
        labels = sorted(label_dir.glob(f'*/*{_LABEL_SUFFIX}'))
        if not labels:
            raise DatasetError(f'no annotated frames (*{_LABEL_SUFFIX}) found under {label_dir}')
        first: dict[tuple[str, int], int] = {}
        for img in (self.root / 'leftImg8bit_sequence' / split).glob(f'*/*{_IMAGE_SUFFIX}'):
            city, seq, frame, _ = _parse_stem(img, _IMAGE_SUFFIX)
            first[city, seq] = min(frame, first.get((city, seq), frame))
        self.samples: list[tuple[str, Path, Path, Path]] = []
        #: annotated frames left out because they open their sequence (nothing precedes them)
        self.skipped_first: list[Path] = []
        for lbl in labels:
            city, seq, frame, digits = _parse_stem(lbl, _LABEL_SUFFIX)
            image = _frame_path(self.root, split, city, seq, frame, digits)
            if not image.is_file():
                raise DatasetError(f'annotated frame {lbl} has no image: {image} is missing')
            if frame <= first[city, seq]:
                self.skipped_first.append(lbl)
                continue
            prev = _frame_path(self.root, split, city, seq, frame - 1, digits)
            if not prev.is_file():
                raise DatasetError(f'annotated frame {image} has no predecessor frame: '
                                   f'{prev} is missing')
            name = lbl.name[:-len(_LABEL_SUFFIX)]
            self.samples.append((name, image, prev, lbl))
        if not self.samples:
            raise DatasetError(f'no annotated frames with a predecessor frame found under '
                               f'{label_dir} (only first frames of sequences are annotated)')

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name, image_path, prev_path, label_path = self.samples[index]
        image = read_rgb(image_path)
        prev = read_rgb(prev_path)
        label = read_label(label_path, self._lut)
        if prev.shape != image.shape:
            raise DatasetError(f'frame {prev_path} is {prev.shape[1]}x{prev.shape[0]} but '
                               f'{image_path} is {image.shape[1]}x{image.shape[0]}')
        if label.shape != image.shape[:2]:
            raise DatasetError(f'label {label_path} is {label.shape[1]}x{label.shape[0]} but '
                               f'its image {image_path} is {image.shape[1]}x{image.shape[0]}')
        sample = {'image': image, 'prev': prev, 'label': label, 'name': name}
        if self.transform is not None:
            sample = self.transform(sample)
        return sample


@dataclass(frozen=True)
class SequenceRecord:
    """One sequence in frame order.

    Attributes:
        name: ``<city>_<seq>`` (with ``_<first frame>`` appended when a recording holds several
            snippets, as real Cityscapes does).
        frames: frame numbers in order (consecutive).
        images: image path of each frame.
        labels: label path of each frame, or None where the frame is not annotated.
    """

    name: str
    frames: tuple[int, ...]
    images: tuple[Path, ...]
    labels: tuple[Optional[Path], ...]

    def __len__(self) -> int:
        return len(self.frames)

    def frame_name(self, i: int) -> str:
        """The ``<city>_<seq>_<frame>`` stem of the i-th frame."""
        return self.images[i].name[:-len(_IMAGE_SUFFIX)]


class SequenceDataset:
    """Whole sequences in frame order, for evaluation and bag making.

    Frames of one ``<city>_<seq>`` with a gap in their numbering form separate sequences. Each item
    is a :class:`SequenceRecord`; read frames with :meth:`read_image` and labels (train ids) with
    :meth:`read_label`.

    Args:
        root: dataset root.
        split: split name.
        classes: class set for the label mapping (Cityscapes' 19 classes when None).
        annotated_only: keep only sequences with at least one annotated frame.
    """

    def __init__(self, root: str | Path, split: str, *, classes: Optional[ClassSet] = None,
                 annotated_only: bool = True) -> None:
        self.root = Path(root)
        self.split = split
        self.classes = classes if classes is not None else cityscapes_classes()
        self._lut = self.classes.label_to_train_lut()
        image_dir = _split_dir(self.root, 'leftImg8bit_sequence', split)
        label_dir = self.root / 'gtFine' / split
        groups: dict[tuple[str, int], list[tuple[int, Path]]] = {}
        for img in image_dir.glob(f'*/*{_IMAGE_SUFFIX}'):
            city, seq, frame, _ = _parse_stem(img, _IMAGE_SUFFIX)
            groups.setdefault((city, seq), []).append((frame, img))
        if not groups:
            raise DatasetError(f'no frames (*{_IMAGE_SUFFIX}) found under {image_dir}')
        self.sequences: list[SequenceRecord] = []
        for (city, seq), items in sorted(groups.items()):
            items.sort()
            runs: list[list[tuple[int, Path]]] = [[items[0]]]
            for item in items[1:]:
                if item[0] == runs[-1][-1][0] + 1:
                    runs[-1].append(item)
                else:
                    runs.append([item])
            for run in runs:
                labels = []
                for _, img in run:
                    lbl = label_dir / city / (img.name[:-len(_IMAGE_SUFFIX)] + _LABEL_SUFFIX)
                    labels.append(lbl if lbl.is_file() else None)
                if annotated_only and not any(labels):
                    continue
                name = f'{city}_{seq:06d}'
                if len(runs) > 1:
                    name += f'_{run[0][0]:06d}'
                self.sequences.append(SequenceRecord(
                    name, tuple(f for f, _ in run), tuple(p for _, p in run), tuple(labels)))
        if not self.sequences:
            raise DatasetError(f'no annotated frames (*{_LABEL_SUFFIX}) found under {label_dir}')

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> SequenceRecord:
        return self.sequences[index]

    def __iter__(self) -> Iterator[SequenceRecord]:
        return iter(self.sequences)

    def read_image(self, path: str | Path) -> np.ndarray:
        """(H, W, 3) uint8 RGB of a frame.

        Args:
            path: one of a record's ``images``.
        """
        return read_rgb(path)

    def read_label(self, path: str | Path, image_shape: Optional[Sequence[int]] = None
                   ) -> np.ndarray:
        """(H, W) uint8 train ids of a label file (255 = ignore).

        Args:
            path: one of a record's ``labels``.
            image_shape: shape of the frame it annotates; a different size raises DatasetError.
        """
        label = read_label(path, self._lut)
        if image_shape is not None and tuple(label.shape) != tuple(image_shape[:2]):
            raise DatasetError(f'label {path} is {label.shape[1]}x{label.shape[0]} but its image '
                               f'is {image_shape[1]}x{image_shape[0]}')
        return label


def check_augmentation(crop_size: Sequence[int], scale_range: Sequence[float],
                       color_jitter: float) -> None:
    """Raise ValueError naming the first bad augmentation setting (every pair transform's)."""
    if len(crop_size) != 2 or min(crop_size) < 1:
        raise ValueError(f'crop_size must be (height, width) > 0, got {crop_size!r}')
    if not 0 < scale_range[0] <= scale_range[1]:
        raise ValueError(f'scale_range must be 0 < min <= max, got {scale_range!r}')
    if color_jitter < 0:
        raise ValueError(f'color_jitter must be >= 0, got {color_jitter}')


class PairTransform:
    """Training augmentation of a frame pair and its label.

    Both frames and the label get the same random scale, crop and horizontal flip (the label with
    nearest-neighbour interpolation, padded with ignore); both frames get the same colour jitter,
    so the motion between them is unchanged. Random numbers come from torch, which DataLoader
    seeds differently in every worker.

    Args:
        crop_size: (height, width) of the output; smaller scaled images are padded.
        scale_range: (min, max) of the random scale factor.
        hflip: flip horizontally with probability 0.5.
        color_jitter: strength of brightness, contrast and saturation jitter (0 = none); hue is
            shifted by up to a tenth of it.
        ignore_index: label value of padded pixels.
        generator: torch.Generator for reproducible draws (the global RNG when None).
    """

    def __init__(self, crop_size: tuple[int, int], *,
                 scale_range: tuple[float, float] = (0.5, 2.0), hflip: bool = True,
                 color_jitter: float = 0.3, ignore_index: int = 255,
                 generator: Optional[torch.Generator] = None) -> None:
        check_augmentation(crop_size, scale_range, color_jitter)
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.hflip = hflip
        self.color_jitter = float(color_jitter)
        self.ignore_index = ignore_index
        self.generator = generator

    def _uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=self.generator))

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        image, prev, label = sample['image'], sample['prev'], sample['label']
        h, w = label.shape
        if image.shape[:2] != (h, w) or prev.shape[:2] != (h, w):
            raise ValueError(f"sample {sample.get('name')!r}: image {image.shape}, prev "
                             f'{prev.shape} and label {label.shape} differ in size')
        # Colour first, so padding stays black.
        if self.color_jitter > 0:
            j = self.color_jitter
            params = (self._uniform(1 - j, 1 + j), self._uniform(1 - j, 1 + j),
                      self._uniform(1 - j, 1 + j), self._uniform(-j / 10, j / 10))
            image = _jitter(image, *params)
            prev = _jitter(prev, *params)
        scale = self._uniform(*self.scale_range)
        sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
        if (sh, sw) != (h, w):
            image = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_LINEAR)
            prev = cv2.resize(prev, (sw, sh), interpolation=cv2.INTER_LINEAR)
            label = cv2.resize(label, (sw, sh), interpolation=cv2.INTER_NEAREST)
        ch, cw = self.crop_size
        pad_h, pad_w = max(ch - sh, 0), max(cw - sw, 0)
        if pad_h or pad_w:
            image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=0)
            prev = cv2.copyMakeBorder(prev, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=0)
            label = cv2.copyMakeBorder(label, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT,
                                       value=self.ignore_index)
        y0 = int(torch.randint(0, label.shape[0] - ch + 1, (), generator=self.generator))
        x0 = int(torch.randint(0, label.shape[1] - cw + 1, (), generator=self.generator))
        image = image[y0:y0 + ch, x0:x0 + cw]
        prev = prev[y0:y0 + ch, x0:x0 + cw]
        label = label[y0:y0 + ch, x0:x0 + cw]
        if self.hflip and float(torch.rand((), generator=self.generator)) < 0.5:
            image, prev, label = image[:, ::-1], prev[:, ::-1], label[:, ::-1]
        out = dict(sample)
        out.update(image=np.ascontiguousarray(image), prev=np.ascontiguousarray(prev),
                   label=np.ascontiguousarray(label))
        return out


def _jitter(rgb: np.ndarray, brightness: float, contrast: float, saturation: float,
            hue: float) -> np.ndarray:
    """Brightness, contrast, saturation and hue changes of an RGB uint8 image."""
    img = rgb.astype(np.float32) * brightness
    grey = img @ np.array([0.299, 0.587, 0.114], np.float32)
    img = (img - grey.mean()) * contrast + grey.mean()
    grey = (img @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    img = grey + (img - grey) * saturation
    img = img.clip(0, 255).astype(np.uint8)
    if hue:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + round(hue * 180)) % 180).astype(np.uint8)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return img
