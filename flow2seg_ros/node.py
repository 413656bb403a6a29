"""flow2seg_node: the ROS 2 adapter around :class:`flow2seg_ros.pipeline.FramePipeline`.

The node converts incoming images to RGB, hands them to the pipeline and publishes what the
pipeline returns; it computes nothing itself (no inference, resizing, colouring or overlay).

Topics:
    ``image`` (sensor_msgs/Image, remappable) or ``<image>/compressed``
    (sensor_msgs/CompressedImage), chosen by ``input_transport``; sensor-data QoS by default.
    ``~/labels`` mono8 train ids (255 = ignore) at the input's size, ``~/color_mask`` rgb8,
    ``~/overlay`` rgb8, ``~/confidence`` mono8 and ``~/flow`` rgb8 (optional); every output
    carries the input's header unchanged. ``~/label_info``: the class table, latched
    (vision_msgs/LabelInfo where installed, else std_msgs/String JSON).
    ``/diagnostics``, ``~/debug/processing_time_ms``, ``~/debug/pipeline_latency_ms``.

Threading: the subscription callback only converts the newest message and leaves it, paired
with the frame received just before it, in a one-slot buffer; a worker thread runs the
pipeline. A frame that arrives while another waits replaces it (counted as dropped). Flow is
always computed between a frame and the frame *received* before it, dropped or not.

Parameters that change what is loaded or subscribed (``model_path``, ``device``, ``precision``,
network size, flow method, transport and QoS) are refused at runtime with "requires restart";
the ``publish_*`` switches, ``overlay_alpha``, ``max_frame_gap_s`` and ``diagnostics_period_s``
change at runtime (validated first).
"""

from dataclasses import dataclass
import json
import re
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
import numpy as np
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float64, String

from flow2seg_ros.encodings import (
    compressed_msg_to_rgb, image_fields, image_msg_to_rgb, ImageFormatError)

try:  # vision_msgs where a ROS distribution provides it
    from vision_msgs.msg import LabelInfo, VisionClass  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the installation
    LabelInfo = None
    VisionClass = None

__all__ = ['DEFAULTS', 'Flow2SegNode', 'NodeConfigError', 'NodeStats', 'main', 'pipeline_config',
           'validate_parameters']

NODE_NAME = 'flow2seg_node'

DEFAULTS: Dict[str, Any] = {
    'model_path': '',
    'device': 'auto',
    'precision': 'fp32',
    'network_image_width': 0,
    'network_image_height': 0,
    'flow_method': '',
    'flow_preset': '',
    'overlay_alpha': 0.5,
    'publish_color_mask': True,
    'publish_overlay': True,
    'publish_confidence': False,
    'publish_flow': False,
    'input_transport': 'raw',
    'image_reliability': 'best_effort',
    'image_qos_depth': 1,
    'max_frame_gap_s': 0.5,
    'diagnostics_period_s': 1.0,
}

_DESCRIPTIONS = {
    'model_path': "Flow2Seg .safetensors file with its .json model card; '' = the bundled model.",
    'device': 'auto (CUDA when present, else CPU), cpu, cuda or cuda:N.',
    'precision': 'fp32 or fp16 (fp16 on CUDA only).',
    'network_image_width': "Network input width in pixels; 0 = the model card's.",
    'network_image_height': "Network input height in pixels; 0 = the model card's.",
    'flow_method': "Optical flow: dis, farneback, raft_small, raft_large; '' = the card's.",
    'flow_preset': "Flow preset (DIS: ultrafast/fast/medium); '' = the card's.",
    'overlay_alpha': 'Weight of the colour mask in ~/overlay, 0..1.',
    'publish_color_mask': 'Publish ~/color_mask (rgb8).',
    'publish_overlay': 'Publish ~/overlay (rgb8).',
    'publish_confidence': 'Publish ~/confidence (mono8, 0-255).',
    'publish_flow': 'Publish ~/flow (rgb8 flow picture).',
    'input_transport': 'raw (sensor_msgs/Image on image) or compressed (image/compressed).',
    'image_reliability': 'Input QoS reliability: best_effort (cameras) or reliable.',
    'image_qos_depth': 'Input QoS history depth (1 = always the newest frame).',
    'max_frame_gap_s': 'A gap between frame stamps longer than this resets the flow state.',
    'diagnostics_period_s': 'Period of /diagnostics messages in seconds.',
}

