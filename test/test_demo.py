"""`make demo` end to end on a very short drive: the node as its own process, over DDS."""
import json
import shutil

import pytest

from flow2seg_ros import demo
from flow2seg_ros.weights import card_path

pytest.importorskip('rclpy', reason='the demo talks to the node over DDS (rclpy)')


def test_demo_runs_end_to_end_and_writes_its_outputs(tmp_path, tiny_model_file, capsys):
    # a model whose card says it was trained on v2 scenes gets a v2 drive
    model = tmp_path / 'v2_model.safetensors'
    shutil.copy(tiny_model_file, model)
    card = json.loads(card_path(tiny_model_file).read_text())
    card.setdefault('training', {})['scenes'] = 'v2'
    card_path(model).write_text(json.dumps(card))
    out = tmp_path / 'demo_out'
    code = demo.main(['--weights', str(model), '--frames', '6', '--size', '128x64',
                      '--rate', '10', '--out', str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    summary = json.loads((out / 'summary.json').read_text())
    replay = summary['replay']
    assert replay['sent'] == 6 and 1 <= replay['received'] <= 6
    assert replay['lost'] == replay['sent'] - replay['received']
    assert 0 < replay['latency_ms_p50'] <= replay['latency_ms_p95']
    assert summary['labelled_frames'] == replay['received']
    assert summary['miou'] is not None and 0.0 <= summary['miou'] <= 1.0
    assert summary['scenes'] == 'v2' and 'v2 scenes' in printed.out
    overlays = sorted(out.glob('overlay_*.png'))
    assert len(overlays) == summary['overlays_written'] >= 1
    assert (out / 'contact_sheet.png').stat().st_size > 0
    assert summary['video'] and (out / 'overlay.mp4').stat().st_size > 0
    for text in ('frames sent 6', 'latency p50', 'p95', 'mIoU', 'frames/s'):
        assert text in printed.out, text


def test_demo_says_when_the_bundled_model_is_missing(tmp_path, monkeypatch, capsys):
    import flow2seg_ros.weights as weights

    missing = tmp_path / 'bundled' / 'flow2seg_lite_synthetic.safetensors'
    monkeypatch.setattr(weights, 'bundled_model_path', lambda: missing)
    assert demo.main(['--out', str(tmp_path / 'out')]) == 1
    err = capsys.readouterr().err
    assert 'no bundled model yet' in err and str(missing) in err and 'Traceback' not in err


def test_demo_refuses_a_missing_weights_file(tmp_path, capsys):
    assert demo.main(['--weights', str(tmp_path / 'none.safetensors')]) == 1
    assert 'model file not found' in capsys.readouterr().err


def test_dds_environment_keeps_traffic_local_and_respects_a_user_profile():
    from flow2seg_ros.dds import dds_environment, FASTDDS_PROFILE

    env = dds_environment(17, base={'PATH': '/bin'})
    assert env['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'
    assert env['ROS_DOMAIN_ID'] == '17' and env['PATH'] == '/bin'
    assert env['FASTDDS_DEFAULT_PROFILES_FILE'] == str(FASTDDS_PROFILE)
    assert 'FASTRTPS_DEFAULT_PROFILES_FILE' not in env  # Fast DDS 3 warns about the old name
    humble = dds_environment(base={'ROS_DISTRO': 'humble', 'ROS_DOMAIN_ID': '5'})
    assert humble['FASTRTPS_DEFAULT_PROFILES_FILE'] == str(FASTDDS_PROFILE)
    assert humble['ROS_DOMAIN_ID'] == '5'
    mine = dds_environment(base={'FASTDDS_DEFAULT_PROFILES_FILE': '/my/profile.xml'})
    assert mine['FASTDDS_DEFAULT_PROFILES_FILE'] == '/my/profile.xml'
    subnet = dds_environment(base={'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET'})
    assert subnet['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'SUBNET'  # the user's choice stays
    assert 1 <= int(subnet['ROS_DOMAIN_ID']) <= 200  # an own domain, not everyone's 0
    assert 'ROS_DOMAIN_ID' not in dds_environment(base={}, own_domain=False)
    with pytest.raises(ValueError, match='233'):
        dds_environment(233)
