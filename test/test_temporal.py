"""Temporal smoothing: the step against a hand computation, its resets, and the pipeline's use."""
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flow2seg_ros.classes import ClassSet
from flow2seg_ros.cpu_path import full_size, labels_from_logits
from flow2seg_ros.models import build_model
from flow2seg_ros.pipeline import FramePipeline, PipelineConfig
from flow2seg_ros.temporal import (_step_numpy, _step_torch, check_stride, check_weight,
                                   TemporalFilter)

CLASSES = ClassSet(('ground', 'thing', 'sky'), ((10, 10, 10), (200, 0, 0), (0, 0, 255)))
NET = (64, 96)  # network input (H, W); the tiny model's logits are at stride 8: 8 x 12


def softmax(z):
    e = np.exp(z - z.max(0))
    return e / e.sum(0)


def two_frames():
    """Logits of two frames on a (2 classes, 2 x 4) grid and a flow of one cell (8 px) right."""
    z0 = np.array([[[2.0, 0.0, -1.0, 1.0], [0.5, 0.5, 3.0, -2.0]],
                   [[0.0, 1.0, 1.0, -1.0], [0.0, 2.0, 0.0, 0.0]]], np.float32)
    z1 = np.array([[[0.0, 1.0, 0.0, 2.0], [1.0, -1.0, 0.0, 0.0]],
                   [[1.0, 0.0, 2.0, 0.0], [0.0, 0.0, 1.0, 1.0]]], np.float32)
    flow = np.zeros((2, 16, 32), np.float32)  # network input 32 x 16: the grid's stride is 8
    flow[0] = 8.0  # each pixel of frame 1 was 8 px (one cell) further right in frame 0
    return z0, z1, flow


@pytest.mark.parametrize('step', [_step_numpy, _step_torch], ids=['numpy', 'torch'])
def test_step_is_the_hand_computed_flow_warped_average(step):
    z0, z1, flow = two_frames()
    w = 0.25
    _, state = step(torch.from_numpy(z0)[None], None, None, w)
    out, _ = step(torch.from_numpy(z1)[None], torch.from_numpy(flow), state, w)
    p0, p1 = softmax(z0), softmax(z1)
    # by hand: cell (y, x) of frame 1 is cell (y, x + 1) of frame 0; the last column came into
    # view (x + 1 = 4 lies outside the grid), so it keeps frame 1's probabilities alone
    want = p1.copy()
    want[:, :, :3] = (1 - w) * p1[:, :, :3] + w * p0[:, :, 1:]
    np.testing.assert_allclose(out[0].exp().numpy(), want, atol=1e-5)


@pytest.mark.parametrize('step', [_step_numpy, _step_torch], ids=['numpy', 'torch'])
def test_half_a_cell_of_flow_blends_the_two_neighbours(step):
    z0, z1, flow = two_frames()
    flow[0] = 4.0  # half a cell
    _, state = step(torch.from_numpy(z0)[None], None, None, 0.5)
    out, _ = step(torch.from_numpy(z1)[None], torch.from_numpy(flow), state, 0.5)
    p0, p1 = softmax(z0), softmax(z1)
    want = p1.copy()
    want[:, :, :3] = 0.5 * p1[:, :, :3] + 0.25 * (p0[:, :, :3] + p0[:, :, 1:])
    # OpenCV's remap interpolates in 1/32 steps: exact at half a cell
    np.testing.assert_allclose(out[0].exp().numpy(), want, atol=1e-5)


def test_numpy_and_torch_steps_agree_on_random_motion():
    rng = np.random.default_rng(0)
    z = [torch.from_numpy(rng.normal(size=(1, 5, 8, 12)).astype(np.float32)) for _ in range(3)]
    flows = [torch.from_numpy(rng.normal(scale=6.0, size=(2, 64, 96)).astype(np.float32))
             for _ in range(2)]
    sn = st = None
    for k in range(3):
        fl = flows[k - 1] if k else None
        on, sn = _step_numpy(z[k], fl, sn, 0.6)
        ot, st = _step_torch(z[k], fl, st, 0.6)
        # OpenCV's fixed-point remap (1/32 of a cell) against grid_sample's float weights
        assert (on.exp() - ot.exp()).abs().max() < 0.01


