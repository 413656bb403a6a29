"""seg_node as its own process, started the way users run it (--ros-args --params-file)."""

import os
from pathlib import Path
import subprocess
import sys
import time

from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
import pytest
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from flow2seg_ros.replay import stop_process

REPO = Path(__file__).resolve().parents[1]

PUBLISHER = """
import sys, time
import numpy as np
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
width, height, count = (int(a) for a in sys.argv[1:4])
period = float(sys.argv[4])
rclpy.init()
node = rclpy.create_node('camera')
pub = node.create_publisher(Image, '/cam/image_raw',
                            QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
deadline = time.monotonic() + 30.0
while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
    rclpy.spin_once(node, timeout_sec=0.1)  # discovery first, as a camera driver would be up
rng = np.random.default_rng(0)
frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
for i in range(count):
    msg = Image(height=height, width=width, encoding='rgb8', step=width * 3)
    msg.data = np.roll(frame, 4 * i, axis=1).tobytes()
    msg.header.stamp = node.get_clock().now().to_msg()
    msg.header.frame_id = f'big_{i}'
    pub.publish(msg)
    rclpy.spin_once(node, timeout_sec=period)
node.destroy_node()
rclpy.shutdown()
"""


def _start_node(model_file, log_path, extra=(), module='flow2seg_ros.node'):
    cmd = [sys.executable, '-m', module, '--ros-args',
           '--params-file', str(REPO / 'config' / 'seg.yaml'),
           '-r', 'image:=/cam/image_raw',
           '-p', f'model_path:={model_file}', '-p', 'device:=cpu', *extra]
    log = open(log_path, 'w')
    return subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ), stdout=log,
                            stderr=subprocess.STDOUT), log


def _stop(proc, log, log_path):
    code = stop_process(proc, timeout=15)
    log.close()
    return code, Path(log_path).read_text()


def _spin_until(executor, predicate, timeout, what, proc, log_path, tick=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f'seg_node exited with {proc.returncode} while waiting for {what}:\n'
                        f'{Path(log_path).read_text()[-3000:]}')
        if tick:
            tick()
        executor.spin_once(timeout_sec=0.05)
    pytest.fail(f'timed out after {timeout} s waiting for {what}; node log:\n'
                f'{Path(log_path).read_text()[-3000:]}')