# Parameters that may change while the node runs; every other one requires a restart.
_RUNTIME = ('publish_color_mask', 'publish_overlay', 'publish_confidence', 'publish_flow',
            'overlay_alpha', 'max_frame_gap_s', 'diagnostics_period_s')

# output topic -> name of the pipeline output that feeds it, and its encoding
_OPTIONAL_OUTPUTS: Dict[str, Tuple[str, str]] = {
    'color_mask': ('color_mask', 'rgb8'),
    'overlay': ('overlay', 'rgb8'),
    'confidence': ('confidence', 'mono8'),
    'flow': ('flow_rgb', 'rgb8'),
}

_DEVICE_RE = re.compile(r'^(auto|cpu|cuda|cuda:\d+)$')
_FLOW_METHODS = ('dis', 'farneback', 'raft_small', 'raft_large')
_WARN_PERIOD_S = 5.0


class NodeConfigError(ValueError):
    """A parameter value the node cannot run with; the message names it and why."""


def validate_parameters(values: Dict[str, Any]) -> List[str]:
    """Check parameter values; return one message per problem (empty when all are valid).

    Args:
        values: parameter name -> value; names not given are not checked.
    """
    problems: List[str] = []

    def bad(name: str, why: str) -> None:
        problems.append(f'{name}={values[name]!r}: {why}')

    if 'model_path' in values and values['model_path']:
        import os
        if not os.path.isfile(values['model_path']):
            bad('model_path', 'no such file')
    if 'device' in values and not _DEVICE_RE.match(str(values['device'])):
        bad('device', 'expected auto, cpu, cuda or cuda:N')
    if 'precision' in values and values['precision'] not in ('fp32', 'fp16'):
        bad('precision', 'expected fp32 or fp16')
    for name in ('network_image_width', 'network_image_height'):
        if name in values and int(values[name]) < 0:
            bad(name, "must be >= 0 (0 = the model card's size)")
    if 'network_image_width' in values and 'network_image_height' in values:
        w, h = int(values['network_image_width']), int(values['network_image_height'])
        if (w == 0) != (h == 0) and w >= 0 and h >= 0:
            problems.append(f'network_image_width={w}, network_image_height={h}: '
                            "set both or neither (0 = the model card's size)")
    if 'flow_method' in values and values['flow_method'] not in ('',) + _FLOW_METHODS:
        bad('flow_method', f"expected '' or one of {', '.join(_FLOW_METHODS)}")
    if 'overlay_alpha' in values and not 0.0 <= float(values['overlay_alpha']) <= 1.0:
        bad('overlay_alpha', 'must be in [0, 1]')
    if 'input_transport' in values and values['input_transport'] not in ('raw', 'compressed'):
        bad('input_transport', 'expected raw or compressed')
    if ('image_reliability' in values
            and values['image_reliability'] not in ('best_effort', 'reliable')):
        bad('image_reliability', 'expected best_effort or reliable')
    if 'image_qos_depth' in values and int(values['image_qos_depth']) < 1:
        bad('image_qos_depth', 'must be >= 1')
    for name in ('max_frame_gap_s', 'diagnostics_period_s'):
        if name in values and not float(values[name]) > 0.0:
            bad(name, 'must be > 0')
    return problems


@dataclass
class _Job:
    """One frame for the worker: the frame, its header and the frame received before it."""

    rgb: np.ndarray
    stamp: float
    header: Any
    prev: Optional[Tuple[np.ndarray, float]]
    received_at: float


@dataclass
class NodeStats:
    """Counters the node keeps (read by diagnostics and tests)."""

    received: int = 0
    processed: int = 0
    dropped: int = 0
    bad_input: int = 0
    failed: int = 0
    resets: int = 0
    last_reset_reason: Optional[str] = None
    last_warning: str = ''
    last_processing_ms: float = float('nan')
    last_latency_ms: float = float('nan')


def _stamp_seconds(header: Any) -> float:
    return float(header.stamp.sec) + float(header.stamp.nanosec) * 1e-9


def pipeline_config(values: Dict[str, Any]) -> Any:
    """Build the :class:`~flow2seg_ros.pipeline.PipelineConfig` the parameters describe.

    Args:
        values: parameter values keyed like :data:`DEFAULTS`.
    """
    from flow2seg_ros.pipeline import PipelineConfig

    width, height = int(values['network_image_width']), int(values['network_image_height'])
    return PipelineConfig(
        weights=values['model_path'] or None,
        device=values['device'],
        precision=values['precision'],
        input_size=(height, width) if width and height else None,
        flow_method=values['flow_method'] or None,
        flow_preset=values['flow_preset'] or None,
        overlay_alpha=float(values['overlay_alpha']),
        max_gap_s=float(values['max_frame_gap_s']),
    )


