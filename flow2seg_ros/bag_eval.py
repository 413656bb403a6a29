"""flow2seg-bag-eval: replay a rosbag2 bag through the node's frame pipeline, or to a running node.

Usage::

    flow2seg-bag-eval BAG --image-topic T [--labels-topic T] [--out DIR] [--weights W]
                      [--device D] [--max-frames N]
    flow2seg-bag-eval BAG --image-topic T --live [--node-ns /flow2seg_node]
                      [--rate-scale X | --as-fast-as-possible] [--sweep]

In-process (default, :mod:`flow2seg_ros.bag_score`): the bag's images (``sensor_msgs/Image`` in
any encoding the node accepts, or ``CompressedImage``) run through
:class:`flow2seg_ros.pipeline.FramePipeline` in stream order, exactly as the node would run them.
With a labels topic (``mono8`` train ids, matched to images by header stamp) every head (fused,
image, flow) is scored with :class:`flow2seg_ros.metrics.HeadsEvaluator`; without one only the
fused head's temporal consistency is measured. Always measured: latency per pipeline stage
(p50/p90/p99), frames per second, flow resets, and frames skipped with the reason. Written to
``--out``: an output bag in the input's storage format holding the input images and
``<ns>/labels``, ``<ns>/color_mask``, ``<ns>/overlay`` (the node's topic names) with the input's
header stamps; ``report.md``, ``report.json`` (every figure) and PNG figures.

``--live`` (:mod:`flow2seg_ros.bag_live`): the bag's images are published over DDS (best effort,
like a camera) to a running ``seg_node`` at the recorded rate (or ``--rate-scale``, or as fast as
possible); its ``<node-ns>/labels`` outputs are matched by stamp to give end-to-end latency and
frames lost. ``--sweep`` then searches, ros2_benchmark-style, for the highest input rate the
node holds with under 5 % loss. The process keeps DDS discovery on this machine
(``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` unless set), keeps the inherited ``ROS_DOMAIN_ID``
and loads the shipped large-image Fast DDS profile unless a profile is already named (see
:func:`flow2seg_ros.dds.dds_environment`).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional, Sequence

from flow2seg_ros.backends import BACKENDS
from flow2seg_ros.bag_live import live_replay, LiveOptions
from flow2seg_ros.bag_score import (
    BagEvalError, check_labels_topic, DEFAULT_NODE_NS, evaluate_bag, image_topic_type)
from flow2seg_ros.bagio import BagError, BagReader
from flow2seg_ros.cli import cli_main
from flow2seg_ros.pipeline import FramePipeline, PipelineConfig
from flow2seg_ros.report import fmt_ms, fmt_num, fmt_pct

__all__ = ['get_args_parser', 'main', 'run']

PROG = 'flow2seg-bag-eval'


def get_args_parser() -> argparse.ArgumentParser:
    """The command-line options of ``flow2seg-bag-eval``."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description='Replay a rosbag2 bag (sqlite3 or mcap) through the Flow2Seg frame '
                    'pipeline (or, with --live, to a running seg_node) and report accuracy, '
                    'temporal consistency, latency and throughput.')
    p.add_argument('bag', metavar='BAG', help='rosbag2 folder')
    p.add_argument('--image-topic', required=True, help='sensor_msgs/Image or CompressedImage')
    p.add_argument('--labels-topic', default=None, help='mono8 train-id label images')
    p.add_argument('--out', default=None, metavar='DIR',
                   help='report and output bag folder (default <BAG>_flow2seg_eval)')
    p.add_argument('--weights', default=None, help='model .safetensors (default: bundled)')
    p.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    p.add_argument('--precision', default='fp32', choices=('fp32', 'fp16'))
    p.add_argument('--flow-method', default=None, help="flow method (default: the card's)")
    p.add_argument('--flow-preset', default=None, help="flow preset (default: the card's)")
    p.add_argument('--threads', type=int, default=0, help='torch threads (0 = default)')
    p.add_argument('--backend', default='auto', choices=BACKENDS,
                   help='network runner (auto: ONNX Runtime on the CPU, torch on CUDA)')
    p.add_argument('--max-frames', type=int, default=0, help='use at most N images (0 = all)')
    p.add_argument('--node-ns', default=DEFAULT_NODE_NS,
                   help='namespace of the output topics / of the live node')
    p.add_argument('--skip-bad-labels', action='store_true',
                   help='score frames whose label has another size without it (counted) '
                        'instead of stopping')
    p.add_argument('--no-output-bag', action='store_true', help='write the report only')
    p.add_argument('--overwrite', action='store_true', help='replace an existing output bag')
    p.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    live = p.add_argument_group('live replay to a running seg_node')
    live.add_argument('--live', action='store_true', help='publish over DDS to a running node')
    live.add_argument('--publish-topic', default=None,
                      help='topic to publish on (default: --image-topic)')
    pace = live.add_mutually_exclusive_group()
    pace.add_argument('--rate-scale', type=float, default=1.0, metavar='X',
                      help='play at X times the recorded rate (default 1)')
    pace.add_argument('--as-fast-as-possible', action='store_true', help='no pacing')
    live.add_argument('--sweep', action='store_true',
                      help='find the highest input rate held with < 5 %% loss')
    live.add_argument('--sweep-rates', default=None, metavar='HZ,HZ,...',
                      help='explicit sweep rates (default: 5 Hz x1.5 up to --sweep-max)')
    live.add_argument('--sweep-max', type=float, default=120.0, help='highest sweep rate (Hz)')
    live.add_argument('--window-s', type=float, default=3.0, help='sweep window length (s)')
    live.add_argument('--warmup', type=int, default=3, help='warm-up frames (default 3)')
    live.add_argument('--wait-s', type=float, default=60.0,
                      help='wait this long for the node to appear and answer')
    live.add_argument('--drain-s', type=float, default=2.0,
                      help='wait this long for outputs after the last frame')
    return p


