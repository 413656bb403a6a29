"""ONNX export and the ONNX Runtime backend against PyTorch; the flow overlap; upsampled labels."""
import json

from conftest import make_tiny_model
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flow2seg_ros.backends import cached_onnx, OnnxModelError, OrtRunner, resolve_backend
from flow2seg_ros.bench import scene_frames
from flow2seg_ros.cpu_path import CpuPath, upsampled_labels
from flow2seg_ros.export import export_onnx, main as export_main, onnx_card_path, OnnxGraph
from flow2seg_ros.models import HEADS
from flow2seg_ros.pipeline import FramePipeline, PipelineConfig
from flow2seg_ros.weights import load_model, save_model


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp('onnx_cache')


@pytest.fixture(autouse=True)
def own_cache(cache, monkeypatch):
    monkeypatch.setenv('FLOW2SEG_CACHE', str(cache))


def run_stream(pipe, frames):
    return [pipe.process(f, i / 30.0, outputs=(), heads=HEADS) for i, f in enumerate(frames)]


def assert_same_labels(a, b, min_equal):
    for ra, rb in zip(a, b):
        assert ra.reset_reason == rb.reset_reason
        for h in HEADS:
            la, lb = ra.head_labels[h], rb.head_labels[h]
            assert (la is None) == (lb is None)
            if la is not None:
                assert (la == lb).mean() >= min_equal, h


@pytest.mark.parametrize('overlap', [True, False])
def test_onnxruntime_labels_equal_torch_on_the_bundled_model(overlap):
    frames = scene_frames(4, (640, 480))
    model, card = load_model(None)
    runs = {}
    for backend in ('torch', 'onnxruntime'):
        pipe = FramePipeline(PipelineConfig(device='cpu', backend=backend, overlap_flow=overlap),
                             model=model, card=card)
        assert pipe.cpu_path.runner.name == backend
        runs[backend] = run_stream(pipe, frames)
    # outputs agree to ~5e-6: only an exact tie could split them
    assert_same_labels(runs['torch'], runs['onnxruntime'], 0.9999)
    assert runs['onnxruntime'][-1].flow is not None


@pytest.mark.parametrize('flow_path', [{}, {'flow_input_stride': 2, 'flow_output_stride': 8}],
                         ids=['flow-full', 'flow-pooled'])
def test_onnxruntime_labels_equal_torch_on_a_tiny_random_model(flow_path):
    frames = scene_frames(4, (96, 72), seed=3)
    model, card = make_tiny_model(seed=5, **flow_path)
    torch_pipe = FramePipeline(PipelineConfig(device='cpu', backend='torch'), model=model,
                               card=card)
    ort_pipe = FramePipeline(PipelineConfig(device='cpu', backend='onnxruntime'), model=model,
                             card=card)
    assert_same_labels(run_stream(torch_pipe, frames), run_stream(ort_pipe, frames), 0.999)


def test_overlapped_flow_gives_the_same_results_and_times_the_flow_thread():
    frames = scene_frames(3, (160, 120), seed=1)
    model, card = make_tiny_model(seed=2)
    cfg = dict(device='cpu', backend='torch', threads=2)
    seq = run_stream(FramePipeline(PipelineConfig(overlap_flow=False, **cfg), model=model,
                                   card=card), frames)
    pipe = FramePipeline(PipelineConfig(overlap_flow=True, **cfg), model=model, card=card)
    ovl = run_stream(pipe, frames)
    for a, b in zip(seq, ovl):
        # one thread against two may round convolutions differently: a tie could flip
        assert (a.labels == b.labels).mean() > 0.999
        assert (a.flow is None) == (b.flow is None)
        if a.flow is not None:
            np.testing.assert_array_equal(a.flow, b.flow)
    assert 'flow_thread' in ovl[-1].timings and 'flow_thread' not in seq[-1].timings
    # the flow thread runs torch single-threaded; the calling thread keeps its threads
    assert pipe.cpu_path._flow_pool().submit(torch.get_num_threads).result() == 1
    assert torch.get_num_threads() == 2
    t = ovl[-1].timings
    stages = ('resize', 'flow', 'network', 'argmax', 'resize_back', 'colour')
    assert t['total'] == pytest.approx(sum(t[k] for k in stages))


