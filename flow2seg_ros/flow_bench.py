"""flow2seg-flow-bench: accuracy and speed of every flow method on generated pairs with exact flow.

Usage::

    flow2seg-flow-bench --data data/synthetic --split flowtest [--json runs/flow_bench.json]
        [--methods dis/ultrafast,dis/fast,dis/medium,farneback,learned] [--device cpu]
        [--learned-weights FILE] [--raft-weights FILE] [--threads N] [--max-pairs N]
        [--pipeline bundled|MODEL.safetensors [--pipeline-methods dis/medium,learned]]

For each method on the same pairs in one run: average end-point error (EPE, px) and KITTI's
outlier rate Fl (EPE > 3 px and > 5 % of the true magnitude, in %) on all valid pixels, on
independently moving objects and on the static scene (pixel-weighted over all pairs), and the
time of one estimator call per pair (median and p90, ms) on the device used. The methods run in
turn on each pair, so background load hits them alike. Frames are scored at their own size (the
generator's 512x256 is the node's network size). RAFT runs only when ``--raft-weights`` is given
(nothing downloads). Prints a table and writes JSON.

``--pipeline`` also times the node's whole frame pipeline (:class:`flow2seg_ros.pipeline.
FramePipeline`, the given model) on the same frames with each of ``--pipeline-methods`` as its
flow, in turn per frame: milliseconds per frame (the second frame of each pair; the first one
primes the previous frame) and frames per second from the median.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
from pathlib import Path
import platform
import sys
import time
from typing import Any, Optional, Sequence

import cv2
import numpy as np
import torch

from flow2seg_ros.cli import cli_main
from flow2seg_ros.data.flow_pairs import FlowPairs
from flow2seg_ros.devices import resolve_device
from flow2seg_ros.flow import FLOW_METHODS, FlowEstimator, make_flow_estimator
from flow2seg_ros.flow.errors import FlowErrors, REGIONS
from flow2seg_ros.flow.learned import BUNDLED_FLOW_WEIGHTS
from flow2seg_ros.pipeline import FramePipeline, PipelineConfig
from flow2seg_ros.stats import percentiles

__all__ = ['DEFAULT_METHODS', 'format_table', 'get_args_parser', 'main', 'parse_methods',
           'run_benchmark', 'time_pipelines']

DEFAULT_METHODS = ('dis/ultrafast', 'dis/fast', 'dis/medium', 'farneback', 'learned')
_WARMUP_CALLS = 3


def parse_methods(text: str) -> list[tuple[str, str]]:
    """``"dis/medium,learned"`` -> [('dis', 'medium'), ('learned', '')].

    Raises:
        ValueError: an unknown method name.
    """
    out = []
    for item in (t.strip() for t in text.split(',')):
        if not item:
            continue
        method, _, preset = item.partition('/')
        if method not in FLOW_METHODS:
            raise ValueError(f'unknown flow method {method!r} in --methods; choose from '
                             f'{", ".join(FLOW_METHODS)}')
        out.append((method, preset))
    if not out:
        raise ValueError('--methods names no method')
    return out


def _label(method: str, preset: str) -> str:
    return f'{method}/{preset}' if preset else method


def _build(method: str, preset: str, device: torch.device, *, learned_weights: Optional[str],
           raft_weights: Optional[str]) -> FlowEstimator:
    weights = learned_weights if method == 'learned' else raft_weights
    return make_flow_estimator(method, preset, device=str(device), weights=weights)


def _timed(est: FlowEstimator, prev: np.ndarray, cur: np.ndarray,
           device: torch.device) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    flow = est(prev, cur)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    ms = 1000.0 * (time.perf_counter() - t0)
    return flow.float().cpu().numpy(), ms


def run_benchmark(data: str | Path, split: str, methods: Sequence[tuple[str, str]], *,
                  device: str = 'cpu', learned_weights: Optional[str] = None,
                  raft_weights: Optional[str] = None, max_pairs: int = 0,
                  progress: bool = False) -> dict[str, Any]:
    """Score and time each method on the split's pairs; returns the JSON-able report.

    Args:
        data: dataset root (``flow2seg-synth --out``).
        split: the split with ground-truth flow (e.g. ``flowtest``).
        methods: (method, preset) pairs (:func:`parse_methods`).
        device: where estimators return (and torch ones run) their flow.
        learned_weights: weights of the learned estimator (None = the bundled ones).
        raft_weights: RAFT weights; RAFT methods are skipped without them.
        max_pairs: use this many pairs spread over the split (0 = all).
        progress: print a dot per 10 pairs to stderr.
    """
    dev = resolve_device(device)
    pairs = FlowPairs(data, split)
    chosen = [(m, p) for m, p in methods if not m.startswith('raft') or raft_weights]
    skipped = [_label(m, p) for m, p in methods if (m, p) not in chosen]
    estimators = {_label(m, p): _build(m, p, dev, learned_weights=learned_weights,
                                       raft_weights=raft_weights) for m, p in chosen}
    count = len(pairs) if max_pairs <= 0 else min(max_pairs, len(pairs))
    indices = np.linspace(0, len(pairs) - 1, count).round().astype(int)
    errors = {k: FlowErrors() for k in estimators}
    times: dict[str, list[float]] = {k: [] for k in estimators}
    sequences = set()
    size = None
    for n, i in enumerate(indices):
        s = pairs[int(i)]
        sequences.add(s['name'].rsplit('_', 1)[0])
        size = (s['cur'].shape[1], s['cur'].shape[0])
        names = list(estimators)
        if n == 0:
            for name in names:
                for _ in range(_WARMUP_CALLS):
                    _timed(estimators[name], s['prev'], s['cur'], dev)
        # Rotate the order per pair so no method always runs first (caches, turbo).
        shift = n % len(names)
        for name in names[shift:] + names[:shift]:
            flow, ms = _timed(estimators[name], s['prev'], s['cur'], dev)
            times[name].append(ms)
            errors[name].update(flow, s['flow'], s['valid'], s['moving'])
        if progress and n % 10 == 9:
            print('.', end='', file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    results = {}
    for name in estimators:
        row = errors[name].summary()
        row['time_ms'] = percentiles(times[name])
        results[name] = row
    learned = estimators.get('learned')
    return {
        'data': str(data), 'split': split, 'pairs': int(count), 'sequences': len(sequences),
        'size_wh': list(size) if size else None, 'device': str(dev),
        'torch_threads': torch.get_num_threads(), 'opencv_threads': cv2.getNumThreads(),
        'machine': {'platform': platform.platform(), 'processor': platform.processor(),
                    'cpus': os.cpu_count(), 'torch': torch.__version__,
                    'opencv': cv2.__version__,
                    'gpu': torch.cuda.get_device_name(dev) if dev.type == 'cuda' else None},
        'learned_weights': getattr(learned, 'weights', None),
        'skipped': skipped,
        'when': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'methods': results,
    }


def time_pipelines(data: str | Path, split: str, methods: Sequence[tuple[str, str]], *,
                   weights: Sequence[Optional[str]] = (None,), device: str = 'cpu',
                   learned_weights: Optional[str] = None, max_pairs: int = 0
                   ) -> dict[str, Any]:
    """Time the node's frame pipeline of each model with each flow method on the split's
    pairs, all in turn on every pair.

    Args:
        data: dataset root.
        split: split with frame pairs.
        methods: (method, preset) flow of each pipeline.
        weights: the models (None = the bundled one).
        device: the pipelines' device.
        learned_weights: weights of a ``learned`` flow (None = the preset's/bundled).
        max_pairs: pairs to use (0 = all).

    Returns:
        ``{'frames': {label: {'time_ms': percentiles, 'fps_p50': ...}}, ...}``; a label is the
        method, prefixed by ``<model>:`` when several models are timed.
    """
    pairs = FlowPairs(data, split)
    pipes = {}
    for model in weights:
        for method, preset in methods:
            fw = learned_weights if method == 'learned' else None
            # An empty preset would fall back to the card's (another method's) preset.
            explicit = preset or (BUNDLED_FLOW_WEIGHTS if method == 'learned' else preset)
            label = _label(method, preset)
            if len(weights) > 1:
                label = f'{model or "bundled"}:{label}'
            pipes[label] = FramePipeline(PipelineConfig(
                weights=model, device=device, flow_method=method, flow_preset=explicit,
                flow_weights=fw))
    count = len(pairs) if max_pairs <= 0 else min(max_pairs, len(pairs))
    times: dict[str, list[float]] = {k: [] for k in pipes}
    for n, i in enumerate(np.linspace(0, len(pairs) - 1, count).round().astype(int)):
        s = pairs[int(i)]
        names = list(pipes)
        shift = n % len(names)
        for name in names[shift:] + names[:shift]:
            pipe = pipes[name]
            pipe.reset()
            pipe.process(s['prev'], 10.0 * n)
            t0 = time.perf_counter()
            res = pipe.process(s['cur'], 10.0 * n + 0.05)
            ms = 1000.0 * (time.perf_counter() - t0)
            if res.reset_reason is not None:
                raise RuntimeError(f'pipeline {name} reset at a second frame: {res.reset_reason}')
            if n > 0:  # the first pair warms up (ONNX export, allocations)
                times[name].append(ms)
    out: dict[str, Any] = {'weights': [w or 'bundled' for w in weights], 'device': device,
                           'frames': {}}
    for name, ts in times.items():
        pct = percentiles(ts)
        out['frames'][name] = {'time_ms': pct, 'fps_p50': round(1000.0 / pct['p50'], 2)
                               if pct['p50'] else None}
    return out


def _fmt(v: Any, spec: str) -> str:
    return '-' if v is None else format(v, spec)


def format_table(report: dict[str, Any]) -> str:
    """The report as a fixed-width text table."""
    head = (f"{report['pairs']} pairs of {report['sequences']} sequences "
            f"({report['data']}, split {report['split']}, {report['size_wh'][0]}x"
            f"{report['size_wh'][1]}), device {report['device']}, torch threads "
            f"{report['torch_threads']}")
    cols = ['method'] + [f'EPE {r}' for r in REGIONS] + [f'Fl {r} %' for r in REGIONS] + [
        'ms p50', 'ms p90']
    lines = [head, '  '.join(f'{c:>13}' if i else f'{c:<14}' for i, c in enumerate(cols))]
    for name, row in report['methods'].items():
        vals = ([_fmt(row[f'epe_{r}'], '.3f') for r in REGIONS]
                + [_fmt(row[f'fl_{r}'], '.2f') for r in REGIONS]
                + [_fmt(row['time_ms']['p50'], '.2f'), _fmt(row['time_ms']['p90'], '.2f')])
        lines.append('  '.join([f'{name:<14}'] + [f'{v:>13}' for v in vals]))
    if report['skipped']:
        lines.append(f"skipped (no weights given): {', '.join(report['skipped'])}")
    return '\n'.join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog='flow2seg-flow-bench', description=__doc__.split('\n')[0])
    p.add_argument('--data', default='data/synthetic', help='dataset root')
    p.add_argument('--split', default='flowtest', help='split with ground-truth flow')
    p.add_argument('--methods', default=','.join(DEFAULT_METHODS),
                   help='comma-separated method[/preset] list')
    p.add_argument('--device', default='cpu', help='auto, cpu, cuda or cuda:N')
    p.add_argument('--learned-weights', default=None,
                   help='learned flow weights (.safetensors); default: the bundled ones')
    p.add_argument('--raft-weights', default=None, help='RAFT weights; RAFT is skipped without')
    p.add_argument('--threads', type=int, default=0,
                   help='torch and OpenCV threads (0 = their defaults)')
    p.add_argument('--max-pairs', type=int, default=0, help='pairs to use (0 = all)')
    p.add_argument('--json', default=None, help='write the report here')
    p.add_argument('--pipeline', default=None,
                   help='also time the frame pipeline of these models (comma-separated; '
                        '"bundled" or a file)')
    p.add_argument('--pipeline-methods', default='dis/medium,learned',
                   help='flow methods of the timed pipelines')
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``flow2seg-flow-bench``; returns the exit status."""
    def run() -> None:
        args = get_args_parser().parse_args(argv)
        if args.threads:
            torch.set_num_threads(args.threads)
            cv2.setNumThreads(args.threads)
        report = run_benchmark(args.data, args.split, parse_methods(args.methods),
                               device=args.device, learned_weights=args.learned_weights,
                               raft_weights=args.raft_weights, max_pairs=args.max_pairs,
                               progress=True)
        report['command'] = ' '.join(['flow2seg-flow-bench', *(
            sys.argv[1:] if argv is None else argv)])
        print(format_table(report))
        if args.pipeline:
            report['pipeline'] = time_pipelines(
                args.data, args.split, parse_methods(args.pipeline_methods),
                weights=[None if w == 'bundled' else w for w in args.pipeline.split(',')],
                device=args.device, learned_weights=args.learned_weights,
                max_pairs=args.max_pairs)
            for name, row in report['pipeline']['frames'].items():
                print(f'pipeline with {name:<14} '
                      f"{row['time_ms']['p50']:.2f} ms/frame p50 ({row['fps_p50']} fps), "
                      f"p90 {row['time_ms']['p90']:.2f} ms")
        if args.json:
            path = Path(args.json)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report, indent=2) + '\n')
            print(f'wrote {path}')

    return cli_main('flow2seg-flow-bench', run)


if __name__ == '__main__':
    sys.exit(main())
