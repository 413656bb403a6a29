"""Memory soak: 10,000 frames through the node in-process; resident memory after warm-up.

The node (``Flow2SegNode``, the real adapter with its worker thread) and a camera/recorder node
run in one process on one executor. Frames go in lock step (publish, wait for the node's labels,
colour mask and overlay), so every frame is processed and the node's whole per-frame path runs:
conversion, the pipeline, three output messages. Resident memory is sampled every 100 frames;
the figure is the growth from frame 200 (after warm-up) to the end (target <= 5 %).

    python benchmarks/memory_soak.py [--frames 10000] [--camera 160x120] [--network 128x64]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Optional, Sequence

import numpy as np

from _common import model_file, new_tmp, rss_bytes
from flow2seg_ros.cli import size_arg
from flow2seg_ros.dds import apply_dds_environment
from flow2seg_ros.encodings import image_msg_from_array
from flow2seg_ros.frames import scene_frames


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark and print its figures.

    Args:
        argv: command-line arguments (None = sys.argv[1:]).
    """
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--frames', type=int, default=10_000)
    parser.add_argument('--warmup', type=int, default=200, help='frames before the baseline')
    parser.add_argument('--camera', type=size_arg(), default=(160, 120), help='frame WxH')
    parser.add_argument('--network', type=size_arg(), default=(128, 64), help='network WxH')
    parser.add_argument('--weights', default=None, help='model file (default: bundled/random)')
    parser.add_argument('--timeout', type=float, default=10.0, help='seconds per frame at most')
    parser.add_argument('--out', default=None, help='write the figures as JSON here')
    args = parser.parse_args(argv)
    if args.frames <= args.warmup:
        parser.error(f'--frames ({args.frames}) must exceed --warmup ({args.warmup})')

    apply_dds_environment()
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image

    from std_msgs.msg import Header

    from flow2seg_ros.node import Flow2SegNode

    tmp = new_tmp()
    path, what = model_file(args.weights, tmp.name)
    context = Context()
    rclpy.init(context=context)
    nw, nh = args.network
    node = Flow2SegNode(context=context, parameter_overrides=[
        Parameter('model_path', value=str(path)), Parameter('device', value='cpu'),
        Parameter('network_image_width', value=nw), Parameter('network_image_height', value=nh),
        Parameter('image_reliability', value='reliable')])
    camera = rclpy.create_node('soak_camera', context=context)
    pub = camera.create_publisher(Image, '/image', 5)
    got = {}
    subs = [camera.create_subscription(
        Image, f'/flow2seg_node/{t}', lambda m, t=t: got.__setitem__(t, m), 10)
        for t in ('labels', 'color_mask', 'overlay')]
    assert subs
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(camera)
    deadline = time.monotonic() + 30
    while (pub.get_subscription_count() == 0
           or any(camera.count_publishers(f'/flow2seg_node/{t}') == 0
                  for t in ('labels', 'color_mask', 'overlay'))):
        executor.spin_once(timeout_sec=0.05)
        if time.monotonic() > deadline:
            raise SystemExit('memory_soak: the node did not connect within 30 s')
    frames = scene_frames(64, args.camera)
    msgs = [image_msg_from_array(rgb, 'rgb8', Header(frame_id='camera'), Image)
            for rgb in frames]

    samples = []
    baseline = None
    started = time.monotonic()
    for i in range(args.frames):
        msg = msgs[i % len(msgs)]
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(10**9 + i * 50_000_000, 10**9)
        got.clear()
        pub.publish(msg)
        limit = time.monotonic() + args.timeout
        while len(got) < 3:
            executor.spin_once(timeout_sec=0.01)
            if time.monotonic() > limit:
                raise SystemExit(f'memory_soak: no output for frame {i} within {args.timeout} s')
        if got['labels'].header.stamp != msg.header.stamp:
            raise SystemExit(f'memory_soak: frame {i} answered with another stamp')
        if (i + 1) % 100 == 0:
            rss = rss_bytes()
            samples.append((i + 1, rss))
            if i + 1 == args.warmup:
                baseline = rss
            if (i + 1) % 1000 == 0:
                print(f'frame {i + 1}: RSS {rss / 2**20:.1f} MiB, '
                      f'{(i + 1) / (time.monotonic() - started):.1f} frames/s', flush=True)
    seconds = time.monotonic() - started
    stats = node.stats
    executor.shutdown()
    node.destroy_node()
    camera.destroy_node()
    rclpy.shutdown(context=context)
    tmp.cleanup()

    after = [(n, r) for n, r in samples if n >= args.warmup]
    final = after[-1][1]
    n, r = np.array([a for a, _ in after], float), np.array([b for _, b in after], float)
    slope = float(np.polyfit(n, r, 1)[0]) * 1000 / 2**10 if len(after) > 1 else 0.0
    result = {
        'model': what, 'camera': list(args.camera), 'network': list(args.network),
        'frames': args.frames, 'seconds': seconds, 'frames_per_s': args.frames / seconds,
        'processed': stats.processed, 'dropped': stats.dropped, 'resets': stats.resets,
        'rss_mib_at_warmup': baseline / 2**20, 'rss_mib_final': final / 2**20,
        'rss_mib_max': max(b for _, b in after) / 2**20,
        'growth_pct': 100.0 * (final - baseline) / baseline,
        'slope_kib_per_1000_frames': slope,
    }
    print(f'memory soak: {args.frames} frames ({what}, camera {args.camera[0]}x{args.camera[1]}, '
          f"network {nw}x{nh}) in {seconds:.0f} s ({result['frames_per_s']:.1f} frames/s), "
          f'{stats.processed} processed, {stats.dropped} dropped')
    print(f"RSS after {args.warmup} frames {result['rss_mib_at_warmup']:.1f} MiB, final "
          f"{result['rss_mib_final']:.1f} MiB, max {result['rss_mib_max']:.1f} MiB: growth "
          f"{result['growth_pct']:+.2f} % (target <= 5 %), trend "
          f'{slope:+.1f} KiB per 1000 frames')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
