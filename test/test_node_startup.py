"""Start-up mistakes: one log line naming the parameter or file and what was expected, exit
status 1, no traceback. In-process through ``main`` for every case; three as real processes."""

import json
import os
from pathlib import Path
import subprocess
import sys

import pytest

from flow2seg_ros import lifecycle_node, node

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def bad_files(tmp_path_factory, tiny_model_file):
    folder = tmp_path_factory.mktemp('bad')
    files = {'missing_params': folder / 'missing.yaml',
             'missing_model': folder / 'none.safetensors'}
    files['broken_yaml'] = folder / 'broken.yaml'
    files['broken_yaml'].write_text('flow2seg_node:\n  ros__parameters: {device: [cpu\n')
    files['list_yaml'] = folder / 'list.yaml'
    files['list_yaml'].write_text('- device\n- cpu\n')
    files['typed_yaml'] = folder / 'typed.yaml'
    files['typed_yaml'].write_text('flow2seg_node:\n  ros__parameters:\n    overlay_alpha: abc\n')
    files['corrupt_model'] = folder / 'corrupt.safetensors'
    files['corrupt_model'].write_bytes(b'not a model at all' * 10)
    # the tiny model's weights with a card for another class set (3 classes instead of 4)
    other = folder / 'other_classes.safetensors'
    other.write_bytes(Path(tiny_model_file).read_bytes())
    card = json.loads(Path(tiny_model_file).with_suffix('.json').read_text())
    card['classes'] = {k: v[:3] if isinstance(v, list) else v for k, v in card['classes'].items()}
    other.with_suffix('.json').write_text(json.dumps(card))
    files['other_classes'] = other
    return files


CASES = [  # (ros arguments, text the one line must hold)
    (['-p', 'overlay_alpha:=abc'], "overlay_alpha='abc': expected a floating-point number"),
    (['-p', 'overlay_alpha:=2.0'], 'overlay_alpha=2.0: overlay alpha must be in [0, 1]'),
    (['-p', 'device:=gpu'], "device='gpu': device must be auto, cpu, cuda or cuda:N"),
    (['-p', 'image_qos_depth:=-1'], 'image_qos_depth=-1: must be >= 1'),
    (['-p', 'cameras:=[front, front]'], 'cameras='),
    (['-p', 'publish_overlay:=maybe'], "publish_overlay='maybe': expected true or false"),
    (['--params-file', '{missing_params}'], "params file '{missing_params}': no such file"),
    (['--params-file', '{broken_yaml}'], "params file '{broken_yaml}': not valid YAML"),
    (['--params-file', '{list_yaml}'], "params file '{list_yaml}': expected '<node name>"),
    (['--params-file', '{typed_yaml}'], "overlay_alpha='abc': expected a floating-point"),
    (['-p', 'overlay_alpha:='], "-p 'overlay_alpha:=': no value after ':='"),
    (['-p', 'cameras:=[front'], "-p 'cameras:=[front': the value is not valid YAML"),
    (['-r', 'image'], "-r 'image': expected name:=value"),
    (['-p', 'model_path:={missing_model}'], "model_path='{missing_model}': no such file"),
    (['-p', 'model_path:={corrupt_model}'], '{corrupt_model}'),
    (['-p', 'model_path:={other_classes}'], 'does not match its card'),
]


def _one_clear_line(output, expected, rc):
    lines = [line for line in output.splitlines() if line.strip()]
    assert rc == 1, f'exit status {rc}, output:\n{output}'
    assert 'Traceback' not in output, output
    assert len(lines) == 1, f'expected one line, got:\n{output}'
    assert 'refuses to start' in lines[0] and expected in lines[0], lines[0]


@pytest.mark.parametrize('args,expected', CASES,
                         ids=[' '.join(a).replace('/', '') for a, _ in CASES])
def test_start_up_mistake_gives_one_line_and_status_1(args, expected, bad_files, capfd):
    args = [a.format(**bad_files) for a in args]
    rc = node.main(['seg_node', '--ros-args', '-p', 'device:=cpu', *args])
    captured = capfd.readouterr()
    _one_clear_line(captured.out + captured.err, expected.format(**bad_files), rc)


def test_managed_node_refuses_a_wrongly_typed_parameter(capfd):
    rc = lifecycle_node.main(['seg_lifecycle_node', '--ros-args', '-p', 'workers:=two'])
    captured = capfd.readouterr()
    _one_clear_line(captured.out + captured.err, "workers='two': expected an integer", rc)


def test_start_up_mistakes_as_processes(bad_files):
    """The way users meet them: ``seg_node --ros-args ...`` in a shell."""
    cases = [(['-p', 'overlay_alpha:=abc'], "overlay_alpha='abc'"),
             (['--params-file', str(bad_files['missing_params'])], 'no such file'),
             (['-p', f"model_path:={bad_files['other_classes']}"], 'does not match its card')]
    procs = [subprocess.Popen([sys.executable, '-m', 'flow2seg_ros.node', '--ros-args', *args],
                              cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for args, _ in cases]
    for proc, (_, expected) in zip(procs, cases):
        output, _ = proc.communicate(timeout=120)
        _one_clear_line(output, expected, proc.returncode)