def test_numpy_step_takes_more_classes_than_opencv_takes_at_once():
    torch.manual_seed(1)
    z0, z1 = torch.randn(1, 150, 8, 12), torch.randn(1, 150, 8, 12)
    flow = torch.randn(2, 64, 96) * 6
    _, s_np = _step_numpy(z0, None, None, 0.5)
    _, s_t = _step_torch(z0, None, None, 0.5)
    out_np, _ = _step_numpy(z1, flow, s_np, 0.5)
    out_t, _ = _step_torch(z1, flow, s_t, 0.5)
    np.testing.assert_allclose(out_np.exp().numpy(), out_t.exp().numpy(), atol=0.01)


def test_filter_restarts_without_flow_or_when_the_flow_points_elsewhere():
    z0, z1, flow = two_frames()
    fl = torch.from_numpy(flow)
    first = TemporalFilter(0.5)
    first(torch.from_numpy(z0)[None], None, 0.0, None)
    carried = first(torch.from_numpy(z1)[None], fl, 0.1, 0.0)
    assert first.carried == 1
    plain = np.log(softmax(z1))
    assert not np.allclose(carried[0].numpy(), plain, atol=1e-3)
    cases = {
        'no flow': (None, 0.0),
        'flow into another frame (dropped frames)': (fl, 0.05),
        'reset': (fl, 0.0),
    }
    for what, (f, prev_stamp) in cases.items():
        filt = TemporalFilter(0.5)
        filt(torch.from_numpy(z0)[None], None, 0.0, None)
        if what == 'reset':
            filt.reset()
        out = filt(torch.from_numpy(z1)[None], f, 0.1, prev_stamp)
        np.testing.assert_allclose(out[0].numpy(), plain, atol=1e-5, err_msg=what)
        assert filt.carried == 0, what


def test_weight_zero_passes_the_logits_through():
    z = torch.randn(1, 3, 4, 4)
    assert TemporalFilter(0.0)(z, torch.zeros(2, 32, 32), 0.1, 0.0) is z


@pytest.mark.parametrize('bad', [-0.1, 1.0, 2, 'abc', None])
def test_bad_weights_are_refused_by_name(bad):
    with pytest.raises(ValueError, match='temporal smoothing'):
        check_weight(bad)
    with pytest.raises(ValueError, match='temporal smoothing'):
        PipelineConfig(temporal_smoothing=bad).validate()


def test_a_finer_grid_carries_the_upsampled_probabilities_cell_by_cell():
    """Stride 4 on a 16 x 32 network input: logits of 2 x 4 cells (stride 8) are upsampled onto
    a 4 x 8 grid, and a flow of 4 px moves the state by one of its cells."""
    z0, z1, flow = two_frames()
    flow[0] = 4.0
    filt = TemporalFilter(0.25, stride=4, input_size=(16, 32))
    assert filt.grid((2, 4)) == (4, 8)

    def up(z):
        return F.interpolate(torch.from_numpy(z)[None], size=(4, 8), mode='bilinear',
                             align_corners=False)[0].numpy()
    first = filt(torch.from_numpy(z0)[None], None, 0.0, None)
    out = filt(torch.from_numpy(z1)[None], torch.from_numpy(flow), 0.1, 0.0)
    assert out.shape == (1, 2, 4, 8) and filt.carried == 1
    p0, p1 = softmax(up(z0)), softmax(up(z1))
    np.testing.assert_allclose(first[0].exp().numpy(), p0, atol=1e-5)
    want = p1.copy()  # the last column of the grid came into view
    want[:, :, :7] = 0.75 * p1[:, :, :7] + 0.25 * p0[:, :, 1:]
    np.testing.assert_allclose(out[0].exp().numpy(), want, atol=1e-5)


def test_numpy_and_torch_steps_agree_on_a_finer_grid():
    rng = np.random.default_rng(4)
    z = [torch.from_numpy(rng.normal(size=(1, 5, 8, 12)).astype(np.float32)) for _ in range(3)]
    flow = torch.from_numpy(rng.normal(scale=6.0, size=(2, 64, 96)).astype(np.float32))
    sn = st = None
    for k in range(3):
        on, sn = _step_numpy(z[k], flow if k else None, sn, 0.5, (32, 48))
        ot, st = _step_torch(z[k], flow if k else None, st, 0.5, (32, 48))
        assert on.shape == ot.shape == (1, 5, 32, 48)
        assert (on.exp() - ot.exp()).abs().max() < 0.01


