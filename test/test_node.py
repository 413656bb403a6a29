"""flow2seg_node in-process: encodings, headers, resets, latest-wins, label info, bad input,
parameters. One rclpy context per test; a tiny random model keeps every test a few seconds."""

import json
import threading
import time
from types import SimpleNamespace

import cv2
from diagnostic_msgs.msg import DiagnosticArray
from node_helpers import frame, NodeHarness
import numpy as np
import pytest
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float64, String

from flow2seg_ros.encodings import image_msg_to_rgb, rgb_to_image_fields
from flow2seg_ros.node import Flow2SegNode, NodeConfigError, pipeline_config
from flow2seg_ros.pipeline import FramePipeline

H, W = 48, 64
RELIABLE = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)


class SpyPipeline:
    """A real FramePipeline that records every call (and can be made slow)."""

    def __init__(self, pipeline, delay_s=0.0):
        self.inner = pipeline
        self.delay_s = delay_s
        self.calls = []
        self.lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def process(self, rgb, stamp, *, outputs=(), heads=('fused',), prev=None):
        if self.delay_s:
            time.sleep(self.delay_s)
        result = self.inner.process(rgb, stamp, outputs=outputs, heads=heads, prev=prev)
        with self.lock:
            self.calls.append(SimpleNamespace(
                rgb=rgb.copy(), stamp=stamp, outputs=tuple(outputs),
                prev_stamp=None if prev is None else prev[1], result=result))
        return result


class Harness(NodeHarness):
    """The plain node with a pipeline that records every process() call, a tester node and a
    SingleThreadedExecutor spinning both."""

    def __init__(self, ctx, tiny_model, params=None, delay_s=0.0, cli_args=None):
        model, card = tiny_model
        self.spy = None

        def factory(values):
            self.spy = SpyPipeline(
                FramePipeline(pipeline_config(values), model=model, card=card), delay_s)
            return self.spy

        overrides = [Parameter(k, value=v) for k, v in (params or {}).items()]
        self._connect(ctx, Flow2SegNode(context=ctx, parameter_overrides=overrides,
                                        pipeline_factory=factory, cli_args=cli_args))


@pytest.fixture
def harness(context, tiny_model):
    made = []

    def make(**kwargs):
        made.append(Harness(context, tiny_model, **kwargs))
        return made[-1]

    yield make
    for h in made:
        h.close()


def _frame(seed, h=H, w=W):
    return frame(seed, h, w)


def _image(rgb, stamp, encoding='rgb8', frame_id='cam'):
    msg = Image()
    for key, value in rgb_to_image_fields(rgb).items():
        setattr(msg, key, value)
    msg.encoding = encoding
    msg.header.frame_id = frame_id
    msg.header.stamp.sec = int(stamp)
    msg.header.stamp.nanosec = int(round((stamp - int(stamp)) * 1e9))
    return msg


def _packed(msg, encoding, array):
    """Put an already packed (H, W[, C]) array into ``msg`` with ``encoding``."""
    arr = np.ascontiguousarray(array)
    msg.encoding = encoding
    msg.step = arr.strides[0]
    msg.data = arr.tobytes()
    return msg


