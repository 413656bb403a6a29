"""flow2seg-bench: a quick in-process run and its JSON report."""
import importlib.util
import json
import math
import time

import pytest
import torch

from flow2seg_ros import bench
from flow2seg_ros.encodings import image_msg_to_rgb
from flow2seg_ros.frames import PAN_PX, scene_frames

STAGES = ('convert', 'resize', 'flow', 'network', 'argmax', 'resize_back', 'colour', 'messages')


def _load_benchmark(name):
    """A script of benchmarks/ as a module (its folder on sys.path while it loads, for _common)."""
    import sys
    from pathlib import Path
    bench_dir = Path(__file__).resolve().parents[1] / 'benchmarks'
    sys.path.insert(0, str(bench_dir))
    try:
        spec = importlib.util.spec_from_file_location(name, bench_dir / f'{name}.py')
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(bench_dir))
    return module


def _run(tmp_path, tiny_model_file, *extra):
    out = tmp_path / 'bench.json'
    argv = ['--quick', '--weights', str(tiny_model_file), '--sizes', '64x32',
            '--cameras', '160x120', '--iterations', '3', '--device', 'cpu', '--out', str(out),
            *extra]
    assert bench.main(argv) == 0
    return json.loads(out.read_text())


def test_quick_run_reports_every_stage_path_and_ratio(tmp_path, tiny_model_file, capsys):
    publish = importlib.util.find_spec('rclpy') is not None  # in-process publishing needs rclpy
    report = _run(tmp_path, tiny_model_file, *(['--publish'] if publish else []))
    env = report['environment']
    assert env['device'] == 'cpu' and env['torch_threads'] >= 1
    assert env['torch'] == torch.__version__ and env['cpu_model']
    (config,) = report['configs']
    assert config['network'] == [64, 32] and config['camera'] == [160, 120]
    assert config['iterations'] == 3 and config['published'] == publish
    for key in ('stages_ms', 'image_only_stages_ms'):
        for stage in STAGES + (('publish',) if publish else ()):
            if key == 'image_only_stages_ms' and stage == 'flow':
                assert config[key][stage] == 0  # no flow computed for an image-only model
                continue
            assert config[key][stage] > 0, (key, stage)
    for part in ('image_path', 'flow_path', 'fusion', 'upsample'):
        assert config['paths_ms'][part] > 0, part
    totals = config['totals']['fused']
    pipeline = sum(config['stages_ms'][s] for s in bench.PIPELINE_STAGES)
    assert totals['pipeline_ms'] == pytest.approx(pipeline)
    assert totals['pipeline_fps'] == pytest.approx(1e3 / config['stages_ms']['total'])
    ratios = config['ratios']
    for name in ('motion_cost', 'node_overhead', 'flow_fusion_over_image_path'):
        assert math.isfinite(ratios[name]) and ratios[name] > 0, name
    assert totals['outputs_ms'] == pytest.approx(
        sum(config['stages_ms'][s] for s in bench.OUTPUT_STAGES))
    assert ratios['node_overhead'] == pytest.approx(
        totals['node_added_ms'] / (totals['pipeline_ms'] + totals['outputs_ms']))
    printed = capsys.readouterr().out
    assert 'motion' in printed and '64x32' in printed and '160x120' in printed


def test_image_only_twin_shares_the_image_path(tiny_model_file):
    model, image_only, card = bench.model_pair('lite', num_classes=4,
                                               weights=str(tiny_model_file))
    assert model.has_flow and not image_only.has_flow
    assert card['image_only_card']['model_kwargs']['use_flow'] is False
    x = torch.randn(1, 3, 32, 64)
    with torch.inference_mode():
        torch.testing.assert_close(image_only(x)['fused'], model(x)['fused'])


def test_timed_parts_are_the_models_own_and_add_up_to_forward(tiny_model):
    # the benchmark times Flow2Seg.image_logits / flow_logits / fuse: the same calls forward
    # makes, so the fused logits rebuilt from the parts equal forward's output
    model, _ = tiny_model
    torch.manual_seed(1)
    x, f = torch.randn(2, 3, 32, 64), 0.1 * torch.randn(2, 2, 32, 64)
    calls = []
    for name in ('image_logits', 'flow_logits', 'fuse'):
        original = getattr(model, name)
        setattr(model, name, lambda *a, _o=original, _n=name: calls.append(_n) or _o(*a))
    try:
        times = bench.time_model_paths(model, x, f, time.perf_counter)
        assert calls == ['image_logits', 'flow_logits', 'fuse']
        with torch.inference_mode():
            image_logits, _ = model.image_logits(x)
            fused = model.fuse(image_logits, model.flow_logits(f))
            parts = torch.nn.functional.interpolate(fused, size=(32, 64), mode='bilinear',
                                                    align_corners=False)
            torch.testing.assert_close(parts, model(x, f)['fused'])
    finally:
        for name in ('image_logits', 'flow_logits', 'fuse'):
            del model.__dict__[name]
    assert set(times) == {'image_path', 'flow_path', 'fusion', 'upsample'}


