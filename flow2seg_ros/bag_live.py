"""Live bag replay: a bag's images published over DDS to a running ``seg_node``.

The images go out best effort (like a camera) at the recorded rate, a multiple of it, or as fast
as possible; the node's ``<node-ns>/labels`` outputs are matched by header stamp to give
end-to-end latency and frames lost. A rate sweep then searches, ros2_benchmark-style, for the
highest input rate the node holds with under 5 % loss. Publishing and recording is
:class:`flow2seg_ros.replay.LiveReplay`. The process keeps DDS discovery on this machine and
loads the shipped large-image Fast DDS profile unless the user set otherwise, and keeps the
inherited ``ROS_DOMAIN_ID`` (the node runs elsewhere; see :mod:`flow2seg_ros.dds`).
"""
from __future__ import annotations

from dataclasses import dataclass
import os
from pathlib import Path
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from flow2seg_ros.bag_score import BagEvalError, DEFAULT_NODE_NS, image_topic_type
from flow2seg_ros.bagio import BagReader, COMPRESSED, stamp_ns
from flow2seg_ros.dds import apply_dds_environment, describe_dds_changes
from flow2seg_ros.replay import LiveReplay
from flow2seg_ros.report import fmt_ms, write_live_report
from flow2seg_ros.stats import percentiles

__all__ = ['LiveOptions', 'SWEEP_MAX_LOSS', 'live_replay']

#: Loss below which a rate counts as held in a sweep (ros2_benchmark's usual threshold).
SWEEP_MAX_LOSS = 0.05
#: Environment variables recorded in the report.
_DDS_REPORTED = ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE',
                 'FASTDDS_DEFAULT_PROFILES_FILE', 'RMW_IMPLEMENTATION')


@dataclass
class LiveOptions:
    """How ``--live`` replays.

    Args:
        node_ns: namespace of the node's outputs.
        publish_topic: topic to publish the images on (None = the bag's topic).
        rate_scale: play at this multiple of the recorded rate.
        as_fast_as_possible: publish without pacing.
        sweep: search the highest rate held with < 5 % loss.
        sweep_rates: explicit sweep rates in Hz (None = geometric from ``sweep_start``).
        sweep_start: first sweep rate in Hz.
        sweep_max: highest sweep rate tried.
        sweep_refine: bisection steps after the first failing rate.
        window_s: length of one sweep window in seconds.
        warmup: frames sent (and waited for) before measuring.
        wait_s: how long to wait for the node to appear and answer.
        drain_s: how long to wait for outputs after the last frame of a run (at least three
            times the slowest warm-up answer).
        max_frames: frames of the bag to use (0 = all).
    """

    node_ns: str = DEFAULT_NODE_NS
    publish_topic: Optional[str] = None
    rate_scale: float = 1.0
    as_fast_as_possible: bool = False
    sweep: bool = False
    sweep_rates: Optional[list[float]] = None
    sweep_start: float = 5.0
    sweep_max: float = 120.0
    sweep_refine: int = 2
    window_s: float = 3.0
    warmup: int = 3
    wait_s: float = 60.0
    drain_s: float = 2.0
    max_frames: int = 0


def _read_images(bag: Path, image_topic: str,
                 max_frames: int) -> tuple[str, list[bytes], list[int]]:
    """The image topic's type, its raw messages and their log times (at most ``max_frames``)."""
    with BagReader(bag) as reader:
        msgtype = image_topic_type(reader, image_topic)
        raws, times = [], []
        for _, t, raw in reader.messages([image_topic]):
            raws.append(raw)
            times.append(t)
            if max_frames and len(raws) >= max_frames:
                break
    if not raws:
        raise BagEvalError(f"topic '{image_topic}' in bag {bag} holds no messages")
    return msgtype, raws, times


