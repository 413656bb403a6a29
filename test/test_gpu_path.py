"""The device path (CUDA): its torch pieces against the OpenCV/numpy path on the CPU, and, marked
``cuda``, the whole path on a GPU (agreement with the CPU, graphs, recapture, buffer reuse)."""
import ast
import dataclasses
from pathlib import Path
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from flow2seg_ros import gpu_ops
from flow2seg_ros.classes import ClassSet
from flow2seg_ros.device_path import (_Captured, autocast_dtype, DevicePath, GraphRunner,
                                      PinnedDownload, PinnedUpload)
from flow2seg_ros.models import build_model
from flow2seg_ros.pipeline import FramePipeline, PipelineConfig
from flow2seg_ros.visualize import colorize, flow_to_rgb, overlay

CLASSES = ClassSet(('ground', 'thing', 'sky', 'car'),
                   ((10, 10, 10), (200, 0, 0), (0, 0, 255), (0, 200, 90)))
REPO = Path(__file__).resolve().parents[1]
NET = (64, 128)  # network input (H, W)
# (camera W, H), (network h, w): fractional factor, integer factor 2 and 4 exactly, below 2, same
SIZES = [((1280, 720), (256, 512)), ((2048, 1024), (256, 512)), ((1024, 512), (256, 512)),
         ((640, 480), (256, 512)), ((512, 256), (256, 512)), ((300, 200), (64, 128))]


def tiny_pipeline(device='cpu', **config) -> FramePipeline:
    torch.manual_seed(0)
    model = build_model('lite', num_classes=4, widths=(8, 8, 16, 16), ppm_channels=8,
                        flow_widths=(8, 8, 8, 8), fusion_channels=8)
    card = {'classes': CLASSES.to_dict(), 'input_size': list(NET),
            'flow': {'method': 'dis', 'preset': 'ultrafast', 'scale': 20.0}}
    return FramePipeline(PipelineConfig(device=device, **config), model=model, card=card)


def with_device_path(pipe: FramePipeline, device: str = 'cpu', graphs: bool = False
                     ) -> FramePipeline:
    """The pipeline as it runs on CUDA: the device path on (on the CPU: its code, eagerly)."""
    pipe.cpu_path = None
    pipe.device_path = DevicePath.for_pipeline(pipe, device=torch.device(device), graphs=graphs)
    return pipe


def scene(n, h, w, seed=0, step=2):
    """A smooth textured scene panning ``step`` pixels a frame (what cameras see, not noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (h // 8 + 2, (w + step * n) // 8 + 2, 3), np.uint8)
    big = cv2.resize(small, (small.shape[1] * 8, small.shape[0] * 8),
                     interpolation=cv2.INTER_CUBIC)[:h, :w + step * n]
    noise = rng.integers(0, 40, big.shape, np.uint8)
    big = cv2.add(big, noise)
    return [np.ascontiguousarray(big[:, step * i:step * i + w]) for i in range(n)]


def cpu_small(rgb, size):
    """The CPU path's resize, taken from FramePipeline itself."""
    pipe = tiny_pipeline()
    pipe.input_size = tuple(size)
    return pipe._small(rgb)


def max_diff(a, b):
    return int(np.abs(a.astype(np.int32) - np.asarray(b).astype(np.int32)).max())


# ---- the torch pieces against OpenCV (CPU) ------------------------------------------------


@pytest.mark.parametrize('camera,net', SIZES)
def test_resize_to_network_is_within_one_level_of_the_cpu_path(camera, net):
    rgb = scene(1, camera[1], camera[0])[0]
    x = gpu_ops.frame_to_nchw(torch.from_numpy(rgb))
    got = gpu_ops.resize_to_network(x, net)[0].permute(1, 2, 0).to(torch.uint8).numpy()
    want = cpu_small(rgb, net)
    assert got.shape == want.shape
    assert max_diff(got, want) <= 1
    assert (got == want).mean() > 0.8  # mostly the same level, not merely close


def test_bgr_frames_are_swapped_on_the_device():
    rgb = scene(1, 90, 160)[0]
    a = gpu_ops.frame_to_nchw(torch.from_numpy(rgb))
    b = gpu_ops.frame_to_nchw(torch.from_numpy(np.ascontiguousarray(rgb[..., ::-1])), bgr=True)
    assert torch.equal(a, b)
    assert torch.equal(a[0, 0], torch.from_numpy(rgb[..., 0]).float())