def _encoded_messages(rgb, stamp):
    """(encoding, message, RGB the node must see) for every supported encoding family."""
    gray = rgb[..., 1]
    alpha = np.full((H, W, 1), 255, np.uint8)
    yuv = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV)
    uyvy = np.zeros((H, W, 2), np.uint8)
    uyvy[..., 1] = yuv[..., 0]
    uyvy[:, 0::2, 0] = yuv[:, 0::2, 1]
    uyvy[:, 1::2, 0] = yuv[:, 0::2, 2]
    yuyv = uyvy[..., ::-1]
    bayer = np.zeros((H, W), np.uint8)
    bayer[0::2, 0::2], bayer[0::2, 1::2] = rgb[0::2, 0::2, 0], rgb[0::2, 1::2, 1]
    bayer[1::2, 0::2], bayer[1::2, 1::2] = rgb[1::2, 0::2, 1], rgb[1::2, 1::2, 2]
    mono16 = gray.astype(np.uint16) * 257
    cases = [
        ('rgb8', rgb, rgb),
        ('bgr8', rgb[..., ::-1], rgb),
        ('8UC3', rgb[..., ::-1], rgb),
        ('rgba8', np.concatenate([rgb, alpha], 2), rgb),
        ('bgra8', np.concatenate([rgb[..., ::-1], alpha], 2), rgb),
        ('mono8', gray, np.repeat(gray[..., None], 3, 2)),
        ('mono16', mono16.view(np.uint8).reshape(H, W * 2), np.repeat(gray[..., None], 3, 2)),
        ('yuv422', uyvy, None),
        ('yuv422_yuy2', yuyv, None),
        ('bayer_rggb8', bayer, None),
    ]
    out = []
    for i, (encoding, packed, expected) in enumerate(cases):
        msg = _packed(_image(rgb, stamp + 0.04 * i), encoding, packed)
        if expected is None:  # lossy: the reference is the converter (tested on its own)
            expected = image_msg_to_rgb(msg, use_cv_bridge=False)
        out.append((encoding, msg, expected))
    return out


def _wait_connected(h, pub, *pubs_needing_subs):
    h.spin_until(lambda: pub.get_subscription_count() >= 1
                 and all(p.get_subscription_count() >= 1 for p in pubs_needing_subs),
                 5.0, 'publisher/subscriber discovery')


def test_every_encoding_matches_pipeline_and_copies_header(harness, tiny_model):
    h = harness()
    labels = h.subscribe('/flow2seg_node/labels')
    colors = h.subscribe('/flow2seg_node/color_mask')
    pub = h.tester.create_publisher(Image, '/image', RELIABLE)
    _wait_connected(h, pub, h.node.pub_labels, h.node.pub_optional['color_mask'])

    model, card = tiny_model
    reference = FramePipeline(pipeline_config(h.node._values), model=model, card=card)
    cases = _encoded_messages(_frame(3), 100.0)
    for i, (encoding, msg, expected_rgb) in enumerate(cases):
        msg.header.frame_id = f'cam_{encoding}'
        pub.publish(msg)
        h.spin_until(lambda: len(labels) > i and len(colors) > i, 10.0, f'labels for {encoding}')
        out = labels[i]
        assert out.header.stamp == msg.header.stamp, encoding
        assert out.header.frame_id == f'cam_{encoding}'
        assert (out.height, out.width, out.encoding) == (H, W, 'mono8')
        got = np.frombuffer(out.data, np.uint8).reshape(H, W)
        np.testing.assert_array_equal(h.spy.calls[i].rgb, expected_rgb, err_msg=encoding)
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        ref = reference.process(expected_rgb, stamp, outputs=('color_mask',))
        np.testing.assert_array_equal(got, ref.labels, err_msg=encoding)
        color = np.frombuffer(colors[i].data, np.uint8).reshape(H, W, 3)
        np.testing.assert_array_equal(color, ref.color_mask, err_msg=encoding)
        assert colors[i].header.frame_id == f'cam_{encoding}'
    assert [c.result.reset_reason for c in h.spy.calls[:2]] == ['first', None]
    assert h.node.stats.bad_input == 0


