"""Two models through the node's frame pipeline, timed in one run: is a new model as fast?

Each model file gets a :class:`~flow2seg_ros.pipeline.FramePipeline` with the node's defaults
(its card's flow on this device, the default backend); camera frames go through the pipelines in
turn, frame by frame (the order rotating), so a slow spell of a shared machine weighs on both
alike. Reported per model: the median and p90 of ``process`` (camera frame in, labels, colour
mask and overlay out) and its stages, and the ratio of the medians.

    python benchmarks/model_speed.py OLD.safetensors NEW.safetensors [--camera 640x480]
        [--frames 150] [--threads 2] [--temporal-smoothing 0.5 0.5]
        [--temporal-smoothing-stride 0 0] [--out model_speed.json]

One model twice with ``--temporal-smoothing 0 0.5`` times what the smoothing costs; with
``--temporal-smoothing-stride 0 2``, what its finer grid costs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
import statistics
import time
from typing import Optional, Sequence

from flow2seg_ros.cli import size_arg
from flow2seg_ros.frames import scene_frames
from flow2seg_ros.pipeline import FramePipeline, PipelineConfig
from flow2seg_ros.stats import percentile
from flow2seg_ros.temporal import DEFAULT_WEIGHT
from flow2seg_ros.weights import load_model


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('models', nargs=2, help='two model .safetensors files (first = reference)')
    p.add_argument('--camera', type=size_arg(8), default=(640, 480), help='camera WxH')
    p.add_argument('--frames', type=int, default=150, help='frames per model (10 untimed)')
    p.add_argument('--threads', type=int, default=2, help='torch / ONNX Runtime threads')
    p.add_argument('--temporal-smoothing', type=float, nargs=2, default=[DEFAULT_WEIGHT] * 2,
                   metavar=('W1', 'W2'), help='temporal smoothing of each pipeline')
    p.add_argument('--temporal-smoothing-stride', type=int, nargs=2, default=[0, 0],
                   metavar=('S1', 'S2'), help="its grid's stride in each (0 = the logits')")
    p.add_argument('--out', default='model_speed.json', help='JSON report')
    args = p.parse_args(argv)
    pipes, names = [], []
    for path, weight, stride in zip(args.models, args.temporal_smoothing,
                                    args.temporal_smoothing_stride):
        if not Path(path).is_file():
            raise SystemExit(f'model file not found: {path}')
        model, card = load_model(path)
        pipes.append(FramePipeline(PipelineConfig(device='cpu', threads=args.threads,
                                                  temporal_smoothing=weight,
                                                  temporal_smoothing_stride=stride),
                                   model=model, card=card))
        names.append(f'{Path(path).name} (flow {type(pipes[-1].flow_estimator).__name__}, '
                     f'temporal smoothing {weight}, stride {stride})')
    frames = scene_frames(args.frames, args.camera)
    times: list[dict[str, list[float]]] = [{} for _ in pipes]
    for i, rgb in enumerate(frames):
        for k in [(i + j) % len(pipes) for j in range(len(pipes))]:
            t0 = time.perf_counter()
            result = pipes[k].process(rgb, i / 17.0, outputs=('color_mask', 'overlay'))
            ms = 1e3 * (time.perf_counter() - t0)
            if i < 10:
                continue
            times[k].setdefault('process', []).append(ms)
            for stage, value in result.timings.items():
                times[k].setdefault(stage, []).append(value)
    report = {'camera': list(args.camera), 'threads': args.threads, 'models': []}
    for name, timed in zip(names, times):
        row = {'model': name, 'median_ms': {k: round(statistics.median(v), 2)
                                            for k, v in timed.items()},
               'p90_process_ms': round(percentile(timed['process'], 90), 2)}
        report['models'].append(row)
        stages = ', '.join(f'{k} {v}' for k, v in row['median_ms'].items() if k != 'process')
        print(f"{name}: process median {row['median_ms']['process']} ms "
              f"(p90 {row['p90_process_ms']}); {stages}")
    ratio = report['models'][1]['median_ms']['process'] / \
        report['models'][0]['median_ms']['process']
    report['ratio_second_to_first'] = round(ratio, 3)
    print(f'{args.camera[0]}x{args.camera[1]} frames, {len(times[0]["process"])} timed each: '
          f'second / first = {ratio:.3f}')
    Path(args.out).write_text(json.dumps(report, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
