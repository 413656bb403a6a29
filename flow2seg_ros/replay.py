"""Live replay over DDS: play frames to a running node like a camera and record what it publishes.

Shared by the demo, the benchmarks, the tests and bag replay (``flow2seg-bag-eval --live``);
the DDS environment all of them run with is :mod:`flow2seg_ros.dds`'s.

* :func:`start_node_process` / :func:`stop_process`: ``seg_node`` as its own process, the way
  users run it (``python -m flow2seg_ros.node --ros-args --params-file ... -r image:=...``);
* :class:`LiveReplay`: an rclpy node in its own context that publishes ``sensor_msgs/Image``
  (or ready messages such as a bag's) best effort (a camera's QoS) at a fixed rate or on a
  schedule, and records the node's outputs by header stamp, with send and receive times, so
  latency and lost frames follow from the stamps.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from flow2seg_ros.dds import dds_environment, params_file
from flow2seg_ros.encodings import image_msg_from_array, image_msg_to_array
from flow2seg_ros.stats import percentile

__all__ = ['start_node_process', 'stop_process', 'Received', 'ReplayStats', 'LiveReplay']


def start_node_process(*, image_topic: str = '/camera/image_raw',
                       params: Optional[Path] = None, model_path: Optional[str] = None,
                       overrides: Optional[dict[str, Any]] = None,
                       env: Optional[dict[str, str]] = None,
                       log_path: Optional[Path] = None) -> subprocess.Popen:
    """Start ``seg_node`` as its own process.

    Args:
        image_topic: the camera topic the node's ``image`` is remapped to.
        params: parameter file (default: the shipped ``config/seg.yaml``).
        model_path: model file; None = the parameter file's (the bundled model).
        overrides: further ``-p name:=value`` parameters.
        env: the process environment (default :func:`dds_environment`).
        log_path: file for the node's output (default: discarded).
    """
    cmd = [sys.executable, '-m', 'flow2seg_ros.node', '--ros-args',
           '--params-file', str(params or params_file()), '-r', f'image:={image_topic}']
    values = dict(overrides or {})
    if model_path:
        values['model_path'] = str(model_path)
    for key, value in values.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        cmd += ['-p', f'{key}:={text}']
    out = open(log_path, 'wb') if log_path else subprocess.DEVNULL
    try:
        return subprocess.Popen(cmd, env=env or dds_environment(), stdout=out,
                                stderr=subprocess.STDOUT)
    finally:
        if log_path:
            out.close()


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> Optional[int]:
    """Stop a started process: SIGINT (a normal stop for the node), then kill after ``timeout``.

    Args:
        proc: the process.
        timeout: seconds to wait after SIGINT.
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


@dataclass
class Received:
    """One output message: receive time and, when kept, its pixels."""

    time: float
    array: Optional[np.ndarray] = None


@dataclass
class ReplayStats:
    """Figures of one replay run (times in ms, rates in Hz)."""

    sent: int
    received: int
    lost: int
    rate_hz: float
    throughput_hz: float
    latency_ms: list[float] = field(default_factory=list)
    send_rate_hz: Optional[float] = None

    def percentile(self, q: float) -> float:
        """Latency percentile ``q`` (0..100) in ms, nan without received frames."""
        return percentile(self.latency_ms, q)

    def as_dict(self) -> dict[str, Any]:
        return {'sent': self.sent, 'received': self.received, 'lost': self.lost,
                'rate_hz': self.rate_hz, 'throughput_hz': self.throughput_hz,
                'latency_ms_p50': self.percentile(50), 'latency_ms_p95': self.percentile(95),
                'latency_ms_max': max(self.latency_ms) if self.latency_ms else float('nan')}


