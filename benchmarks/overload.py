"""Overload: a camera at twice the rate the node can process, against one at half that rate.

``seg_node`` runs as its own process (shipped config/seg.yaml: best-effort input, depth 1, latest
frame wins). Its capacity is measured first in lock step (send a frame, wait for its labels).
Then a camera publishes best effort at 0.5x and at 2x that rate for a fixed time each, and the
labels are matched to the frames by header stamp. Reported per rate: frames sent, received and
dropped, end-to-end latency p50/p95 (labels received - frame sent), throughput; and the p95
latency ratio 2x / 0.5x (target <= 1.5: a latest-wins node does not queue stale frames).

    python benchmarks/overload.py [--camera 640x480] [--seconds 15] [--weights MODEL]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Optional, Sequence

from _common import model_file, new_tmp
from flow2seg_ros.cli import size_arg
from flow2seg_ros.dds import apply_dds_environment, dds_environment
from flow2seg_ros.frames import scene_frames
from flow2seg_ros.replay import LiveReplay, start_node_process, stop_process


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark and print its figures.

    Args:
        argv: command-line arguments (None = sys.argv[1:]).
    """
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--camera', type=size_arg(), default=(640, 480), help='frame WxH')
    parser.add_argument('--seconds', type=float, default=20.0, help='duration of each rate')
    parser.add_argument('--rounds', type=int, default=4, help='alternations of the two rates')
    parser.add_argument('--calibration-frames', type=int, default=20)
    parser.add_argument('--weights', default=None, help='model file (default: bundled/random)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--domain-id', type=int, default=None)
    parser.add_argument('--log', default='/tmp/flow2seg_overload_node.log', help='node log')
    parser.add_argument('--out', default=None, help='write the figures as JSON here')
    args = parser.parse_args(argv)

    tmp = new_tmp()
    path, what = model_file(args.weights, tmp.name)
    apply_dds_environment(args.domain_id)
    env = dds_environment(args.domain_id)
    topic = '/camera/image_raw'
    frames = scene_frames(60, args.camera)
    proc = start_node_process(image_topic=topic, model_path=str(path),
                              overrides={'device': args.device}, env=env, log_path=args.log)
    report = {'model': what, 'camera': list(args.camera), 'runs': {}}
    try:
        with LiveReplay(image_topic=topic, outputs=('labels',)) as replay:
            replay.wait_for_node(120.0, process=proc)
            # capacity in lock step (the first frames warm up the model and are not counted)
            rtt = []
            for i in range(args.calibration_frames + 3):
                stamp = replay.publish(frames[i % len(frames)])
                replay.wait_outputs([stamp], quiet_s=30.0, timeout=30.0)
                got = replay.output('labels', stamp)
                if got is None:
                    raise SystemExit(f'overload: no labels for calibration frame {i} (see '
                                     f'{args.log})')
                if i >= 3:
                    rtt.append(got.time - replay.sent[stamp])
                time.sleep(0.02)
            capacity = 1.0 / statistics.median(rtt)
            report['capacity_hz'] = capacity
            report['lockstep_latency_ms_p50'] = 1e3 * statistics.median(rtt)
            print(f'overload: {what}, camera {args.camera[0]}x{args.camera[1]}; node capacity '
                  f'~{capacity:.1f} frames/s (lock-step latency '
                  f'{report["lockstep_latency_ms_p50"]:.1f} ms)', flush=True)
            # the two rates alternate in rounds, so that load from elsewhere on a shared
            # machine falls on both alike
            sent = {'half': [], 'double': []}
            for _ in range(args.rounds):
                for name, factor in (('half', 0.5), ('double', 2.0)):
                    rate = factor * capacity
                    count = max(10, int(rate * args.seconds / args.rounds))
                    time.sleep(1.0)  # a gap: each window starts with a fresh flow state
                    stamps = replay.play((frames[i % len(frames)] for i in range(count)), rate)
                    replay.wait_outputs(stamps, quiet_s=2.0, timeout=30.0)
                    sent[name] += stamps
            for name, factor in (('half', 0.5), ('double', 2.0)):
                rate = factor * capacity
                stats = replay.stats(sent[name], rate).as_dict()
                stats['throughput_hz'] = stats['received'] / args.seconds
                report['runs'][name] = stats
                print(f"  {factor:g}x capacity ({rate:.1f} Hz): sent {stats['sent']}, received "
                      f"{stats['received']}, dropped {stats['lost']}; latency p50 "
                      f"{stats['latency_ms_p50']:.1f} ms, p95 {stats['latency_ms_p95']:.1f} ms; "
                      f"throughput {stats['throughput_hz']:.1f} frames/s", flush=True)
    finally:
        stop_process(proc)
        tmp.cleanup()
    ratio = report['runs']['double']['latency_ms_p95'] / report['runs']['half']['latency_ms_p95']
    report['p95_latency_ratio'] = ratio
    print(f'p95 latency at 2x capacity / at 0.5x: {ratio:.2f}x (target <= 1.5x)')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
