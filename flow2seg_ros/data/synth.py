"""``flow2seg-synth``: synthetic driving sequences rendered with pybullet, in Cityscapes' layout,
with exact ground-truth optical flow.

Each sequence is a street scene built from simple shapes (:mod:`~flow2seg_ros.data.synth_world`):
a road that runs straight or curves, with sidewalks, buildings, walls, poles, trees and grass,
sometimes a side street, and cars and pedestrians that move on their own. A camera drives along the
road at a realistic speed and frame rate. pybullet's TinyRenderer (CPU, ``p.DIRECT``) renders the
colour image, an exact per-object segmentation mask and the depth buffer
(:mod:`~flow2seg_ros.data.synth_scene`); every object is registered with its Cityscapes label id,
so labels are exact, and the flow follows exactly from the geometry
(:mod:`~flow2seg_ros.data.synth_flow`).

Appearance is varied on purpose: procedural textures, colours, light direction, sky colour,
exposure and sensor noise change per sequence, and moving cars and pedestrians sometimes wear the
textures and colours of static classes. The image alone is then sometimes ambiguous while the
motion still tells the objects apart, which is what the flow path of Flow2Seg is meant to exploit.

Output (``<city>`` is ``synth<seed>``, ``<stem>`` is ``<city>_<seq:06d>_<frame:06d>``)::

    <out>/leftImg8bit_sequence/<split>/<city>/<stem>_leftImg8bit.png
    <out>/gtFine/<split>/<city>/<stem>_gtFine_labelIds.png
    <out>/flow/<split>/<city>/<stem>_flow.png     every frame but each sequence's first
    <out>/flow/<split>/<city>/<stem>_moving.png
    <out>/sequence_info.json   (camera rate, size, and what each split holds)

``_flow.png`` is the flow from the frame to the previous one (for each pixel, the offset (dx, dy)
to where it was in the previous frame, the convention of :mod:`flow2seg_ros.flow`) in KITTI's
format (:mod:`~flow2seg_ros.data.flowio`: 16-bit PNG, R = u, G = v as ``value * 64 + 2**15``,
B = valid). Invalid pixels are those out of view or hidden in the previous frame; sky is valid
(flow from the camera's rotation). ``_moving.png`` (8-bit, 0/1) marks the pixels of bodies that
moved on their own (walking pedestrians and driving cars; standing pedestrians are static scene).

The same seed gives byte-identical PNGs; the flow draws no random numbers, so the images and labels
are those of the generator before it wrote flow.

``--scenes v2`` (:mod:`~flow2seg_ros.data.synth_props`) adds the other Cityscapes classes (fence,
traffic light, traffic sign, rider, truck, bus, train, motorcycle, bicycle), articulated
pedestrians alone and in groups, and wider variation of camera, light and appearance; ``v1`` (the
default) writes the same frames as before. ``sequence_info.json`` records, per split, the scene
family and a class coverage report: per class, the share of frames it appears in and of pixels.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
import tempfile
import time
from typing import Optional, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from flow2seg_ros.cli import cli_main, parse_size, size_arg
from flow2seg_ros.data.flowio import FLOW_SUFFIX, MOVING_SUFFIX, write_flow_png
from flow2seg_ros.data.synth_flow import ground_truth_flow, RenderedFrame
from flow2seg_ros.data.synth_scene import SynthSequence
from flow2seg_ros.data.synth_world import (FPS, LABEL_IDS, LABEL_IDS_V2, MOVING_LABEL_IDS,
                                           MOVING_LABEL_IDS_V2, SCENES)

__all__ = ['FLOW_FORMAT', 'FLOW_SUFFIX', 'FPS', 'LABEL_IDS', 'LABEL_IDS_V2', 'MOVING_LABEL_IDS',
           'MOVING_LABEL_IDS_V2', 'MOVING_SUFFIX', 'RenderedFrame', 'SCENES', 'SynthSequence',
           'coverage_report', 'format_coverage', 'generate', 'get_args_parser',
           'ground_truth_flow', 'main', 'parse_size']

#: How the flow files are stored (recorded in sequence_info.json).
FLOW_FORMAT = 'kitti_png: R=u, G=v as value*64+2**15, B=valid; current -> previous frame'


def _write_png(path: Path, img: np.ndarray) -> None:
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), img):
        raise OSError(f'could not write {path}')


def _update_info(out: Path, split: str, entry: dict) -> None:
    info_path = out / 'sequence_info.json'
    info = {'fps': FPS, 'splits': {}}
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f'{info_path}: not valid JSON: {exc}') from exc
        info.setdefault('splits', {})
    info['fps'] = FPS
    info['generator'] = 'flow2seg_ros.data.synth'
    info['splits'][split] = entry
    info_path.write_text(json.dumps(info, indent=2, sort_keys=True) + '\n')


def coverage_report(frame_counts: dict[int, int], pixel_counts: dict[int, int], frames: int,
                    pixels: int, label_ids: dict[str, int]) -> dict[str, dict[str, float]]:
    """Per class: the share of frames it appears in and of all pixels, in percent.

    Args:
        frame_counts: label id -> number of frames showing it.
        pixel_counts: label id -> number of pixels.
        frames: frames counted.
        pixels: pixels counted.
        label_ids: class name -> label id (the classes to report).
    """
    return {name: {'frames_pct': round(100.0 * frame_counts.get(lid, 0) / max(frames, 1), 2),
                   'pixels_pct': round(100.0 * pixel_counts.get(lid, 0) / max(pixels, 1), 3)}
            for name, lid in sorted(label_ids.items(), key=lambda kv: kv[1])}


def format_coverage(coverage: dict[str, dict[str, float]]) -> str:
    """The coverage report as a small table (class, % of frames, % of pixels)."""
    lines = [f'{"class":<14} {"frames %":>9} {"pixels %":>9}']
    for name, c in coverage.items():
        lines.append(f'{name:<14} {c["frames_pct"]:9.1f} {c["pixels_pct"]:9.3f}')
    return '\n'.join(lines)


def generate(out: str | Path, *, sequences: int, frames: int, size: tuple[int, int] = (512, 256),
             seed: int, split: str, annotate: str = 'all', flow: bool = True,
             progress: bool = True, scenes: str = 'v1') -> dict:
    """Generate synthetic street sequences in Cityscapes' layout.

    Args:
        out: dataset root (created if needed).
        sequences: number of sequences.
        frames: frames per sequence.
        size: (width, height) of the images.
        seed: seed; the same seed gives byte-identical PNGs.
        split: split folder name (e.g. ``train``, ``val``).
        annotate: ``all`` writes a label for every frame, ``last`` only for each sequence's last
            frame (like Cityscapes, which annotates one frame per snippet).
        progress: show a tqdm progress bar.
        scenes: scene family, ``v1`` or ``v2`` (:class:`SynthSequence`).

    Returns:
        A summary dict: ``city``, ``fps``, ``frames`` written, ``seconds``, ``ms_per_frame``,
        ``coverage`` (:func:`coverage_report` over every rendered frame).
    """
    if scenes not in SCENES:
        raise ValueError(f'scenes must be one of {", ".join(SCENES)}, got {scenes!r}')
    if sequences < 1:
        raise ValueError(f'sequences must be >= 1, got {sequences}')
    if frames < 1:
        raise ValueError(f'frames must be >= 1, got {frames}')
    if annotate not in ('all', 'last'):
        raise ValueError(f"annotate must be 'all' or 'last', got {annotate!r}")
    if not split or '/' in split or split.startswith('.'):
        raise ValueError(f'split must be a plain folder name, got {split!r}')
    width, height = int(size[0]), int(size[1])
    if width < 16 or height < 16:
        raise ValueError(f'size must be at least 16x16, got {width}x{height}')
    out = Path(out)
    city = f'synth{int(seed)}'
    img_dir = out / 'leftImg8bit_sequence' / split / city
    lbl_dir = out / 'gtFine' / split / city
    flow_dir = out / 'flow' / split / city
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    if flow:
        flow_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    flow_seconds = 0.0
    written = flows = 0
    label_ids = LABEL_IDS_V2 if scenes == 'v2' else LABEL_IDS
    frame_counts: dict[int, int] = {}
    pixel_counts: dict[int, int] = {}
    with tempfile.TemporaryDirectory(prefix='flow2seg_synth_') as tex_dir, \
            tqdm(total=sequences * frames, desc=f'synth {split}', unit='frame',
                 disable=not progress) as bar:
        for seq in range(sequences):
            with SynthSequence([int(seed), seq], frames, (width, height), tex_dir,
                               scenes=scenes) as scene:
                prev: Optional[RenderedFrame] = None
                for frame in range(frames):
                    cur = scene.render_frame(frame)
                    stem = f'{city}_{seq:06d}_{frame:06d}'
                    counts = np.bincount(cur.labels.ravel(), minlength=256)
                    for lid in np.flatnonzero(counts):
                        frame_counts[int(lid)] = frame_counts.get(int(lid), 0) + 1
                        pixel_counts[int(lid)] = pixel_counts.get(int(lid), 0) + int(counts[lid])
                    _write_png(img_dir / f'{stem}_leftImg8bit.png', cur.rgb)
                    if annotate == 'all' or frame == frames - 1:
                        _write_png(lbl_dir / f'{stem}_gtFine_labelIds.png', cur.labels)
                    if flow and prev is not None:
                        tf = time.perf_counter()
                        uv, valid, moving = ground_truth_flow(prev, cur)
                        write_flow_png(flow_dir / f'{stem}{FLOW_SUFFIX}', uv, valid)
                        _write_png(flow_dir / f'{stem}{MOVING_SUFFIX}', moving.astype(np.uint8))
                        flow_seconds += time.perf_counter() - tf
                        flows += 1
                    prev = cur
                    written += 1
                    bar.update(1)
    seconds = time.perf_counter() - t0
    coverage = coverage_report(frame_counts, pixel_counts, written, written * width * height,
                               label_ids)
    entry = {'city': city, 'sequences': sequences, 'frames': frames, 'size': [width, height],
             'seed': int(seed), 'annotate': annotate, 'scenes': scenes,
             'label_ids': sorted(set(label_ids.values())), 'flow': bool(flow),
             'moving_label_ids': sorted(MOVING_LABEL_IDS_V2 if scenes == 'v2'
                                        else MOVING_LABEL_IDS),
             'coverage': coverage}
    if flow:
        entry['flow_format'] = FLOW_FORMAT
    _update_info(out, split, entry)
    return {'city': city, 'fps': FPS, 'frames': written, 'flow_frames': flows,
            'seconds': seconds, 'ms_per_frame': 1000.0 * seconds / max(written, 1),
            'flow_ms_per_frame': 1000.0 * flow_seconds / max(flows, 1), 'coverage': coverage}


def get_args_parser() -> argparse.ArgumentParser:
    """The command-line options of ``flow2seg-synth``."""
    parser = argparse.ArgumentParser(
        prog='flow2seg-synth',
        description='Generate synthetic street sequences (pybullet) in Cityscapes layout.')
    parser.add_argument('--out', required=True, help='dataset root to write')
    parser.add_argument('--sequences', type=int, default=20, help='number of sequences')
    parser.add_argument('--frames', type=int, default=30, help='frames per sequence')
    parser.add_argument('--size', type=size_arg(16), default=(512, 256), help='WxH (512x256)')
    parser.add_argument('--seed', type=int, default=0, help='random seed')
    parser.add_argument('--split', default='train', help='split folder name (train, val, ...)')
    parser.add_argument('--annotate', choices=('all', 'last'), default='all',
                        help='label every frame, or only the last of each sequence')
    parser.add_argument('--no-flow', action='store_true',
                        help='do not write the ground-truth flow and moving-object masks')
    parser.add_argument('--scenes', choices=SCENES, default='v1',
                        help='scene family: v1 (ten classes, the data of the bundled model) or v2 '
                             '(the 19 classes, articulated pedestrians, wider variation)')
    parser.add_argument('--coverage', action='store_true',
                        help='print the class coverage report (also in sequence_info.json)')
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``flow2seg-synth``; returns the exit status.

    A bad option (``--size``) exits with status 2 and argparse's message; bad values for the
    generator or a folder that cannot be written print ``flow2seg-synth: error: <message>`` to
    stderr and return 2.

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when None).
    """
    parser = get_args_parser()
    args = parser.parse_args(argv)

    def run() -> None:
        summary = generate(args.out, sequences=args.sequences, frames=args.frames,
                           size=args.size, seed=args.seed, split=args.split,
                           annotate=args.annotate, flow=not args.no_flow,
                           progress=not args.no_progress, scenes=args.scenes)
        flow_note = (f", {summary['flow_frames']} flow maps at "
                     f"{summary['flow_ms_per_frame']:.1f} ms each"
                     if summary['flow_frames'] else '')
        print(f"wrote {summary['frames']} frames of {summary['city']} to {args.out} "
              f"({summary['ms_per_frame']:.1f} ms/frame{flow_note}, camera rate {FPS:g} fps)")
        if args.coverage:
            print(format_coverage(summary['coverage']))

    return cli_main(parser.prog, run)


if __name__ == '__main__':
    raise SystemExit(main())
