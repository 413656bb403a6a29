"""flow2seg-bag-eval: replay bags through the frame pipeline (and, live, to seg_node)."""
import json
import os
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

from flow2seg_ros import bag_eval, bag_score
from flow2seg_ros.bagio import BagReader, BagWriter, IMAGE, image_message, rgb_to_encoding
from flow2seg_ros.make_bag import make_bag
from flow2seg_ros.pipeline import FramePipeline, PipelineConfig
from flow2seg_ros.replay import stop_process

REPO = Path(__file__).resolve().parents[1]
RATE = 17.0
TOPICS = ['--image-topic', '/camera/image_raw']


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    """2 synthetic sequences x 4 frames at 128x64, every frame labelled."""
    from flow2seg_ros.data.synth import generate

    root = tmp_path_factory.mktemp('synth')
    generate(root, sequences=2, frames=4, size=(128, 64), seed=11, split='val', progress=False)
    return root


@pytest.fixture(scope='module')
def bags(dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp('bags')
    make_bag(dataset, folder / 'raw_sqlite', storage='sqlite3', progress=False)
    make_bag(dataset, folder / 'png_mcap', storage='mcap', compressed=True,
             compressed_format='png', progress=False)
    return folder


def _pipeline(model_file):
    return FramePipeline(PipelineConfig(weights=str(model_file), device='cpu',
                                        max_gap_s=max(0.5, 2.5 / RATE)))


def test_bag_eval_scores_like_flow2seg_evaluate(bags, dataset, tiny_model_file, tmp_path):
    from flow2seg_ros.data.cityscapes import SequenceDataset
    from flow2seg_ros.evaluate import evaluate_sequences

    pipe = _pipeline(tiny_model_file)
    ref = evaluate_sequences(pipe, SequenceDataset(dataset, 'val', classes=pipe.classes),
                             fps=RATE, progress=False)
    data = bag_score.evaluate_bag(bags / 'raw_sqlite', _pipeline(tiny_model_file),
                                  image_topic='/camera/image_raw', labels_topic='/camera/labels',
                                  out_dir=tmp_path / 'out', progress=False)
    assert data['frames']['processed'] == 8 and data['frames']['labelled'] == 8
    assert data['frames']['resets'] == {'first': 1, 'gap': 1}  # one reset per sequence
    assert data['label_mapping'] == 'remapped to the model classes'
    for head in ('fused', 'image', 'flow'):
        got, want = data['heads'][head], ref['heads'][head]
        assert got['miou'] == pytest.approx(want['miou'], abs=1e-12), head
        assert got['tc'] == pytest.approx(want['tc'], abs=1e-12), head
        assert got['per_class_iou'] == pytest.approx(want['per_class_iou'], abs=1e-12)
    assert data['heads']['fused']['miou'] is not None and data['heads']['fused']['tc_pairs'] == 6

    # the output bag: same storage, the input images and the node's topics, input stamps
    out_bag = Path(data['output_bag']['path'])
    assert (out_bag / 'metadata.yaml').read_text().count('storage_identifier: sqlite3') == 1
    stamps = {}
    with BagReader(bags / 'raw_sqlite') as reader:
        for _, t, raw in reader.messages(['/camera/image_raw']):
            m = reader.deserialize(raw, IMAGE)
            stamps.setdefault('input', []).append((m.header.stamp.sec, m.header.stamp.nanosec))
    with BagReader(out_bag) as reader:
        topics = reader.topics
        assert set(topics) == {'/camera/image_raw', '/flow2seg_node/labels',
                               '/flow2seg_node/color_mask', '/flow2seg_node/overlay'}
        for topic, _, raw in reader.messages(list(topics)):
            m = reader.deserialize(raw, IMAGE)
            stamps.setdefault(topic, []).append((m.header.stamp.sec, m.header.stamp.nanosec))
            assert (m.height, m.width) == (64, 128) and m.header.frame_id == 'camera'
            if topic == '/flow2seg_node/labels':
                assert m.encoding == 'mono8'
                assert np.asarray(m.data).max() < pipe.classes.num_classes
    for topic in topics:
        assert stamps[topic] == stamps['input'], topic


def test_cli_on_a_compressed_mcap_bag_writes_the_report(bags, tiny_model_file, tmp_path,
                                                        capsys):
    out = tmp_path / 'report'
    assert bag_eval.main([str(bags / 'png_mcap'), *TOPICS, '--labels-topic', '/camera/labels',
                          '--weights', str(tiny_model_file), '--device', 'cpu',
                          '--out', str(out), '--no-progress']) == 0
    printed = capsys.readouterr().out
    data = json.loads((out / 'report.json').read_text())
    assert data['storage'] == 'mcap' and data['image_type'] == 'sensor_msgs/msg/CompressedImage'
    assert data['frames']['processed'] == 8 and data['frames']['skipped'] == {}
    # PNG-compressed frames are lossless: same scores as the raw sqlite3 bag
    raw = bag_score.evaluate_bag(bags / 'raw_sqlite', _pipeline(tiny_model_file),
                                 image_topic='/camera/image_raw', labels_topic='/camera/labels',
                                 progress=False)
    assert data['heads']['fused']['miou'] == pytest.approx(raw['heads']['fused']['miou'])
    for stage in ('decode', 'flow', 'network', 'total'):
        lat = data['latency_ms'][stage]
        assert lat['n'] == 8 and 0 <= lat['p50'] <= lat['p90'] <= lat['p99'] <= lat['max']
    assert data['fps']['pipeline'] > 0
    assert len(data['confusion_fused']) == 4
    assert np.asarray(data['confusion_fused']).sum() > 0
    md = (out / 'report.md').read_text()
    fused = data['heads']['fused']
    assert f"| fused | {100 * fused['miou']:.2f} | {100 * fused['tc']:.2f} |" in md
    assert f"fused  mIoU {100 * fused['miou']:.2f}" in printed
    for name in ('summary_table', 'per_class_iou', 'confusion_fused', 'latency', 'montage'):
        png = out / data['figures'][name]
        assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', name
        assert f'({png.name})' in md or name == 'summary_table'
    assert (out / 'png_mcap_flow2seg' / 'metadata.yaml').read_text().count('mcap') >= 1


def test_without_labels_only_the_fused_head_is_measured(bags, tiny_model_file, tmp_path):
    data = bag_score.evaluate_bag(bags / 'raw_sqlite', _pipeline(tiny_model_file),
                                  image_topic='/camera/image_raw', out_dir=tmp_path,
                                  write_bag=False, max_frames=5, progress=False)
    assert list(data['heads']) == ['fused']
    assert data['frames']['processed'] == 5 and data['frames']['labelled'] == 0
    assert data['heads']['fused']['miou'] is None and data['tc_fused'] is not None
    assert 'output_bag' not in data and (tmp_path / 'montage.png').is_file()


def _hand_made_bag(path, *, label_size=(48, 64), bad_encoding_at=None, storage='sqlite3'):
    rng = np.random.default_rng(0)
    with BagWriter(path, storage) as w:
        for i in range(3):
            t = 10**9 * 100 + i * 50_000_000
            rgb = rng.integers(0, 255, (48, 64, 3), np.uint8)
            msg = image_message(rgb_to_encoding(rgb, 'rgb8'), 'rgb8', t, 'camera')
            if i == bad_encoding_at:
                msg.encoding = 'no_such_encoding'
            w.write('/camera/image_raw', msg, t)
            label = np.zeros(label_size, np.uint8)
            w.write('/camera/labels', image_message(label, 'mono8', t, 'camera'), t)
    return path


def test_undecodable_frames_are_skipped_and_counted(tiny_model_file, tmp_path):
    bag = _hand_made_bag(tmp_path / 'bag', bad_encoding_at=1)
    data = bag_score.evaluate_bag(bag, _pipeline(tiny_model_file), image_topic='/camera/image_raw',
                                  labels_topic='/camera/labels', progress=False)
    assert data['frames']['processed'] == 2 and data['frames']['read'] == 3
    (reason, count), = data['frames']['skipped'].items()
    assert count == 1 and 'undecodable image' in reason and 'no_such_encoding' in reason


def _truncate(bag):
    (f,) = [p for p in bag.iterdir() if p.suffix in ('.db3', '.mcap')]
    f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])


