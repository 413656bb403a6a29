"""Helpers shared by the in-process node tests: a recording pipeline, a harness, frames."""

import threading
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from flow2seg_ros.encodings import image_msg_from_array
from flow2seg_ros.node import Flow2SegNode, pipeline_config
from flow2seg_ros.pipeline import FramePipeline

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


class RecordingPipeline:
    """A real FramePipeline that records what it segments and each network call's batch size.

    ``delay_s`` is added to every network call (an accelerator's time: the worker waits, the
    CPU stays free).
    """

    def __init__(self, pipeline, camera, network_calls, delay_s=0.0):
        self.inner = pipeline
        self.camera = camera
        self.network_calls = network_calls  # shared by the cameras of one node
        self.delay_s = delay_s
        self.results = []
        self.lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _record(self, rgb, stamp, result, bgr=False):
        with self.lock:
            self.results.append(SimpleNamespace(rgb=rgb, stamp=stamp, result=result, bgr=bgr))

    def process(self, rgb, stamp, *, outputs=(), heads=('fused',), prev=None, bgr=False):
        if self.delay_s:
            time.sleep(self.delay_s)
        self.network_calls.append(1)
        result = self.inner.process(rgb, stamp, outputs=outputs, heads=heads, prev=prev,
                                    bgr=bgr)
        self._record(rgb, stamp, result, bgr)
        return result

    def prepare(self, rgb, stamp, *, prev=None, bgr=False):
        return self.inner.prepare(rgb, stamp, prev=prev, bgr=bgr)

    def infer(self, frames, heads=('fused',)):
        if self.delay_s:
            time.sleep(self.delay_s)
        self.network_calls.append(len(frames))
        return self.inner.infer(frames, heads=heads)

    def finish(self, frame, out, *, outputs=(), heads=('fused',)):
        result = self.inner.finish(frame, out, outputs=outputs, heads=heads)
        self._record(frame.rgb, frame.stamp, result)
        return result


class NodeHarness:
    """The node under test (plain or managed), a tester node and one executor spinning both."""

    def __init__(self, ctx, tiny_model, params=None, delay_s=0.0, node_class=Flow2SegNode,
                 recording=True, adapt=None):
        model, card = tiny_model
        self.pipelines = {}
        self.network_calls = []
        names = iter((params or {}).get('cameras') or [''])

        def factory(values):
            name = next(names)
            pipe = FramePipeline(pipeline_config(values), model=model, card=card)
            if adapt is not None:  # e.g. the device path's code on the CPU
                adapt(pipe)
            self.pipelines[name] = RecordingPipeline(pipe, name, self.network_calls, delay_s)
            return self.pipelines[name]

        overrides = [Parameter(k, value=v) for k, v in (params or {}).items()]
        self._connect(ctx, node_class(context=ctx, parameter_overrides=overrides,
                                      pipeline_factory=factory if recording else None))

    def _connect(self, ctx, node):
        """Spin the node under test and a tester node in one executor."""
        self.node = node
        self.tester = Node('tester', context=ctx)
        self.executor = SingleThreadedExecutor(context=ctx)
        self.executor.add_node(self.node)
        self.executor.add_node(self.tester)

    def subscribe(self, topic, msg_type=Image, qos=RELIABLE, stamped=False):
        """A list that fills with the messages (or (receive time, message) when stamped)."""
        box = []
        if stamped:
            self.tester.create_subscription(
                msg_type, topic, lambda m: box.append((time.monotonic(), m)), qos)
        else:
            self.tester.create_subscription(msg_type, topic, box.append, qos)
        return box

    def spin_until(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            self.executor.spin_once(timeout_sec=0.01)
        pytest.fail(f'timed out after {timeout} s waiting for {what}')

    def spin_for(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.01)

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        self.tester.destroy_node()


def frame(seed, h, w):
    """A smooth random RGB frame (blocks, so the tiny model sees structure)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(h // 8, 1), max(w // 8, 1), 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def image(rgb, stamp, frame_id):
    header = Header(frame_id=frame_id)
    header.stamp.sec = int(stamp)
    header.stamp.nanosec = int(round((stamp - int(stamp)) * 1e9))
    return image_msg_from_array(rgb, 'rgb8', header, Image)


def labels_of(msg):
    return np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width)