@pytest.mark.parametrize('classes, grid', [(5, None), (5, (32, 48)), (130, (16, 24))])
def test_reused_arrays_equal_fresh_ones_and_leave_earlier_frames_alone(classes, grid):
    """The filter's CPU step writes into arrays it keeps from frame to frame (two in turn for the
    state): the same values as fresh arrays every frame, across a restart, with more classes
    than one OpenCV call takes, and the logits it handed out earlier stay as they were."""
    rng = np.random.default_rng(6)
    filt = TemporalFilter(0.5)
    fresh = kept = None
    handed = []
    for k in range(5):
        z = torch.from_numpy(rng.normal(scale=3.0, size=(1, classes, 8, 12)).astype(np.float32))
        flow = torch.from_numpy(rng.normal(scale=6.0, size=(2, 64, 96)).astype(np.float32))
        carry = k not in (0, 3)  # frame 3 restarts
        want, fresh = _step_numpy(z, flow if carry else None, fresh if carry else None, 0.5,
                                  grid)
        out, kept = _step_numpy(z, flow if carry else None, kept if carry else None, 0.5, grid,
                                filt._work)
        assert torch.equal(out, want) and np.array_equal(kept, fresh), k
        handed.append((out, out.clone()))
    assert filt._work  # the arrays were kept
    assert all(torch.equal(out, copy) for out, copy in handed)


def test_grid_is_never_coarser_than_the_logits_and_a_stride_change_restarts():
    filt = TemporalFilter(0.5, stride=2, input_size=NET)
    assert filt.grid((8, 12)) == (32, 48)
    for stride in (0, 8, 16):
        filt.stride = stride
        assert filt.grid((8, 12)) == (8, 12), stride
    assert TemporalFilter(0.5, stride=2).grid((8, 12)) == (8, 12)  # no input size: the logits'
    rng = np.random.default_rng(5)
    z = [torch.from_numpy(rng.normal(size=(1, 3, 8, 12)).astype(np.float32)) for _ in range(3)]
    flow = torch.zeros(2, *NET)
    filt = TemporalFilter(0.5, stride=2, input_size=NET)
    filt(z[0], None, 0.0, None)
    assert filt(z[1], flow, 0.1, 0.0).shape[-2:] == (32, 48) and filt.carried == 1
    filt.stride = 0  # at runtime: the state of the old grid is not carried onto the new one
    out = filt(z[2], flow, 0.2, 0.1)
    assert out.shape[-2:] == (8, 12) and filt.carried == 1
    np.testing.assert_allclose(out.exp().numpy(), torch.softmax(z[2], 1).numpy(), atol=1e-5)


@pytest.mark.parametrize('bad', [-1, 65, 2.5, '2', True, None])
def test_bad_strides_are_refused_by_name(bad):
    with pytest.raises(ValueError, match='temporal smoothing stride'):
        check_stride(bad)
    with pytest.raises(ValueError, match='temporal smoothing stride'):
        PipelineConfig(temporal_smoothing_stride=bad).validate()


def tiny_pipeline(weight, stride=0):
    torch.manual_seed(0)
    model = build_model('lite', num_classes=3, widths=(8, 8, 16, 16), ppm_channels=8,
                        flow_widths=(8, 8, 8, 8), fusion_channels=8)
    card = {'classes': CLASSES.to_dict(), 'input_size': list(NET),
            'flow': {'method': 'dis', 'preset': 'ultrafast', 'scale': 20.0}}
    return FramePipeline(PipelineConfig(device='cpu', temporal_smoothing=weight, backend='torch',
                                        overlap_flow=False, temporal_smoothing_stride=stride),
                         model=model, card=card)


def pan(n, h=120, w=160, seed=0):
    rng = np.random.default_rng(seed)
    scene = rng.integers(0, 255, (h, w + 2 * n, 3), np.uint8)
    return [np.ascontiguousarray(scene[:, 2 * i:2 * i + w]) for i in range(n)]


