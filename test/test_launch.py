"""seg.launch.py, seg.yaml and the DDS profile: static checks everywhere, a launch test where
``launch``/``launch_ros`` are installed (a sourced ROS 2 distribution)."""

import ast
import importlib
import os
from pathlib import Path
import xml.etree.ElementTree as ET

import pytest
import yaml

from flow2seg_ros.launch_args import camera_remappings, is_true, parse_name_list
from flow2seg_ros.node import DEFAULTS, validate_parameters

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / 'launch' / 'seg.launch.py'


def _setup_kwargs():
    """Run setup.py with setuptools.setup replaced, returning what it passes to setup()."""
    import setuptools

    captured = {}
    real = setuptools.setup
    setuptools.setup = lambda **kw: captured.update(kw)
    cwd = os.getcwd()
    try:
        os.chdir(REPO)
        exec(compile((REPO / 'setup.py').read_text(), 'setup.py', 'exec'), {'__name__': 'x'})
    finally:
        setuptools.setup = real
        os.chdir(cwd)
    return captured


def _calls(tree, name):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, 'id', getattr(n.func, 'attr', None)) == name]


def _kw(call, key):
    for kw in call.keywords:
        if kw.arg == key:
            return kw.value
    return None


ARGUMENTS = {'image_topic', 'cameras', 'camera_topics', 'managed', 'params_file', 'namespace',
             'use_sim_time', 'device', 'model_path'}


def test_launch_file_static():
    tree = ast.parse(LAUNCH.read_text())
    assert ast.get_docstring(tree), 'seg.launch.py needs a module docstring'
    assert 'cameras:=' in ast.get_docstring(tree), 'the docstring shows a multi-camera launch'

    (node,) = _calls(tree, 'Node')
    (managed,) = _calls(tree, 'LifecycleNode')
    assert ast.literal_eval(_kw(node, 'executable')) == 'seg_node'
    assert ast.literal_eval(_kw(managed, 'executable')) == 'seg_lifecycle_node'
    (common,) = [c for c in _calls(tree, 'dict') if _kw(c, 'package') is not None]
    consts = {k: ast.literal_eval(_kw(common, k)) for k in ('package', 'name')}
    assert consts == {'package': 'flow2seg_ros', 'name': 'flow2seg_node'}
    remaps = ast.unparse(_kw(common, 'remappings'))
    assert remaps.startswith('camera_remappings(cameras, topics')
    assert "LaunchConfiguration('image_topic')" in remaps
    params = _kw(common, 'parameters')
    assert isinstance(params, ast.List) and \
        ast.unparse(params.elts[0]) == "LaunchConfiguration('params_file')"

    declared = {}
    for call in _calls(tree, 'DeclareLaunchArgument'):
        name = ast.literal_eval(call.args[0])
        assert _kw(call, 'description') is not None, f'argument {name} lacks a description'
        declared[name] = call
    assert set(declared) == ARGUMENTS
    used = {ast.literal_eval(c.args[0]) for c in _calls(tree, 'LaunchConfiguration')}
    assert used <= set(declared), f'undeclared launch arguments: {used - set(declared)}'

    # params_file defaults to <share of flow2seg_ros>/config/seg.yaml
    assigns = {t.id: n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
               for t in n.targets if isinstance(t, ast.Name)}
    default = _kw(declared['params_file'], 'default_value')
    path_expr = assigns[default.id]
    assert ast.unparse(path_expr) == "os.path.join(share, 'config', 'seg.yaml')"
    assert ast.unparse(assigns['share']) == "get_package_share_directory('flow2seg_ros')"
    # the DDS profile comes from the one definition in flow2seg_ros.dds where importable
    imports = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
               for a in n.names}
    assert ('flow2seg_ros.dds', 'profile_environment') in imports


def test_launch_argument_helpers():
    assert parse_name_list('') == []
    assert parse_name_list('[front, left, rear]') == ['front', 'left', 'rear']
    assert parse_name_list(' front, left ') == ['front', 'left']
    with pytest.raises(ValueError, match='list of names'):
        parse_name_list('[front, [left]]')
    assert camera_remappings([], [], '/cam/image_raw') == [('image', '/cam/image_raw')]
    assert camera_remappings(['front', 'left'], [], '/x') == []
    assert camera_remappings(['front', 'left'], ['/f/image_raw', '/l/image_raw'], '/x') == \
        [('front/image', '/f/image_raw'), ('left/image', '/l/image_raw')]
    with pytest.raises(ValueError, match='2 topics for 3 cameras'):
        camera_remappings(['a', 'b', 'c'], ['/a', '/b'], '/x')
    assert is_true('True') and is_true('1') and not is_true('false') and not is_true('')
    # what the launch file hands the node is what the node accepts
    assert validate_parameters({'cameras': parse_name_list('[front, left, rear]')}) == []


