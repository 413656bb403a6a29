"""The ROS side of flow2seg_node shared by the plain and the managed node (see
:mod:`flow2seg_ros.node` for topics, parameters and threading).

:class:`SegmentationNodeMixin` is mixed into ``rclpy.node.Node`` (``seg_node``) or
``rclpy.lifecycle.LifecycleNode`` (``seg_lifecycle_node``); its steps are ``_configure``
(validate, load the model once, one pipeline per camera, publishers, workers), ``_activate``
(subscribe, publish), ``_deactivate`` (stop publishing, drop waiting frames) and ``_cleanup``
(stop the workers, free the model). Scheduling and batches are :mod:`flow2seg_ros.cameras`'s.
"""

import gc
import json
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.exceptions import InvalidParameterTypeException, ParameterUninitializedException
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float64, String
import torch

from flow2seg_ros.cameras import CameraStats, FrameScheduler, PendingFrame, run_batch
from flow2seg_ros.devices import resolve_device
from flow2seg_ros.encodings import (
    compressed_msg_to_rgb, image_msg_to_frame, image_msg_to_rgb, ImageFormatError,
    MessageBuffers)
from flow2seg_ros.node_params import (
    batch_size, camera_names, DEFAULTS, describe_type_error, DESCRIPTIONS, NodeConfigError,
    OPTIONAL_OUTPUTS, pipeline_config, RUNTIME, validate_parameters, worker_count)
from flow2seg_ros.pipeline import FramePipeline
from flow2seg_ros.weights import load_model

try:  # vision_msgs where a ROS distribution provides it
    from vision_msgs.msg import LabelInfo, VisionClass  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the installation
    LabelInfo = None
    VisionClass = None

__all__ = ['NodeStats', 'SegmentationNodeMixin', 'SharedModelFactory', 'one_line']

#: the counters of one camera (kept under this name for existing users)
NodeStats = CameraStats

_WARN_PERIOD_S = 5.0


def _stamp_seconds(header: Any) -> float:
    return float(header.stamp.sec) + float(header.stamp.nanosec) * 1e-9


def one_line(exc: BaseException, limit: int = 600) -> str:
    text = ' '.join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + '...'


class SharedModelFactory:
    """Builds one :class:`FramePipeline` per camera around one model, loaded on the first call.

    Called with the node's parameter values (a dict keyed like :data:`DEFAULTS`).
    """

    def __init__(self) -> None:
        self.model: Optional[torch.nn.Module] = None
        self.card: Optional[Dict[str, Any]] = None
        self.runner: Any = None  # the CPU backend (an ONNX Runtime session), shared likewise

    def __call__(self, values: Dict[str, Any]) -> FramePipeline:
        config = pipeline_config(values)
        if self.model is None:
            config.validate()
            self.model, self.card = load_model(config.weights,
                                               device=str(resolve_device(config.device)))
        pipeline = FramePipeline(config, model=self.model, card=self.card, runner=self.runner)
        if pipeline.cpu_path is not None:
            self.runner = pipeline.cpu_path.runner
        return pipeline


class _Camera:
    """One camera's pipeline, topics and latency bookkeeping."""

    def __init__(self, name: str, pipeline: Any, stats: CameraStats) -> None:
        self.name = name
        self.pipeline = pipeline
        self.stats = stats
        self.prefix = f'{name}/' if name else ''
        self.sub: Any = None
        self.pub_labels: Any = None
        self.pub_optional: Dict[str, Any] = {}
        self.pub_processing: Any = None
        self.pub_latency: Any = None
        self.messages = MessageBuffers(Image)  # one reused message per output
        self.messages.serve(pipeline)  # on a GPU, outputs come down into the messages' buffers
        self.rate_mark = (time.monotonic(), 0)
        self.latency_sum_ms = 0.0
        self.latency_count = 0