def test_seg_node_process_labels_with_input_header(context, tiny_model_file, tmp_path):
    log_path = tmp_path / 'node.log'
    proc, log = _start_node(tiny_model_file, log_path)
    try:
        tester = Node('tester', context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(tester)
        labels = []
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        tester.create_subscription(Image, '/flow2seg_node/labels', labels.append, reliable)
        pub = tester.create_publisher(Image, '/cam/image_raw', reliable)
        rgb = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
        sent = {}

        def send():
            if len(sent) < 400 and pub.get_subscription_count():
                msg = Image(height=40, width=56, encoding='rgb8', step=56 * 3)
                msg.data = rgb.tobytes()
                msg.header.stamp.sec, msg.header.stamp.nanosec = 1000 + len(sent), 500
                msg.header.frame_id = f'cam_{len(sent)}'
                sent[msg.header.frame_id] = msg.header.stamp.sec
                pub.publish(msg)

        _spin_until(executor, lambda: labels, 90.0, 'labels from seg_node', proc, log_path,
                    tick=send)
        out = labels[0]
        assert out.header.frame_id in sent
        assert (out.header.stamp.sec, out.header.stamp.nanosec) == \
            (sent[out.header.frame_id], 500)
        assert (out.height, out.width, out.encoding, out.step) == (40, 56, 'mono8', 56)
        assert set(np.frombuffer(out.data, np.uint8)) <= set(range(4))
        tester.destroy_node()
        executor.shutdown()
    finally:
        code, text = _stop(proc, log, log_path)
    assert code == 0, f'seg_node did not stop cleanly on SIGINT ({code}):\n{text[-3000:]}'


def test_seg_node_refuses_bad_parameter(tmp_path):
    cmd = [sys.executable, '-m', 'flow2seg_ros.node', '--ros-args',
           '--params-file', str(REPO / 'config' / 'seg.yaml'), '-p', 'precision:=fp8']
    done = subprocess.run(cmd, cwd=REPO, env=dict(os.environ), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    assert "precision='fp8': precision must be one of ('fp32', 'fp16'" in done.stderr + done.stdout


def test_best_effort_720p_from_another_process(context, tiny_model_file, tmp_path):
    """1280x720 rgb8 (2.8 MB) best effort across processes: needs the shipped DDS profile."""
    log_path = tmp_path / 'node.log'
    proc, log = _start_node(tiny_model_file, log_path)
    script = tmp_path / 'camera.py'
    script.write_text(PUBLISHER)
    camera = None
    try:
        tester = Node('tester', context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(tester)
        labels = []
        tester.create_subscription(Image, '/flow2seg_node/labels', labels.append,
                                   QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        diagnostics = []
        tester.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, 10)
        _spin_until(executor, lambda: tester.count_publishers('/flow2seg_node/labels'), 90.0,
                    'seg_node to start', proc, log_path)
        camera = subprocess.Popen([sys.executable, str(script), '1280', '720', '30', '0.1'],
                                  env=dict(os.environ), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
        _spin_until(executor, lambda: camera.poll() is not None, 60.0, 'the camera to finish',
                    proc, log_path)
        # let the node finish its last frame and publish diagnostics (1 s period) after it
        seen = len(diagnostics)
        _spin_until(executor, lambda: len(diagnostics) >= seen + 2, 10.0, 'diagnostics',
                    proc, log_path)

        def received() -> int:
            values = {kv.key: kv.value for kv in diagnostics[-1].status[0].values}
            return int(values['frames_received'])

        # What DDS delivered to the node (it may then drop frames while busy: latest wins).
        # Without the profile on the camera's side about 6 of 30 frames arrive here.
        assert received() >= 20, f'only {received()} of 30 best-effort 720p frames arrived'
        assert labels, 'no labels came back for 720p frames'
        assert all((m.height, m.width) == (720, 1280) for m in labels)
        assert all(m.header.frame_id.startswith('big_') for m in labels)
        tester.destroy_node()
        executor.shutdown()
    finally:
        if camera is not None:
            camera.kill()
            camera.wait()
        code, text = _stop(proc, log, log_path)
    assert code == 0, text[-3000:]


def _call(executor, client, request, what, proc, log_path, *, resend_s=None):
    """Call a service of the node process and wait for the reply.

    A client can see the service before the reply path is matched (DDS discovers the request
    and the reply topics separately), and a reply sent in between is lost; ``resend_s`` sends a
    request again after that many seconds without a reply: only for requests that change
    nothing, used to warm each service up before the calls the test is about.
    """
    _spin_until(executor, client.service_is_ready, 60.0, f'the {what} service', proc, log_path)
    deadline = time.monotonic() + 60.0
    while True:
        future = client.call_async(request)
        wait = 60.0 if resend_s is None else min(resend_s, deadline - time.monotonic())
        try:
            _spin_until(executor, future.done, max(wait, 0.1), f'the {what} reply', proc,
                        log_path)
            return future.result()
        except pytest.fail.Exception:
            client.remove_pending_request(future)
            if resend_s is None or time.monotonic() > deadline:
                raise


def test_three_cameras_in_one_process(context, tiny_model_file, tmp_path):
    log_path = tmp_path / 'node.log'
    proc, log = _start_node(tiny_model_file, log_path,
                            ['-p', 'cameras:=[front, left, rear]', '-r', 'left/image:=/side/raw'])
    sizes = {'front': (40, 56), 'left': (48, 64), 'rear': (24, 80)}
    topics = {'front': '/front/image', 'left': '/side/raw', 'rear': '/rear/image'}
    try:
        tester = Node('tester', context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(tester)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        labels = {c: [] for c in sizes}
        for c in sizes:
            tester.create_subscription(Image, f'/flow2seg_node/{c}/labels', labels[c].append,
                                       reliable)
        pubs = {c: tester.create_publisher(Image, topics[c], reliable) for c in sizes}
        _spin_until(executor, lambda: all(p.get_subscription_count() for p in pubs.values()),
                    90.0, 'seg_node to subscribe to three cameras', proc, log_path)
        _spin_until(executor, lambda: all(tester.count_subscribers(f'/flow2seg_node/{c}/labels')
                                          for c in sizes) and
                    all(tester.count_publishers(f'/flow2seg_node/{c}/labels') for c in sizes),
                    30.0, 'the label topics', proc, log_path)
        rng = np.random.default_rng(1)
        sent = {}
        for k in range(3):
            step = {}
            for c, (h, w) in sizes.items():
                msg = Image(height=h, width=w, encoding='rgb8', step=w * 3)
                msg.data = rng.integers(0, 256, (h, w, 3), dtype=np.uint8).tobytes()
                msg.header.stamp.sec, msg.header.stamp.nanosec = 2000 + k, 7
                msg.header.frame_id = f'{c}_{k}'
                step[c] = sent[msg.header.frame_id] = msg
            resend_at = [0.0]

            def publish_missing():  # a best-effort input may lose a frame: send it again
                if time.monotonic() >= resend_at[0]:
                    resend_at[0] = time.monotonic() + 2.0
                    for c, msg in step.items():
                        if not any(o.header.frame_id == msg.header.frame_id for o in labels[c]):
                            pubs[c].publish(msg)

            _spin_until(executor, lambda: all(
                any(o.header.frame_id == f'{c}_{k}' for o in labels[c]) for c in sizes), 60.0,
                f'labels of step {k} from three cameras', proc, log_path, tick=publish_missing)
        for c, (h, w) in sizes.items():
            assert {o.header.frame_id for o in labels[c]} == {f'{c}_{k}' for k in range(3)}
            for out in labels[c]:
                assert out.header == sent[out.header.frame_id].header
                assert (out.height, out.width, out.encoding) == (h, w, 'mono8')
        tester.destroy_node()
        executor.shutdown()
    finally:
        code, text = _stop(proc, log, log_path)
    assert code == 0, text[-3000:]


def test_managed_node_over_dds(context, tiny_model_file, tmp_path):
    """seg_lifecycle_node driven through its lifecycle services, as a supervisor does."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    log_path = tmp_path / 'node.log'
    missing = tmp_path / 'missing.safetensors'
    proc, log = _start_node(missing, log_path, module='flow2seg_ros.lifecycle_node')
    try:
        tester = Node('tester', context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(tester)
        labels = []
        tester.create_subscription(Image, '/flow2seg_node/labels', labels.append,
                                   QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        pub = tester.create_publisher(Image, '/cam/image_raw',
                                      QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        change = tester.create_client(ChangeState, '/flow2seg_node/change_state')
        get = tester.create_client(GetState, '/flow2seg_node/get_state')
        set_params = tester.create_client(SetParameters, '/flow2seg_node/set_parameters')

        def transition(label):
            request = ChangeState.Request(transition=Transition(label=label))
            return _call(executor, change, request, label, proc, log_path).success

        def state():
            return _call(executor, get, GetState.Request(), 'get_state', proc,
                         log_path).current_state.label

        def send_and_wait(stamp, seconds):
            msg = Image(height=32, width=48, encoding='rgb8', step=48 * 3)
            msg.data = bytes(32 * 48 * 3)
            msg.header.stamp.sec = stamp
            pub.publish(msg)
            deadline = time.monotonic() + seconds
            count = len(labels)
            while time.monotonic() < deadline and len(labels) == count:
                executor.spin_once(timeout_sec=0.05)

        # warm every service up with requests that change nothing (see _call)
        warm = dict(proc=proc, log_path=log_path, resend_s=2.0)
        assert _call(executor, get, GetState.Request(), 'get_state', **warm)
        assert not _call(executor, change, ChangeState.Request(
            transition=Transition(label='deactivate')), 'change_state', **warm).success
        assert _call(executor, set_params, SetParameters.Request(), 'set_parameters', **warm)
        assert state() == 'unconfigured'
        assert not transition('configure'), 'a missing model must fail configure'
        assert state() == 'unconfigured' and proc.poll() is None
        reply = _call(executor, set_params, SetParameters.Request(parameters=[
            Parameter('model_path', value=str(tiny_model_file)).to_parameter_msg()]),
            'set_parameters', proc, log_path)
        assert reply.results[0].successful, reply.results[0].reason
        assert transition('configure') and state() == 'inactive'
        send_and_wait(1, 1.0)
        assert labels == [] and pub.get_subscription_count() == 0
        assert transition('activate') and state() == 'active'
        _spin_until(executor, lambda: pub.get_subscription_count(), 30.0, 'the subscription',
                    proc, log_path)
        for stamp in range(2, 40):
            send_and_wait(stamp, 1.0)
            if labels:
                break
        assert labels, 'no labels while active'
        assert transition('deactivate') and state() == 'inactive'
        count = len(labels)
        send_and_wait(50, 1.0)
        assert len(labels) == count, 'labels published while inactive'
        assert transition('cleanup') and state() == 'unconfigured'
        assert transition('shutdown') and state() == 'finalized'
        tester.destroy_node()
        executor.shutdown()
    finally:
        code, text = _stop(proc, log, log_path)
    assert code == 0, text[-3000:]
    assert 'configure failed' in text and str(missing) in text and 'Traceback' not in text
