"""Several cameras in one flow2seg_node (in-process): outputs per camera equal to one-camera
runs, per-camera resets, batches of frames that wait together, fairness under a flood."""

import statistics
import time
import weakref

from diagnostic_msgs.msg import DiagnosticArray
from node_helpers import frame, image, labels_of, NodeHarness, RELIABLE
import numpy as np
import pytest
from sensor_msgs.msg import Image

from flow2seg_ros.node import pipeline_config, SharedModelFactory
from flow2seg_ros.node_params import DEFAULTS
from flow2seg_ros.pipeline import FramePipeline

SIZES = {'front': (48, 64), 'left': (40, 72), 'rear': (64, 96)}


@pytest.fixture
def harness(context, tiny_model):
    made = []

    def make(**kwargs):
        made.append(NodeHarness(context, tiny_model, **kwargs))
        return made[-1]

    yield make
    for h in made:
        h.close()


def _publishers(h, cameras):
    pubs = {c: h.tester.create_publisher(Image, f'/{c}/image', RELIABLE) for c in cameras}
    h.spin_until(lambda: all(p.get_subscription_count() for p in pubs.values()), 5.0,
                 'the node to subscribe to every camera')
    return pubs


def _reference(tiny_model, values, sequence):
    """Labels a one-camera pipeline gives for (rgb, stamp) frames in order."""
    model, card = tiny_model
    pipe = FramePipeline(pipeline_config(values), model=model, card=card)
    return [pipe.process(rgb, stamp, outputs=()).labels for rgb, stamp in sequence]


def test_three_cameras_of_different_sizes_equal_one_camera_runs(harness, tiny_model):
    h = harness(params={'cameras': list(SIZES)})
    node = h.node
    assert [c.sub.topic_name for c in node.cameras.values()] == \
        ['/front/image', '/left/image', '/rear/image']
    models = {id(p.inner.model) for p in h.pipelines.values()}
    assert len(models) == 1, 'every camera runs the one model'
    labels = {c: h.subscribe(f'/flow2seg_node/{c}/labels') for c in SIZES}
    h.subscribe('/flow2seg_node/front/color_mask')  # one camera with a picture output
    pubs = _publishers(h, SIZES)
    sent = {c: [] for c in SIZES}
    for k in range(4):
        for i, (c, (height, width)) in enumerate(SIZES.items()):
            rgb = frame(10 * k + i, height, width)
            msg = image(rgb, 50.0 + 0.05 * k, f'{c}_{k}')
            sent[c].append((rgb, 50.0 + 0.05 * k, msg.header))
            pubs[c].publish(msg)
        h.spin_until(lambda: all(len(labels[c]) == k + 1 for c in SIZES), 10.0,
                     f'labels of step {k} from every camera')
    for c, (height, width) in SIZES.items():
        expected = _reference(tiny_model, node._values, [(r, s) for r, s, _ in sent[c]])
        for k, msg in enumerate(labels[c]):
            assert msg.header == sent[c][k][2], f'{c}: the output carries its input header'
            assert (msg.height, msg.width) == (height, width)
            np.testing.assert_array_equal(labels_of(msg), expected[k], err_msg=f'{c} {k}')
        stats = node.cameras[c].stats
        assert (stats.received, stats.processed, stats.dropped) == (4, 4, 0)
    reasons = {c: [r.result.reset_reason for r in p.results] for c, p in h.pipelines.items()}
    assert reasons == {c: ['first', None, None, None] for c in SIZES}


def test_a_reset_on_one_camera_leaves_the_others_alone(harness):
    h = harness(params={'cameras': ['a', 'b'], 'max_frame_gap_s': 0.5,
                        'diagnostics_period_s': 0.2})
    labels = {c: h.subscribe(f'/flow2seg_node/{c}/labels') for c in 'ab'}
    diagnostics = h.subscribe('/diagnostics', DiagnosticArray)
    pubs = _publishers(h, 'ab')
    steps = [  # (a's size, a's stamp), (b's size, b's stamp)
        (((48, 64), 10.0), ((48, 64), 10.0)),
        (((48, 64), 10.05), ((48, 64), 10.05)),
        (((40, 72), 10.1), ((48, 64), 10.1)),  # a changes size
        (((40, 72), 10.15), ((48, 64), 9.0)),  # b's stamp jumps back
        (((40, 72), 10.2), ((48, 64), 9.05)),
        (((40, 72), 12.0), ((48, 64), 9.1)),  # a's stamps leave a gap
    ]
    for k, step in enumerate(steps):
        for c, ((height, width), stamp) in zip('ab', step):
            pubs[c].publish(image(frame(k, height, width), stamp, f'{c}_{k}'))
        h.spin_until(lambda: all(len(labels[c]) == k + 1 for c in 'ab'), 10.0, f'step {k}')
    reasons = {c: [r.result.reset_reason for r in h.pipelines[c].results] for c in 'ab'}
    assert reasons['a'] == ['first', None, 'size', None, None, 'gap']
    assert reasons['b'] == ['first', None, None, 'backwards', None, None]
    stats = {c: h.node.cameras[c].stats for c in 'ab'}
    assert (stats['a'].resets, stats['a'].last_reset_reason) == (2, 'gap')
    assert (stats['b'].resets, stats['b'].last_reset_reason) == (1, 'backwards')

    def per_camera():  # the newest diagnostics after every frame: one status per camera
        for array in reversed(diagnostics):
            statuses = {s.name: {kv.key: kv.value for kv in s.values} for s in array.status}
            if all(v.get('frames_processed') == '6' for v in statuses.values()):
                return statuses
        return None

    h.spin_until(per_camera, 5.0, 'diagnostics of both cameras')
    statuses = per_camera()
    assert set(statuses) == {'flow2seg_node: segmentation a', 'flow2seg_node: segmentation b'}
    assert statuses['flow2seg_node: segmentation a']['flow_resets'] == '2'
    assert statuses['flow2seg_node: segmentation b']['input_topic'] == '/b/image'