def _rates(text: Optional[str]) -> Optional[list[float]]:
    if not text:
        return None
    try:
        rates = [float(v) for v in text.split(',') if v.strip()]
    except ValueError:
        raise BagEvalError(f'--sweep-rates must be numbers separated by commas, got {text!r}') \
            from None
    if not rates or any(r <= 0 for r in rates):
        raise BagEvalError(f'--sweep-rates must be positive rates in Hz, got {text!r}')
    return rates


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run what the parsed command line asks for, print a summary and return the report data.

    Args:
        args: :func:`get_args_parser`'s result.
    """
    bag = Path(args.bag)
    if not bag.exists():
        raise BagError(f'bag not found: {bag}')
    if args.max_frames < 0:
        raise BagEvalError(f'--max-frames must be >= 0, got {args.max_frames}')
    out = Path(args.out) if args.out else bag.parent / f'{bag.name}_flow2seg_eval'
    data = _run_live(args, bag, out) if args.live else _run_in_process(args, bag, out)
    print(f"wrote {out / 'report.md'}")
    return data


def _run_live(args: argparse.Namespace, bag: Path, out: Path) -> dict[str, Any]:
    if not args.rate_scale > 0:
        raise BagEvalError(f'--rate-scale must be > 0, got {args.rate_scale}')
    opts = LiveOptions(node_ns=args.node_ns, publish_topic=args.publish_topic,
                       rate_scale=args.rate_scale, as_fast_as_possible=args.as_fast_as_possible,
                       sweep=args.sweep, sweep_rates=_rates(args.sweep_rates),
                       sweep_max=args.sweep_max, window_s=args.window_s, warmup=args.warmup,
                       wait_s=args.wait_s, drain_s=args.drain_s, max_frames=args.max_frames)
    data = live_replay(bag, image_topic=args.image_topic, options=opts, out_dir=out)
    r = data['run']
    print(f"live: {r['received']}/{r['sent']} frames answered "
          f"({fmt_pct(r['loss'])} % lost), end-to-end latency p50 "
          f"{fmt_ms(r['latency_ms']['p50'])} / p90 {fmt_ms(r['latency_ms']['p90'])} / p99 "
          f"{fmt_ms(r['latency_ms']['p99'])} ms")
    if 'sweep' in data:
        print('sweep: highest rate held with < 5 % loss: '
              f"{fmt_num(data['sweep']['highest_rate_held_hz'])} Hz")
    return data


def _run_in_process(args: argparse.Namespace, bag: Path, out: Path) -> dict[str, Any]:
    with BagReader(bag) as reader:  # fail on the bag before loading a model
        image_topic_type(reader, args.image_topic)
        if args.labels_topic:
            check_labels_topic(reader, args.labels_topic)
    config = PipelineConfig(weights=args.weights, device=args.device, precision=args.precision,
                            flow_method=args.flow_method, flow_preset=args.flow_preset,
                            threads=args.threads, backend=args.backend)
    data = evaluate_bag(bag, FramePipeline(config), image_topic=args.image_topic,
                        labels_topic=args.labels_topic, out_dir=out, node_ns=args.node_ns,
                        max_frames=args.max_frames, skip_bad_labels=args.skip_bad_labels,
                        write_bag=not args.no_output_bag, overwrite=args.overwrite,
                        progress=not args.no_progress)
    lines = [f"{data['frames']['processed']} frames, {data['frames']['labelled']} labelled; "
             f"skipped: {data['frames']['skipped'] or 'none'}"]
    for h, r in data['heads'].items():
        lines.append(f"{h:<6} mIoU {fmt_pct(r['miou'])}  TC {fmt_pct(r['tc'])}  "
                     f"pixAcc {fmt_pct(r['pixel_accuracy'])}")
    tot = data['latency_ms'].get('total', {})
    lines.append(f"latency p50/p90/p99 {fmt_ms(tot.get('p50'))}/{fmt_ms(tot.get('p90'))}/"
                 f"{fmt_ms(tot.get('p99'))} ms, {fmt_num(data['fps']['pipeline'])} frames/s")
    print('\n'.join(lines))
    return data


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``flow2seg-bag-eval``; returns the exit status.

    Bad input prints ``flow2seg-bag-eval: error: <message>`` to stderr and returns 2 (no
    traceback); Ctrl-C returns 130.

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when None).
    """
    args = get_args_parser().parse_args(argv)

    def body() -> None:
        run(args)

    return cli_main(PROG, body)


if __name__ == '__main__':
    raise SystemExit(main())
