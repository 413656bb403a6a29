"""Launch flow2seg_node: semantic segmentation with motion (Flow2Seg) on a camera topic.

Example::

    ros2 launch flow2seg_ros seg.launch.py image_topic:=/camera/image_raw device:=cuda

The node's outputs are ``<namespace>/flow2seg_node/labels`` (mono8 class ids,
255 = ignore), ``.../color_mask``, ``.../overlay`` and the latched ``.../label_info``.

Camera-sized images over Fast DDS need larger transport buffers: this file points
``FASTDDS_DEFAULT_PROFILES_FILE`` (and ``FASTRTPS_DEFAULT_PROFILES_FILE`` on Humble/Iron, whose
Fast DDS 2.x reads that name) at the package's ``config/fastdds_large_images.xml`` unless the
user already set either. Apply the same profile to the camera driver or bag player: it matters
on the publisher's side.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description() -> LaunchDescription:
    """Declare the arguments and the flow2seg_node action."""
    share = get_package_share_directory('flow2seg_ros')
    default_params = os.path.join(share, 'config', 'seg.yaml')
    profile = os.path.join(share, 'config', 'fastdds_large_images.xml')

    actions = [
        DeclareLaunchArgument(
            'image_topic', default_value='/camera/image_raw',
            description='Input sensor_msgs/Image topic (the compressed transport appends '
                        '/compressed when input_transport is compressed).'),
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
    ]
    # Fast DDS 3 (Jazzy and later) reads FASTDDS_*; Fast DDS 2 (Humble, Iron) reads FASTRTPS_*
    # and Fast DDS 3 warns that the old name is deprecated, so it is set only where it is read.
    variables = ['FASTDDS_DEFAULT_PROFILES_FILE']
    if os.environ.get('ROS_DISTRO', '') in ('humble', 'iron'):
        variables.append('FASTRTPS_DEFAULT_PROFILES_FILE')
    user_set = any(os.environ.get(v) for v in ('FASTDDS_DEFAULT_PROFILES_FILE',
                                               'FASTRTPS_DEFAULT_PROFILES_FILE'))
    if not user_set:
        actions.extend(SetEnvironmentVariable(v, profile) for v in variables)

    actions.append(Node(
        package='flow2seg_ros',
        executable='seg_node',
        name='flow2seg_node',
        namespace=LaunchConfiguration('namespace'),
        output='screen',
        parameters=[
            LaunchConfiguration('params_file'),
            {
                'use_sim_time': ParameterValue(LaunchConfiguration('use_sim_time'),
                                               value_type=bool),
                'device': LaunchConfiguration('device'),
            },
        ],
        remappings=[('image', LaunchConfiguration('image_topic'))],
    ))
    return LaunchDescription(actions)
