"""Several cameras: one node with ``cameras: [...]`` against one ``seg_node`` process per camera.

Each camera publishes ``--camera`` rgb8 frames best effort at ``--rate`` Hz (all cameras at the
same moments, as triggered cameras do), over DDS from this process. Setting A is one node
process serving every camera with one model; setting B is one ``seg_node`` process per camera
(each renamed, each with its own model). After a warm-up (labels from every camera), each
setting runs ``--seconds``; the settings alternate for ``--rounds``. Reported per setting:
frames sent and labelled (delivered), labels latency p50/p90 (receive - send) and the resident
memory of the node processes (VmRSS at the end of the run and its peak VmHWM, summed over the
processes). Target: A delivers >= 95 % of the frames B delivers, with one model in memory.

    python benchmarks/multicam.py [--cameras 2] [--camera 640x480] [--rate 10] [--seconds 30]
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import subprocess
import sys
import threading
import time
from typing import Any, Optional, Sequence

from _common import model_file, new_tmp
from flow2seg_ros.cli import size_arg
from flow2seg_ros.dds import apply_dds_environment, dds_environment, params_file
from flow2seg_ros.frames import scene_frames
from flow2seg_ros.replay import stop_process
from flow2seg_ros.stats import percentiles


def _memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process in KiB (Linux /proc)."""
    out = {}
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            key, _, value = line.partition(':')
            if key in ('VmRSS', 'VmHWM'):
                out[key] = int(value.split()[0])
    return out