@pytest.mark.parametrize('stride', [0, 2])
def test_pipeline_labels_are_the_filtered_network_output_per_stream(stride):
    frames = pan(4)
    stamps = [0.0, 0.05, 0.1, 5.0]  # the last after a gap: the flow state resets
    smooth, raw = tiny_pipeline(0.5, stride), tiny_pipeline(0.0)
    filt = TemporalFilter(0.5, stride, NET)
    for k, (rgb, t) in enumerate(zip(frames, stamps)):
        f_raw = raw.prepare(rgb, t)
        out = raw.infer([f_raw], heads=('fused', 'image'))[0]
        want = filt(out['fused'], f_raw.flow, t, f_raw.prev_stamp)
        r = smooth.process(rgb, t, outputs=('confidence',), heads=('fused', 'image'))
        assert r.used_flow == (k in (1, 2))
        assert want.shape[-2:] == ((32, 48) if stride else (8, 12))
        small = labels_from_logits(want, NET)
        np.testing.assert_array_equal(r.labels, cv2.resize(small, (160, 120),
                                                           interpolation=cv2.INTER_NEAREST))
        # the image head is never smoothed
        unsmoothed = raw.finish(f_raw, out, outputs=(), heads=('image',))
        np.testing.assert_array_equal(r.head_labels['image'], unsmoothed.head_labels['image'])
        # confidence: the smoothed probabilities' maximum
        conf = torch.softmax(full_size(want, NET), 1).max(1).values[0].numpy()
        np.testing.assert_allclose(cv2.resize(np.round(conf * 255).astype(np.uint8), (160, 120),
                                              interpolation=cv2.INTER_LINEAR),
                                   r.confidence, atol=2)
    assert r.reset_reason == 'gap'
    assert smooth.temporal.carried == 2  # the two frames with flow


def test_smoothing_makes_flickering_labels_steadier():
    """A fusion that favours one class but flips to another on every other frame."""
    frames = pan(12)
    changed = {}
    for w in (0.0, 0.7):
        p = tiny_pipeline(w)
        sign = [1.0]

        def flip(image_logits, flow_logits):
            sign[0] = -sign[0]
            bias = torch.tensor([0.2 + 0.4 * sign[0], 0.0, -5.0]).view(1, 3, 1, 1)
            return torch.zeros_like(image_logits) + bias

        p.model.fuse = flip
        labels = [p.process(rgb, 0.05 * k, outputs=()).labels for k, rgb in enumerate(frames)]
        last = labels[-6:]  # past the start, where the first frames still weigh
        changed[w] = sum(int((a != b).sum()) for a, b in zip(last, last[1:]))
    # unsmoothed every pixel flips at every frame (0.6 or -0.2 against 0); the running average
    # of the probabilities keeps the class the fusion favours on average
    assert changed[0.0] == 5 * 120 * 160
    assert changed[0.7] < changed[0.0] / 100


@pytest.mark.cuda
def test_filter_on_cuda_logits_runs_on_the_device_and_matches_the_cpu():
    rng = np.random.default_rng(1)
    z = [torch.from_numpy(rng.normal(size=(1, 19, 32, 64)).astype(np.float32)) for _ in range(3)]
    flow = torch.from_numpy(rng.normal(scale=5.0, size=(2, 256, 512)).astype(np.float32))
    cpu, gpu = TemporalFilter(0.5), TemporalFilter(0.5)
    for k in range(3):
        fl, prev = (flow, k - 1.0) if k else (None, None)
        a = cpu(z[k], fl, float(k), prev)
        b = gpu(z[k].cuda(), None if fl is None else fl.cuda(), float(k), prev)
        assert b.device.type == 'cuda'
        assert (a.exp() - b.cpu().exp()).abs().max() < 0.01


def test_a_model_without_a_flow_path_is_left_alone():
    model = build_model('lite', num_classes=3, use_flow=False, widths=(8, 8, 16, 16),
                        ppm_channels=8)
    card = {'classes': CLASSES.to_dict(), 'input_size': list(NET)}
    p = FramePipeline(PipelineConfig(device='cpu', temporal_smoothing=0.5), model=model,
                      card=card)
    assert p.temporal.weight == 0.0
    frames = pan(2)
    p.process(frames[0], 0.0)
    f = p.prepare(frames[1], 0.05)
    out = p.infer([f])[0]
    assert f.flow is None and p.temporal(out['fused'], f.flow, 0.05, None) is out['fused']