def test_setup_installs_what_the_launch_file_needs():
    kwargs = _setup_kwargs()
    scripts = kwargs['entry_points']['console_scripts']
    scripts = [s.replace(' ', '').replace('=', ' = ') for s in scripts]
    assert 'seg_node = flow2seg_ros.node:main' in scripts
    assert 'seg_lifecycle_node = flow2seg_ros.lifecycle_node:main' in scripts
    assert callable(importlib.import_module('flow2seg_ros.node').main)
    assert callable(importlib.import_module('flow2seg_ros.lifecycle_node').main)
    installed = {}
    for dest, files in kwargs['data_files']:
        for f in files:
            installed[os.path.join(dest, os.path.basename(f))] = REPO / f
    for rel in ('config/seg.yaml', 'config/fastdds_large_images.xml', 'launch/seg.launch.py'):
        key = os.path.join('share', 'flow2seg_ros', rel)
        assert key in installed, f'setup.py does not install {rel}'
        assert installed[key].is_file(), f'{installed[key]} missing from the repository'


def test_params_file_matches_node_parameters():
    doc = yaml.safe_load((REPO / 'config' / 'seg.yaml').read_text())
    params = doc['flow2seg_node']['ros__parameters']
    assert set(params) == set(DEFAULTS), f'seg.yaml vs node: {set(params) ^ set(DEFAULTS)}'
    for name, value in params.items():
        assert type(value) is type(DEFAULTS[name]), f'{name}: {value!r} is not a ' \
            f'{type(DEFAULTS[name]).__name__}'
    assert validate_parameters(params) == []
    assert params == DEFAULTS  # the shipped file documents the defaults


def test_fastdds_profile_sizes():
    root = ET.parse(REPO / 'config' / 'fastdds_large_images.xml').getroot()
    ns = {'d': 'http://www.eprosima.com'}
    shm = root.find('.//d:transport_descriptor[d:type="SHM"]', ns)
    udp = root.find('.//d:transport_descriptor[d:type="UDPv4"]', ns)
    assert int(shm.find('d:segment_size', ns).text) == 16 * 1024 * 1024
    for tag in ('sendBufferSize', 'receiveBufferSize'):
        assert int(udp.find(f'd:{tag}', ns).text) == 4 * 1024 * 1024
    participant = root.find('.//d:participant', ns)
    assert participant.get('is_default_profile') == 'true'
    used = {e.text for e in participant.findall('.//d:userTransports/d:transport_id', ns)}
    assert used == {shm.find('d:transport_id', ns).text, udp.find('d:transport_id', ns).text}


def test_launch_description_where_launch_ros_exists():
    pytest.importorskip('launch_ros', reason='launch_ros is not installed (no ROS 2 '
                                             'distribution sourced); static checks cover it')
    pytest.importorskip('launch')
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch_ros.actions import LifecycleNode, Node

    spec = importlib.util.spec_from_file_location('seg_launch', LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        description = module.generate_launch_description()
    except Exception as exc:  # package not installed in this workspace
        pytest.skip(f'flow2seg_ros is not installed in an ament prefix: {exc}')
    args = [a for a in description.entities if isinstance(a, DeclareLaunchArgument)]
    assert {a.name for a in args} == ARGUMENTS
    context = LaunchContext()
    for a in args:
        context.launch_configurations[a.name] = ''.join(
            s.perform(context) for s in a.default_value)
    context.launch_configurations['cameras'] = '[front, left, rear]'
    (opaque,) = [a for a in description.entities if isinstance(a, OpaqueFunction)]
    (node,) = opaque.execute(context)
    assert isinstance(node, Node) and node.node_executable == 'seg_node'
    context.launch_configurations['managed'] = 'true'
    (managed,) = opaque.execute(context)
    assert isinstance(managed, LifecycleNode)
    assert managed.node_executable == 'seg_lifecycle_node'
    params = [a for a in args if a.name == 'params_file'][0]
    default = ''.join(s.perform(context) for s in params.default_value)
    assert default.endswith(os.path.join('flow2seg_ros', 'config', 'seg.yaml'))
    assert os.path.isfile(default)