def test_bgr_frames_give_the_rgb_results_on_both_paths():
    frames = scene(3, 150, 260)
    outputs = ('color_mask', 'overlay', 'flow_rgb')
    for make in (tiny_pipeline, lambda: with_device_path(tiny_pipeline())):
        rgb_pipe, bgr_pipe = make(), make()
        for i, f in enumerate(frames):
            a = rgb_pipe.process(f, 0.05 * i, outputs=outputs)
            b = bgr_pipe.process(np.ascontiguousarray(f[..., ::-1]), 0.05 * i,
                                 outputs=outputs, bgr=True)
            for name in ('labels', 'color_mask', 'overlay', 'flow_rgb'):
                np.testing.assert_array_equal(getattr(b, name), getattr(a, name), name)


def test_normalise_matches_the_pipeline_input():
    pipe = tiny_pipeline()
    small = scene(1, *NET)[0]
    want = pipe._network_input([small])
    x = gpu_ops.frame_to_nchw(torch.from_numpy(small))
    got = gpu_ops.normalise(x, pipe._scale, pipe._shift)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('src,dst', [(256, 720), (512, 1280), (256, 1024), (512, 2048),
                                     (64, 200), (128, 300), (100, 37), (256, 256), (7, 1000)])
def test_nearest_indices_give_opencv_nearest_exactly(src, dst):
    rng = np.random.default_rng(src + dst)
    labels = rng.integers(0, 19, (src, src + 3), np.uint8)
    want = cv2.resize(labels, (dst + 5, dst), interpolation=cv2.INTER_NEAREST)
    rows = torch.from_numpy(gpu_ops.nearest_indices(src, dst))
    cols = torch.from_numpy(gpu_ops.nearest_indices(src + 3, dst + 5))
    got = gpu_ops.resize_nearest(torch.from_numpy(labels), rows, cols).numpy()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('channels', [1, 3])
@pytest.mark.parametrize('size', [(720, 1280), (1024, 2048), (64, 128), (200, 300)])
def test_linear_resize_is_within_one_level_of_opencv(channels, size):
    rng = np.random.default_rng(channels)
    shape = (64, 128) if channels == 1 else (64, 128, 3)
    img = rng.integers(0, 256, shape, np.uint8)
    want = cv2.resize(img, size[::-1], interpolation=cv2.INTER_LINEAR)
    got = gpu_ops.resize_linear_u8(torch.from_numpy(img), size).numpy()
    assert got.shape == want.shape and got.dtype == np.uint8
    assert max_diff(got, want) <= 1


def test_colour_and_overlay_match_visualize():
    rng = np.random.default_rng(3)
    palette = CLASSES.palette()
    labels = rng.integers(0, 4, (90, 160), np.uint8)
    labels[0, :5] = 255  # ignore stays black
    color = gpu_ops.colorize(torch.from_numpy(labels), torch.from_numpy(palette)).numpy()
    np.testing.assert_array_equal(color, colorize(labels, palette))
    rgb = rng.integers(0, 256, (90, 160, 3), np.uint8)
    for alpha in (0.0, 0.25, 0.5, 0.8, 1.0):
        got = gpu_ops.blend(torch.from_numpy(rgb), torch.from_numpy(color), alpha).numpy()
        assert max_diff(got, overlay(rgb, color, alpha)) <= 1


def test_flow_picture_is_within_one_level_of_flow_to_rgb():
    rng = np.random.default_rng(4)
    flow = (rng.standard_normal((2, 64, 128)) * 8).astype(np.float32)
    flow[:, :4, :4] = 0.0  # no motion: black
    flow[0, 4:8, :] = 100.0  # beyond the scale: clipped
    flow[1, 8, :] = -3.0  # straight up
    flow[0, 8, :] = 0.0
    want = flow_to_rgb(flow, max_magnitude=6.4)
    got = gpu_ops.flow_picture(torch.from_numpy(flow), 6.4).numpy()
    assert max_diff(got, want) <= 1


def test_angles_match_opencv_cart_to_polar():
    rng = np.random.default_rng(5)
    x, y = (rng.standard_normal((2, 1000)) * 5).astype(np.float32)
    _, ang = cv2.cartToPolar(x, y, angleInDegrees=True)
    got = gpu_ops.fast_atan2_deg(torch.from_numpy(y), torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ang.ravel(), atol=1e-3)


