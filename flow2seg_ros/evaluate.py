"""flow2seg-evaluate: score a model on whole sequences with the node's own frame pipeline.

Usage::

    flow2seg-evaluate --data ROOT --split val [--weights W] [--out DIR]
                      [--write-label-ids DIR] [--max-sequences N]

Every sequence runs through :class:`flow2seg_ros.pipeline.FramePipeline` (the code the ROS node
runs) in frame order, so flow comes from the frame before, exactly as on a robot. The fused, image
and flow heads are scored with :class:`flow2seg_ros.metrics.HeadsEvaluator`: mIoU, per-class IoU,
pixel accuracy and temporal consistency (TC), printed as a table like the paper's Table 1 and
written as JSON. Predictions can be written as Cityscapes labelId PNGs named
``<city>_<seq>_<frame>_flow2seg_labelIds.png``, which cityscapesscripts' official
``evalPixelLevelSemanticLabeling`` accepts.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
import sys
import time
from typing import Any, Optional, Sequence

import cv2
from tqdm import tqdm

from flow2seg_ros.backends import BACKENDS
from flow2seg_ros.classes import ClassSet
from flow2seg_ros.cli import cli_main
from flow2seg_ros.data.cityscapes import SequenceDataset
from flow2seg_ros.metrics import HeadsEvaluator
from flow2seg_ros.models import HEADS
from flow2seg_ros.pipeline import FramePipeline, PipelineConfig
from flow2seg_ros.sequences import dataset_fps, DEFAULT_FPS
from flow2seg_ros.temporal import DEFAULT_WEIGHT

__all__ = ['DEFAULT_FPS', 'dataset_fps', 'find_sequences', 'prediction_name',
           'evaluate_sequences', 'format_report', 'get_args_parser', 'main', 'run']

LABEL_SUFFIX = '_gtFine_labelIds.png'
PREDICTION_SUFFIX = '_flow2seg_labelIds.png'


def find_sequences(root: str | os.PathLike, split: str, classes: ClassSet) -> SequenceDataset:
    """The sequences of a split in frame order (a ``data.cityscapes.SequenceDataset``).

    Args:
        root: dataset root (Cityscapes layout).
        split: split folder name.
        classes: the model's class set (maps label ids to its train ids).

    Raises:
        FileNotFoundError: naming the missing dataset folder.
        flow2seg_ros.data.cityscapes.DatasetError: naming a missing split or empty dataset.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f'dataset folder not found: {root}')
    return SequenceDataset(root, split, classes=classes)


def prediction_name(label_path: Path) -> str:
    """The prediction file name cityscapesscripts matches to a ground-truth file.

    ``<city>_<seq>_<frame>_gtFine_labelIds.png`` -> ``<city>_<seq>_<frame>_flow2seg_labelIds.png``
    (its evaluator looks for ``<city>_<seq>_<frame>*.png``).

    Args:
        label_path: the ground-truth labelId PNG.
    """
    name = Path(label_path).name
    if not name.endswith(LABEL_SUFFIX):
        raise ValueError(f'{label_path}: expected a name ending in {LABEL_SUFFIX}')
    return name[:-len(LABEL_SUFFIX)] + PREDICTION_SUFFIX