@pytest.mark.parametrize('case', ['missing_topic', 'wrong_type', 'truncated_sqlite3',
                                  'truncated_mcap', 'label_size', 'missing_bag'])
def test_bad_input_exits_with_a_clear_message(bags, tiny_model_file, tmp_path, capsys, case):
    import shutil

    bag = tmp_path / 'bag'
    args = [*TOPICS]
    if case == 'missing_topic':
        shutil.copytree(bags / 'raw_sqlite', bag)
        args = ['--image-topic', '/camera/nothing']
        expected = ["topic '/camera/nothing' not found",
                    '/camera/image_raw  [sensor_msgs/msg/Image]', '/camera/labels']
    elif case == 'wrong_type':
        shutil.copytree(bags / 'raw_sqlite', bag)
        args = ['--image-topic', '/camera/label_info']
        expected = ["'/camera/label_info'",
                    'is std_msgs/msg/String, expected sensor_msgs/msg/Image',
                    '/camera/image_raw  [sensor_msgs/msg/Image]']
    elif case.startswith('truncated'):
        src = 'raw_sqlite' if case.endswith('sqlite3') else 'png_mcap'
        shutil.copytree(bags / src, bag)
        _truncate(bag)
        expected = [f'cannot open bag {bag}', 'truncated or corrupt']
    elif case == 'label_size':
        _hand_made_bag(bag, label_size=(24, 32))
        args += ['--labels-topic', '/camera/labels']
        expected = ["label on '/camera/labels' at stamp 100.000 is 32x24 but its image is 64x48",
                    '--skip-bad-labels']
    else:
        bag = tmp_path / 'no_bag_here'
        expected = [f'bag not found: {bag}']
    assert bag_eval.main([str(bag), *args, '--weights', str(tiny_model_file), '--device', 'cpu',
                          '--out', str(tmp_path / 'out'), '--no-progress']) == 2
    err = capsys.readouterr().err
    assert err.startswith('flow2seg-bag-eval: error: ')
    for text in expected:
        assert text in err, err
    assert 'Traceback' not in err