class RecordingRunner:
    """Stands in for the device path's GraphRunner: records each stage call, runs it eagerly."""

    def __init__(self):
        self.calls = []
        self.sizes = []

    def __call__(self, name, fn, inputs, static_key=(), *, size=None, clone=True):
        self.calls.append((name, static_key, [tuple(x.shape) for x in inputs]))
        self.sizes.append(size)
        return tuple(fn(*inputs))


def test_filter_with_a_graph_runner_runs_the_torch_step_as_two_stages():
    """With a runner (the device path's), a restart and a carried frame are its two stages, with
    the weight in their key, and the values are the NumPy path's; a cut restarts."""
    rng = np.random.default_rng(2)
    z = [torch.from_numpy(rng.normal(size=(1, 3, 8, 12)).astype(np.float32)) for _ in range(4)]
    flow = torch.from_numpy(rng.normal(scale=3.0, size=(2, 64, 96)).astype(np.float32))
    runner = RecordingRunner()
    graphed, plain = TemporalFilter(0.4), TemporalFilter(0.4)
    stamps = [(0.0, None), (0.1, 0.0), (0.2, 0.1), (0.4, 0.3)]  # the last points elsewhere
    for k, (stamp, prev) in enumerate(stamps):
        fl = flow if k else None
        a = plain(z[k], fl, stamp, prev)
        b = graphed(z[k], fl, stamp, prev, runner)
        np.testing.assert_allclose(b.exp().numpy(), a.exp().numpy(), atol=1e-5)
    assert [c[:2] for c in runner.calls] == [('temporal', ('start', 0.4)),
                                             ('temporal', ('carry', 0.4)),
                                             ('temporal', ('carry', 0.4)),
                                             ('temporal', ('start', 0.4))]
    assert runner.calls[1][2] == [(1, 3, 8, 12), (2, 64, 96), (1, 3, 8, 12)]
    assert graphed.carried == plain.carried == 2


def test_filter_with_a_graph_runner_on_a_finer_grid_keys_its_stages_by_the_grid():
    rng = np.random.default_rng(6)
    z = [torch.from_numpy(rng.normal(size=(1, 3, 8, 12)).astype(np.float32)) for _ in range(2)]
    flow = torch.from_numpy(rng.normal(scale=3.0, size=(2, 64, 96)).astype(np.float32))
    runner = RecordingRunner()
    graphed, plain = TemporalFilter(0.5, 2, NET), TemporalFilter(0.5, 2, NET)
    for k, (stamp, prev) in enumerate([(0.0, None), (0.1, 0.0)]):
        a = plain(z[k], flow if k else None, stamp, prev)
        b = graphed(z[k], flow if k else None, stamp, prev, runner)
        assert b.shape == (1, 3, 32, 48)
        np.testing.assert_allclose(b.exp().numpy(), a.exp().numpy(), atol=0.01)
    assert runner.sizes == [(8, 12, 32, 48)] * 2
    assert runner.calls[1][2] == [(1, 3, 8, 12), (2, 64, 96), (1, 3, 32, 48)]


@pytest.mark.cuda
@pytest.mark.parametrize('stride', [0, 2])
def test_filter_replayed_as_cuda_graphs_matches_eager_on_cuda(stride):
    from flow2seg_ros.device_path import GraphRunner
    rng = np.random.default_rng(3)
    z = [torch.from_numpy(rng.normal(size=(1, 19, 32, 64)).astype(np.float32)).cuda()
         for _ in range(5)]
    flows = [torch.from_numpy(rng.normal(scale=4.0, size=(2, 256, 512)).astype(np.float32))
             for _ in range(5)]
    runner = GraphRunner()
    graphed, eager = (TemporalFilter(0.5, stride, (256, 512)) for _ in range(2))
    for k in range(5):
        fl, prev = (flows[k], k - 1.0) if k else (None, None)
        if k == 3:
            prev = 0.5  # a dropped frame: restart
        a = eager(z[k], None if fl is None else fl.cuda(), float(k), prev)
        b = graphed(z[k], fl, float(k), prev, runner)  # host flow: uploaded by the filter
        assert b.device.type == 'cuda'
        assert (a - b).abs().max().item() < 1e-4
    assert runner.captures == 2 and not runner.failed  # one restart graph, one carry graph
    assert graphed.carried == eager.carried == 3