def evaluate_sequences(pipeline: Any, dataset: Any, *, max_sequences: int = 0,
                       heads: Sequence[str] = HEADS, fps: float = DEFAULT_FPS,
                       write_label_ids: Optional[Path] = None, label_head: str = 'fused',
                       tc_flow: Any = None, progress: bool = True,
                       segment_every: int = 1) -> dict[str, Any]:
    """Run every sequence through the pipeline in frame order and score each head.

    Args:
        pipeline: a :class:`flow2seg_ros.pipeline.FramePipeline`.
        dataset: a ``data.cityscapes.SequenceDataset`` built with the pipeline's classes.
        max_sequences: evaluate only the first N sequences (0 = all).
        heads: heads to score.
        fps: camera rate; frame k of a sequence is stamped k / fps.
        write_label_ids: folder for labelId PNGs of ``label_head`` on annotated frames, or None.
        label_head: head whose predictions are written.
        tc_flow: flow estimator for temporal consistency (None = HeadsEvaluator's default).
        progress: show a progress bar.
        segment_every: segment only frames 0, N, 2N, ... of each sequence, as a node that
            drops the frames in between does: each segmented frame's flow goes to the frame
            received just before it, and only segmented frames are scored (temporal consistency
            between consecutive segmented frames). 1 = every frame.

    Returns:
        ``HeadsEvaluator.summary()`` plus ``sequences``, ``seconds``, ``written`` (PNG count).
    """
    if int(segment_every) < 1:
        raise ValueError(f'segment_every must be >= 1, got {segment_every!r}')
    every = int(segment_every)
    classes: ClassSet = pipeline.classes
    evaluator = HeadsEvaluator(classes, heads=heads, tc_flow=tc_flow)
    to_label = classes.train_to_label_lut()
    sequences = list(dataset)[:max_sequences or None]
    written = 0
    total = sum(len(s) for s in sequences)
    t0 = time.perf_counter()
    with tqdm(total=total, desc='evaluate', unit='frame', disable=not progress) as bar:
        for seq in sequences:
            pipeline.reset()
            evaluator.new_sequence()
            received = None  # (rgb, stamp) of the last frame read but not segmented
            for k, (image_path, label_path) in enumerate(zip(seq.images, seq.labels)):
                if k % every:
                    if k % every == every - 1:  # the next segmented frame's flow goes here
                        received = (dataset.read_image(image_path), k / fps)
                    bar.update(1)
                    continue
                rgb = dataset.read_image(image_path)
                target = (None if label_path is None
                          else dataset.read_label(label_path, rgb.shape))
                result = pipeline.process(rgb, k / fps, outputs=(), heads=tuple(heads),
                                          prev=received)
                received = None
                evaluator.update(rgb, result.head_labels, target)
                pred = result.head_labels.get(label_head)
                if write_label_ids is not None and label_path is not None and pred is not None:
                    out = write_label_ids / Path(label_path).parent.name / \
                        prediction_name(label_path)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    if not cv2.imwrite(str(out), to_label[pred]):
                        raise OSError(f'could not write {out}')
                    written += 1
                bar.update(1)
    summary = evaluator.summary()
    summary['sequences'] = len(sequences)
    summary['seconds'] = time.perf_counter() - t0
    summary['written'] = written
    summary['table'] = evaluator.table()
    return summary