def test_node_stages_are_not_pipeline_stages():
    assert not set(bench.NODE_STAGES) & (set(bench.PIPELINE_STAGES) | set(bench.OUTPUT_STAGES))


def test_scene_frames_pan_and_message_round_trips():
    frames = scene_frames(2, (48, 24))
    assert frames[0].shape == (24, 48, 3)
    assert (frames[0][:, PAN_PX:] == frames[1][:, :-PAN_PX]).all()

    for encoding in ('rgb8', 'bgr8'):
        msg = bench.make_message(frames[0], encoding, 12.5)
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (12, 500_000_000)
        assert (image_msg_to_rgb(msg) == frames[0]).all()


@pytest.mark.parametrize('argv, message', [
    (['--sizes', '100x50'], 'multiples of 8'),
    (['--sizes', 'big'], 'WxH'),
    (['--weights', '/nonexistent/m.safetensors'], '/nonexistent/m.safetensors'),
    (['--weights', 'nope'], "'nope' is neither a bundled model"),
    (['--iterations', '0'], '--iterations'),
])
def test_bad_arguments_exit_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(['--quick', *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_an_invalid_weights_file_is_named_without_a_traceback(tmp_path, capsys):
    bad = tmp_path / 'bad.safetensors'
    bad.write_bytes(b'not a safetensors file')
    with pytest.raises(SystemExit) as exc:
        bench.main(['--quick', '--weights', str(bad), '--out', str(tmp_path / 'b.json')])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith('flow2seg-bench: error: ') and str(bad) in err
    assert 'Traceback' not in err and not (tmp_path / 'b.json').exists()


def test_peers_and_backend_are_timed_in_the_same_loop(tmp_path, tiny_model_file, capsys):
    report = _run(tmp_path, tiny_model_file, '--peers', '--backend', 'torch',
                  '--overlap-flow', 'off')
    (config,) = report['configs']
    assert config['backend'] == 'torch' and config['overlap_flow'] is False
    assert 'flow_thread' not in config['stages_ms']
    for name in ('lraspp_mobilenet_v3_large', 'deeplabv3_mobilenet_v3_large'):
        assert config['peers_ms'][name] > 0
        assert math.isfinite(config['peers_over_pipeline'][name])
    assert 'peer lraspp_mobilenet_v3_large' in capsys.readouterr().out
    report = _run(tmp_path, tiny_model_file, '--backend', 'onnxruntime', '--threads', '2',
                  '--compare-overlap')
    (config,) = report['configs']
    assert config['backend'] == 'onnxruntime' and config['peers_ms'] == {}
    assert config['overlapped_stages_ms']['flow_thread'] > 0  # flow beside the image path
    assert config['overlap_flow'] is None  # auto: measured as it runs
    assert 'flow_thread' not in config['sequential_stages_ms']
    assert config['sequential_stages_ms']['flow'] > 0
    assert math.isfinite(config['ratios']['overlap_speedup'])


def test_model_speed_times_two_models_in_one_run(tiny_model_file, tmp_path, capsys):
    """benchmarks/model_speed.py: both models timed interleaved, the ratio reported."""
    module = _load_benchmark('model_speed')
    out = tmp_path / 'speed.json'
    assert module.main([str(tiny_model_file), str(tiny_model_file), '--camera', '96x64',
                        '--frames', '13', '--threads', '1', '--temporal-smoothing', '0', '0.5',
                        '--temporal-smoothing-stride', '0', '2', '--out', str(out)]) == 0
    report = json.loads(out.read_text())
    assert len(report['models']) == 2 and report['ratio_second_to_first'] > 0
    assert [m['model'].endswith(f'temporal smoothing {w}, stride {s})')
            for m, (w, s) in zip(report['models'], (('0.0', 0), ('0.5', 2)))] == [True, True]
    assert all(m['median_ms']['process'] > 0 and 'network' in m['median_ms']
               for m in report['models'])
    assert 'second / first' in capsys.readouterr().out
    with pytest.raises(SystemExit, match='not found'):
        module.main([str(tmp_path / 'missing.safetensors'), str(tiny_model_file)])


def _summary(miou, tc, per_class):
    return {'miou': miou, 'tc': tc, 'per_class_iou': per_class}


def test_motion_gain_bar_from_two_summaries():
    """benchmarks/motion_gain.py: gains are fused minus each reference, in points; the bar."""
    module = _load_benchmark('motion_gain')
    names = [f'c{i}' for i in range(17)] + ['person', 'absent']
    fused_pc = {n: 0.5 for n in names[:17]} | {'person': 0.41, 'absent': None}
    fused = {'heads': {'fused': _summary(0.60, 0.80, fused_pc),
                       'image': _summary(0.57, 0.785, fused_pc),
                       'flow': _summary(0.30, 0.50, fused_pc)}}
    image_only = {'heads': {'fused': _summary(0.574, 0.789, fused_pc)}}
    rows = module.split_rows(fused, image_only)
    assert rows['gains']['image head'] == {'miou': 3.0, 'tc': 1.5}
    assert rows['gains']['image-only'] == {'miou': 2.6, 'tc': 1.1}
    assert rows['checks']['classes_present'] == 18 and rows['checks']['met']
    image_only['heads']['fused']['tc'] = 0.7905  # fused TC only +0.95 over it
    assert not module.split_rows(fused, image_only)['checks']['met']
    fused['heads']['fused']['per_class_iou'] = fused_pc | {'c3': 0.0}
    assert module.split_rows(fused, {'heads': {'fused': _summary(0.5, 0.7, fused_pc)}}
                             )['checks']['zero_classes'] == ['c3']


def test_motion_gain_runs_the_evaluation(tmp_path, tiny_model_file, capsys):
    """benchmarks/motion_gain.py end to end: both models through flow2seg-evaluate on a split."""
    from flow2seg_ros.classes import ClassSet
    from flow2seg_ros.data.synth import generate
    from flow2seg_ros.weights import random_model, save_model
    from conftest import TINY_CLASSES

    module = _load_benchmark('motion_gain')
    generate(tmp_path / 'data', sequences=1, frames=3, size=(128, 64), seed=5, split='val',
             progress=False)
    model, card = random_model('lite', classes=ClassSet.from_dict(TINY_CLASSES),
                               input_size=(32, 64), seed=1, use_flow=False,
                               widths=[8, 8, 16, 16], ppm_channels=8)
    image_only = tmp_path / 'image_only.safetensors'
    save_model(model, image_only, card)
    out = tmp_path / 'report'
    assert module.main(['--data', str(tmp_path / 'data'), '--splits', 'val',
                        '--fused', str(tiny_model_file), '--image-only', str(image_only),
                        '--out', str(out)]) == 0
    report = json.loads((out / 'motion_gain.json').read_text())
    fused = json.loads((out / 'val' / 'fused' / 'metrics.json').read_text())['heads']
    val = report['splits']['val']
    assert val['figures']['fused']['miou'] == round(100 * fused['fused']['miou'], 2)
    assert val['gains']['image head']['miou'] == round(
        val['figures']['fused']['miou'] - val['figures']['image head']['miou'], 2)
    assert (out / 'motion_gain.png').stat().st_size > 0
    assert 'bar met' in capsys.readouterr().out
    with pytest.raises(SystemExit, match='not found'):
        module.main(['--data', str(tmp_path / 'data'), '--fused', str(tmp_path / 'missing'),
                     '--image-only', str(image_only)])


def test_flow_use_tells_a_model_that_ignores_its_flow_from_one_that_uses_it(tmp_path):
    """benchmarks/flow_use.py: a fresh fusion (last layer at zero) gives the image head's labels
    whatever the flow; a fusion with weights gives other labels with zero and with real flow."""
    import torch
    from flow2seg_ros.classes import ClassSet
    from flow2seg_ros.data.synth import generate
    from flow2seg_ros.weights import random_model, save_model
    from conftest import TINY_CLASSES

    module = _load_benchmark('flow_use')
    data = tmp_path / 'data'
    generate(data, sequences=1, frames=3, size=(128, 64), seed=5, split='val', progress=False)
    model, card = random_model('lite', classes=ClassSet.from_dict(TINY_CLASSES),
                               input_size=(32, 64), seed=1, widths=[8, 8, 16, 16],
                               flow_widths=[4, 4, 8, 8], ppm_channels=8, fusion_channels=8)
    ignores = tmp_path / 'ignores.safetensors'
    torch.nn.init.zeros_(model.fusion.out.weight)
    torch.nn.init.zeros_(model.fusion.out.bias)
    save_model(model, ignores, card)
    result = module.flow_use(str(data), 'val', str(ignores), progress=False)
    figures = result['figures']
    assert result['counts'] == {'frames': 2, 'exact': 2, 'moving': 2,
                                'moving_pixels': result['counts']['moving_pixels'],
                                'pixels': 2 * 64 * 128}
    assert set(figures) == {'estimated', 'zero', 'exact', 'image head'}
    assert figures['estimated'] == figures['zero'] == figures['exact'] == figures['image head']
    right = result['moving_labelled_right']
    assert right['reference'] == 'image head'
    if result['counts']['moving_pixels']:
        assert right['miou'] >= figures['image head']['miou']

    torch.manual_seed(2)
    torch.nn.init.normal_(model.fusion.out.weight, std=2.0)
    uses = tmp_path / 'uses.safetensors'
    save_model(model, uses, card)
    out = tmp_path / 'report'
    assert module.main(['--data', str(data), '--split', 'val', '--fused', str(uses),
                        '--image-only', str(ignores), '--out', str(out), '--no-progress']) == 0
    report = json.loads((out / 'flow_use.json').read_text())
    assert report['moving_labelled_right']['reference'] == 'image-only'
    # the image-only reference (here the zero-fusion model: its image path is the same)
    assert report['figures']['image-only'] == figures['image head']
    rows = report['figures']
    assert rows['zero'] != rows['estimated'] or rows['zero'] != rows['exact']