class _Session:
    """One live replay: the bag's messages, the publisher, and fresh stamps for every window.

    Every window is stamped one bag span past the previous one, so no stamp repeats.

    Args:
        live: the publisher and recorder.
        msgs: the bag's image messages (restamped as they are sent).
        times: their log times in ns.
        options: the replay options.
        log: where progress lines go.
    """

    def __init__(self, live: LiveReplay, msgs: list[Any], times: Sequence[int],
                 options: LiveOptions, log: Callable[[str], None]) -> None:
        self.live = live
        self.msgs = msgs
        self.options = options
        self.log = log
        self.stamps0 = [stamp_ns(m.header) for m in msgs]
        self.span = max(self.stamps0) - min(self.stamps0) + 10_000_000_000
        self.rec_t = (np.asarray(times, np.float64) - times[0]) / 1e9
        self.period = float(np.median(np.diff(self.rec_t))) if len(self.rec_t) > 1 else 0.1
        self.drain_s = options.drain_s
        self.tried: list[dict[str, Any]] = []  # the sweep's windows
        self._windows = 0

    def next_base(self) -> int:
        """A stamp offset no earlier window used."""
        self._windows += 1
        return self._windows * self.span

    def window(self, msgs: Sequence[Any], stamps: Sequence[int],
               send_at: Optional[Sequence[float]], drain_s: float) -> dict[str, Any]:
        """Publish ``msgs[i % n]`` stamped ``stamps[i]`` at ``send_at[i]`` s after the start
        (None = as fast as possible); wait for outputs; return sent/received/latency figures
        (the raw latencies under ``_latencies``)."""
        stats = self.live.run_window(msgs, stamps, send_at, drain_s=drain_s)
        n = stats.sent
        return {'sent': n, 'received': stats.received, 'lost': stats.lost,
                'loss': stats.lost / n if n else None, 'send_rate_hz': stats.send_rate_hz,
                'latency_ms': percentiles(stats.latency_ms), '_latencies': stats.latency_ms}

    def warm_up(self, topic: str, labels_topic: str) -> None:
        """Send the first frames until the node answers; a slow answer lengthens the drain.

        Raises:
            BagEvalError: nothing came back within ``wait_s``.
        """
        k = min(self.options.warmup, len(self.msgs))
        deadline = time.perf_counter() + self.options.wait_s
        while time.perf_counter() < deadline:
            base = self.next_base()
            res = self.window(self.msgs[:k], [s + base for s in self.stamps0[:k]],
                              [i * self.period for i in range(k)],
                              drain_s=self.options.wait_s / 4)
            if res['received'] > 0:  # a slow node needs longer to answer than the default
                self.drain_s = max(self.drain_s, 3e-3 * res['latency_ms']['max'])
                return
        raise BagEvalError(
            f"the node subscribes to '{topic}' but published nothing on "
            f"'{labels_topic}' within {self.options.wait_s:g} s (QoS mismatch? the node "
            'must accept best-effort input)')

    def main_run(self, send_at: Optional[Sequence[float]]) -> tuple[dict[str, Any], list[float]]:
        """The bag once, with its own stamps; returns the figures and the raw latencies."""
        res = self.window(self.msgs, list(self.stamps0), send_at, drain_s=self.drain_s)
        return res, res.pop('_latencies')

    def sweep_window(self, rate: float) -> bool:
        """One fixed-rate window of a sweep; True when it held (< ``SWEEP_MAX_LOSS`` lost)."""
        n = max(5, int(round(rate * self.options.window_s)))
        base = self.next_base() + self.stamps0[0]
        res = self.window(self.msgs, [base + round(i * 1e9 / rate) for i in range(n)],
                          [i / rate for i in range(n)], drain_s=self.drain_s)
        res.pop('_latencies')
        res['rate_hz'] = rate
        self.tried.append(res)
        ok = res['loss'] is not None and res['loss'] < SWEEP_MAX_LOSS
        self.log(f"sweep {rate:7.2f} Hz: {res['received']}/{res['sent']} received "
                 f"({100 * (res['loss'] or 0):.1f} % lost), latency p50 "
                 f"{fmt_ms(res['latency_ms']['p50'])} ms -> {'held' if ok else 'not held'}")
        return ok

    def sweep(self) -> dict[str, Any]:
        """ros2_benchmark-style peak search: fixed-rate windows at increasing rates, then
        bisection between the last rate held and the first that failed."""
        opts = self.options
        good: Optional[float] = None
        bad: Optional[float] = None
        if opts.sweep_rates:
            for rate in sorted(opts.sweep_rates):
                if not self.sweep_window(rate):
                    bad = rate
                    break
                good = rate
        else:
            rate = opts.sweep_start
            while rate <= opts.sweep_max:
                if not self.sweep_window(rate):
                    bad = rate
                    break
                good = rate
                rate *= 1.5
            if good is not None and bad is not None:
                for _ in range(opts.sweep_refine):
                    mid = (good + bad) / 2
                    if self.sweep_window(mid):
                        good = mid
                    else:
                        bad = mid
        return {'max_loss': SWEEP_MAX_LOSS, 'window_s': opts.window_s, 'windows': self.tried,
                'highest_rate_held_hz': good, 'lowest_rate_failed_hz': bad}