def test_device_finish_equals_cpu_finish_on_the_same_logits():
    # the same logits into both: no temporal smoothing before the CPU path's finish
    cpu = tiny_pipeline(overlay_alpha=0.3, temporal_smoothing=0.0)
    dev = with_device_path(tiny_pipeline(overlay_alpha=0.3, temporal_smoothing=0.0))
    frames = scene(2, 150, 260)
    outputs = ('color_mask', 'overlay', 'confidence', 'flow_rgb')
    heads = ('fused', 'image', 'flow')
    for pipe in (cpu, dev):
        pipe.process(frames[0], 0.0)
    prepared = cpu.prepare(frames[1], 0.05)
    out = cpu.infer([prepared], heads=heads)[0]
    want = cpu.finish(prepared, out, outputs=outputs, heads=heads)
    dframe = dev.device_path.prepare(frames[1])
    got = dev.device_path.finish(dframe, out, prepared.flow, outputs=outputs, heads=heads)
    np.testing.assert_array_equal(got['labels'], want.labels)
    for h in heads:
        np.testing.assert_array_equal(got['head_labels'][h], want.head_labels[h])
    np.testing.assert_array_equal(got['color_mask'], want.color_mask)
    for name in ('overlay', 'confidence', 'flow_rgb'):
        assert got[name].shape == getattr(want, name).shape
        assert max_diff(got[name], getattr(want, name)) <= 1, name
    np.testing.assert_array_equal(got['flow'], want.flow)


def test_pipeline_with_the_device_path_agrees_with_the_cpu_path():
    cpu = tiny_pipeline()
    dev = with_device_path(tiny_pipeline())
    equal = total = 0
    for i, rgb in enumerate(scene(5, 180, 320)):
        a = cpu.process(rgb, 0.05 * i, outputs=('color_mask', 'overlay'))
        b = dev.process(rgb, 0.05 * i, outputs=('color_mask', 'overlay'))
        assert b.reset_reason == a.reset_reason and b.used_flow == a.used_flow
        assert b.labels.shape == a.labels.shape and b.overlay.shape == a.overlay.shape
        np.testing.assert_array_equal(b.color_mask, CLASSES.palette()[b.labels])
        equal += int((a.labels == b.labels).sum())
        total += a.labels.size
    # inputs differ by at most one level after the resize, so a few boundary pixels may flip
    assert equal / total >= 0.99


def test_learned_flow_runs_on_the_device_frames():
    from flow2seg_ros.flow.learned import FlowLiteNet, LearnedFlow
    torch.manual_seed(1)
    estimator = LearnedFlow(model=FlowLiteNet())
    pipe = tiny_pipeline()
    pipe.flow_estimator = estimator
    pipe = with_device_path(pipe)
    frames = scene(3, 150, 260)
    pipe.process(frames[0], 0.0)
    pipe.process(frames[1], 0.05)
    prepared = pipe.prepare(frames[2], 0.1)
    assert prepared.device.prev_small is not None
    out = pipe.infer([prepared])[0]
    want = estimator(prepared.prev_small, prepared.small)
    torch.testing.assert_close(prepared.flow, want)
    result = pipe.finish(prepared, out)
    np.testing.assert_array_equal(result.flow, want.numpy())


def test_cameras_batched_on_the_device_path_equal_one_by_one():
    from flow2seg_ros.pipeline import infer_batch
    base = tiny_pipeline()

    def camera():
        pipe = FramePipeline(PipelineConfig(device='cpu'), model=base.model, card=base.card)
        return with_device_path(pipe)

    batched, single = [camera(), camera()], [camera(), camera()]
    a, b = scene(3, 150, 260, seed=1), scene(3, 100, 180, seed=2)
    for i in range(2):
        for pipe, f in zip(batched + single, [a[i], b[i]] * 2):
            pipe.process(f, 0.05 * i)
    # camera 0 goes on with flow, camera 1 restarts (a first frame): a mixed batch
    batched[1].reset()
    single[1].reset()
    frames = [batched[0].prepare(a[2], 0.1), batched[1].prepare(b[2], 0.1)]
    outs = infer_batch(frames, heads=('fused', 'image', 'flow'))
    got = [p.finish(f, o, heads=('fused', 'image', 'flow'))
           for p, f, o in zip(batched, frames, outs)]
    want = [p.process(f, 0.1, heads=('fused', 'image', 'flow'))
            for p, f in zip(single, (a[2], b[2]))]
    assert got[0].used_flow and not got[1].used_flow
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.labels, w.labels)
        np.testing.assert_array_equal(g.overlay, w.overlay)
        for h in ('image', 'flow'):
            assert (g.head_labels[h] is None) == (w.head_labels[h] is None)
            if g.head_labels[h] is not None:
                np.testing.assert_array_equal(g.head_labels[h], w.head_labels[h])


def test_pinned_upload_reuses_its_buffer_and_never_changes_an_earlier_frame():
    up = PinnedUpload(torch.device('cpu'))
    a, b = scene(2, 48, 64)
    ta = up(a)
    tb = up(b)
    assert up.allocations == 1
    np.testing.assert_array_equal(ta.numpy(), a)
    np.testing.assert_array_equal(tb.numpy(), b)
    up(np.zeros((20, 30, 3), np.uint8))
    assert up.allocations == 2