def test_export_writes_onnx_and_card_that_load_and_match(tmp_path):
    model, card = make_tiny_model(seed=1)
    out = tmp_path / 'tiny.onnx'
    written = export_onnx(model, card, out, batch=2)
    assert out.is_file() and onnx_card_path(out).is_file()
    on_disk = json.loads(onnx_card_path(out).read_text())
    assert on_disk == written and on_disk['classes'] == card['classes']
    info = on_disk['onnx']
    assert info['inputs'] == {'image': [2, 3, 32, 64], 'flow': [2, 2, 32, 64]}
    assert info['outputs']['fused_logits'] == [2, 4, 4, 8]
    import onnx

    assert info['opset'] == 18 and onnx.load(str(out)).opset_import[0].version == 18

    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=['CPUExecutionProvider'])
    torch.manual_seed(0)
    x, f = torch.randn(2, 3, 32, 64), 0.1 * torch.randn(2, 2, 32, 64)
    got = sess.run(None, {'image': x.numpy(), 'flow': f.numpy()})
    with torch.no_grad():
        want = OnnxGraph(model.eval())(x, f)
    assert [o.name for o in sess.get_outputs()] == ['fused_logits', 'image_logits',
                                                    'flow_logits']
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-4)
    # a fixed batch-2 graph takes any number of frames through the runner (padded chunks)
    runner = OrtRunner(out, input_size=(32, 64), num_classes=4, has_flow=True)
    assert runner.batch == 2
    np.testing.assert_allclose(runner.image_logits(x).numpy(), want[1].numpy(), atol=1e-4)
    np.testing.assert_allclose(runner.image_logits(x[:1]).numpy(), want[1][:1].numpy(),
                               atol=1e-4)
    three = torch.cat([x, x[:1]])
    np.testing.assert_allclose(runner.image_logits(three).numpy(),
                               torch.cat([want[1], want[1][:1]]).numpy(), atol=1e-4)


def test_export_command_writes_the_file_and_an_image_only_model_exports(tmp_path, capsys):
    model, card = make_tiny_model(seed=1)
    weights = tmp_path / 'm.safetensors'
    save_model(model, weights, card)
    out = tmp_path / 'm_64x32.onnx'
    assert export_main(['--weights', str(weights), '--dynamic-batch', '--out', str(out)]) == 0
    assert 'wrote' in capsys.readouterr().out
    assert json.loads(onnx_card_path(out).read_text())['onnx']['batch'] == 'dynamic'
    runner = OrtRunner(out, input_size=(32, 64), num_classes=4, has_flow=True)
    assert runner.batch is None
    assert export_main(['--weights', str(weights), '--size', '60x32', '--out',
                        str(tmp_path / 'x.onnx')]) == 2
    assert 'multiples of 8' in capsys.readouterr().err
    assert export_main(['--weights', str(weights), '--opset', '17', '--out',
                        str(tmp_path / 'x.onnx')]) == 2
    assert 'opset must be >= 18' in capsys.readouterr().err

    from flow2seg_ros.models import build_model

    image_only = build_model('lite', num_classes=4, **dict(card['model_kwargs'],
                                                           use_flow=False)).eval()
    path = export_onnx(image_only, card, tmp_path / 'io.onnx')['onnx']
    assert list(path['inputs']) == ['image'] and 'flow_logits' not in path['outputs']
    pipe = FramePipeline(PipelineConfig(device='cpu', backend='onnxruntime',
                                        onnx=str(tmp_path / 'io.onnx')),
                         model=image_only, card=card)
    r = run_stream(pipe, scene_frames(2, (64, 32)))
    assert r[1].flow is None and r[1].labels.shape == (32, 64)