def _default_pipeline_factory(values: Dict[str, Any]) -> Any:
    from flow2seg_ros.pipeline import FramePipeline

    return FramePipeline(pipeline_config(values))


class Flow2SegNode(Node):
    """Semantic segmentation with motion (Flow2Seg) as a ROS 2 node.

    Args:
        pipeline_factory: builds the pipeline from the validated parameter values (a dict
            keyed like :data:`DEFAULTS`); ``None`` builds a :class:`FramePipeline`.
        **kwargs: passed to :class:`rclpy.node.Node` (``context``, ``parameter_overrides``,
            ``cli_args``, ``namespace``).

    Raises:
        NodeConfigError: a parameter is invalid or the pipeline cannot be built; the node
            does not start.
    """

    def __init__(self, *, pipeline_factory: Optional[Callable[[Dict[str, Any]], Any]] = None,
                 **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        for name, default in DEFAULTS.items():
            self.declare_parameter(
                name, default, ParameterDescriptor(description=_DESCRIPTIONS[name]))
        self._values: Dict[str, Any] = {
            name: self.get_parameter(name).value for name in DEFAULTS}
        problems = validate_parameters(self._values)
        if problems:
            raise NodeConfigError('invalid parameters: ' + '; '.join(problems))

        factory = pipeline_factory or _default_pipeline_factory
        try:
            self.pipeline = factory(dict(self._values))
        except (ValueError, OSError, RuntimeError, ImportError) as exc:
            raise NodeConfigError(f'cannot build the segmentation pipeline: {exc}') from exc
        self.classes = self._class_set()
        self.device = str(getattr(self.pipeline, 'device', self._values['device']))

        self.stats = NodeStats()
        self._warned_at: Dict[str, float] = {}
        self._cond = threading.Condition()
        self._pending: Optional[_Job] = None
        self._busy = False
        self._stop = False
        self._last_received: Optional[Tuple[np.ndarray, float]] = None
        self._rate_mark = (time.monotonic(), 0)
        self._latency_sum_ms = 0.0
        self._latency_count = 0

        out_qos = QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST,
                             reliability=ReliabilityPolicy.RELIABLE)
        self.pub_labels = self.create_publisher(Image, '~/labels', out_qos)
        self.pub_optional = {
            topic: self.create_publisher(Image, f'~/{topic}', out_qos)
            for topic in _OPTIONAL_OUTPUTS}
        self.pub_processing = self.create_publisher(Float64, '~/debug/processing_time_ms', 10)
        self.pub_latency = self.create_publisher(Float64, '~/debug/pipeline_latency_ms', 10)
        self.pub_diagnostics = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._publish_label_info()

        in_qos = QoSProfile(
            depth=int(self._values['image_qos_depth']), history=HistoryPolicy.KEEP_LAST,
            reliability=(ReliabilityPolicy.RELIABLE
                         if self._values['image_reliability'] == 'reliable'
                         else ReliabilityPolicy.BEST_EFFORT),
            durability=DurabilityPolicy.VOLATILE)
        if self._values['input_transport'] == 'compressed':
            topic = self.resolve_topic_name('image') + '/compressed'
            self.sub = self.create_subscription(
                CompressedImage, topic, self._on_compressed, in_qos)
        else:
            self.sub = self.create_subscription(Image, 'image', self._on_image, in_qos)

        self._diag_timer = self.create_timer(
            float(self._values['diagnostics_period_s']), self._publish_diagnostics)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._worker = threading.Thread(target=self._work, name='flow2seg_worker', daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"segmenting '{self.sub.topic_name}' ({self._values['input_transport']}, "
            f"{self._values['image_reliability']}, depth {self._values['image_qos_depth']}) "
            f'on {self.device}; {self.classes.num_classes} classes')

    # ----------------------------------------------------------------- set-up helpers
    def _class_set(self) -> Any:
        classes = getattr(self.pipeline, 'classes', None)
        if classes is None:
            from flow2seg_ros.classes import ClassSet
            classes = ClassSet.from_dict(self.pipeline.card['classes'])
        return classes

    def _publish_label_info(self) -> None:
        latched = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                             reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        if LabelInfo is not None:
            self.pub_label_info = self.create_publisher(LabelInfo, '~/label_info', latched)
            msg = LabelInfo()
            msg.header.stamp = self.get_clock().now().to_msg()
            msg.class_map = [VisionClass(class_id=i, class_name=name)
                             for i, name in enumerate(self.classes.names)]
            msg.threshold = 0.0
        else:
            self.pub_label_info = self.create_publisher(String, '~/label_info', latched)
            msg = String(data=self.label_info_json())
        self.pub_label_info.publish(msg)

    def label_info_json(self) -> str:
        """The class table as JSON: ``{"classes": [{"id", "name", "color"}], ...}``."""
        return json.dumps({
            'classes': self.classes.table(),
            'ignore_index': int(self.classes.ignore_index),
            'labels_topic': self.pub_labels.topic_name,
            'encoding': 'mono8',
        })

    # ----------------------------------------------------------------- parameters
    def _on_set_parameters(self, params: List[Parameter]) -> SetParametersResult:
        changes = {p.name: p.value for p in params if p.name in DEFAULTS}
        for name, value in changes.items():
            if name not in _RUNTIME and value != self._values[name]:
                return SetParametersResult(
                    successful=False,
                    reason=f'{name} requires restart (runtime changes allowed for: '
                           f"{', '.join(_RUNTIME)})")
        merged = dict(self._values)
        merged.update(changes)
        problems = validate_parameters({k: merged[k] for k in changes} if changes else {})
        if problems:
            return SetParametersResult(successful=False, reason='; '.join(problems))
        period_changed = (merged['diagnostics_period_s']
                          != self._values['diagnostics_period_s'])
        self._values = merged
        config = getattr(self.pipeline, 'config', None)
        if config is not None:  # the pipeline reads these per frame
            config.overlay_alpha = float(merged['overlay_alpha'])
            config.max_gap_s = float(merged['max_frame_gap_s'])
        if period_changed:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = self.create_timer(
                float(merged['diagnostics_period_s']), self._publish_diagnostics)
        return SetParametersResult(successful=True)

    # ----------------------------------------------------------------- input
    def _warn(self, key: str, text: str) -> None:
        """Log a warning, at most once per ``_WARN_PERIOD_S`` for each kind of problem."""
        self.stats.last_warning = text
        now = time.monotonic()
        if now - self._warned_at.get(key, -1e9) >= _WARN_PERIOD_S:
            self._warned_at[key] = now
            self.get_logger().warning(text)

    def _on_image(self, msg: Image) -> None:
        self._receive(msg, image_msg_to_rgb, f"{msg.width}x{msg.height} '{msg.encoding}'")

    def _on_compressed(self, msg: CompressedImage) -> None:
        self._receive(msg, compressed_msg_to_rgb, f"compressed '{msg.format}'")

    def _receive(self, msg: Any, convert: Callable[[Any], np.ndarray], what: str) -> None:
        self.stats.received += 1
        try:
            rgb = convert(msg)
        except Exception as exc:  # never let one frame stop the node
            self.stats.bad_input += 1
            # throttled per kind of bad frame, so a different problem is still reported
            problem = str(exc) if isinstance(exc, ImageFormatError) else repr(exc)
            self._warn(f'input {what} {type(exc).__name__}',
                       f'skipping bad input image {what} '
                       f'(frame_id {msg.header.frame_id!r}): {problem}')
            return
        stamp = _stamp_seconds(msg.header)
        job = _Job(rgb=rgb, stamp=stamp, header=msg.header, prev=self._last_received,
                   received_at=time.monotonic())
        self._last_received = (rgb, stamp)
        with self._cond:
            if self._pending is not None:
                self.stats.dropped += 1
            self._pending = job
            self._cond.notify_all()

    # ----------------------------------------------------------------- worker
    def _work(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                job, self._pending = self._pending, None
                self._busy = True
            try:
                self._process(job)
            except Exception as exc:  # a failing frame is skipped, the node goes on
                self.stats.failed += 1
                self._warn('pipeline', f'frame at stamp {job.stamp:.3f} skipped: '
                                       f'pipeline failed: {exc!r}')
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def wanted_outputs(self) -> Tuple[str, ...]:
        """Pipeline outputs some subscriber wants now (labels are always computed)."""
        wanted = []
        for topic, (output, _) in _OPTIONAL_OUTPUTS.items():
            if (self._values[f'publish_{topic}']
                    and self.pub_optional[topic].get_subscription_count() > 0):
                wanted.append(output)
        return tuple(wanted)

    def _process(self, job: _Job) -> None:
        wanted = self.wanted_outputs()
        started = time.perf_counter()
        result = self.pipeline.process(job.rgb, job.stamp, outputs=wanted, prev=job.prev)
        processing_ms = (time.perf_counter() - started) * 1e3

        reason = getattr(result, 'reset_reason', None)
        if reason is not None and reason != 'first':
            self.stats.resets += 1
            self.stats.last_reset_reason = reason
            self.get_logger().info(f'flow state reset ({reason}) at stamp {job.stamp:.3f}')
        elif reason == 'first':
            self.stats.last_reset_reason = reason

        self._publish_image(self.pub_labels, result.labels, 'mono8', job.header)
        for topic, (output, encoding) in _OPTIONAL_OUTPUTS.items():
            if output in wanted:
                array = getattr(result, output, None)
                if array is not None:
                    self._publish_image(self.pub_optional[topic], array, encoding, job.header)

        latency_ms = (self.get_clock().now().nanoseconds
                      - (job.header.stamp.sec * 1_000_000_000 + job.header.stamp.nanosec)) / 1e6
        self.pub_processing.publish(Float64(data=float(processing_ms)))
        self.pub_latency.publish(Float64(data=float(latency_ms)))
        self.stats.processed += 1
        self.stats.last_processing_ms = processing_ms
        self.stats.last_latency_ms = latency_ms
        self._latency_sum_ms += latency_ms
        self._latency_count += 1

    @staticmethod
    def _publish_image(pub: Any, array: np.ndarray, encoding: str, header: Any) -> None:
        msg = Image()
        msg.header = header
        for key, value in image_fields(array, encoding).items():
            setattr(msg, key, value)
        pub.publish(msg)

    def wait_idle(self, timeout: float) -> bool:
        """Block until no frame is pending or being processed; False on timeout.

        Args:
            timeout: seconds to wait at most.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending is not None or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    # ----------------------------------------------------------------- diagnostics
    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        mark_time, mark_count = self._rate_mark
        rate = (self.stats.processed - mark_count) / max(now - mark_time, 1e-9)
        self._rate_mark = (now, self.stats.processed)
        mean_latency = (self._latency_sum_ms / self._latency_count
                        if self._latency_count else float('nan'))
        self._latency_sum_ms, self._latency_count = 0.0, 0

        status = DiagnosticStatus()
        status.name = f'{self.get_name()}: segmentation'
        status.hardware_id = self.device
        if self.stats.received == 0:
            status.level, status.message = DiagnosticStatus.WARN, 'no input image received yet'
        elif rate == 0.0:
            status.level, status.message = DiagnosticStatus.WARN, 'no frame processed lately'
        else:
            status.level, status.message = DiagnosticStatus.OK, f'segmenting at {rate:.1f} Hz'
        values = {
            'rate_hz': f'{rate:.2f}',
            'latency_ms_mean': f'{mean_latency:.1f}',
            'processing_ms_last': f'{self.stats.last_processing_ms:.1f}',
            'frames_received': str(self.stats.received),
            'frames_processed': str(self.stats.processed),
            'frames_dropped': str(self.stats.dropped),
            'frames_bad_input': str(self.stats.bad_input),
            'frames_failed': str(self.stats.failed),
            'flow_resets': str(self.stats.resets),
            'last_reset_reason': str(self.stats.last_reset_reason),
            'device': self.device,
            'input_topic': self.sub.topic_name,
        }
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [status]
        self.pub_diagnostics.publish(array)

    # ----------------------------------------------------------------- shutdown
    def destroy_node(self) -> None:
        """Stop the worker thread, then destroy the node."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._worker.is_alive():
            self._worker.join(timeout=10.0)
        super().destroy_node()


def main(args: Optional[List[str]] = None) -> int:
    """Run flow2seg_node until shutdown (console script ``seg_node``).

    Args:
        args: command-line arguments for rclpy (``--ros-args ...``); None uses ``sys.argv``.

    Returns:
        0 after a normal stop (Ctrl-C or external shutdown), 1 when the node refuses to start.
    """
    try:
        with rclpy.init(args=args):
            try:
                node = Flow2SegNode()
            except NodeConfigError as exc:
                get_logger(NODE_NAME).fatal(f'{NODE_NAME} refuses to start: {exc}')
                return 1
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            try:
                executor.spin()
            finally:
                executor.remove_node(node)
                node.destroy_node()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    return 0


if __name__ == '__main__':
    sys.exit(main())