def test_downloads_are_not_overwritten_by_later_frames():
    down = PinnedDownload(torch.device('cpu'))
    first = down(torch.full((10,), 7, dtype=torch.uint8))
    down(torch.full((10,), 9, dtype=torch.uint8))
    assert (first == 7).all()


def test_graph_runner_runs_eagerly_off_cuda():
    runner = GraphRunner(enabled=True)
    x = torch.arange(6.0)
    (y,) = runner('double', lambda t: (2 * t,), (x,))
    assert torch.equal(y, 2 * x) and runner.captures == 0 and runner.graphs() == 0


class ReplayOnCpu(GraphRunner):
    """The graph runner's bookkeeping on the CPU: "capture" keeps the function and its static
    inputs and outputs, "replay" reruns the captured function on the static inputs and writes
    into the captured outputs, which is what a CUDA graph does."""

    def _uses_graphs(self, name, inputs):
        return self.enabled and name not in self.failed and bool(inputs)

    def _capture(self, fn, inputs):
        static = [x.clone() for x in inputs]
        outputs = tuple(fn(*static))

        class Graph:
            def replay(self):
                for out, new in zip(outputs, fn(*static)):
                    out.copy_(new)

        return _Captured(Graph(), static, outputs)


def test_graph_replays_equal_eager_and_recapture_only_on_a_new_size():
    graphed = with_device_path(tiny_pipeline())
    graphed.device_path.runner = runner = ReplayOnCpu()
    eager = with_device_path(tiny_pipeline())
    outputs = ('color_mask', 'overlay', 'confidence', 'flow_rgb')
    heads = ('fused', 'image', 'flow')
    big, small = scene(8, 180, 320), scene(3, 120, 200, seed=2)
    for i, f in enumerate(big + small):
        a = graphed.process(f, 0.05 * i, outputs=outputs, heads=heads)
        b = eager.process(f, 0.05 * i, outputs=outputs, heads=heads)
        for x, y in zip(_outputs(a) + [a.flow], _outputs(b) + [b.flow]):
            if x is None:
                assert y is None
            else:
                np.testing.assert_array_equal(x, y)
        for h in heads:
            assert (a.head_labels[h] is None) == (b.head_labels[h] is None)
        if i == 2:
            captured = runner.captures
        if i == 7:
            assert runner.captures == captured  # one size: replays only
    assert runner.captures > captured  # the new size captured again
    # the old size's graphs went: those held are of the new size (with and without flow)
    assert runner.sizes('post') == {(120, 200)}
    assert runner.sizes('pre') == {(120, 200)} and runner.graphs('pre') == 1
    assert runner.replays > 0 and not runner.failed


def test_batch_sizes_of_one_network_size_keep_their_graphs():
    pipe = with_device_path(tiny_pipeline())
    path = pipe.device_path
    path.runner = runner = ReplayOnCpu()
    x1, x2 = torch.randn(1, 3, *NET), torch.randn(2, 3, *NET)
    for x in (x1, x2, x1, x2):  # cameras batched in turns: 1, 2, 1, 2 frames
        out = path.network(pipe.model, x, None, ('fused',))
        assert out['fused'].shape[0] == x.shape[0]
    assert runner.captures == 2 and runner.graphs('net') == 2
    path.network(pipe.model, torch.randn(1, 3, 32, 64), None, ('fused',))  # a new size
    assert runner.sizes('net') == {(32, 64)}


def test_a_failed_capture_runs_the_stage_eagerly(caplog):
    class Broken(ReplayOnCpu):
        def _capture(self, fn, inputs):
            raise RuntimeError('operation not permitted when stream is capturing')

    runner = Broken()
    with caplog.at_level('WARNING'):
        (y,) = runner('double', lambda t: (2 * t,), (torch.ones(3),))
    assert torch.equal(y, torch.full((3,), 2.0))
    assert 'double' in runner.failed and 'capture of stage' in caplog.text
    runner('double', lambda t: (2 * t,), (torch.ones(3),))
    assert runner.captures == 0


def test_cuda_tests_run_without_pytest_on_a_bare_gpu_machine():
    """gpu-check's stand-in for pytest collects every cuda test, parameters expanded."""
    code = ('import sys; sys.modules["pytest"] = None\n'
            'from pathlib import Path\n'
            'from flow2seg_ros import marked_tests as m\n'
            'm.install_stub()\n'
            'mod = m._load(Path("test/test_gpu_path.py"))\n'
            'print(sorted(i.split("::")[1] for i, _, _ in m.marked_cases(mod)))\n')
    done = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ids = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    marked = sorted(n for n, f in globals().items() if n.startswith('test_') and any(
        m.name == 'cuda' for m in getattr(f, 'pytestmark', [])))
    assert {i.split('[')[0] for i in ids} == set(marked)
    assert 'test_cuda_labels_agree_with_the_cpu[bf16-0.995-learned]' in ids
    assert len(ids) == len(marked) + 3  # four parameter sets in one of them


