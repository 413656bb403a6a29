"""Launch flow2seg_node: semantic segmentation with motion (Flow2Seg) on one or more cameras.

One camera::

    ros2 launch flow2seg_ros seg.launch.py image_topic:=/camera/image_raw device:=cuda

The second bundled model (all 19 Cityscapes classes) or a model file of your own::

    ros2 launch flow2seg_ros seg.launch.py model_path:=flow2seg_lite_synthetic_v2

The node's outputs are ``<namespace>/flow2seg_node/labels`` (mono8 class ids,
255 = ignore), ``.../color_mask``, ``.../overlay`` and the latched ``.../label_info``.

Three cameras through one model (camera ``front`` publishes ``.../flow2seg_node/front/labels``,
``.../front/overlay``, ...)::

    ros2 launch flow2seg_ros seg.launch.py cameras:='[front, left, right]' \\
        camera_topics:='[/front/image_raw, /left/image_raw, /right/image_raw]'

Without ``camera_topics`` camera ``front`` reads ``<namespace>/front/image``.

As a managed (lifecycle) node, brought up by a supervisor or by hand::

    ros2 launch flow2seg_ros seg.launch.py managed:=true
    ros2 lifecycle set /flow2seg_node configure && ros2 lifecycle set /flow2seg_node activate

Camera-sized images over Fast DDS need larger transport buffers: this file points
``FASTDDS_DEFAULT_PROFILES_FILE`` (and ``FASTRTPS_DEFAULT_PROFILES_FILE`` on Humble/Iron, whose
Fast DDS 2.x reads that name) at the package's ``config/fastdds_large_images.xml`` unless the
user already set either. Apply the same profile to the camera driver or bag player: it matters
on the publisher's side.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.parameter_descriptions import ParameterValue

from flow2seg_ros.launch_args import camera_remappings, is_true, parse_name_list

try:  # the one definition of the DDS profile set-up, where the package provides it
    from flow2seg_ros.dds import profile_environment
except ImportError:  # pragma: no cover - an older installed package
    profile_environment = None


def _profile_variables(profile: str) -> dict:
    """The Fast DDS profile variables to set (none when the user set either name)."""
    if profile_environment is not None:
        return profile_environment()
    # Fast DDS 3 (Jazzy and later) reads FASTDDS_*; Fast DDS 2 (Humble, Iron) reads FASTRTPS_*
    # and Fast DDS 3 warns that the old name is deprecated, so it is set only where it is read.
    if any(os.environ.get(v) for v in ('FASTDDS_DEFAULT_PROFILES_FILE',
                                       'FASTRTPS_DEFAULT_PROFILES_FILE')):
        return {}
    variables = {'FASTDDS_DEFAULT_PROFILES_FILE': profile}
    if os.environ.get('ROS_DISTRO', '') in ('humble', 'iron'):
        variables['FASTRTPS_DEFAULT_PROFILES_FILE'] = profile
    return variables


def _node(context, *args, **kwargs):
    """The flow2seg_node action, plain or managed, for the cameras the arguments name."""
    cameras = parse_name_list(LaunchConfiguration('cameras').perform(context))
    topics = parse_name_list(LaunchConfiguration('camera_topics').perform(context))
    overrides = {
        'use_sim_time': ParameterValue(LaunchConfiguration('use_sim_time'), value_type=bool),
        'device': LaunchConfiguration('device'),
    }
    if cameras:
        overrides['cameras'] = cameras
    model = LaunchConfiguration('model_path').perform(context)
    if model:  # else the parameter file's
        overrides['model_path'] = model
    common = dict(
        package='flow2seg_ros',
        name='flow2seg_node',
        namespace=LaunchConfiguration('namespace'),
        output='screen',
        parameters=[LaunchConfiguration('params_file'), overrides],
        remappings=camera_remappings(cameras, topics,
                                     LaunchConfiguration('image_topic').perform(context)),
    )
    if is_true(LaunchConfiguration('managed').perform(context)):
        return [LifecycleNode(executable='seg_lifecycle_node', **common)]
    return [Node(executable='seg_node', **common)]


def generate_launch_description() -> LaunchDescription:
    """Declare the arguments, the DDS profile and the flow2seg_node action."""
    share = get_package_share_directory('flow2seg_ros')
    default_params = os.path.join(share, 'config', 'seg.yaml')
    profile = os.path.join(share, 'config', 'fastdds_large_images.xml')

    actions = [
        DeclareLaunchArgument(
            'image_topic', default_value='/camera/image_raw',
            description='Input sensor_msgs/Image topic of the one camera when cameras is empty '
                        '(the compressed transport appends /compressed).'),
        DeclareLaunchArgument(
            'cameras', default_value='',
            description="Camera names, e.g. '[front, left, right]'; empty = one camera on "
                        'image_topic with outputs ~/labels etc.'),
        DeclareLaunchArgument(
            'camera_topics', default_value='',
            description='Input topic of each camera, in the order of cameras; empty = '
                        '<namespace>/<name>/image.'),
        DeclareLaunchArgument(
            'managed', default_value='false',
            description='Run seg_lifecycle_node, a managed node that waits for configure and '
                        'activate transitions.'),
        DeclareLaunchArgument(
            'params_file', default_value=default_params,
            description='YAML parameter file keyed by flow2seg_node.'),
        DeclareLaunchArgument(
            'namespace', default_value='',
            description='Namespace of the node and its output topics.'),
        DeclareLaunchArgument(
            'use_sim_time', default_value='false',
            description='Use /clock (bag replay) for latency and diagnostics.'),
        DeclareLaunchArgument(
            'device', default_value='auto',
            description='Inference device: auto, cpu, cuda or cuda:N.'),
        DeclareLaunchArgument(
            'model_path', default_value='',
            description="A .safetensors model file or a bundled model's name "
                        "(flow2seg_lite_synthetic_v2: 19 classes); empty = params_file's."),
    ]
    actions.extend(SetEnvironmentVariable(name, value)
                   for name, value in _profile_variables(profile).items())
    actions.append(OpaqueFunction(function=_node))
    return LaunchDescription(actions)
