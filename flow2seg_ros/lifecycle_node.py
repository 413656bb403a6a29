"""flow2seg_node as a managed (lifecycle) node: console script ``seg_lifecycle_node``.

Same parameters, topics and behaviour as ``seg_node`` (:mod:`flow2seg_ros.node`), but the node
starts *unconfigured* and a supervisor (Nav2's lifecycle manager, launch_ros' ``LifecycleNode``,
``ros2 lifecycle set``) moves it through the standard transitions:

==============  ==========================================================================
``configure``   validate the parameters and load the model (FAILURE with the reason logged,
                e.g. a missing model file: the node stays unconfigured and may be configured
                again after ``ros2 param set``); creates the publishers, publishes nothing
``activate``    subscribe to the cameras, publish ``~/label_info``, outputs and diagnostics
``deactivate``  unsubscribe, stop publishing, drop the frames waiting for the worker
``cleanup``     stop the worker and free the model (and GPU memory)
``shutdown``    from any state
==============  ==========================================================================

While unconfigured every parameter may be changed; once configured, only the runtime ones.
"""

import sys
from typing import Any, Callable, Dict, List, Optional

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from flow2seg_ros.node import run_node
from flow2seg_ros.node_base import SegmentationNodeMixin
from flow2seg_ros.node_params import NODE_NAME, NodeConfigError

__all__ = ['Flow2SegLifecycleNode', 'main']


class Flow2SegLifecycleNode(SegmentationNodeMixin, LifecycleNode):
    """flow2seg_node as a managed node (see the module docstring for the transitions).

    Args:
        pipeline_factory: as for :class:`flow2seg_ros.node.Flow2SegNode`.
        **kwargs: passed to :class:`rclpy.lifecycle.LifecycleNode`.

    Raises:
        NodeConfigError: a parameter was given a value of the wrong type (checked when the
            parameters are declared, before any transition).
    """

    def __init__(self, *, pipeline_factory: Optional[Callable[[Dict[str, Any]], Any]] = None,
                 **kwargs: Any) -> None:
        LifecycleNode.__init__(self, NODE_NAME, **kwargs)
        try:
            self._declare(pipeline_factory)
        except NodeConfigError:
            self.destroy_node()
            raise
        self.get_logger().info('unconfigured; waiting for the configure transition')

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except Exception as exc:  # noqa: B902 - the reason is logged, the node stays alive
            self.get_logger().error(f'configure failed: {" ".join(str(exc).split())}')
            self._cleanup()
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f'configured: {len(self.cameras)} camera(s) on {self.device}')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._activate()
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self.get_logger().info('deactivated: not subscribed, publishing nothing')
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._cleanup()
        self.get_logger().info('cleaned up: model freed')
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._cleanup()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f'error while leaving state {state.label!r}; cleaning up')
        self._cleanup()
        return TransitionCallbackReturn.SUCCESS


def main(args: Optional[List[str]] = None) -> int:
    """Run flow2seg_node as a managed node until shutdown (console script
    ``seg_lifecycle_node``).

    Args:
        args: command-line arguments for rclpy (``--ros-args ...``); None uses ``sys.argv``.

    Returns:
        0 after a normal stop, 1 when a parameter has a value of the wrong type or a params
        file cannot be read.
    """
    return run_node(Flow2SegLifecycleNode, args)


if __name__ == '__main__':
    sys.exit(main())