def test_the_stand_in_runs_marked_tests_and_fails_on_a_failure(tmp_path):
    (tmp_path / 'test_fake.py').write_text(
        'import pytest\n\n\n'
        '@pytest.mark.cuda\n@pytest.mark.parametrize("a,b", [(1, 1), (1, 2)])\n'
        'def test_equal(a, b):\n    assert a == b\n\n\n'
        'def test_unmarked():\n    raise AssertionError("not run")\n')
    code = ('import sys; sys.modules["pytest"] = None\n'
            'from flow2seg_ros import marked_tests as m\n'
            f'sys.exit(m.main([{str(tmp_path / "test_fake.py")!r}]))\n')
    done = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    assert 'PASSED test_fake::test_equal[1-1]' in done.stdout
    assert 'FAILED test_fake::test_equal[1-2]' in done.stdout
    assert '1 passed, 1 failed' in done.stdout and 'test_unmarked' not in done.stdout


def test_bf16_is_a_precision_and_falls_back_to_fp32_on_the_cpu(caplog):
    with caplog.at_level('WARNING'):
        pipe = tiny_pipeline(precision='bf16')
    assert pipe.amp_dtype is None and 'bf16 needs CUDA' in caplog.text
    assert autocast_dtype('bf16', torch.device('cuda')) == torch.bfloat16
    assert autocast_dtype('fp16', torch.device('cpu')) is None
    with pytest.raises(ValueError, match='precision'):
        PipelineConfig(device='cpu', precision='fp8').validate()


def test_inference_copy_holds_reduced_weights_and_fp32_norms():
    """fp16/bf16 on CUDA run a copy whose weights need no per-call casts; its outputs are
    those of the fp32 model within reduced-precision error, and the model itself is left as is
    (bf16 here: the CPU runs bf16 convolutions). Unfolded, its norms stay fp32."""
    model = tiny_pipeline().model.eval()
    cast = gpu_ops.inference_copy(model, torch.bfloat16, fold=False)
    norms = [m for m in cast.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    convs = [m for m in cast.modules() if isinstance(m, torch.nn.Conv2d)]
    assert norms and convs
    assert all(m.weight.dtype == torch.float32 and m.running_var.dtype == torch.float32
               for m in norms)
    assert all(m.weight.dtype == torch.bfloat16 for m in convs)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    torch.manual_seed(1)
    x, flow = torch.randn(1, 3, *NET), torch.randn(1, 2, *NET)
    with torch.no_grad():
        want = model(x, flow, heads=('fused',))['fused']
        with torch.autocast('cpu', dtype=torch.bfloat16):
            got = cast(x, flow, heads=('fused',))['fused'].float()
        folded = gpu_ops.inference_copy(model, torch.bfloat16)(x.bfloat16(), flow.bfloat16(),
                                                               heads=('fused',))['fused']
    for out in (got, folded.float()):
        assert (out.argmax(1) == want.argmax(1)).float().mean() > 0.9
        assert torch.allclose(out, want, atol=0.1 * float(want.abs().max()))
    # the device path runs that copy with no autocast, inputs cast (bf16 forced on the CPU)
    path = DevicePath(torch.device('cpu'), input_size=NET, mean=(0, 0, 0), std=(1, 1, 1),
                      palette=np.zeros((256, 3), np.uint8), graphs=False)
    path.amp_dtype = torch.bfloat16
    out = path.network(model, x, flow, ('fused', 'image'))
    assert out['fused'].dtype == torch.bfloat16 and set(out) == {'fused', 'image'}
    assert (out['fused'].float().argmax(1) == want.argmax(1)).float().mean() > 0.9
    assert path._model(model, x) is path._model(model, x) is not model  # one copy, reused
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in path._model(model, x).modules())


@pytest.mark.parametrize('which', ['lite', 'resnet18'])
def test_fold_batchnorm_keeps_outputs(which):
    """Every norm after a convolution (stems, residual blocks, downsamples, pyramid pooling,
    heads) is folded into it; the fp32 copy's outputs equal the model's to rounding."""
    if which == 'lite':
        model = tiny_pipeline().model.eval()
        torch.manual_seed(2)
        for m in model.modules():  # statistics away from the defaults, so folding matters
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
        args = (torch.randn(1, 3, *NET), torch.randn(1, 2, *NET))

        def run(net):
            return net(*args, heads=('fused', 'image', 'flow'))
    else:
        from flow2seg_ros.models import resnet_backbone
        model = resnet_backbone('resnet18').eval()
        args = (torch.randn(1, 3, 64, 96),)

        def run(net):
            return dict(net(*args))  # {stage: features}
    before = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    copy_ = gpu_ops.inference_copy(model)
    assert before > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in copy_.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == before
    with torch.no_grad():
        want, got = run(model), run(copy_)
    assert set(want) == set(got)
    for k, w in want.items():
        assert torch.allclose(got[k], w, rtol=1e-4, atol=1e-4 * float(w.abs().max())), k