def test_a_missing_corrupt_wrong_size_or_foreign_onnx_is_refused_naming_the_file(tmp_path):
    model, card = make_tiny_model(seed=1)
    good = tmp_path / 'good.onnx'
    export_onnx(model, card, good)

    def build(path, **kw):
        return FramePipeline(PipelineConfig(device='cpu', backend='onnxruntime',
                                            onnx=str(path), **kw), model=model, card=card)

    build(good)  # fits
    missing = tmp_path / 'missing.onnx'
    with pytest.raises(OnnxModelError, match=f'{missing}.*does not exist'):
        build(missing)
    corrupt = tmp_path / 'corrupt.onnx'
    corrupt.write_bytes(good.read_bytes()[:500])
    with pytest.raises(OnnxModelError, match=f'{corrupt}.*cannot be read'):
        build(corrupt)
    with pytest.raises(OnnxModelError, match=f'{good}.*takes 64x32 .*feeds 96x64'):
        build(good, input_size=(64, 96))
    other, _ = make_tiny_model(seed=9)
    with pytest.raises(OnnxModelError, match=f'{good}.*other weights'):
        FramePipeline(PipelineConfig(device='cpu', backend='onnxruntime', onnx=str(good)),
                      model=other, card=card)
    assert issubclass(OnnxModelError, ValueError)


def test_the_cache_is_built_once_and_rebuilt_when_damaged(cache):
    model, card = make_tiny_model(seed=7)
    path = cached_onnx(model, card, (32, 64))
    assert path.parent == cache and path.is_file()
    stamp = path.stat().st_mtime_ns
    assert cached_onnx(model, card, (32, 64)) == path and path.stat().st_mtime_ns == stamp
    path.write_bytes(b'not onnx')
    pipe = FramePipeline(PipelineConfig(device='cpu', backend='onnxruntime'), model=model,
                         card=card)
    assert pipe.cpu_path.runner.path == path and path.stat().st_size > 1000


def test_backend_names_are_checked():
    assert resolve_backend('auto', torch.device('cpu')) == 'onnxruntime'
    with pytest.raises(ValueError, match='backend must be one of'):
        PipelineConfig(backend='tensorflow').validate()


@pytest.mark.parametrize('size', [(256, 512), (480, 640), (37, 51)])
def test_upsampled_labels_equal_the_argmax_of_upsampled_logits(size):
    torch.manual_seed(0)
    # smooth logits: large agreeing regions and boundaries, like a real output
    logits = F.interpolate(torch.randn(1, 19, 8, 16), size=(32, 64), mode='bilinear',
                           align_corners=False)
    want = F.interpolate(logits, size=size, mode='bilinear', align_corners=False).argmax(1)[0]
    got = upsampled_labels(logits[0].numpy(), size)
    assert got.shape == size and got.dtype == np.uint8
    assert (got == want.numpy()).mean() > 0.9999


@pytest.mark.parametrize('grid', [(128, 256), (200, 300)])
def test_upsampled_labels_from_a_fine_grid_equal_the_argmax_of_upsampled_logits(grid):
    """From the temporal smoothing's fine grid (at most 2x coarser than the output), only the
    pixels between disagreeing cells are interpolated, over every class."""
    torch.manual_seed(0)
    logits = F.interpolate(torch.randn(1, 19, 8, 16), size=grid, mode='bilinear',
                           align_corners=False)
    want = F.interpolate(logits, size=(256, 512), mode='bilinear', align_corners=False).argmax(1)
    got = upsampled_labels(logits[0].numpy(), (256, 512))
    assert got.shape == (256, 512) and got.dtype == np.uint8
    assert (got == want[0].numpy()).mean() > 0.9999


def test_upsampled_labels_keep_a_class_that_wins_only_between_cells():
    # left cells say A, right cells B; K is second everywhere but wins halfway between them,
    # where A and B are both at 2: the classes upsampled must include it, the others need not
    logits = np.full((19, 4, 6), -10.0, np.float32)
    A, B, K = 3, 7, 12
    logits[A, :, :3], logits[B, :, 3:] = 4.0, 4.0
    logits[A, :, 3:], logits[B, :, :3] = 0.0, 0.0
    logits[K] = 2.5
    size = (32, 48)
    want = F.interpolate(torch.from_numpy(logits)[None], size=size, mode='bilinear',
                         align_corners=False).argmax(1)[0].numpy()
    got = upsampled_labels(logits, size)
    assert set(np.unique(want)) == {A, B, K}
    np.testing.assert_array_equal(got, want)


