"""Does a fused model use its flow? Its fused head with the estimated flow, zero and exact flow.

For each annotated frame of a split (after a sequence's first), the network runs once per flow
input, with no temporal smoothing, so only the network's own use of the flow shows:

- ``estimated``: the flow the node computes (the card's method, or the one named by
  ``--flow-method`` and ``--flow-preset``);
- ``zero``: a flow of zeros (a scene where nothing moves);
- ``exact``: the generator's flow (``<data>/flow/<split>/<city>/<stem>_flow.png``), where the
  split has flow files (``flow2seg-synth`` writes them).

It prints mIoU for those, for the image head and, with ``--image-only``, for an image-only model,
over all pixels and over the pixels that move on their own (the generator's
``<stem>_moving.png``, where present), and what the image-only model would score with the moving
pixels labelled right (how much there is to gain where motion tells things apart). A fused model
whose three rows agree ignores its flow. Writes ``flow_use.json`` into ``--out``.

    python benchmarks/flow_use.py --data data/synthetic_v2 --split val \
        --fused runs/v2_fused/model.safetensors \
        [--image-only runs/v2_image_only/model.safetensors] \
        [--flow-method dis --flow-preset fast] [--threads 1] [--out runs/flow_use]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from flow2seg_ros.cpu_path import labels_from_logits
from flow2seg_ros.data.flowio import FLOW_SUFFIX, MOVING_SUFFIX, read_flow_png, read_moving_png
from flow2seg_ros.evaluate import find_sequences
from flow2seg_ros.flow import scale_flow
from flow2seg_ros.metrics import ConfusionMatrix
from flow2seg_ros.pipeline import FramePipeline, PipelineConfig
from flow2seg_ros.training.dataset import normalize_image
from flow2seg_ros.weights import load_model

IMAGE_SUFFIX = '_leftImg8bit.png'


def _small_flow(flow: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(2, H, W) flow in pixels at another (h, w): resized, and its vectors scaled with it."""
    h, w = size
    sx, sy = w / flow.shape[2], h / flow.shape[1]
    return np.stack([cv2.resize(flow[0], (w, h), interpolation=cv2.INTER_AREA) * sx,
                     cv2.resize(flow[1], (w, h), interpolation=cv2.INTER_AREA) * sy])


def _files(data: Path, split: str, image_path: Path) -> tuple[Optional[Path], Optional[Path]]:
    """The generator's flow and moving-mask files of a frame, where they exist."""
    folder = data / 'flow' / split / image_path.parent.name
    stem = image_path.name[:-len(IMAGE_SUFFIX)]
    flow, moving = folder / f'{stem}{FLOW_SUFFIX}', folder / f'{stem}{MOVING_SUFFIX}'
    return (flow if flow.is_file() else None), (moving if moving.is_file() else None)