class _FormatProbe(torch.nn.Module):
    """A network whose speed depends on its input's memory format (a sleep stands in)."""

    def __init__(self, slow_format):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)
        self.slow_format = slow_format

    def forward(self, x, flow, heads=('fused',)):
        import time
        if x.is_contiguous(memory_format=self.slow_format) and not x.is_contiguous():
            time.sleep(0.004)  # channels-last slow
        elif x.is_contiguous() and self.slow_format == torch.contiguous_format:
            time.sleep(0.004)  # NCHW slow
        assert flow is not None and flow.shape[1] == 2
        return {'fused': self.conv(x)}


@pytest.mark.parametrize('slow,expected', [(torch.channels_last, 'nchw'),
                                           (torch.contiguous_format, 'channels_last')])
def test_the_faster_memory_format_is_measured_and_kept(slow, expected):
    x = torch.randn(1, 3, 8, 16)
    choice = gpu_ops.faster_memory_format(_FormatProbe(slow), x, graphs=GraphRunner, replays=5)
    assert choice['format'] == expected, choice
    assert set(choice['ms']) == {'nchw', 'channels_last'}
    assert min(choice['ms'].values()) < 3.0 < max(choice['ms'].values())


def test_a_flow_method_other_than_the_cards_gets_its_own_default_preset():
    """The card's preset belongs to the card's method: asking the bundled model (DIS fast on
    the CPU) for the learned flow gives the bundled learned weights, not a preset 'fast'."""
    from flow2seg_ros.flow.learned import LearnedFlow
    pipe = FramePipeline(PipelineConfig(device='cpu', flow_method='learned'))
    assert isinstance(pipe.flow_estimator, LearnedFlow)
    assert FramePipeline(PipelineConfig(device='cpu')).flow_estimator.preset == 'fast'


def test_the_cpu_pipeline_keeps_its_opencv_path():
    assert tiny_pipeline().device_path is None


# ---- on a GPU (`make gpu-check`) ----------------------------------------------------------


# The CPU reference of the GPU tests runs the network in torch (a GPU machine need not have
# ONNX Runtime, and the same network code on both sides is the comparison that matters).
TORCH_ON_CPU = {'backend': 'torch'} if 'backend' in {
    f.name for f in dataclasses.fields(PipelineConfig)} else {}


def bundled_pair(precision='fp32', graphs=True, flow='learned', name=None):
    """A bundled model (default the default) on the CPU and on CUDA, both with one flow method.

    The bundled card names DIS fast on the CPU and the learned flow on CUDA; comparing the
    two paths means giving both the same flow (``learned``: the CUDA default, run by the same
    network on each side; ``dis``: the CPU default, run on the host on both sides)."""
    from flow2seg_ros.weights import load_model
    pinned = {'flow_method': flow, 'flow_preset': 'fast' if flow == 'dis' else ''}
    cpu = FramePipeline(PipelineConfig(device='cpu', weights=name, **pinned, **TORCH_ON_CPU))
    model, card = load_model(name, device='cuda')
    gpu = FramePipeline(PipelineConfig(device='cuda', precision=precision, cuda_graphs=graphs,
                                       **pinned), model=model, card=card)
    return cpu, gpu


def _agreement(cpu, gpu, frames):
    equal = total = 0
    for i, rgb in enumerate(frames):
        a = cpu.process(rgb, 0.05 * i)
        b = gpu.process(rgb, 0.05 * i)
        equal += int((a.labels == b.labels).sum())
        total += a.labels.size
    return equal / total


@pytest.mark.cuda
@pytest.mark.parametrize('precision,need,flow', [
    ('fp32', 0.999, 'learned'), ('fp32', 0.999, 'dis'), ('fp16', 0.995, 'learned'),
    ('bf16', 0.995, 'learned')])
def test_cuda_labels_agree_with_the_cpu(precision, need, flow):
    """Frames at the network size: the same input on both sides (the issue's measurement)."""
    cpu, gpu = bundled_pair(precision, flow=flow)
    assert gpu.device_path is not None
    h, w = gpu.input_size
    share = _agreement(cpu, gpu, scene(6, h, w))
    assert share >= need, f'{precision}, {flow}: {100 * share:.3f} % of labels agree'


