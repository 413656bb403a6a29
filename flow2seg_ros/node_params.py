"""flow2seg_node's parameters: names, defaults, checks, and the pipeline they describe. No ROS.

:func:`validate_parameters` hands every value the pipeline takes to
:meth:`flow2seg_ros.pipeline.PipelineConfig.validate` (one definition of what is valid) and
checks here only what belongs to the node: cameras, input transport and QoS, batching,
diagnostics. :func:`check_ros_arguments` reads the ``--params-file``, ``-p`` and ``-r``
arguments before rclpy does, so that a missing or malformed file or rule is reported in one
sentence.
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from flow2seg_ros.flow import INFERENCE_FLOW_METHODS
from flow2seg_ros.pipeline import PipelineConfig, PRECISIONS
from flow2seg_ros.temporal import DEFAULT_WEIGHT
from flow2seg_ros.weights import resolve_model_path, WeightsError

__all__ = ['DEFAULTS', 'DESCRIPTIONS', 'NODE_NAME', 'NodeConfigError', 'OPTIONAL_OUTPUTS',
           'RUNTIME', 'batch_size', 'camera_names', 'check_ros_arguments', 'describe_type_error',
           'pipeline_config', 'validate_parameters', 'worker_count']

NODE_NAME = 'flow2seg_node'

DEFAULTS: Dict[str, Any] = {
    'model_path': '',
    'device': 'auto',
    'backend': 'auto',
    'precision': 'fp32',
    'cuda_graphs': True,
    'network_image_width': 0,
    'network_image_height': 0,
    'flow_method': '',
    'flow_preset': '',
    'overlay_alpha': 0.5,
    'temporal_smoothing': DEFAULT_WEIGHT,
    'temporal_smoothing_stride': 0,
    'publish_color_mask': True,
    'publish_overlay': True,
    'publish_confidence': False,
    'publish_flow': False,
    'input_transport': 'raw',
    'image_reliability': 'best_effort',
    'image_qos_depth': 1,
    'max_frame_gap_s': 0.5,
    'diagnostics_period_s': 1.0,
    'cameras': [],
    'batch_wait_ms': 5.0,
    'max_batch_size': 0,
    'workers': 0,
}

DESCRIPTIONS = {
    'model_path': "Flow2Seg .safetensors file with its .json model card, or a bundled model's "
                  "name (flow2seg_lite_synthetic_v2: 19 classes); '' = the bundled default.",
    'device': 'auto (CUDA when present, else CPU), cpu, cuda or cuda:N.',
    'backend': 'Who runs the network on the CPU: auto (onnxruntime where installed), torch '
               'or onnxruntime.',
    'precision': f"{', '.join(PRECISIONS)} (all but fp32 on CUDA only).",
    'cuda_graphs': 'On CUDA, replay each frame size as CUDA graphs (captured at the first frame '
                   'of a size, again after a resolution change); false = eager.',
    'network_image_width': "Network input width in pixels; 0 = the model card's.",
    'network_image_height': "Network input height in pixels; 0 = the model card's.",
    'flow_method': f"Optical flow: {', '.join(INFERENCE_FLOW_METHODS)}; '' = the card's.",
    'flow_preset': "Flow preset (DIS: ultrafast/fast/medium); '' = the card's.",
    'overlay_alpha': 'Weight of the colour mask in ~/overlay, 0..1.',
    'temporal_smoothing': "Weight in [0, 1) of the previous frame's class probabilities, "
                          "carried along the flow, in this frame's labels (steadier labels); "
                          '0 = off.',
    'temporal_smoothing_stride': 'Network pixels per cell of the grid the smoothing runs on; '
                                 "0 = the logits' own grid (stride 8 for the bundled models). "
                                 '2 carries the probabilities at a finer grid: more accurate '
                                 'and steadier labels for 5-8 ms more on a 2-core CPU.',
    'publish_color_mask': 'Publish ~/color_mask (rgb8).',
    'publish_overlay': 'Publish ~/overlay (rgb8).',
    'publish_confidence': 'Publish ~/confidence (mono8, 0-255).',
    'publish_flow': 'Publish ~/flow (rgb8 flow picture).',
    'input_transport': 'raw (sensor_msgs/Image on image) or compressed (image/compressed).',
    'image_reliability': 'Input QoS reliability: best_effort (cameras) or reliable.',
    'image_qos_depth': 'Input QoS history depth (1 = always the newest frame).',
    'max_frame_gap_s': 'A gap between frame stamps longer than this resets the flow state.',
    'diagnostics_period_s': 'Period of /diagnostics messages in seconds.',
    'cameras': 'Camera names; each reads <name>/image and publishes ~/<name>/labels etc. '
               'Empty = one camera on image with outputs ~/labels etc.',
    'batch_wait_ms': "Longest wait for other cameras' frames to batch with one that waits "
                     '(0 = never wait).',
    'max_batch_size': 'Most frames in one network call; 0 = one per camera on CUDA, 1 on the '
                      'CPU (there frames of several cameras run side by side in the workers).',
    'workers': 'Threads running frames (each camera one frame at a time); 0 = 1 for one '
               'camera, 2 for several.',
}

#: Parameters that may change while the node runs; every other one requires a restart.
RUNTIME = ('publish_color_mask', 'publish_overlay', 'publish_confidence', 'publish_flow',
           'overlay_alpha', 'temporal_smoothing', 'temporal_smoothing_stride',
           'max_frame_gap_s', 'diagnostics_period_s')

#: output topic -> (pipeline output that feeds it, encoding)
OPTIONAL_OUTPUTS: Dict[str, Tuple[str, str]] = {
    'color_mask': ('color_mask', 'rgb8'),
    'overlay': ('overlay', 'rgb8'),
    'confidence': ('confidence', 'mono8'),
    'flow': ('flow_rgb', 'rgb8'),
}

# parameter -> the PipelineConfig field it sets ('' and 0 mean "the model card's")
_CONFIG_FIELDS = {
    'device': 'device',
    'backend': 'backend',
    'precision': 'precision',
    'flow_method': 'flow_method',
    'overlay_alpha': 'overlay_alpha',
    'temporal_smoothing': 'temporal_smoothing',
    'temporal_smoothing_stride': 'temporal_smoothing_stride',
    'max_frame_gap_s': 'max_gap_s',
}

_CAMERA_NAME = re.compile(r'^[A-Za-z][A-Za-z0-9_]*$')

_TYPE_WORDS = {
    'BOOL': 'true or false',
    'INTEGER': 'an integer',
    'DOUBLE': 'a floating-point number (write 1.0, not 1)',
    'STRING': 'a string',
    'STRING_ARRAY': 'a list of strings, e.g. [front, left]',
}


class NodeConfigError(ValueError):
    """A parameter value the node cannot run with; the message names it and why."""


def _config_value(name: str, value: Any) -> Any:
    if name == 'flow_method':
        return value or None
    if name in ('overlay_alpha', 'temporal_smoothing', 'max_frame_gap_s'):
        return float(value)
    return value


def validate_parameters(values: Dict[str, Any]) -> List[str]:
    """Check parameter values; return one message per problem (empty when all are valid).

    Values the pipeline takes are checked by ``PipelineConfig.validate``, one at a time so each
    message names its parameter.

    Args:
        values: parameter name -> value; names not given are not checked.
    """
    problems: List[str] = []

    def bad(name: str, why: str) -> None:
        problems.append(f'{name}={values[name]!r}: {why}')

    device_ok = True
    for name, fld in _CONFIG_FIELDS.items():
        if name in values:
            given = {fld: _config_value(name, values[name])}
            if name == 'backend':  # which backends can run depends on the device
                given['device'] = values['device'] if 'device' in values and device_ok \
                    else 'cpu'
            try:
                PipelineConfig(**given).validate()
            except ValueError as exc:
                bad(name, str(exc))
                device_ok = device_ok and name != 'device'
    if 'network_image_width' in values and 'network_image_height' in values:
        w, h = int(values['network_image_width']), int(values['network_image_height'])
        if (w == 0) != (h == 0):
            problems.append(f'network_image_width={w}, network_image_height={h}: '
                            "set both or neither (0 = the model card's size)")
        elif w or h:
            try:
                PipelineConfig(input_size=(h, w)).validate()
            except ValueError as exc:
                problems.append(f'network_image_width={w}, network_image_height={h}: {exc}')
    if values.get('model_path'):
        try:
            if not resolve_model_path(values['model_path']).is_file():
                bad('model_path', 'no such file')
        except WeightsError as exc:
            bad('model_path', str(exc))
    if 'input_transport' in values and values['input_transport'] not in ('raw', 'compressed'):
        bad('input_transport', 'expected raw or compressed')
    if ('image_reliability' in values
            and values['image_reliability'] not in ('best_effort', 'reliable')):
        bad('image_reliability', 'expected best_effort or reliable')
    if 'image_qos_depth' in values and int(values['image_qos_depth']) < 1:
        bad('image_qos_depth', 'must be >= 1')
    if 'diagnostics_period_s' in values and not float(values['diagnostics_period_s']) > 0.0:
        bad('diagnostics_period_s', 'must be > 0')
    if 'batch_wait_ms' in values and not 0.0 <= float(values['batch_wait_ms']) <= 1000.0:
        bad('batch_wait_ms', 'must be in [0, 1000] ms')
    if 'max_batch_size' in values and int(values['max_batch_size']) < 0:
        bad('max_batch_size', 'must be >= 0 (0 = one per camera on CUDA, 1 on the CPU)')
    if 'workers' in values and not 0 <= int(values['workers']) <= 16:
        bad('workers', 'must be in [0, 16] (0 = 1 for one camera, 2 for several)')
    if values.get('cameras'):
        names = list(values['cameras'])
        wrong = [n for n in names if not _CAMERA_NAME.match(n)]
        if wrong:
            bad('cameras', f'names must start with a letter and hold letters, digits and _ '
                           f'only: {wrong}')
        elif len(set(names)) != len(names):
            bad('cameras', 'names must be unique')
    return problems


def camera_names(values: Dict[str, Any]) -> List[str]:
    """The cameras the parameters name; ``['']`` is the one unnamed camera on ``image``."""
    return list(values.get('cameras') or [''])


def worker_count(values: Dict[str, Any]) -> int:
    """Worker threads to run: ``workers``, or for 0 one per camera up to two."""
    cameras = len(camera_names(values))
    return min(int(values['workers']) or 2, cameras)


def batch_size(values: Dict[str, Any], device_type: str) -> int:
    """Most frames per network call: ``max_batch_size``, or for 0 one per camera on CUDA and
    1 on the CPU.

    On a CPU, two workers running two cameras' frames side by side delivered more frames at
    lower latency than batches of two (benchmarks/multicam.py: 2 x 640x480 at 10 Hz, bundled
    model); on a GPU one call for every camera is the point of batching.
    """
    if int(values['max_batch_size']):
        return int(values['max_batch_size'])
    return len(camera_names(values)) if device_type == 'cuda' else 1


def pipeline_config(values: Dict[str, Any]) -> PipelineConfig:
    """Build the :class:`~flow2seg_ros.pipeline.PipelineConfig` the parameters describe.

    Args:
        values: parameter values keyed like :data:`DEFAULTS`.
    """
    width, height = int(values['network_image_width']), int(values['network_image_height'])
    return PipelineConfig(
        weights=values['model_path'] or None,
        device=values['device'],
        backend=values['backend'],
        precision=values['precision'],
        cuda_graphs=bool(values['cuda_graphs']),
        input_size=(height, width) if width and height else None,
        flow_method=values['flow_method'] or None,
        flow_preset=values['flow_preset'] or None,
        overlay_alpha=float(values['overlay_alpha']),
        temporal_smoothing=float(values['temporal_smoothing']),
        temporal_smoothing_stride=int(values['temporal_smoothing_stride']),
        max_gap_s=float(values['max_frame_gap_s']),
    )


def describe_type_error(name: str, value: Any, expected: str) -> str:
    """One sentence for a parameter given a value of the wrong type.

    Args:
        name: the parameter.
        value: the value it was given (None when unknown).
        expected: rclpy's type name (``DOUBLE``, ``INTEGER``, ...).
    """
    want = _TYPE_WORDS.get(expected, expected.lower())
    given = '' if value is None else f'={value!r}'
    return f'{name}{given}: expected {want}'


def _ros_args(args: Sequence[str]) -> List[str]:
    """The arguments inside ``--ros-args ... [--]`` sections."""
    inside, out = False, []
    for arg in args:
        if arg == '--ros-args':
            inside = True
        elif arg == '--' and inside:
            inside = False
        elif inside:
            out.append(arg)
    return out


def _params_file_problem(path: str) -> Optional[str]:
    if not os.path.exists(path):
        return f'params file {path!r}: no such file'
    if not os.path.isfile(path):
        return f'params file {path!r}: not a file'
    try:
        with open(path, encoding='utf-8') as f:
            doc = yaml.safe_load(f)
    except OSError as exc:
        return f'params file {path!r}: cannot read it ({exc.strerror})'
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, 'problem_mark', None)
        line = f' at line {where.line + 1}' if where is not None else ''
        what = getattr(exc, 'problem', None) or type(exc).__name__
        return f'params file {path!r}: not valid YAML{line} ({what})'
    expected = "expected '<node name>: {ros__parameters: {name: value, ...}}'"
    if not isinstance(doc, dict) or not doc:
        return f'params file {path!r}: {expected}'

    def walk(tree: Dict[Any, Any], where: str) -> Optional[str]:
        for key, value in tree.items():
            if key == 'ros__parameters':
                if not isinstance(value, dict):
                    return f'params file {path!r}: {where}ros__parameters is not a mapping'
            elif not isinstance(value, dict):
                return f'params file {path!r}: {where}{key} has no ros__parameters; {expected}'
            else:
                problem = walk(value, f'{where}{key}.')
                if problem:
                    return problem
        return None

    return walk(doc, '')


def _rule_problem(flag: str, rule: str) -> Optional[str]:
    name, sep, value = rule.partition(':=')
    if not sep or not name:
        return f'{flag} {rule!r}: expected name:=value'
    if flag in ('-p', '--param'):
        if not value:
            return f"{flag} {rule!r}: no value after ':='"
        try:
            yaml.safe_load(value)
        except yaml.YAMLError as exc:
            what = getattr(exc, 'problem', None) or type(exc).__name__
            return f'{flag} {rule!r}: the value is not valid YAML ({what})'
    elif not value:
        return f"{flag} {rule!r}: no topic or name after ':='"
    return None


def check_ros_arguments(args: Sequence[str]) -> Optional[str]:
    """One sentence about the first ROS argument rclpy would refuse, else None.

    Checks each ``--params-file`` (exists, is YAML keyed by node name) and each ``-p`` / ``-r``
    rule (``name:=value``), so that the node reports the mistake in one line instead of rcl's
    error and a traceback.

    Args:
        args: the command line (``sys.argv`` or what is passed to ``rclpy.init``).
    """
    ros = _ros_args(args)
    for i, arg in enumerate(ros):
        if arg in ('--params-file', '-p', '--param', '-r', '--remap'):
            if i + 1 >= len(ros):
                return f'{arg} needs a value'
            if arg == '--params-file':
                problem = _params_file_problem(ros[i + 1])
            else:
                problem = _rule_problem(arg, ros[i + 1])
            if problem:
                return problem
    return None