def test_resets_first_size_backwards_gap(harness):
    h = harness(params={'max_frame_gap_s': 0.5})
    labels = h.subscribe('/flow2seg_node/labels')
    pub = h.tester.create_publisher(Image, '/image', RELIABLE)
    _wait_connected(h, pub, h.node.pub_labels)
    frames = [(_frame(1), 10.0), (_frame(2), 10.05), (_frame(3, 40, 72), 10.1),
              (_frame(4, 40, 72), 9.0), (_frame(5, 40, 72), 12.0), (_frame(6, 40, 72), 12.05)]
    for i, (rgb, stamp) in enumerate(frames):
        pub.publish(_image(rgb, stamp))
        h.spin_until(lambda: len(labels) > i, 10.0, f'labels of frame {i}')
        assert (labels[i].height, labels[i].width) == rgb.shape[:2]
    reasons = [c.result.reset_reason for c in h.spy.calls]
    assert reasons == ['first', None, 'size', 'backwards', 'gap', None]
    assert h.node.stats.resets == 3 and h.node.stats.last_reset_reason == 'gap'
    assert h.spy.calls[1].result.flow is not None and h.spy.calls[2].result.flow is None


def test_latest_wins_and_flow_pairs_received_frames(harness):
    h = harness(params={'image_reliability': 'reliable', 'image_qos_depth': 20}, delay_s=0.3)
    labels = h.subscribe('/flow2seg_node/labels')
    pub = h.tester.create_publisher(Image, '/image', RELIABLE)
    _wait_connected(h, pub, h.node.pub_labels)
    stamps = [20.0 + 0.03 * i for i in range(8)]
    for i, stamp in enumerate(stamps):
        pub.publish(_image(_frame(10 + i), stamp))
    h.spin_until(lambda: h.node.stats.received == len(stamps), 10.0, 'all 8 frames received')
    h.spin_until(lambda: h.node.wait_idle(0.0) and len(labels) == h.node.stats.processed,
                 10.0, 'the worker to finish')
    stats = h.node.stats
    assert stats.dropped >= 2, f'a burst during a 0.3 s frame must drop frames: {stats}'
    assert stats.processed + stats.dropped == stats.received == len(stamps)
    processed = [c.stamp for c in h.spy.calls]
    assert processed[-1] == pytest.approx(stamps[-1]), 'the newest frame must be processed'
    for call in h.spy.calls[1:]:
        i = min(range(len(stamps)), key=lambda k: abs(stamps[k] - call.stamp))
        # flow is always between a frame and the frame received just before it
        assert call.prev_stamp == pytest.approx(stamps[i - 1])
        assert call.result.reset_reason is None and call.result.flow is not None


def test_label_info_latched_for_late_subscriber(harness):
    h = harness()
    for _ in range(20):  # let the node run a while before anyone subscribes
        h.executor.spin_once(timeout_sec=0.01)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    box = h.subscribe('/flow2seg_node/label_info', String, latched)
    h.spin_until(lambda: box, 5.0, 'the latched label_info')
    info = json.loads(box[0].data)
    assert [c['name'] for c in info['classes']] == ['road', 'building', 'car', 'person']
    assert info['classes'][2] == {'id': 2, 'name': 'car', 'color': [0, 0, 142]}
    assert info['ignore_index'] == 255


def test_bad_input_skipped_and_node_goes_on(harness, capfd):
    h = harness()
    labels = h.subscribe('/flow2seg_node/labels')
    pub = h.tester.create_publisher(Image, '/image', RELIABLE)
    _wait_connected(h, pub, h.node.pub_labels)
    good = _image(_frame(7), 30.0)
    unknown = _image(_frame(7), 30.1, encoding='rgb9')
    short = _image(_frame(7), 30.2)
    short.data = short.data[:100]
    empty = _image(_frame(7), 30.3)
    empty.width, empty.step, empty.data = 0, 0, b''
    odd = _packed(_image(_frame(7), 30.4), 'yuv422', np.zeros((H, W - 1, 2), np.uint8))
    odd.width = W - 1
    problems = [(unknown, "unknown image encoding 'rgb9'"),
                (short, 'image data is 100 bytes'),
                (empty, 'width and height must be positive'),
                (odd, "cannot convert a 63x48 'yuv422' image")]
    for i, (msg, text) in enumerate(problems):
        pub.publish(msg)
        h.spin_until(lambda: h.node.stats.bad_input == i + 1, 5.0, f'bad frame {i} rejected')
        assert text in h.node.stats.last_warning
    pub.publish(good)
    h.spin_until(lambda: labels, 10.0, 'labels of the good frame after bad ones')
    assert labels[0].header.stamp == good.header.stamp
    assert h.node.stats.processed == 1 and h.node.stats.failed == 0
    err = capfd.readouterr().err
    for _, text in problems:
        assert text in err, f'warning {text!r} not logged'