def test_frames_arriving_together_run_as_one_batch_with_unbatched_labels(harness, tiny_model):
    h = harness(params={'cameras': ['a', 'b'], 'batch_wait_ms': 300.0, 'max_batch_size': 2})
    labels = {c: h.subscribe(f'/flow2seg_node/{c}/labels') for c in 'ab'}
    pubs = _publishers(h, 'ab')
    sent = {c: [] for c in 'ab'}
    for k in range(3):
        for i, c in enumerate('ab'):
            rgb = frame(20 + 2 * k + i, 48, 64)
            sent[c].append((rgb, 30.0 + 0.05 * k))
            pubs[c].publish(image(rgb, 30.0 + 0.05 * k, f'{c}_{k}'))
        h.spin_until(lambda: all(len(labels[c]) == k + 1 for c in 'ab'), 10.0, f'step {k}')
    assert h.network_calls == [2, 2, 2], 'each pair of frames must go through one call'
    assert h.node._scheduler.batch_sizes == {2: 3}
    for c in 'ab':
        expected = _reference(tiny_model, h.node._values, sent[c])
        for k, msg in enumerate(labels[c]):
            np.testing.assert_array_equal(labels_of(msg), expected[k], err_msg=f'{c} {k}')
        assert h.node.cameras[c].stats.last_batch_size == 2


def _play(h, pubs, schedule, labels, until):
    """Publish (time offset, camera, stamp) frames on time; return send times by frame id."""
    sent = {}
    t0 = time.monotonic()
    pending = sorted(schedule)
    while pending or not until():
        now = time.monotonic() - t0
        while pending and pending[0][0] <= now:
            _, camera, stamp = pending.pop(0)
            frame_id = f'{camera}_{stamp:.3f}'
            pubs[camera].publish(image(frame(int(stamp * 100) % 50, 48, 64), stamp, frame_id))
            sent[frame_id] = time.monotonic()
        h.executor.spin_once(timeout_sec=0.001)
        if now > 60.0:
            pytest.fail('the flood did not finish within 60 s')
    return sent


def _latencies(labels, sent, camera):
    return [t - sent[m.header.frame_id] for t, m in labels
            if m.header.frame_id.startswith(camera + '_')]


def test_a_flooding_camera_does_not_hold_up_a_slow_one(harness):
    """Fairness: 'fast' at 4x the node's capacity, 'slow' at 1/4 of it; every slow frame is
    processed, and its median latency stays within 1.5x of its latency alone."""
    delay = 0.06  # each network call (an accelerator's time)
    h = harness(params={'cameras': ['fast', 'slow']}, delay_s=delay)
    labels = h.subscribe('/flow2seg_node/slow/labels', stamped=True)
    fast_labels = h.subscribe('/flow2seg_node/fast/labels', stamped=True)
    pubs = _publishers(h, ['fast', 'slow'])
    # the node's capacity, from lock-step frames of one camera (the first warms up)
    sent = {}
    for i in range(4):
        sent.update(_play(h, pubs, [(0.0, 'slow', 1.0 + 0.01 * i)], labels,
                          lambda: len(labels) == i + 1))
    service = statistics.median(_latencies(labels[1:], sent, 'slow'))
    period = 4.0 * service  # slow: 1/4 of the capacity
    n_slow = 8

    jitter = np.random.default_rng(0).uniform(0.0, service, n_slow)  # any phase of the flood

    def slow_frames(start, stamp0):
        return [(start + period * i + jitter[i], 'slow', stamp0 + 0.01 * i)
                for i in range(n_slow)]

    done = len(labels)
    alone = slow_frames(0.0, 2.0)
    sent.update(_play(h, pubs, alone, labels, lambda: len(labels) == done + n_slow))
    latency_alone = statistics.median(_latencies(labels[done:], sent, 'slow'))

    done = len(labels)
    flood_period = service / 4.0
    n_fast = int((period * (n_slow + 1)) / flood_period)
    flood = [(flood_period * i, 'fast', 3.0 + 0.001 * i) for i in range(n_fast)]
    sent.update(_play(h, pubs, flood + slow_frames(period / 2, 4.0), labels,
                      lambda: len(labels) == done + n_slow))
    latency_flood = statistics.median(_latencies(labels[done:], sent, 'slow'))
    slow = h.node.cameras['slow'].stats
    fast = h.node.cameras['fast'].stats
    assert slow.dropped == 0 and slow.processed == slow.received == 4 + 2 * n_slow
    assert fast.dropped > fast.processed, f'the flood must overload the node: {fast}'
    assert len(fast_labels) == fast.processed
    assert latency_flood <= 1.5 * latency_alone, \
        f'slow camera: {1e3 * latency_flood:.0f} ms under the flood vs ' \
        f'{1e3 * latency_alone:.0f} ms alone'