@pytest.mark.cuda
def test_cuda_labels_agree_with_the_cpu_from_hd_frames():
    """1280x720 frames: each side resizes (within one level of each other), so a few more
    boundary pixels may differ."""
    cpu, gpu = bundled_pair('fp32')
    share = _agreement(cpu, gpu, scene(6, 720, 1280))
    assert share >= 0.99, f'{100 * share:.3f} % of labels agree'


@pytest.mark.cuda
def test_second_bundled_model_on_cuda_agrees_with_the_cpu():
    """The 19-class model, 1280x720 frames (measured on an H200: 99.84 % with the pipeline's
    defaults)."""
    cpu, gpu = bundled_pair('fp32', name='flow2seg_lite_synthetic_v2')
    assert gpu.classes.num_classes == 19
    share = _agreement(cpu, gpu, scene(6, 720, 1280))
    assert share >= 0.99, f'{100 * share:.3f} % of labels agree'


def _outputs(r):
    return [r.labels, r.color_mask, r.overlay, r.confidence, r.flow_rgb]


@pytest.mark.cuda
def test_cuda_graph_replay_equals_eager():
    pipe = with_device_path(tiny_pipeline('cuda'), 'cuda', graphs=True)
    frames = scene(6, 720, 1280)
    outputs = ('color_mask', 'overlay', 'confidence', 'flow_rgb')
    graphed = [pipe.process(f, 0.05 * i, outputs=outputs) for i, f in enumerate(frames)]
    assert pipe.device_path.runner.captures > 0 and not pipe.device_path.runner.failed
    pipe.reset()
    pipe.device_path.runner.enabled = False
    eager = [pipe.process(f, 0.05 * i, outputs=outputs) for i, f in enumerate(frames)]
    for g, e in zip(graphed, eager):
        assert (g.labels == e.labels).mean() >= 0.9999
        for a, b in zip(_outputs(g)[1:], _outputs(e)[1:]):
            assert max_diff(a, b) <= 1


@pytest.mark.cuda
def test_cuda_graphs_recapture_after_a_resolution_change_and_not_otherwise():
    pipe = with_device_path(tiny_pipeline('cuda'), 'cuda', graphs=True)
    runner = pipe.device_path.runner
    for i, f in enumerate(scene(3, 720, 1280)):
        pipe.process(f, 0.05 * i)
    captured = runner.captures
    for i, f in enumerate(scene(20, 720, 1280, seed=1)):  # 20 frames, one size: replays only
        pipe.process(f, 1.0 + 0.05 * i)
    assert runner.captures == captured
    small = scene(3, 480, 640)
    results = [pipe.process(f, 3.0 + 0.05 * i) for i, f in enumerate(small)]
    assert runner.captures > captured and results[0].reset_reason == 'size'
    assert results[-1].labels.shape == (480, 640)
    assert runner.sizes('post') == {(480, 640)}  # the old size's went
    eager = with_device_path(tiny_pipeline('cuda'), 'cuda', graphs=False)
    want = [eager.process(f, 3.0 + 0.05 * i) for i, f in enumerate(small)]
    assert (results[-1].labels == want[-1].labels).mean() >= 0.9999


@pytest.mark.cuda
def test_cuda_results_stay_valid_across_frames():
    pipe = with_device_path(tiny_pipeline('cuda'), 'cuda', graphs=True)
    frames = scene(20, 360, 640)
    kept = [pipe.process(f, 0.05 * i) for i, f in enumerate(frames)]
    copies = [[a.copy() for a in (r.labels, r.color_mask, r.overlay)] for r in kept]
    for i, f in enumerate(scene(5, 360, 640, seed=9)):  # later frames reuse the buffers
        pipe.process(f, 2.0 + 0.05 * i)
    for r, c in zip(kept, copies):
        for a, b in zip((r.labels, r.color_mask, r.overlay), c):
            np.testing.assert_array_equal(a, b)
    assert pipe.device_path.upload.allocations == 1
    # and each frame's overlay is its own frame's, not a later one's
    np.testing.assert_array_equal(kept[3].overlay, overlay(frames[3], kept[3].color_mask, 0.5))


@pytest.mark.cuda
def test_cuda_outputs_download_into_page_locked_message_buffers():
    """Given a node's message buffers, the outputs come down straight into them (page-locked in
    place), equal to those downloaded into the path's own blocks."""
    from types import SimpleNamespace
    from flow2seg_ros.encodings import MessageBuffers
    pipe = with_device_path(tiny_pipeline('cuda'), 'cuda', graphs=True)
    boxes = MessageBuffers(SimpleNamespace)
    pipe.device_path.host_buffers = boxes
    frames = scene(4, 360, 640)
    names = ('labels', 'color_mask', 'overlay')
    got = []
    for i, f in enumerate(frames):
        r = pipe.process(f, 0.05 * i, outputs=('color_mask', 'overlay'))
        for name in names:
            a = getattr(r, name)
            assert np.shares_memory(a, boxes.buffer(name, a.shape)), name
        got.append([getattr(r, name).copy() for name in names])
    registry = pipe.device_path.download.registry
    assert registry.registered >= 2, (registry.registered, registry.skipped)
    pipe.reset()
    pipe.device_path.host_buffers = None
    for i, (f, mine) in enumerate(zip(frames, got)):
        r = pipe.process(f, 0.05 * i, outputs=('color_mask', 'overlay'))
        for name, a in zip(names, mine):
            np.testing.assert_array_equal(a, getattr(r, name))


