"""seg_lifecycle_node in-process: configure (failing, then good), activate, deactivate, cleanup,
shutdown from any state; nothing published while inactive."""

import gc
import json
import weakref

from node_helpers import frame, image, NodeHarness, RELIABLE
import pytest
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import String

from flow2seg_ros.lifecycle_node import Flow2SegLifecycleNode

SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


@pytest.fixture
def managed(context, tiny_model):
    made = []

    def make(**params):
        params.setdefault('device', 'cpu')
        params.setdefault('backend', 'torch')
        made.append(NodeHarness(context, tiny_model, params=params,
                                node_class=Flow2SegLifecycleNode, recording=False))
        return made[-1]

    yield make
    for h in made:
        h.close()


def _state(node):
    return node._state_machine.current_state[1]


def test_lifecycle_transitions_and_silence_while_inactive(managed, tiny_model_file, tmp_path,
                                                          capfd):
    corrupt = tmp_path / 'corrupt.safetensors'
    corrupt.write_bytes(b'\x00' * 64)
    h = managed(model_path=str(corrupt))
    node = h.node
    labels = h.subscribe('/flow2seg_node/labels')
    info = h.subscribe('/flow2seg_node/label_info', String, LATCHED)
    pub = h.tester.create_publisher(Image, '/image', RELIABLE)
    assert _state(node) == 'unconfigured' and node.cameras == {}

    # a corrupt model file: FAILURE with the reason logged, the node stays unconfigured
    assert node.trigger_configure() == FAILURE
    assert _state(node) == 'unconfigured'
    err = capfd.readouterr().err
    assert 'configure failed' in err and str(corrupt) in err
    # fixed by a parameter change (allowed while unconfigured), then configured again
    assert node.set_parameters([Parameter('model_path', value=str(tiny_model_file))])[0].successful
    assert node.trigger_configure() == SUCCESS
    assert _state(node) == 'inactive' and list(node.cameras) == ['']
    restart = node.set_parameters([Parameter('device', value='auto')])[0]
    assert not restart.successful and 'requires restart' in restart.reason

    # inactive: not subscribed, nothing published
    h.spin_for(0.3)
    assert pub.get_subscription_count() == 0
    pub.publish(image(frame(1, 48, 64), 10.0, 'cam'))
    h.spin_for(0.5)
    assert labels == [] and info == []

    assert node.trigger_activate() == SUCCESS
    h.spin_until(lambda: pub.get_subscription_count() == 1 and info, 5.0, 'activation')
    assert [c['name'] for c in json.loads(info[0].data)['classes']][:2] == ['road', 'building']
    pub.publish(image(frame(2, 48, 64), 10.05, 'cam'))
    h.spin_until(lambda: labels, 10.0, 'labels while active')

    assert node.trigger_deactivate() == SUCCESS
    assert _state(node) == 'inactive'
    h.spin_for(0.3)
    assert pub.get_subscription_count() == 0
    count = len(labels)
    pub.publish(image(frame(3, 48, 64), 10.1, 'cam'))
    h.spin_for(0.5)
    assert len(labels) == count, 'published while inactive'

    # cleanup frees the model
    model = weakref.ref(node.pipeline.model)
    assert node.trigger_cleanup() == SUCCESS
    gc.collect()
    assert _state(node) == 'unconfigured' and node.cameras == {} and model() is None

    # and the whole way again, then shutdown from active
    assert node.trigger_configure() == SUCCESS and node.trigger_activate() == SUCCESS
    h.spin_until(lambda: pub.get_subscription_count() == 1, 5.0, 'second activation')
    pub.publish(image(frame(4, 48, 64), 11.0, 'cam'))
    h.spin_until(lambda: len(labels) == count + 1, 10.0, 'labels after reactivation')
    assert node.trigger_shutdown() == SUCCESS
    assert _state(node) == 'finalized' and node.cameras == {}


@pytest.mark.parametrize('steps', [(), ('configure',)])
def test_shutdown_from_unconfigured_and_inactive(managed, tiny_model_file, steps):
    h = managed(model_path=str(tiny_model_file), cameras=['a', 'b'])
    for step in steps:
        assert getattr(h.node, f'trigger_{step}')() == SUCCESS
    assert h.node.trigger_shutdown() == SUCCESS
    assert _state(h.node) == 'finalized' and h.node.cameras == {}


def test_bad_parameter_values_fail_configure_with_their_names(managed, capfd):
    h = managed(overlay_alpha=2.0, image_qos_depth=0)
    assert h.node.trigger_configure() == FAILURE
    err = capfd.readouterr().err
    assert 'overlay_alpha=2.0' in err and 'image_qos_depth=0' in err
    assert _state(h.node) == 'unconfigured'