def test_only_wanted_outputs_are_computed(harness):
    h = harness(params={'publish_confidence': True, 'publish_overlay': False})
    labels = h.subscribe('/flow2seg_node/labels')
    pub = h.tester.create_publisher(Image, '/image', RELIABLE)
    _wait_connected(h, pub, h.node.pub_labels)
    pub.publish(_image(_frame(1), 40.0))
    h.spin_until(lambda: labels, 10.0, 'labels')
    assert h.spy.calls[0].outputs == ()  # nobody listens to colour mask, overlay, confidence
    conf = h.subscribe('/flow2seg_node/confidence')
    h.subscribe('/flow2seg_node/overlay')  # publish_overlay is false: still not computed
    h.spin_until(lambda: h.node.pub_optional['confidence'].get_subscription_count(), 5.0,
                 'confidence subscriber')
    pub.publish(_image(_frame(2), 40.05))
    h.spin_until(lambda: conf, 10.0, 'confidence')
    assert h.spy.calls[1].outputs == ('confidence',)
    assert (conf[0].encoding, conf[0].height, conf[0].width) == ('mono8', H, W)
    np.testing.assert_array_equal(np.frombuffer(conf[0].data, np.uint8).reshape(H, W),
                                  h.spy.calls[1].result.confidence)


def test_compressed_transport_with_remap_and_debug_topics(harness):
    h = harness(params={'input_transport': 'compressed', 'diagnostics_period_s': 0.2},
                cli_args=['--ros-args', '-r', 'image:=/cam/image_raw'])
    assert h.node.sub.topic_name == '/cam/image_raw/compressed'
    labels = h.subscribe('/flow2seg_node/labels')
    latency = h.subscribe('/flow2seg_node/debug/pipeline_latency_ms', Float64)
    processing = h.subscribe('/flow2seg_node/debug/processing_time_ms', Float64)
    diagnostics = h.subscribe('/diagnostics', DiagnosticArray)
    pub = h.tester.create_publisher(CompressedImage, '/cam/image_raw/compressed', RELIABLE)
    _wait_connected(h, pub, h.node.pub_labels)
    rgb = _frame(9)
    msg = CompressedImage(format='png')
    msg.data = cv2.imencode('.png', rgb[..., ::-1].copy())[1].tobytes()
    msg.header.stamp = h.node.get_clock().now().to_msg()
    msg.header.frame_id = 'cam'
    pub.publish(msg)
    h.spin_until(lambda: labels and latency and processing, 10.0, 'labels and debug topics')
    np.testing.assert_array_equal(h.spy.calls[0].rgb, rgb)
    assert labels[0].header == msg.header
    assert 0.0 <= latency[0].data < 10_000.0 and processing[0].data > 0.0

    def processed_in_diagnostics():
        for array in diagnostics:
            values = {kv.key: kv.value for kv in array.status[0].values}
            if values.get('frames_processed') == '1':
                return values
        return None

    h.spin_until(processed_in_diagnostics, 5.0, 'diagnostics counting the frame')
    values = processed_in_diagnostics()
    assert values['device'] == 'cpu' and values['frames_dropped'] == '0'
    assert values['input_topic'] == '/cam/image_raw/compressed'
    # one frame: nothing to carry along yet
    assert values['temporal_smoothing'] == '0.5' and values['temporal_frames_carried'] == '0'
    assert values['temporal_smoothing_stride'] == '0'


