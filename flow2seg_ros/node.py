"""flow2seg_node: the ROS 2 adapter around :class:`flow2seg_ros.pipeline.FramePipeline`.

The node converts incoming images to RGB, hands them to the pipeline and publishes what the
pipeline returns; it computes nothing itself (no inference, resizing, colouring or overlay).

Topics, one camera (the default, ``cameras`` empty):
    ``image`` (sensor_msgs/Image, remappable) or ``<image>/compressed``
    (sensor_msgs/CompressedImage), chosen by ``input_transport``; sensor-data QoS by default.
    ``~/labels`` mono8 train ids (255 = ignore) at the input's size, ``~/color_mask`` rgb8,
    ``~/overlay`` rgb8, ``~/confidence`` mono8 and ``~/flow`` rgb8 (optional); every output
    carries the input's header unchanged. ``~/label_info``: the class table, latched
    (vision_msgs/LabelInfo where installed, else std_msgs/String JSON).
    ``/diagnostics``, ``~/debug/processing_time_ms``, ``~/debug/pipeline_latency_ms``.

Several cameras (``cameras: [front, left, ...]``): camera ``front`` reads ``front/image`` (or
``front/image/compressed``) and publishes ``~/front/labels``, ``~/front/color_mask``, ...,
``~/front/debug/...``; one status per camera on ``/diagnostics``; one ``~/label_info``. Each
camera has its own :class:`FramePipeline` (previous frame, flow state, resets) around one shared
model, and its own latest-wins slot and counters.

Threading: subscription callbacks only convert the newest message and leave it, paired with the
frame received just before it on that camera, in the camera's one-frame slot
(:class:`flow2seg_ros.cameras.FrameScheduler`); a worker thread takes the waiting frames of
several cameras in round-robin order and runs them through the network as one batch
(``batch_wait_ms``, ``max_batch_size``). A frame that arrives while another of its camera waits
replaces it (counted as dropped). Flow is always computed between a frame and the frame
*received* before it, dropped or not.

Parameters that change what is loaded or subscribed (``model_path``, ``device``, ``precision``,
network size, flow method, cameras, batching, transport and QoS) are refused at runtime with
"requires restart"; the ``publish_*`` switches, ``overlay_alpha``, ``temporal_smoothing`` and
its ``temporal_smoothing_stride``, ``max_frame_gap_s`` and ``diagnostics_period_s`` change at
runtime (validated first).

:class:`Flow2SegNode` starts segmenting in its constructor (``seg_node``);
:mod:`flow2seg_ros.lifecycle_node` runs the same node as a managed (lifecycle) node.
"""

import sys
from typing import Any, Callable, Dict, List, Optional

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node

from flow2seg_ros.node_base import NodeStats, one_line, SegmentationNodeMixin, SharedModelFactory
from flow2seg_ros.node_params import (
    check_ros_arguments, DEFAULTS, NODE_NAME, NodeConfigError, pipeline_config,
    validate_parameters)

__all__ = ['DEFAULTS', 'Flow2SegNode', 'NodeConfigError', 'NodeStats', 'SharedModelFactory',
           'main', 'pipeline_config', 'run_node', 'validate_parameters']


class Flow2SegNode(SegmentationNodeMixin, Node):
    """Semantic segmentation with motion (Flow2Seg) as a ROS 2 node, segmenting from the start.

    Args:
        pipeline_factory: builds one camera's pipeline from the validated parameter values (a
            dict keyed like :data:`DEFAULTS`); called once per camera. ``None`` uses a
            :class:`SharedModelFactory` (one model for every camera).
        **kwargs: passed to :class:`rclpy.node.Node` (``context``, ``parameter_overrides``,
            ``cli_args``, ``namespace``).

    Raises:
        NodeConfigError: a parameter is invalid or the pipeline cannot be built; the node
            does not start.
    """

    def __init__(self, *, pipeline_factory: Optional[Callable[[Dict[str, Any]], Any]] = None,
                 **kwargs: Any) -> None:
        Node.__init__(self, NODE_NAME, **kwargs)
        try:
            self._declare(pipeline_factory)
            self._configure()
            self._activate()
        except NodeConfigError:
            self.destroy_node()
            raise


def run_node(make_node: Callable[[], Node], args: Optional[List[str]] = None) -> int:
    """Run a node until shutdown; start-up problems give one log line and status 1.

    Args:
        make_node: builds the node (after ``rclpy.init``); raises NodeConfigError to refuse.
        args: command-line arguments for rclpy (``--ros-args ...``); None uses ``sys.argv``.
    """
    logger = get_logger(NODE_NAME)
    problem = check_ros_arguments(sys.argv if args is None else args)
    if problem:
        logger.fatal(f'{NODE_NAME} refuses to start: {problem}')
        return 1
    try:
        init = rclpy.init(args=args)
    except Exception as exc:  # rcl's argument parser: one sentence instead of a traceback
        logger.fatal(f'{NODE_NAME} refuses to start: {one_line(exc)}')
        return 1
    try:
        with init:
            try:
                node = make_node()
            except NodeConfigError as exc:
                logger.fatal(f'{NODE_NAME} refuses to start: {one_line(exc)}')
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


def main(args: Optional[List[str]] = None) -> int:
    """Run flow2seg_node until shutdown (console script ``seg_node``).

    Args:
        args: command-line arguments for rclpy (``--ros-args ...``); None uses ``sys.argv``.

    Returns:
        0 after a normal stop (Ctrl-C or external shutdown), 1 when the node refuses to start.
    """
    return run_node(Flow2SegNode, args)


if __name__ == '__main__':
    sys.exit(main())