def _wait_for_node(live: LiveReplay, topic: str, labels_topic: str, wait_s: float) -> None:
    try:
        live.wait_for_node(wait_s)
    except TimeoutError:
        raise BagEvalError(
            f'no node answered within {wait_s:g} s: nobody subscribes to '
            f"'{topic}' or nobody publishes '{labels_topic}'. Start seg_node with "
            f'-r image:={topic} in the same ROS_DOMAIN_ID '
            f"({os.environ.get('ROS_DOMAIN_ID', '0')}), or set --node-ns") from None
    time.sleep(0.5)  # let the node's side of discovery match our publisher too


def live_replay(bag: str | Path, *, image_topic: str, options: LiveOptions,
                out_dir: Optional[str | Path] = None,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Publish a bag's images to a running node and measure end-to-end latency and loss.

    Args:
        bag: the rosbag2 folder.
        image_topic: the bag's image topic (Image or CompressedImage).
        options: see :class:`LiveOptions`.
        out_dir: folder for ``report.md``, ``report.json`` and the latency figure.
        log: where progress lines go.

    Returns:
        The report data.

    Raises:
        BagError, BagEvalError: as :func:`flow2seg_ros.bag_score.evaluate_bag`; BagEvalError
            also when the node does not appear or does not answer within ``wait_s``.
    """
    # the node runs elsewhere: keep the inherited domain (ROS's default when unset)
    for note in describe_dds_changes(apply_dds_environment(own_domain=False)):
        log(note)
    bag = Path(bag)
    msgtype, raws, times = _read_images(bag, image_topic, options.max_frames)
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CompressedImage, Image

    ns = '/' + options.node_ns.strip('/')
    labels_topic = f'{ns}/labels'
    topic = options.publish_topic or image_topic
    cls = CompressedImage if msgtype == COMPRESSED else Image
    live = LiveReplay(image_topic=topic, node_ns=ns, outputs=('labels',), message_type=cls)
    try:
        session = _Session(live, [deserialize_message(r, cls) for r in raws], times, options,
                           log)
        _wait_for_node(live, topic, labels_topic, options.wait_s)
        if options.warmup:
            session.warm_up(topic, labels_topic)
        scale = options.rate_scale
        send_at = None if options.as_fast_as_possible else list(session.rec_t / scale)
        log(f'live: sending {len(raws)} frames to {topic} '
            + ('as fast as possible' if send_at is None else f'at {scale:g}x recorded rate'))
        main_run, latencies = session.main_run(send_at)
        period = session.period
        data: dict[str, Any] = {
            'bag': str(bag), 'image_topic': image_topic, 'image_type': msgtype,
            'publish_topic': topic, 'labels_topic': labels_topic, 'mode': 'live',
            'dds': {k: os.environ.get(k) for k in _DDS_REPORTED},
            'recorded_rate_hz': 1.0 / period if period > 0 else None,
            'rate_scale': None if send_at is None else scale,
            'as_fast_as_possible': send_at is None,
            'drain_s': session.drain_s, 'run': main_run,
        }
        if options.sweep:
            data['sweep'] = session.sweep()
    finally:
        live.close()
    if out_dir is not None:
        write_live_report(Path(out_dir), data, latencies)
    return data