def test_upsampled_labels_of_more_classes_than_opencv_takes_at_once():
    torch.manual_seed(0)
    logits = F.interpolate(torch.randn(1, 150, 8, 16), size=(32, 64), mode='bilinear',
                           align_corners=False)  # 150 classes (ADE20K's count)
    want = F.interpolate(logits, size=(48, 80), mode='bilinear', align_corners=False).argmax(1)[0]
    got = upsampled_labels(logits[0].numpy(), (48, 80))
    assert (got == want.numpy()).mean() > 0.9999


def test_upsampled_labels_survive_nan_logits():
    logits = np.zeros((3, 4, 6), np.float32)
    logits[1, :, 3:] = 1.0
    logits[:, :, 2:4] = np.nan  # a broken model's output between the two regions
    got = upsampled_labels(logits, (32, 48))
    assert got.shape == (32, 48) and got.dtype == np.uint8 and got.max() < 3


def test_evaluate_gives_the_same_miou_with_each_backend(tmp_path):
    from flow2seg_ros import evaluate
    from flow2seg_ros.data.synth import generate

    root = tmp_path / 'data'
    generate(root, sequences=2, frames=3, size=(512, 256), seed=21, split='val', progress=False)
    heads = {}
    for backend in ('torch', 'onnxruntime'):
        out = tmp_path / backend
        assert evaluate.main(['--data', str(root), '--split', 'val', '--out', str(out),
                              '--device', 'cpu', '--backend', backend, '--no-progress']) == 0
        summary = json.loads((out / 'metrics.json').read_text())
        assert summary['setup']['backend'] == backend and summary['labelled_frames'] == 6
        heads[backend] = summary['heads']
    for h in HEADS:
        assert heads['torch'][h]['miou'] > 0.1
        assert abs(heads['torch'][h]['miou'] - heads['onnxruntime'][h]['miou']) <= 0.0005, h


def test_auto_overlap_times_both_ways_and_keeps_using_the_faster():
    frames = scene_frames(CpuPath.FIRST + 3, (160, 120), seed=4)
    model, card = make_tiny_model(seed=2)
    pipe = FramePipeline(PipelineConfig(device='cpu', backend='onnxruntime', threads=2),
                         model=model, card=card)
    assert pipe.config.overlap_flow is None
    runs = run_stream(pipe, frames)
    overlapped = ['flow_thread' in r.timings for r in runs[1:]]
    # the first of each way is a warm-up, then FIRST timings of each
    assert overlapped == [True] * (CpuPath.FIRST + 1) + [False]
    assert all(r.flow is not None for r in runs[1:])
    # the choice itself: the faster median, and the slower again every RETRY frames
    path = CpuPath(pipe.cpu_path.runner, flow_scale=1.0, overlap=None, threads=2)
    choices = []
    for k in range(2 * CpuPath.RETRY):
        way = path._choose_overlap()
        choices.append(way)
        path._measured(way, 10.0 if way else 20.0)
    n = CpuPath.FIRST + 1
    assert choices[:2 * n] == [True] * n + [False] * n
    assert [k + 1 for k, way in enumerate(choices) if not way] == \
        list(range(n + 1, 2 * n + 1)) + [CpuPath.RETRY, 2 * CpuPath.RETRY]
    assert CpuPath(pipe.cpu_path.runner, flow_scale=1.0, overlap=None, threads=1).overlap is False


def test_auto_falls_back_to_torch_without_the_onnx_packages(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *a: None if name == 'onnxruntime' else real(name, *a))
    assert resolve_backend('auto', torch.device('cpu')) == 'torch'


def test_an_unwritable_cache_is_named(tmp_path, monkeypatch):
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    monkeypatch.setenv('FLOW2SEG_CACHE', str(blocker / 'cache'))
    model, card = make_tiny_model(seed=11)
    with pytest.raises(OnnxModelError, match='cannot write the ONNX model cache.*FLOW2SEG_CACHE'):
        FramePipeline(PipelineConfig(device='cpu', backend='onnxruntime'), model=model, card=card)
