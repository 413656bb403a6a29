"""flow2seg-make-bag: a folder of image sequences -> a rosbag2 bag a camera could have recorded.

Usage::

    flow2seg-make-bag DIR --out BAG [--storage sqlite3|mcap] [--rate HZ] [--split S]
                      [--image-topic /camera/image_raw] [--labels-topic /camera/labels]
                      [--encoding rgb8|bgr8|...] [--compressed [--compressed-format jpeg|png]]

``DIR`` is a dataset in Cityscapes' layout (what ``flow2seg-synth`` writes, or a Cityscapes root
holding ``leftImg8bit_sequence``). Every frame becomes a ``sensor_msgs/Image`` (or
``CompressedImage``) with ``frame_id`` ``camera`` and header stamps ``1/rate`` apart; sequences
follow one another with a gap of more than a second, so a pipeline replaying the bag resets its
flow state between them. Where a frame is annotated, a ``mono8`` label image of train ids
(255 = ignore) with the same stamp goes on the labels topic, and the class table those ids refer
to is written once, as JSON in a ``std_msgs/String``, on ``<labels namespace>/label_info``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional, Sequence

from tqdm import tqdm

from flow2seg_ros.bagio import (
    BagWriter, compressed_message, image_message, label_info_topic, rgb_to_encoding, STORAGES,
    string_message, WRITE_ENCODINGS)
from flow2seg_ros.classes import cityscapes_classes, ClassSet, load_class_set
from flow2seg_ros.cli import cli_main
from flow2seg_ros.data.cityscapes import SequenceDataset
from flow2seg_ros.sequences import dataset_fps

__all__ = ['DEFAULT_START_S', 'FRAME_ID', 'label_info_topic', 'make_bag', 'get_args_parser',
           'main', 'run', 'sequence_gap_s']

#: Header stamp of the first frame (seconds since the epoch; fixed so bags are reproducible).
DEFAULT_START_S = 1_700_000_000.0
FRAME_ID = 'camera'
DEFAULT_RATE = 17.0


def sequence_gap_s(rate: float) -> float:
    """Stamp gap between two sequences: over a second, and over 2.5 frame periods (which is
    the longest gap replay tolerates before it resets the flow state)."""
    return max(2.0, 5.0 / rate)


def _resolve_classes(spec: Optional[str]) -> ClassSet:
    """``None`` -> Cityscapes' 19 classes; a ``.safetensors`` -> its model card's classes; else a
    class list file (YAML/JSON)."""
    if not spec:
        return cityscapes_classes()
    path = Path(spec)
    if path.suffix == '.safetensors':
        card = path.with_suffix('.json')
        if not card.is_file():
            raise FileNotFoundError(f'model card not found: {card} (needed for --classes {path})')
        try:
            return ClassSet.from_dict(json.loads(card.read_text())['classes'])
        except (KeyError, json.JSONDecodeError) as exc:
            raise ValueError(f'{card}: no valid "classes" table: {exc}') from exc
    return load_class_set(path)


def _dataset_root_and_split(folder: Path, split: Optional[str]) -> tuple[Path, str]:
    if folder.name == 'leftImg8bit_sequence':
        folder = folder.parent
    if not folder.is_dir():
        raise FileNotFoundError(f'sequence folder not found: {folder}')
    seq_dir = folder / 'leftImg8bit_sequence'
    if not seq_dir.is_dir():
        raise FileNotFoundError(f'{folder} holds no leftImg8bit_sequence folder (expected '
                                'Cityscapes layout: leftImg8bit_sequence/<split>/<city>/...)')
    splits = sorted(p.name for p in seq_dir.iterdir() if p.is_dir())
    if split is None:
        if len(splits) != 1:
            raise ValueError(f'{seq_dir} holds splits {splits}: choose one with --split')
        split = splits[0]
    elif split not in splits:
        raise FileNotFoundError(f'split {split!r} not found in {seq_dir} (it has {splits})')
    return folder, split


def make_bag(folder: str | Path, out: str | Path, *, storage: str = 'sqlite3',
             rate: Optional[float] = None, split: Optional[str] = None,
             image_topic: str = '/camera/image_raw',
             labels_topic: Optional[str] = '/camera/labels',
             encoding: str = 'rgb8', compressed: bool = False, compressed_format: str = 'jpeg',
             jpeg_quality: int = 90, classes: Optional[ClassSet] = None,
             start_s: float = DEFAULT_START_S, max_sequences: int = 0,
             progress: bool = True) -> dict[str, Any]:
    """Write the sequences of a Cityscapes-layout folder as a rosbag2 bag.

    Args:
        folder: dataset root (or its ``leftImg8bit_sequence`` folder).
        out: the bag folder to create (must not exist).
        storage: ``sqlite3`` or ``mcap``.
        rate: frames per second; None = the folder's ``sequence_info.json`` rate, else 17.
        split: split to write; None = the only split there is.
        image_topic: topic of the images.
        labels_topic: topic of the label images; None writes no labels.
        encoding: ``sensor_msgs/Image`` encoding (see ``bagio.WRITE_ENCODINGS``).
        compressed: write ``sensor_msgs/CompressedImage`` instead of ``Image``.
        compressed_format: ``jpeg`` or ``png``.
        jpeg_quality: JPEG quality.
        classes: class set whose train ids the labels carry (default Cityscapes' 19).
        start_s: stamp of the first frame in seconds.
        max_sequences: write only the first N sequences (0 = all).
        progress: show a progress bar.

    Returns:
        A summary: ``bag``, ``storage``, ``rate``, ``sequences``, ``frames``, ``labels``,
        ``topics`` {topic: count}, ``stamps`` (first, last in ns).
    """
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got '{storage}'")
    if not compressed and encoding not in WRITE_ENCODINGS:
        raise ValueError(f"cannot write image encoding '{encoding}' "
                         f"(choose from {', '.join(WRITE_ENCODINGS)})")
    root, split = _dataset_root_and_split(Path(folder), split)
    rate = float(rate) if rate is not None else dataset_fps(root)
    if not rate > 0:
        raise ValueError(f'rate must be > 0 Hz, got {rate}')
    classes = classes or cityscapes_classes()
    dataset = SequenceDataset(root, split, classes=classes, annotated_only=False)
    sequences = list(dataset)[:max_sequences or None]
    period_ns = round(1e9 / rate)
    gap_ns = round(1e9 * sequence_gap_s(rate))
    t = round(start_s * 1e9)
    frames = labels = 0
    first = last = None
    with BagWriter(out, storage) as writer, \
            tqdm(total=sum(len(s) for s in sequences), desc='make-bag', unit='frame',
                 disable=not progress) as bar:
        if labels_topic and any(p is not None for s in sequences for p in s.labels):
            info = {'classes': classes.table(), 'ignore_index': classes.ignore_index,
                    'class_set': classes.to_dict(), 'labels_topic': labels_topic,
                    'encoding': 'mono8'}
            writer.write(label_info_topic(labels_topic), string_message(json.dumps(info)), t)
        for i, seq in enumerate(sequences):
            if i:
                t += gap_ns - period_ns
            for image_path, label_path in zip(seq.images, seq.labels):
                rgb = dataset.read_image(image_path)
                if compressed:
                    msg = compressed_message(rgb, compressed_format, t, FRAME_ID, jpeg_quality)
                else:
                    msg = image_message(rgb_to_encoding(rgb, encoding), encoding, t, FRAME_ID)
                writer.write(image_topic, msg, t)
                frames += 1
                if labels_topic and label_path is not None:
                    target = dataset.read_label(label_path, rgb.shape)
                    writer.write(labels_topic, image_message(target, 'mono8', t, FRAME_ID), t)
                    labels += 1
                first = t if first is None else first
                last = t
                t += period_ns
                bar.update(1)
        counts = dict(writer.counts)
    return {'bag': str(out), 'storage': storage, 'rate': rate, 'split': split,
            'sequences': len(sequences), 'frames': frames, 'labels': labels, 'topics': counts,
            'stamps': [first, last]}


def get_args_parser() -> argparse.ArgumentParser:
    """The command-line options of ``flow2seg-make-bag``."""
    parser = argparse.ArgumentParser(
        prog='flow2seg-make-bag',
        description='Write image sequences (Cityscapes layout, e.g. flow2seg-synth output) as a '
                    'rosbag2 bag of camera images, with label images where frames are annotated.')
    parser.add_argument('folder', metavar='DIR', help='dataset root (Cityscapes layout)')
    parser.add_argument('--out', required=True, metavar='BAG', help='bag folder to create')
    parser.add_argument('--storage', choices=STORAGES, default='sqlite3',
                        help='rosbag2 storage (default sqlite3)')
    parser.add_argument('--rate', type=float, default=None, metavar='HZ',
                        help='frame rate (default: sequence_info.json, else 17)')
    parser.add_argument('--split', default=None, help='split to write (default: the only one)')
    parser.add_argument('--image-topic', default='/camera/image_raw', help='image topic')
    parser.add_argument('--labels-topic', default='/camera/labels',
                        help="label image topic ('' = no labels)")
    parser.add_argument('--encoding', default='rgb8', choices=WRITE_ENCODINGS,
                        help='sensor_msgs/Image encoding (default rgb8)')
    parser.add_argument('--compressed', action='store_true',
                        help='write sensor_msgs/CompressedImage instead of Image')
    parser.add_argument('--compressed-format', choices=('jpeg', 'png'), default='jpeg',
                        help='codec of --compressed (default jpeg)')
    parser.add_argument('--jpeg-quality', type=int, default=90, help='JPEG quality (90)')
    parser.add_argument('--classes', default=None, metavar='FILE',
                        help='class set of the label train ids: a class list (YAML/JSON) or a '
                             'model .safetensors (its card); default Cityscapes 19 classes')
    parser.add_argument('--max-sequences', type=int, default=0,
                        help='write only the first N sequences (0 = all)')
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``flow2seg-make-bag``; returns the exit status.

    Bad input prints ``flow2seg-make-bag: error: <message>`` to stderr and returns 2.

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when None).
    """
    args = get_args_parser().parse_args(argv)
    return cli_main('flow2seg-make-bag', lambda: run(args))


def run(args: argparse.Namespace) -> int:
    """Write the bag the parsed command line asks for and print what was written; returns 0.

    Args:
        args: :func:`get_args_parser`'s result.
    """
    if args.max_sequences < 0:
        raise ValueError(f'--max-sequences must be >= 0, got {args.max_sequences}')
    if not 1 <= args.jpeg_quality <= 100:
        raise ValueError(f'--jpeg-quality must be in 1..100, got {args.jpeg_quality}')
    summary = make_bag(
        args.folder, args.out, storage=args.storage, rate=args.rate, split=args.split,
        image_topic=args.image_topic, labels_topic=args.labels_topic or None,
        encoding=args.encoding, compressed=args.compressed,
        compressed_format=args.compressed_format, jpeg_quality=args.jpeg_quality,
        classes=_resolve_classes(args.classes), max_sequences=args.max_sequences,
        progress=not args.no_progress)
    topics = ', '.join(f'{k} ({v})' for k, v in summary['topics'].items())
    print(f"wrote {summary['bag']} ({summary['storage']}): {summary['sequences']} sequences, "
          f"{summary['frames']} frames at {summary['rate']:g} Hz; topics: {topics}")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