class SegmentationNodeMixin:
    """What the plain and the managed node share: parameters, set-up steps, worker, outputs.

    Mixed into :class:`rclpy.node.Node` (or ``LifecycleNode``); the steps are
    :meth:`_configure` (validate, load the model, create publishers, start the worker),
    :meth:`_activate` (subscribe, publish), :meth:`_deactivate` (stop publishing, drop waiting
    frames) and :meth:`_cleanup` (stop the worker, free the model).
    """

    def _declare(self, pipeline_factory: Optional[Callable[[Dict[str, Any]], Any]]) -> None:
        self._factory = pipeline_factory
        self._configured = False
        self._active = False
        self._scheduler: Optional[FrameScheduler] = None
        self._workers: List[threading.Thread] = []
        self._diag_timer: Any = None
        self._warned_at: Dict[str, float] = {}
        self.cameras: Dict[str, _Camera] = {}
        self.pipeline: Any = None
        problems = []
        for name, default in DEFAULTS.items():
            descriptor = ParameterDescriptor(description=DESCRIPTIONS[name])
            try:
                if name == 'cameras':  # an empty list has no type of its own in ROS
                    self.declare_parameter(name, Parameter.Type.STRING_ARRAY, descriptor)
                else:
                    self.declare_parameter(name, default, descriptor)
            except InvalidParameterTypeException as exc:
                given = self._parameter_overrides.get(name)
                expected = str(exc).rsplit("expecting type '", 1)[-1].split("'")[0]
                problems.append(describe_type_error(
                    name, None if given is None else given.value, expected))
        if problems:
            raise NodeConfigError('invalid parameters: ' + '; '.join(problems))
        self._values = self._read_parameters()
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def _read_parameters(self) -> Dict[str, Any]:
        values = {}
        for name in DEFAULTS:
            try:
                values[name] = self.get_parameter(name).value
            except ParameterUninitializedException:  # cameras: an empty list
                values[name] = DEFAULTS[name]
        values['cameras'] = list(values['cameras'] or [])
        return values

    # ----------------------------------------------------------------- set-up steps
    def _configure(self) -> None:
        """Validate the parameters, build the pipelines, create publishers, start the worker.

        Raises:
            NodeConfigError: a parameter is invalid or the pipeline cannot be built (nothing
                stays allocated).
        """
        self._values = values = self._read_parameters()
        problems = validate_parameters(values)
        if problems:
            raise NodeConfigError('invalid parameters: ' + '; '.join(problems))
        factory = self._factory or SharedModelFactory()
        names = camera_names(values)
        try:
            pipelines = [factory(dict(values)) for _ in names]
        except (ValueError, OSError, RuntimeError, ImportError) as exc:
            raise NodeConfigError(
                f'cannot build the segmentation pipeline: {one_line(exc)}') from exc
        device_type = getattr(getattr(pipelines[0], 'device', None), 'type', 'cpu')
        self._scheduler = FrameScheduler(
            names, batch_wait_s=float(values['batch_wait_ms']) / 1e3,
            max_batch=batch_size(values, device_type), key=self._batch_key)
        self.cameras = {name: _Camera(name, pipe, self._scheduler.slots[name].stats)
                        for name, pipe in zip(names, pipelines)}
        self.pipeline = pipelines[0]
        self.classes = self._class_set()
        self.device = str(getattr(self.pipeline, 'device', values['device']))

        out_qos = QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST,
                             reliability=ReliabilityPolicy.RELIABLE)
        for cam in self.cameras.values():
            cam.pub_labels = self.create_publisher(Image, f'~/{cam.prefix}labels', out_qos)
            cam.pub_optional = {
                topic: self.create_publisher(Image, f'~/{cam.prefix}{topic}', out_qos)
                for topic in OPTIONAL_OUTPUTS}
            cam.pub_processing = self.create_publisher(
                Float64, f'~/{cam.prefix}debug/processing_time_ms', 10)
            cam.pub_latency = self.create_publisher(
                Float64, f'~/{cam.prefix}debug/pipeline_latency_ms', 10)
        self.pub_diagnostics = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        latched = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                             reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.pub_label_info = self.create_publisher(
            LabelInfo if LabelInfo is not None else String, '~/label_info', latched)
        self._workers = [
            threading.Thread(target=self._work, args=(self._scheduler,),
                             name=f'flow2seg_worker_{i}', daemon=True)
            for i in range(worker_count(values))]
        for worker in self._workers:
            worker.start()
        self._configured = True

    def _activate(self) -> None:
        """Subscribe to every camera, publish the class table, start diagnostics."""
        values = self._values
        in_qos = QoSProfile(
            depth=int(values['image_qos_depth']), history=HistoryPolicy.KEEP_LAST,
            reliability=(ReliabilityPolicy.RELIABLE if values['image_reliability'] == 'reliable'
                         else ReliabilityPolicy.BEST_EFFORT),
            durability=DurabilityPolicy.VOLATILE)
        self._active = True
        for cam in self.cameras.values():
            if values['input_transport'] == 'compressed':
                topic = self.resolve_topic_name(f'{cam.prefix}image') + '/compressed'
                cam.sub = self.create_subscription(
                    CompressedImage, topic,
                    lambda msg, cam=cam: self._receive(
                        cam, msg, compressed_msg_to_rgb, f"compressed '{msg.format}'"),
                    in_qos)
            else:
                # on the device path a bgr8 frame goes up as it is and is swapped there
                convert = (image_msg_to_frame if getattr(cam.pipeline, 'device_path', None)
                           is not None else image_msg_to_rgb)
                cam.sub = self.create_subscription(
                    Image, f'{cam.prefix}image',
                    lambda msg, cam=cam, convert=convert: self._receive(
                        cam, msg, convert, f"{msg.width}x{msg.height} '{msg.encoding}'"),
                    in_qos)
        self._publish_label_info()
        self._diag_timer = self.create_timer(
            float(values['diagnostics_period_s']), self._publish_diagnostics)
        topics = ', '.join(f"'{c.sub.topic_name}'" for c in self.cameras.values())
        self.get_logger().info(
            f"segmenting {topics} ({values['input_transport']}, {values['image_reliability']}, "
            f"depth {values['image_qos_depth']}) on {self.device}; "
            f'{self.classes.num_classes} classes')

    def _deactivate(self) -> None:
        """Unsubscribe, stop publishing and drop the frames waiting for the worker."""
        self._active = False
        for cam in self.cameras.values():
            if cam.sub is not None:
                self.destroy_subscription(cam.sub)
                cam.sub = None
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        if self._scheduler is not None:
            self._scheduler.drop_pending()
            self._scheduler.wait_idle(10.0)  # a batch in work finishes without publishing

    def _cleanup(self) -> None:
        """Stop the worker, destroy the publishers and free the model (and GPU memory)."""
        self._deactivate()
        if self._scheduler is not None:
            self._scheduler.stop()
        for worker in self._workers:
            worker.join(timeout=10.0)
        self._workers = []
        for cam in self.cameras.values():
            for pub in [cam.pub_labels, cam.pub_processing, cam.pub_latency,
                        *cam.pub_optional.values()]:
                if pub is not None:
                    self.destroy_publisher(pub)
        for name in ('pub_diagnostics', 'pub_label_info'):
            if getattr(self, name, None) is not None:
                self.destroy_publisher(getattr(self, name))
                setattr(self, name, None)
        on_cuda = 'cuda' in str(getattr(self, 'device', ''))
        self.cameras, self.pipeline, self._scheduler = {}, None, None
        self._configured = False
        gc.collect()
        if on_cuda and torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ----------------------------------------------------------------- helpers
    @staticmethod
    def _batch_key(frame: PendingFrame) -> Any:
        return None  # every camera runs at the one network size of the shared model

    def _class_set(self) -> Any:
        classes = getattr(self.pipeline, 'classes', None)
        if classes is None:
            from flow2seg_ros.classes import ClassSet
            classes = ClassSet.from_dict(self.pipeline.card['classes'])
        return classes

    @property
    def stats(self) -> CameraStats:
        """The first camera's counters (the only camera's, by default)."""
        return next(iter(self.cameras.values())).stats

    @property
    def sub(self) -> Any:
        return next(iter(self.cameras.values())).sub

    @property
    def pub_labels(self) -> Any:
        return next(iter(self.cameras.values())).pub_labels

    @property
    def pub_optional(self) -> Dict[str, Any]:
        return next(iter(self.cameras.values())).pub_optional

    def _publish_label_info(self) -> None:
        if LabelInfo is not None:
            msg = LabelInfo()
            msg.header.stamp = self.get_clock().now().to_msg()
            msg.class_map = [VisionClass(class_id=i, class_name=name)
                             for i, name in enumerate(self.classes.names)]
            msg.threshold = 0.0
        else:
            msg = String(data=self.label_info_json())
        self.pub_label_info.publish(msg)

    def label_info_json(self) -> str:
        """The class table as JSON: ``{"classes": [{"id", "name", "color"}], ...}``."""
        topics = [c.pub_labels.topic_name for c in self.cameras.values()]
        return json.dumps({
            'classes': self.classes.table(),
            'ignore_index': int(self.classes.ignore_index),
            'labels_topic': topics[0],
            'labels_topics': topics,
            'encoding': 'mono8',
        })

    # ----------------------------------------------------------------- parameters
    def _on_set_parameters(self, params: List[Parameter]) -> SetParametersResult:
        changes = {p.name: p.value for p in params if p.name in DEFAULTS}
        if 'cameras' in changes:
            changes['cameras'] = list(changes['cameras'] or [])
        if self._configured:
            for name, value in changes.items():
                if name not in RUNTIME and value != self._values[name]:
                    return SetParametersResult(
                        successful=False,
                        reason=f'{name} requires restart (runtime changes allowed for: '
                               f"{', '.join(RUNTIME)})")
        merged = dict(self._values)
        merged.update(changes)
        problems = validate_parameters({k: merged[k] for k in changes})
        if problems:
            return SetParametersResult(successful=False, reason='; '.join(problems))
        period_changed = (merged['diagnostics_period_s']
                          != self._values['diagnostics_period_s'])
        self._values = merged
        for cam in self.cameras.values():
            config = getattr(cam.pipeline, 'config', None)
            if config is not None:  # the pipeline reads these per frame
                config.overlay_alpha = float(merged['overlay_alpha'])
                config.max_gap_s = float(merged['max_frame_gap_s'])
                if cam.pipeline.has_flow_path:  # without one there is no flow to smooth along
                    cam.pipeline.temporal.weight = float(merged['temporal_smoothing'])
                    cam.pipeline.temporal.stride = int(merged['temporal_smoothing_stride'])
        if period_changed and self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = self.create_timer(
                float(merged['diagnostics_period_s']), self._publish_diagnostics)
        return SetParametersResult(successful=True)

    # ----------------------------------------------------------------- input
    def _warn(self, stats: CameraStats, key: str, text: str) -> None:
        """Log a warning, at most once per ``_WARN_PERIOD_S`` for each kind of problem."""
        stats.last_warning = text
        now = time.monotonic()
        if now - self._warned_at.get(key, -1e9) >= _WARN_PERIOD_S:
            self._warned_at[key] = now
            self.get_logger().warning(text)

    def _receive(self, cam: _Camera, msg: Any, convert: Callable[[Any], Any],
                 what: str) -> None:
        scheduler = self._scheduler
        if not self._active or scheduler is None:
            return
        cam.stats.received += 1
        try:
            frame = convert(msg)
        except Exception as exc:  # never let one frame stop the node
            cam.stats.bad_input += 1
            # throttled per kind of bad frame, so a different problem is still reported
            problem = str(exc) if isinstance(exc, ImageFormatError) else repr(exc)
            self._warn(cam.stats, f'input {cam.name} {what} {type(exc).__name__}',
                       f'skipping bad input image {what} '
                       f'(frame_id {msg.header.frame_id!r}): {problem}')
            return
        rgb, bgr = frame if isinstance(frame, tuple) else (frame, False)
        scheduler.put(cam.name, rgb, _stamp_seconds(msg.header), msg.header, bgr=bgr)

    # ----------------------------------------------------------------- worker
    def _work(self, scheduler: FrameScheduler) -> None:
        while True:
            batch = scheduler.take()
            if batch is None:
                return
            try:
                self._run_batch(batch)
            finally:
                scheduler.done(batch)

    def wanted_outputs(self, camera: Optional[str] = None) -> Tuple[str, ...]:
        """Pipeline outputs some subscriber wants now (labels are always computed).

        Args:
            camera: the camera's name (default the first camera).
        """
        cam = self.cameras[camera] if camera is not None else next(iter(self.cameras.values()))
        wanted = []
        for topic, (output, _) in OPTIONAL_OUTPUTS.items():
            if (self._values[f'publish_{topic}']
                    and cam.pub_optional[topic].get_subscription_count() > 0):
                wanted.append(output)
        return tuple(wanted)

    def _run_batch(self, batch: Sequence[PendingFrame]) -> None:
        started = time.perf_counter()
        names = [f.camera for f in batch]
        outcomes = run_batch(batch, {c: self.cameras[c].pipeline for c in names},
                             {c: self.wanted_outputs(c) for c in names})
        for frame, result, error in outcomes:
            cam = self.cameras[frame.camera]
            if error is not None:
                self._failed(cam, frame, error)
            else:
                self._publish(cam, frame, result, started)

    def _failed(self, cam: _Camera, frame: PendingFrame, exc: Exception) -> None:
        cam.stats.failed += 1
        self._warn(cam.stats, f'pipeline {cam.name}',
                   f'frame at stamp {frame.stamp:.3f}{" of " + cam.name if cam.name else ""} '
                   f'skipped: pipeline failed: {exc!r}')

    def _publish(self, cam: _Camera, frame: PendingFrame, result: Any, started: float) -> None:
        if not self._active:  # deactivated while the frame was in work
            return
        processing_ms = (time.perf_counter() - started) * 1e3
        stats = cam.stats
        reason = getattr(result, 'reset_reason', None)
        if reason is not None and reason != 'first':
            stats.resets += 1
            stats.last_reset_reason = reason
            where = f' on {cam.name}' if cam.name else ''
            self.get_logger().info(f'flow state reset ({reason}){where} at stamp '
                                   f'{frame.stamp:.3f}')
        elif reason == 'first':
            stats.last_reset_reason = reason

        header = frame.meta
        # each output's message is reused (publish serialises it): at most one copy of the
        # pixels, none where the device path downloaded them into the message's buffer
        cam.pub_labels.publish(cam.messages.message('labels', result.labels, 'mono8', header))
        for topic, (output, encoding) in OPTIONAL_OUTPUTS.items():
            array = getattr(result, output, None)
            if array is not None:
                cam.pub_optional[topic].publish(
                    cam.messages.message(output, array, encoding, header))

        latency_ms = (self.get_clock().now().nanoseconds
                      - (header.stamp.sec * 1_000_000_000 + header.stamp.nanosec)) / 1e6
        cam.pub_processing.publish(Float64(data=float(processing_ms)))
        cam.pub_latency.publish(Float64(data=float(latency_ms)))
        stats.processed += 1
        stats.last_processing_ms = processing_ms
        stats.last_latency_ms = latency_ms
        cam.latency_sum_ms += latency_ms
        cam.latency_count += 1

    def wait_idle(self, timeout: float) -> bool:
        """Block until no frame is waiting or in work; False on timeout.

        Args:
            timeout: seconds to wait at most.
        """
        return self._scheduler is None or self._scheduler.wait_idle(timeout)

    # ----------------------------------------------------------------- diagnostics
    def _camera_status(self, cam: _Camera, now: float) -> DiagnosticStatus:
        stats = cam.stats
        mark_time, mark_count = cam.rate_mark
        rate = (stats.processed - mark_count) / max(now - mark_time, 1e-9)
        cam.rate_mark = (now, stats.processed)
        mean_latency = (cam.latency_sum_ms / cam.latency_count
                        if cam.latency_count else float('nan'))
        cam.latency_sum_ms, cam.latency_count = 0.0, 0
        status = DiagnosticStatus()
        status.name = f'{self.get_name()}: segmentation' + (f' {cam.name}' if cam.name else '')
        status.hardware_id = self.device
        if stats.received == 0:
            status.level, status.message = DiagnosticStatus.WARN, 'no input image received yet'
        elif rate == 0.0:
            status.level, status.message = DiagnosticStatus.WARN, 'no frame processed lately'
        else:
            status.level, status.message = DiagnosticStatus.OK, f'segmenting at {rate:.1f} Hz'
        values = {
            'rate_hz': f'{rate:.2f}',
            'latency_ms_mean': f'{mean_latency:.1f}',
            'processing_ms_last': f'{stats.last_processing_ms:.1f}',
            'frames_received': str(stats.received),
            'frames_processed': str(stats.processed),
            'frames_dropped': str(stats.dropped),
            'frames_bad_input': str(stats.bad_input),
            'frames_failed': str(stats.failed),
            'flow_resets': str(stats.resets),
            'temporal_smoothing': f'{cam.pipeline.temporal.weight:g}',
            'temporal_smoothing_stride': str(cam.pipeline.temporal.stride),
            'temporal_frames_carried': str(cam.pipeline.temporal.carried),
            'last_reset_reason': str(stats.last_reset_reason),
            'batch_size_last': str(stats.last_batch_size),
            'device': self.device,
            'input_topic': cam.sub.topic_name if cam.sub is not None else '',
        }
        if cam.name:
            values['camera'] = cam.name
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        return status

    def _publish_diagnostics(self) -> None:
        if not self._active:
            return
        now = time.monotonic()
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [self._camera_status(cam, now) for cam in self.cameras.values()]
        self.pub_diagnostics.publish(array)

    # ----------------------------------------------------------------- shutdown
    def destroy_node(self) -> None:
        """Stop the worker and free the model, then destroy the node (safe to call twice, and
        on a node whose constructor failed)."""
        if getattr(self, '_configured', False) or getattr(self, '_workers', None):
            self._cleanup()
        super().destroy_node()