def test_skip_bad_labels_scores_frames_without_them(tiny_model_file, tmp_path):
    bag = _hand_made_bag(tmp_path / 'bag', label_size=(24, 32), storage='mcap')
    data = bag_score.evaluate_bag(bag, _pipeline(tiny_model_file), image_topic='/camera/image_raw',
                                  labels_topic='/camera/labels', skip_bad_labels=True,
                                  progress=False)
    assert data['frames']['processed'] == 3 and data['frames']['labelled'] == 0
    assert data['frames']['skipped'] == {'label size mismatch (frame not scored)': 3}


def test_live_dds_environment_keeps_user_settings_and_fills_the_rest():
    """What ``--live`` applies: the user's settings stay, the domain stays the inherited one."""
    from flow2seg_ros.dds import apply_dds_environment, describe_dds_changes

    env = {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET'}
    notes = describe_dds_changes(apply_dds_environment(own_domain=False, environ=env))
    assert env['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'SUBNET'
    assert Path(env['FASTDDS_DEFAULT_PROFILES_FILE']).name == 'fastdds_large_images.xml'
    assert len(notes) == 1 and 'Fast DDS profile' in notes[0]
    env = {'FASTDDS_DEFAULT_PROFILES_FILE': '/x.xml'}
    notes = describe_dds_changes(apply_dds_environment(own_domain=False, environ=env))
    assert env == {'FASTDDS_DEFAULT_PROFILES_FILE': '/x.xml',
                   'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}
    assert len(notes) == 1 and 'LOCALHOST' in notes[0]
    env = {'ROS_DOMAIN_ID': '7', 'FASTDDS_DEFAULT_PROFILES_FILE': '/x.xml',
           'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}
    assert apply_dds_environment(own_domain=False, environ=env) == {}
    assert env['ROS_DOMAIN_ID'] == '7'


@pytest.mark.ros
def test_live_replay_to_seg_node_process(bags, tiny_model_file, tmp_path, capsys):
    """seg_node in its own process; the bag is published to it and its labels recorded."""
    log_path = tmp_path / 'node.log'
    cmd = [sys.executable, '-m', 'flow2seg_ros.node', '--ros-args',
           '-r', 'image:=/camera/image_raw', '-p', f'model_path:={tiny_model_file}',
           '-p', 'device:=cpu']
    env = dict(os.environ)  # conftest: LOCALHOST, this run's ROS_DOMAIN_ID, DDS profile
    assert env['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            out = tmp_path / 'live'
            code = bag_eval.main([str(bags / 'raw_sqlite'), *TOPICS, '--live', '--out', str(out),
                                  '--rate-scale', '0.5', '--sweep', '--sweep-rates', '2,4',
                                  '--window-s', '1.5', '--wait-s', '90'])
        finally:
            stop_process(proc, timeout=15)
    node_log = log_path.read_text()
    assert code == 0, node_log[-3000:]
    data = json.loads((out / 'report.json').read_text())
    run = data['run']
    assert run['sent'] == 8
    assert run['received'] >= 1, node_log[-3000:]
    assert run['received'] + run['lost'] == 8
    lat = run['latency_ms']
    assert lat['n'] == run['received'] and 0 < lat['p50'] < 10_000
    sweep = data['sweep']
    assert [w['rate_hz'] for w in sweep['windows']][:1] == [2.0]
    assert all(w['sent'] >= 5 for w in sweep['windows'])
    assert (out / 'latency.png').is_file() and 'End-to-end latency' in \
        (out / 'report.md').read_text()
    assert 'live:' in capsys.readouterr().out