@pytest.mark.parametrize('backend', ['torch', 'onnxruntime'])
def test_shared_model_factory_loads_one_model(tiny_model_file, backend):
    values = dict(DEFAULTS, model_path=str(tiny_model_file), device='cpu', backend=backend)
    factory = SharedModelFactory()
    first, second = factory(values), factory(values)
    assert first is not second and first.model is second.model
    # one backend runner (for ONNX Runtime, one session holding the weights) for every camera
    assert first.cpu_path.runner is second.cpu_path.runner
    first.process(frame(1, 48, 64), 1.0, outputs=())
    assert second.process(frame(2, 48, 64), 1.05, outputs=()).reset_reason == 'first'
    ref = weakref.ref(factory.model)
    del first, second, factory
    assert ref() is None, 'the model is freed with its pipelines'


def test_bgr8_frames_reach_a_device_path_pipeline_unconverted(harness, tiny_model):
    """With the device path (its code run on the CPU here), a bgr8 camera's pixels go to the
    pipeline as they are, flagged, and the labels equal those of the same frames sent as rgb8."""
    from flow2seg_ros.device_path import DevicePath
    from flow2seg_ros.encodings import image_msg_from_array

    def device_path(pipe):
        pipe.cpu_path = None
        pipe.device_path = DevicePath.for_pipeline(pipe)

    h = harness(adapt=device_path)
    labels = h.subscribe('/flow2seg_node/labels')
    pub = h.tester.create_publisher(Image, '/image', RELIABLE)
    h.spin_until(lambda: pub.get_subscription_count() > 0, 5.0, 'the node to subscribe')
    sent = []
    for k in range(3):
        rgb = frame(70 + k, 48, 64)
        sent.append((rgb, 20.0 + 0.05 * k))
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        header = image(rgb, 20.0 + 0.05 * k, 'cam').header
        pub.publish(image_msg_from_array(bgr, 'bgr8', header, Image))
        h.spin_until(lambda: len(labels) == k + 1, 10.0, f'labels of frame {k}')
    (pipe,) = h.pipelines.values()
    assert [r.bgr for r in pipe.results] == [True] * 3
    for r, (rgb, _) in zip(pipe.results, sent):
        np.testing.assert_array_equal(r.rgb, rgb[..., ::-1])  # no host conversion
    expected = _reference(tiny_model, h.node._values, sent)
    for msg, want in zip(labels, expected):
        np.testing.assert_array_equal(labels_of(msg), want)


def test_device_path_outputs_land_in_the_reused_messages(harness, tiny_model):
    """With the device path (its code run on the CPU here), labels and pictures are downloaded
    straight into each output's one reused message: nothing is copied on the host, and every
    published frame still carries its own labels and overlay."""
    from flow2seg_ros.device_path import DevicePath
    from flow2seg_ros.visualize import overlay

    def device_path(pipe):
        pipe.cpu_path = None
        pipe.device_path = DevicePath.for_pipeline(pipe)

    h = harness(adapt=device_path)
    labels = h.subscribe('/flow2seg_node/labels')
    overlays = h.subscribe('/flow2seg_node/overlay')
    pub = h.tester.create_publisher(Image, '/image', RELIABLE)
    h.spin_until(lambda: pub.get_subscription_count() > 0, 5.0, 'the node to subscribe')
    h.spin_until(lambda: h.node.wanted_outputs() == ('overlay',), 5.0, 'the overlay subscriber')
    sent = []
    for k in range(3):
        rgb = frame(80 + k, 48, 64)
        sent.append((rgb, 30.0 + 0.05 * k))
        pub.publish(image(rgb, 30.0 + 0.05 * k, 'cam'))
        h.spin_until(lambda: len(overlays) == k + 1, 10.0, f'overlay of frame {k}')
    cam = h.node.cameras['']
    assert cam.pipeline.device_path.host_buffers is cam.messages
    assert cam.messages.copies == 0  # every output was written in place
    expected = _reference(tiny_model, h.node._values, sent)
    palette = h.node.pipeline.palette
    for msg, over, want, (rgb, _) in zip(labels, overlays, expected, sent):
        np.testing.assert_array_equal(labels_of(msg), want)
        got = np.frombuffer(bytes(over.data), np.uint8).reshape(48, 64, 3)
        ref = overlay(rgb, palette[want], h.node.pipeline.config.overlay_alpha)
        assert np.abs(got.astype(int) - ref).max() <= 1