def format_report(summary: dict[str, Any], classes: ClassSet) -> str:
    """Table 1 style text: heads x (mIoU, TC, pixel accuracy), then per-class IoU, in %.

    Args:
        summary: :func:`evaluate_sequences`'s result.
        classes: the class set (row order of the per-class table).
    """
    heads = list(summary['heads'])
    lines = [f'{summary["sequences"]} sequences, {summary["frames"]} frames, '
             f'{summary["labelled_frames"]} labelled', summary['table'], '',
             'per-class IoU (%)', f'{"class":<16}' + ''.join(f'{h:>8}' for h in heads)]

    def pct(v: Optional[float]) -> str:
        return f'{"-":>8}' if v is None or (isinstance(v, float) and math.isnan(v)) \
            else f'{100 * v:8.2f}'

    for name in classes.names:
        vals = [summary['heads'][h]['per_class_iou'].get(name) for h in heads]
        if all(v is None for v in vals):
            continue
        lines.append(f'{name:<16}' + ''.join(pct(v) for v in vals))
    return '\n'.join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    """The command-line options of ``flow2seg-evaluate``."""
    parser = argparse.ArgumentParser(
        prog='flow2seg-evaluate',
        description='Score a Flow2Seg model (heads fused, image, flow: mIoU, TC, pixel accuracy) '
                    "on whole sequences with the node's frame pipeline.")
    parser.add_argument('--data', required=True, help='dataset root (Cityscapes layout)')
    parser.add_argument('--split', default='val', help='split folder (default val)')
    parser.add_argument('--weights', default=None,
                        help='model .safetensors or bundled model name (default: the bundled one)')
    parser.add_argument('--out', default=None, help='folder for metrics.json')
    parser.add_argument('--write-label-ids', default=None, metavar='DIR',
                        help='write predictions of annotated frames as Cityscapes labelId PNGs')
    parser.add_argument('--label-head', default='fused', choices=HEADS,
                        help='head written by --write-label-ids (default fused)')
    parser.add_argument('--max-sequences', type=int, default=0,
                        help='evaluate only the first N sequences (0 = all)')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    parser.add_argument('--flow-method', default=None, help="flow method (default: the card's)")
    parser.add_argument('--flow-preset', default=None, help="flow preset (default: the card's)")
    parser.add_argument('--fps', type=float, default=None,
                        help='camera rate (default: sequence_info.json, else 17)')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0 = default)')
    parser.add_argument('--backend', default='auto', choices=BACKENDS,
                        help='network runner (auto: ONNX Runtime on the CPU, torch on CUDA)')
    parser.add_argument('--temporal-smoothing', type=float, default=DEFAULT_WEIGHT, metavar='W',
                        help='weight of the previous frame in the fused labels, carried along '
                             f'the flow (0 = off; default {DEFAULT_WEIGHT})')
    parser.add_argument('--temporal-smoothing-stride', type=int, default=0, metavar='S',
                        help="network pixels per cell of the smoothing's grid (0 = the "
                             "logits' own grid, the default)")
    parser.add_argument('--segment-every', type=int, default=1, metavar='N',
                        help='segment every Nth frame only, as a node too slow for the camera '
                             'drops the frames in between (default 1: every frame)')
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``flow2seg-evaluate``; returns the exit status.

    Bad input (a missing dataset folder or split, a missing or invalid weights file, a bad
    option value) prints ``flow2seg-evaluate: error: <message>`` to stderr and returns 2.

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when None).
    """
    args = get_args_parser().parse_args(argv)
    return cli_main('flow2seg-evaluate', lambda: run(args, argv))


def run(args: argparse.Namespace, argv: Optional[Sequence[str]] = None) -> int:
    """Evaluate as the parsed command line asks; returns 0.

    Args:
        args: :func:`get_args_parser`'s result.
        argv: the command line, recorded in the summary (``sys.argv[1:]`` when None).

    Raises:
        FileNotFoundError: the dataset folder is missing.
        flow2seg_ros.data.cityscapes.DatasetError: a missing split or an unusable dataset.
        flow2seg_ros.weights.WeightsError: a missing or invalid weights file.
        ValueError: a bad option value.
    """
    if args.max_sequences < 0:
        raise ValueError(f'--max-sequences must be >= 0, got {args.max_sequences}')
    if args.segment_every < 1:
        raise ValueError(f'--segment-every must be >= 1, got {args.segment_every}')
    root = Path(args.data)
    if not root.is_dir():
        raise FileNotFoundError(f'dataset folder not found: {root}')
    fps = args.fps or dataset_fps(root)
    config = PipelineConfig(weights=args.weights, device=args.device,
                            flow_method=args.flow_method, flow_preset=args.flow_preset,
                            max_gap_s=max(0.5, 2.5 / fps), threads=args.threads,
                            backend=args.backend, temporal_smoothing=args.temporal_smoothing,
                            temporal_smoothing_stride=args.temporal_smoothing_stride)
    pipeline = FramePipeline(config)
    dataset = find_sequences(root, args.split, pipeline.classes)
    heads = HEADS if pipeline.has_flow_path else tuple(h for h in HEADS if h != 'flow')
    label_dir = Path(args.write_label_ids) if args.write_label_ids else None
    summary = evaluate_sequences(pipeline, dataset, max_sequences=args.max_sequences,
                                 heads=heads, fps=fps,
                                 write_label_ids=label_dir, label_head=args.label_head,
                                 progress=not args.no_progress,
                                 segment_every=args.segment_every)
    card = pipeline.card
    summary['setup'] = {
        'data': str(root), 'split': args.split, 'weights': args.weights or 'bundled',
        'preset': card.get('preset'), 'input_size': list(pipeline.input_size),
        'flow': {'method': pipeline.flow_method, 'preset': pipeline.flow_preset,
                 'scale': pipeline.flow_scale},
        'device': str(pipeline.device), 'backend': pipeline.backend, 'fps': fps,
        'label_head': args.label_head, 'temporal_smoothing': pipeline.temporal.weight,
        'temporal_smoothing_stride': pipeline.temporal.stride,
        'segment_every': args.segment_every,
        'command': ' '.join(['flow2seg-evaluate', *(sys.argv[1:] if argv is None else argv)]),
    }
    print(format_report(summary, pipeline.classes))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / 'metrics.json').write_text(json.dumps(summary, indent=2) + '\n')
        print(f'wrote {out / "metrics.json"}')
    if label_dir is not None:
        print(f'wrote {summary["written"]} labelId PNGs to {label_dir}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