def _start(cmd_args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with open(log_path, 'wb') as log:
        return subprocess.Popen([sys.executable, '-m', 'flow2seg_ros.node', '--ros-args',
                                 '--params-file', str(params_file()), *cmd_args],
                                env=env, stdout=log, stderr=subprocess.STDOUT)


class Cameras:
    """Publishers for the cameras and subscribers for their labels (an rclpy context of its own).

    Args:
        names: camera names (input topic ``/<name>/image``).
        frames: frames to cycle through.
    """

    def __init__(self, names: Sequence[str], frames: Sequence[Any]) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from flow2seg_ros.encodings import image_msg_from_array

        self.names = list(names)
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node('multicam_bench', context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        camera_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
        self.pubs = {n: self.node.create_publisher(Image, f'/{n}/image', camera_qos)
                     for n in self.names}
        self.msgs = [image_msg_from_array(f, 'rgb8', _header(), Image) for f in frames]
        self.sent: dict[tuple[str, int], float] = {}
        self.received: dict[tuple[str, int], float] = {}
        self._subs: list[Any] = []
        self._lock = threading.Lock()
        self._stop = False
        self._spinner = threading.Thread(target=self._spin, daemon=True)
        self._spinner.start()

    def _spin(self) -> None:
        while not self._stop:
            self.executor.spin_once(timeout_sec=0.05)

    def listen(self, topics: dict[str, str]) -> None:
        """Record labels from now on (forgetting earlier ones): camera name -> labels topic."""
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        for sub in self._subs:
            self.node.destroy_subscription(sub)
        self._subs = []
        with self._lock:
            self.sent.clear()
            self.received.clear()
        for name, topic in topics.items():
            def record(msg: Any, name: str = name) -> None:
                key = (name, msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)
                with self._lock:
                    self.received.setdefault(key, time.monotonic())
            self._subs.append(self.node.create_subscription(
                Image, topic, record, QoSProfile(depth=10,
                                                 reliability=ReliabilityPolicy.RELIABLE)))

    def play(self, rate: float, seconds: float, until: Optional[Any] = None) -> list[tuple]:
        """Publish every camera's frame at ``rate`` Hz for ``seconds`` (or until ``until()``).

        Returns:
            The (camera, stamp ns) keys sent.
        """
        keys = []
        t0 = time.monotonic()
        i = 0
        while True:
            due = t0 + i / rate
            if due - t0 > seconds or (until is not None and until()):
                return keys
            time.sleep(max(0.0, due - time.monotonic()))
            stamp = time.time_ns()
            for c, name in enumerate(self.names):
                msg = self.msgs[(i + 7 * c) % len(self.msgs)]
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
                msg.header.frame_id = name
                key = (name, stamp)
                with self._lock:
                    self.sent[key] = time.monotonic()
                self.pubs[name].publish(msg)
                keys.append(key)
            i += 1

    def close(self) -> None:
        self._stop = True
        self._spinner.join(2.0)
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()


def _header() -> Any:
    from std_msgs.msg import Header

    return Header()


def run_setting(name: str, cams: Cameras, args: Any, model: Path, env: dict[str, str],
                log_dir: Path) -> dict[str, Any]:
    """Start the node process(es) of one setting, warm up, measure, stop."""
    common = ['-p', f'model_path:={model}', '-p', f'device:={args.device}']
    if name == 'one_node':
        extra = [w for p in args.node_param for w in ('-p', p)]
        procs = [_start([*common, '-p', f"cameras:=[{', '.join(cams.names)}]", *extra], env,
                        log_dir / 'one_node.log')]
        topics = {c: f'/flow2seg_node/{c}/labels' for c in cams.names}
    else:
        procs = [_start([*common, '-r', f'__node:=seg_{c}', '-r', f'image:=/{c}/image'], env,
                        log_dir / f'seg_{c}.log') for c in cams.names]
        topics = {c: f'/seg_{c}/labels' for c in cams.names}
    cams.listen(topics)
    try:
        warm = time.monotonic()

        def all_labelled() -> bool:
            with cams._lock:
                seen = {c for c, _ in cams.received}
            dead = [p for p in procs if p.poll() is not None]
            if dead:
                raise SystemExit(f'multicam: a node process exited ({dead[0].returncode}); see '
                                 f'{log_dir}')
            return seen >= set(cams.names)

        cams.play(args.rate, 180.0, until=all_labelled)
        if not all_labelled():
            raise SystemExit(f'multicam: no labels from every camera within 180 s ({log_dir})')
        warmup_s = time.monotonic() - warm
        cams.play(args.rate, 2.0)
        keys = cams.play(args.rate, args.seconds)
        time.sleep(2.0)  # the last frames' labels
        memory = [_memory_kib(p.pid) for p in procs]
    finally:
        for p in procs:
            stop_process(p, timeout=15)
    with cams._lock:
        got = [cams.received[k] - cams.sent[k] for k in keys if k in cams.received]
    lat = percentiles([1e3 * v for v in got])
    return {
        'processes': len(procs),
        'sent': len(keys),
        'delivered': len(got),
        'delivered_fraction': len(got) / max(len(keys), 1),
        'latency_ms_p50': lat['p50'] if lat['p50'] is not None else float('nan'),
        'latency_ms_p90': lat['p90'] if lat['p90'] is not None else float('nan'),
        'rss_mib': sum(m['VmRSS'] for m in memory) / 1024,
        'peak_rss_mib': sum(m['VmHWM'] for m in memory) / 1024,
        'warmup_s': warmup_s,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark and print its figures.

    Args:
        argv: command-line arguments (None = sys.argv[1:]).
    """
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--cameras', type=int, default=2, help='number of cameras')
    parser.add_argument('--camera', type=size_arg(8), default=(640, 480), help='frame WxH')
    parser.add_argument('--rate', type=float, default=10.0, help='frames/s of each camera')
    parser.add_argument('--seconds', type=float, default=30.0, help='measured time per run')
    parser.add_argument('--rounds', type=int, default=1, help='alternations of the settings')
    parser.add_argument('--weights', default=None, help='model file (default: bundled/random)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--node-param', action='append', default=[], metavar='NAME:=VALUE',
                        help='a further parameter of the one node (e.g. max_batch_size:=1)')
    parser.add_argument('--domain-id', type=int, default=None)
    parser.add_argument('--logs', default='/tmp/flow2seg_multicam', help='node logs folder')
    parser.add_argument('--out', default=None, help='write the figures as JSON here')
    args = parser.parse_args(argv)

    tmp = new_tmp()
    model, what = model_file(args.weights, tmp.name)
    apply_dds_environment(args.domain_id)
    env = dict(os.environ, **dds_environment(args.domain_id))
    log_dir = Path(args.logs)
    log_dir.mkdir(parents=True, exist_ok=True)
    names = [f'cam{i}' for i in range(args.cameras)]
    cams = Cameras(names, scene_frames(30, args.camera))
    runs: dict[str, list[dict[str, Any]]] = {'one_node': [], 'one_per_camera': []}
    print(f'multicam: {what}; {args.cameras} cameras {args.camera[0]}x{args.camera[1]} at '
          f'{args.rate:g} Hz, {args.seconds:g} s per run, device {args.device}', flush=True)
    try:
        for _ in range(args.rounds):
            for setting in runs:
                fig = run_setting(setting, cams, args, model, env, log_dir)
                runs[setting].append(fig)
                print(f"  {setting:15s} {fig['processes']} process(es): delivered "
                      f"{fig['delivered']}/{fig['sent']} ({100 * fig['delivered_fraction']:.1f}"
                      f" %), latency p50 {fig['latency_ms_p50']:.0f} ms p90 "
                      f"{fig['latency_ms_p90']:.0f} ms, RSS {fig['rss_mib']:.0f} MiB (peak "
                      f"{fig['peak_rss_mib']:.0f} MiB)", flush=True)
    finally:
        cams.close()
        tmp.cleanup()
    one = sum(r['delivered'] for r in runs['one_node'])
    sep = sum(r['delivered'] for r in runs['one_per_camera'])
    ratio = one / max(sep, 1)
    rss = [sum(r['rss_mib'] for r in runs[s]) / len(runs[s]) for s in runs]
    print(f'one node / one process per camera: {100 * ratio:.1f} % of the frames delivered '
          f'(target >= 95 %); resident memory {rss[0]:.0f} MiB vs {rss[1]:.0f} MiB')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump({'model': what, 'args': vars(args), 'runs': runs,
                       'delivered_ratio': ratio}, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