class LiveReplay:
    """Publish frames like a camera and record a node's outputs (its own rclpy context).

    Args:
        image_topic: topic to publish ``sensor_msgs/Image`` on.
        node_ns: the node's private namespace (outputs are ``<node_ns>/<output>``).
        outputs: output topics to record, e.g. ``("labels", "overlay", "flow")``; the first
            one decides whether a frame arrived.
        keep: outputs whose pixels are kept (the others record receive times only).
        reliable: publish reliable instead of best effort.
        message_type: the camera topic's type (default ``sensor_msgs/Image``; e.g.
            ``CompressedImage`` for :meth:`publish_message` of compressed bag frames).
    """

    def __init__(self, *, image_topic: str = '/camera/image_raw',
                 node_ns: str = '/flow2seg_node', outputs: Sequence[str] = ('labels',),
                 keep: Iterable[str] = (), reliable: bool = False,
                 message_type: Any = None) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        from std_msgs.msg import Header

        if not outputs:
            raise ValueError('LiveReplay needs at least one output topic to record')
        self._rclpy = rclpy
        self._image_type = Image
        self._header_type = Header
        self.image_topic = image_topic
        self.outputs = tuple(outputs)
        self.keep = set(keep)
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node('flow2seg_replay', context=self.context)
        camera_qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                                reliability=(ReliabilityPolicy.RELIABLE if reliable
                                             else ReliabilityPolicy.BEST_EFFORT))
        self.message_type = message_type or Image
        self.publisher = self.node.create_publisher(self.message_type, image_topic, camera_qos)
        out_qos = QoSProfile(depth=50, history=HistoryPolicy.KEEP_LAST,
                             reliability=ReliabilityPolicy.RELIABLE)
        self.topics = {name: f"{node_ns.rstrip('/')}/{name}" for name in self.outputs}
        self._lock = threading.Lock()
        self.sent: dict[int, float] = {}  # stamp ns -> send time (perf_counter)
        self.received: dict[str, dict[int, Received]] = {name: {} for name in self.outputs}
        self._subs = [self.node.create_subscription(
            Image, topic, lambda msg, name=name: self._on_output(name, msg), out_qos)
            for name, topic in self.topics.items()]
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name='flow2seg_replay', daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            while self.context.ok():
                self._executor.spin_once(timeout_sec=0.05)
        except Exception:  # the context went away during shutdown
            pass

    def _on_output(self, name: str, msg: Any) -> None:
        now = time.perf_counter()
        key = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        array = image_msg_to_array(msg) if name in self.keep else None
        with self._lock:
            self.received[name][key] = Received(now, array)

    def wait_for_node(self, timeout: float = 60.0, process: Optional[Any] = None) -> None:
        """Block until the node subscribes to the camera topic and publishes every output.

        Args:
            timeout: seconds to wait.
            process: the node's process, to fail early when it exits.

        Raises:
            TimeoutError: the node did not show up in time (message says what is missing).
            RuntimeError: the node's process exited.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f'the node exited with status {process.returncode} before '
                                   'it was ready')
            missing = [t for t in self.topics.values() if self.node.count_publishers(t) == 0]
            if self.publisher.get_subscription_count() > 0 and not missing:
                return
            time.sleep(0.1)
        raise TimeoutError(f'no node on {self.image_topic!r} publishing '
                           f'{list(self.topics.values())} after {timeout:.0f} s '
                           f'(subscribers on the camera topic: '
                           f'{self.publisher.get_subscription_count()})')

    def publish(self, rgb: np.ndarray, *, encoding: str = 'rgb8',
                frame_id: str = 'camera') -> int:
        """Publish one frame stamped with the wall clock now; returns the stamp in ns.

        Args:
            rgb: (H, W, 3) uint8 RGB.
            encoding: ``rgb8`` or ``bgr8`` on the wire.
            frame_id: header frame id.
        """
        if self.message_type is not self._image_type:
            raise TypeError('publish() sends sensor_msgs/Image; this replay publishes '
                            f'{self.message_type.__name__}: use publish_message()')
        pixels = rgb if encoding == 'rgb8' else np.ascontiguousarray(rgb[..., ::-1])
        msg = image_msg_from_array(pixels, encoding, self._header_type(frame_id=frame_id),
                                   self._image_type)
        return self.publish_message(msg)

    def publish_message(self, msg: Any, stamp_ns: Optional[int] = None) -> int:
        """Publish a ready message (e.g. from a bag), restamped; returns the stamp in ns.

        Args:
            msg: a message of this replay's ``message_type`` with a ``header``.
            stamp_ns: header stamp to set (default: the wall clock now).
        """
        stamp = time.time_ns() if stamp_ns is None else int(stamp_ns)
        with self._lock:
            while stamp in self.sent:
                stamp += 1
            self.sent[stamp] = time.perf_counter()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        self.publisher.publish(msg)
        return stamp

    def play(self, frames: Iterable[np.ndarray], rate_hz: float, *,
             encoding: str = 'rgb8') -> list[int]:
        """Publish frames at a fixed rate (a camera: no waiting for the node); returns stamps.

        Args:
            frames: RGB frames in order.
            rate_hz: publishing rate.
            encoding: ``rgb8`` or ``bgr8`` on the wire.
        """
        if not rate_hz > 0:
            raise ValueError(f'rate must be > 0 Hz, got {rate_hz}')
        period = 1.0 / rate_hz
        stamps = []
        next_time = time.perf_counter()
        for rgb in frames:
            delay = next_time - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            stamps.append(self.publish(rgb, encoding=encoding))
            next_time += period
        return stamps

    def run_window(self, msgs: Sequence[Any], stamps: Sequence[int],
                   send_at: Optional[Sequence[float]] = None, *,
                   drain_s: float = 2.0) -> ReplayStats:
        """Publish ready messages on a schedule, wait for the outputs, and measure them.

        One run or one window of a rate sweep: ``msgs[i % len(msgs)]`` goes out stamped
        ``stamps[i]`` at ``send_at[i]`` seconds after the start (None = as fast as possible);
        then outputs are awaited for up to ``drain_s``.

        Args:
            msgs: messages of this replay's ``message_type`` (restamped in place).
            stamps: header stamps in ns, one per message sent (unique within the replay).
            send_at: send times in seconds from the start, one per stamp, or None.
            drain_s: how long to wait for outputs after the last message.

        Returns:
            The figures; ``rate_hz`` and ``send_rate_hz`` are the rate achieved in sending
            (nan / None for a single message).
        """
        if not msgs:
            raise ValueError('run_window needs at least one message')
        if send_at is not None and len(send_at) != len(stamps):
            raise ValueError(f'send_at has {len(send_at)} times for {len(stamps)} stamps')
        sent = []
        start = time.perf_counter()
        for i, stamp in enumerate(stamps):
            if send_at is not None:
                delay = start + send_at[i] - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            sent.append(self.publish_message(msgs[i % len(msgs)], stamp))
        send_s = time.perf_counter() - start
        self.wait_outputs(sent, quiet_s=drain_s, timeout=drain_s)
        n = len(sent)
        send_rate = (n - 1) / send_s if n > 1 and send_s > 0 else None
        stats = self.stats(sent, send_rate if send_rate is not None else float('nan'))
        stats.send_rate_hz = send_rate
        return stats

    def wait_outputs(self, stamps: Sequence[int], *, quiet_s: float = 1.0,
                     timeout: float = 30.0) -> None:
        """Wait until every output of the stamps arrived, or nothing arrived for ``quiet_s``.

        Args:
            stamps: stamps that were published.
            quiet_s: give up after this long without a new output.
            timeout: give up after this long in any case.
        """
        deadline = time.monotonic() + timeout
        last_count, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            with self._lock:
                counts = [sum(s in self.received[n] for s in stamps) for n in self.outputs]
            if all(c == len(stamps) for c in counts):
                return
            total = sum(counts)
            if total != last_count:
                last_count, last_change = total, time.monotonic()
            elif time.monotonic() - last_change > quiet_s:
                return
            time.sleep(0.05)

    def stats(self, stamps: Sequence[int], rate_hz: float) -> ReplayStats:
        """Latency (receive - send of the first output), frames lost and throughput.

        Args:
            stamps: stamps of the frames in this run.
            rate_hz: the rate they were published at.
        """
        first = self.outputs[0]
        with self._lock:
            got = [(self.sent[s], self.received[first][s].time) for s in stamps
                   if s in self.received[first] and s in self.sent]
        latency = [1e3 * (r - s) for s, r in got]
        span = (max(r for _, r in got) - min(s for s, _ in got)) if got else 0.0
        throughput = len(got) / span if span > 0 else float('nan')
        return ReplayStats(sent=len(stamps), received=len(got), lost=len(stamps) - len(got),
                           rate_hz=rate_hz, throughput_hz=throughput, latency_ms=latency)

    def output(self, name: str, stamp: int) -> Optional[Received]:
        """What was recorded on output ``name`` for a stamp, or None."""
        with self._lock:
            return self.received[name].get(stamp)

    def close(self) -> None:
        """Stop spinning and shut the context down."""
        try:
            self._executor.shutdown(timeout_sec=1.0)
            self.node.destroy_node()
        finally:
            if self.context.ok():
                self._rclpy.shutdown(context=self.context)
        self._thread.join(timeout=2.0)

    def __enter__(self) -> 'LiveReplay':
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