def flow_use(data: str, split: str, fused: str, image_only: Optional[str] = None, *,
             flow_method: Optional[str] = None, flow_preset: Optional[str] = None,
             max_sequences: int = 0, fps: float = 17.0, threads: int = 1,
             progress: bool = True) -> dict[str, Any]:
    """The figures (mIoU in %, all pixels and moving pixels) per row; see the module docstring."""
    # the node's own pipeline: its frame resize, flow estimator (method and preset as the node
    # picks them), flow scale and normalisation; the network's parts are called one by one
    pipe = FramePipeline(PipelineConfig(weights=fused, device='cpu', backend='torch',
                                        flow_method=flow_method, flow_preset=flow_preset,
                                        threads=threads, temporal_smoothing=0.0))
    if not pipe.has_flow_path:
        raise SystemExit(f'{fused} has no flow path: nothing to measure')
    model, h, w = pipe.model, *pipe.input_size
    other = load_model(image_only)[0] if image_only else None
    classes_n = pipe.classes.num_classes
    root = Path(data)
    dataset = find_sequences(root, split, pipe.classes)
    rows = ['estimated', 'zero', 'exact', 'image head'] + (['image-only'] if other else [])
    conf = {r: (ConfusionMatrix(classes_n), ConfusionMatrix(classes_n)) for r in rows}
    labelled_right = ConfusionMatrix(classes_n)
    counts = {'frames': 0, 'exact': 0, 'moving': 0, 'moving_pixels': 0, 'pixels': 0}
    sequences = list(dataset)[:max_sequences or None]
    with tqdm(total=sum(len(s) for s in sequences), desc='flow use', unit='frame',
              disable=not progress) as bar:
        for seq in sequences:
            pipe.reset()
            for k, (image_path, label_path) in enumerate(zip(seq.images, seq.labels)):
                bar.update(1)
                rgb = dataset.read_image(image_path)
                frame = pipe.prepare(rgb, k / fps)  # the stream moves on to this frame
                if frame.prev_small is None or label_path is None:  # no flow, or no label
                    continue
                target = dataset.read_label(label_path, rgb.shape)
                flow_file, moving_file = _files(root, split, Path(image_path))
                moving = (read_moving_png(moving_file, expected_size=target.shape[::-1])
                          if moving_file else np.zeros(target.shape, bool))
                est = pipe.flow_estimator(frame.prev_small, frame.small)
                est = est.cpu().float() if torch.is_tensor(est) else torch.from_numpy(est)
                flows = {'estimated': est, 'zero': torch.zeros_like(est)}
                if flow_file is not None:
                    exact = read_flow_png(flow_file)[0]
                    flows['exact'] = torch.from_numpy(_small_flow(exact, (h, w)))
                x = normalize_image(frame.small, *pipe.normalization)[None]
                logits = {}
                with torch.inference_mode():
                    image_logits, _ = model.image_logits(x)
                    logits['image head'] = image_logits
                    for name, fl in flows.items():
                        flow_logits = model.flow_logits(scale_flow(fl[None], pipe.flow_scale))
                        logits[name] = model.fuse(image_logits, flow_logits)
                    if other is not None:
                        logits['image-only'] = other.image_logits(x)[0]
                masked = np.where(moving, target, 255).astype(target.dtype)
                for name, lg in logits.items():
                    pred = labels_from_logits(lg, target.shape)
                    conf[name][0].update(pred, target)
                    conf[name][1].update(pred, masked)
                    if name == ('image-only' if other is not None else 'image head'):
                        labelled_right.update(np.where(moving & (target != 255), target, pred),
                                              target)
                counts['frames'] += 1
                counts['exact'] += 'exact' in flows
                counts['moving'] += moving_file is not None
                counts['moving_pixels'] += int(moving.sum())
                counts['pixels'] += moving.size

    def pct(c: ConfusionMatrix) -> Optional[float]:
        m = c.miou()
        return None if m is None or np.isnan(m) else round(100 * float(m), 2)

    figures = {name: {'miou': pct(c[0]), 'moving_miou': pct(c[1])} for name, c in conf.items()
               if name != 'exact' or counts['exact']}
    reference = 'image-only' if other is not None else 'image head'
    return {'data': data, 'split': split, 'fused': fused, 'image_only': image_only,
            'flow': pipe.flow_estimator.name,
            'counts': counts, 'figures': figures,
            'moving_fraction': round(counts['moving_pixels'] / max(counts['pixels'], 1), 4),
            'moving_labelled_right': {'reference': reference, 'miou': pct(labelled_right)}
            if counts['moving'] else None}


def format_table(result: dict[str, Any]) -> str:
    """The rows as a text table (mIoU in %, all pixels and moving pixels)."""
    lines = [f'{result["split"]}: {result["counts"]["frames"]} frames; flow '
             f'{result["flow"]}; moving pixels '
             f'{100 * result["moving_fraction"]:.1f} %',
             f'{"row":<22}{"mIoU":>8}{"moving":>8}']
    names = {'estimated': 'fused, estimated flow', 'zero': 'fused, zero flow',
             'exact': 'fused, exact flow'}
    for name, f in result['figures'].items():
        cells = ''.join(f'{"-":>8}' if v is None else f'{v:8.2f}'
                        for v in (f['miou'], f['moving_miou']))
        lines.append(f'{names.get(name, name):<22}{cells}')
    right = result.get('moving_labelled_right')
    if right and right['miou'] is not None:
        lines.append(f'{right["reference"]}, its moving pixels labelled right: '
                     f'{right["miou"]:.2f} mIoU')
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data', required=True, help='dataset root (Cityscapes layout)')
    parser.add_argument('--split', default='val', help='split folder (default val)')
    parser.add_argument('--fused', required=True, help='fused model .safetensors')
    parser.add_argument('--image-only', default=None, help='image-only model, for reference')
    parser.add_argument('--flow-method', default=None, help="flow method (default: the card's)")
    parser.add_argument('--flow-preset', default=None, help="flow preset (default: the card's)")
    parser.add_argument('--max-sequences', type=int, default=0, help='first N sequences (0 = all)')
    parser.add_argument('--threads', type=int, default=1, help='torch threads')
    parser.add_argument('--out', default=None, help='folder for flow_use.json')
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    args = parser.parse_args(argv)
    result = flow_use(args.data, args.split, args.fused, args.image_only,
                      flow_method=args.flow_method, flow_preset=args.flow_preset,
                      max_sequences=args.max_sequences, threads=max(1, args.threads),
                      progress=not args.no_progress)
    print(format_table(result))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / 'flow_use.json').write_text(json.dumps(result, indent=2) + '\n')
        print(f'wrote {out / "flow_use.json"}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