@pytest.mark.cuda
def test_cuda_device_finish_equals_cpu_finish_on_the_same_logits():
    # the same logits into both: no temporal smoothing before the CPU path's finish
    cpu = tiny_pipeline(temporal_smoothing=0.0, **TORCH_ON_CPU)
    dev = with_device_path(tiny_pipeline('cuda'), 'cuda', graphs=True)
    frames = scene(2, 720, 1280)
    outputs = ('color_mask', 'overlay', 'confidence', 'flow_rgb')
    heads = ('fused', 'image', 'flow')
    cpu.process(frames[0], 0.0)
    prepared = cpu.prepare(frames[1], 0.05)
    out = cpu.infer([prepared], heads=heads)[0]
    want = cpu.finish(prepared, out, outputs=outputs, heads=heads)
    for _ in range(2):  # captured, then replayed
        dframe = dev.device_path.prepare(frames[1])
        got = dev.device_path.finish(dframe, {k: v.cuda() for k, v in out.items()},
                                     prepared.flow.cuda(), outputs=outputs, heads=heads)
        np.testing.assert_array_equal(got['labels'], want.labels)
        np.testing.assert_array_equal(got['color_mask'], want.color_mask)
        for name in ('overlay', 'confidence', 'flow_rgb'):
            assert max_diff(got[name], getattr(want, name)) <= 1, name


# ---- gpu-check's own logic ----------------------------------------------------------------


def _config(preset, network, camera, precision, process_ms, node_share=0.1, graphs=True):
    return {'preset': preset, 'network': list(network), 'camera': list(camera),
            'precision': precision, 'graphs': graphs, 'device_path': True,
            'frames_timed': 5, 'median_ms': {'process': process_ms, 'frame': process_ms + 1},
            'process_fps': 1e3 / process_ms, 'frame_fps': 1e3 / (process_ms + 1),
            'node_share': node_share}


def test_gpu_check_judges_the_aims_on_the_best_precision_with_graphs():
    from flow2seg_ros import gpu_check
    configs = [
        _config('lite', (512, 256), (1280, 720), 'fp32', 3.5),
        _config('lite', (512, 256), (1280, 720), 'fp16', 2.5),
        _config('lite', (512, 256), (1280, 720), 'bf16', 3.8),  # slower than fp32
        _config('lite', (512, 256), (1280, 720), 'fp16', 1.0, graphs=False),  # not judged
        _config('lite', (512, 256), (1280, 720), 'fp32', 0.9, graphs=False),  # eager: reported
        _config('paper', (1024, 512), (2048, 1024), 'fp32', 12.0, node_share=0.4),
        _config('paper', (1024, 512), (2048, 1024), 'fp16', 9.0, node_share=0.2),
    ]
    aims = gpu_check.check_aims(configs)
    lite = aims['lite 1280x720 upload->outputs <= 3 ms']
    assert lite['met'] and lite['precision'] == 'fp16' and lite['value_ms'] == 2.5
    paper = aims['paper 1024x512 from 2048x1024 >= 100 fps']
    assert paper['met'] and paper['precision'] == 'fp16'
    assert aims['paper: node adds <= 25 % at 2048x1024']['met']
    low = aims['fp16 and bf16 at least as fast as fp32 (3 % slack)']
    assert not low['met'] and len(low['slower']) == 1 and 'bf16' in low['slower'][0]
    assert len(low['eager_slower']) == 1 and 'fp16' in low['eager_slower'][0]
    # without the slow bf16 row it is met: the eager rows are reported, not judged
    assert gpu_check.check_aims(configs[:2] + configs[3:])[
        'fp16 and bf16 at least as fast as fp32 (3 % slack)']['met']
    table = gpu_check.format_table({'environment': {'device': 'cuda', 'gpu': 'GPU',
                                                    'cpu_model': 'cpu', 'torch': '2.x'},
                                    'configs': configs, 'aims': aims})
    assert 'aim NOT MET: fp16 and bf16' in table and 'aim MET: lite 1280x720' in table
    assert len(table.splitlines()) == 2 + len(configs) + 1 + len(aims)