@pytest.mark.parametrize('params,match', [
    ({'device': 'gpu'}, "device='gpu'"),
    ({'overlay_alpha': 1.5}, r'overlay_alpha=1.5: overlay alpha must be in \[0, 1\]'),
    ({'temporal_smoothing': 1.0}, r'temporal_smoothing=1.0: temporal smoothing must be in'),
    ({'temporal_smoothing_stride': -2}, r'temporal_smoothing_stride=-2: temporal smoothing '
                                        'stride must be'),
    ({'input_transport': 'udp'}, 'input_transport'),
    ({'image_reliability': 'sometimes'}, 'image_reliability'),
    ({'image_qos_depth': 0}, 'image_qos_depth=0'),
    ({'network_image_width': 64}, 'set both or neither'),
    ({'flow_method': 'magic'}, "flow_method='magic'"),
    ({'flow_method': 'mixed'}, "flow_method='mixed'.*for training"),
    ({'model_path': '/nonexistent/model.safetensors'}, 'no such file'),
    ({'model_path': 'flow2seg_lite_synthetic_v9'}, 'neither a bundled model'),
])
def test_invalid_parameters_refuse_start(context, tiny_model, params, match):
    model, card = tiny_model
    overrides = [Parameter(k, value=v) for k, v in params.items()]
    with pytest.raises(NodeConfigError, match=match):
        Flow2SegNode(context=context, parameter_overrides=overrides,
                     pipeline_factory=lambda v: FramePipeline(pipeline_config(v), model=model,
                                                              card=card))


def test_pipeline_errors_refuse_start(context):
    def broken(values):
        raise ValueError('weights file /x.safetensors is not safetensors')

    with pytest.raises(NodeConfigError, match='cannot build.*not safetensors'):
        Flow2SegNode(context=context, pipeline_factory=broken)


def test_runtime_parameter_changes(harness):
    h = harness()
    node = h.node

    def set_(name, value):
        return node.set_parameters([Parameter(name, value=value)])[0]

    res = set_('model_path', '/other.safetensors')
    assert not res.successful and 'model_path requires restart' in res.reason
    res = set_('device', 'cpu')
    assert not res.successful and 'requires restart' in res.reason
    res = set_('overlay_alpha', 2.0)
    assert not res.successful and 'overlay_alpha=2.0' in res.reason
    assert node.get_parameter('overlay_alpha').value == 0.5
    assert set_('overlay_alpha', 0.25).successful
    assert h.spy.inner.config.overlay_alpha == 0.25
    res = set_('temporal_smoothing', -0.5)
    assert not res.successful and 'temporal_smoothing=-0.5' in res.reason
    assert h.spy.inner.temporal.weight == 0.5
    assert set_('temporal_smoothing', 0.0).successful
    assert h.spy.inner.temporal.weight == 0.0
    res = set_('temporal_smoothing_stride', 100)
    assert not res.successful and 'temporal_smoothing_stride=100' in res.reason
    assert h.spy.inner.temporal.stride == 0
    assert set_('temporal_smoothing_stride', 2).successful
    assert h.spy.inner.temporal.stride == 2
    assert set_('max_frame_gap_s', 2.0).successful
    assert h.spy.inner.config.max_gap_s == 2.0
    assert not set_('max_frame_gap_s', -1.0).successful
    assert set_('publish_overlay', False).successful
    assert node.wanted_outputs() == ()
    assert set_('diagnostics_period_s', 0.5).successful


def test_pipeline_settings_reach_the_pipeline():
    # every pipeline setting the node exposes arrives in the PipelineConfig it builds
    from flow2seg_ros.node import DEFAULTS

    config = pipeline_config(dict(DEFAULTS, cuda_graphs=False, backend='torch', precision='bf16',
                                  network_image_width=320, network_image_height=160,
                                  temporal_smoothing_stride=2))
    assert config.cuda_graphs is False and config.backend == 'torch'
    assert config.temporal_smoothing_stride == 2
    assert config.precision == 'bf16' and config.input_size == (160, 320)
    assert pipeline_config(dict(DEFAULTS)).cuda_graphs is True
