"""The frame pipeline over short synthetic sequences: outputs, flow state and its resets."""
import json

import numpy as np
import pytest
import torch

from flow2seg_ros.classes import ClassSet
from flow2seg_ros.flow import DISFlow
from flow2seg_ros.models import build_model
from flow2seg_ros.pipeline import card_flow, FramePipeline, PipelineConfig
from flow2seg_ros.weights import bundled_model_path, card_path, load_model, save_model

CLASSES = ClassSet(('ground', 'thing', 'sky'), ((10, 10, 10), (200, 0, 0), (0, 0, 255)))
NET = (64, 96)  # network input (H, W)


def tiny_pipeline(**config) -> FramePipeline:
    torch.manual_seed(0)
    model = build_model('lite', num_classes=3, widths=(8, 8, 16, 16), ppm_channels=8,
                        flow_widths=(8, 8, 8, 8), fusion_channels=8)
    card = {'classes': CLASSES.to_dict(), 'input_size': list(NET),
            'flow': {'method': 'dis', 'preset': 'ultrafast', 'scale': 20.0}}
    return FramePipeline(PipelineConfig(device='cpu', **config), model=model, card=card)


def frames(n, h=120, w=160, seed=0):
    """A textured scene panning one pixel a frame."""
    rng = np.random.default_rng(seed)
    scene = rng.integers(0, 255, (h, w + n, 3), np.uint8)
    return [np.ascontiguousarray(scene[:, i:i + w]) for i in range(n)]


def test_outputs_are_at_the_input_size_and_in_range():
    p = tiny_pipeline(overlay_alpha=0.25)
    f = frames(2)
    p.process(f[0], 0.0)
    r = p.process(f[1], 0.05, outputs=('color_mask', 'overlay', 'confidence', 'flow_rgb'),
                  heads=('fused', 'image', 'flow'))
    for a in (r.labels, r.confidence):
        assert a.shape == (120, 160) and a.dtype == np.uint8
    for a in (r.color_mask, r.overlay, r.flow_rgb):
        assert a.shape == (120, 160, 3) and a.dtype == np.uint8
    assert r.labels.max() < 3
    assert set(r.head_labels) == {'fused', 'image', 'flow'}
    assert all(v.shape == (120, 160) for v in r.head_labels.values())
    np.testing.assert_array_equal(r.color_mask, CLASSES.palette()[r.labels])
    expected = (0.75 * f[1] + 0.25 * r.color_mask.astype(np.float64))
    assert np.abs(r.overlay - expected).max() <= 1.0
    assert r.flow.shape == (2,) + NET
    assert {'resize', 'flow', 'network', 'argmax', 'colour', 'total'} <= set(r.timings)


def test_first_frame_has_no_flow_and_fused_is_the_image_head():
    p = tiny_pipeline()
    r = p.process(frames(1)[0], 0.0, heads=('fused', 'image', 'flow'))
    assert r.reset_reason == 'first' and r.flow is None
    assert r.head_labels['flow'] is None
    np.testing.assert_array_equal(r.head_labels['image'], r.labels)


def test_flow_is_between_the_frame_and_its_predecessor_at_network_size():
    p = tiny_pipeline()
    f = frames(3)
    for i, img in enumerate(f):
        r = p.process(img, 0.1 * i)
    small = [p._small(img) for img in f[1:]]
    expected = DISFlow('ultrafast')(small[0], small[1]).numpy()
    np.testing.assert_allclose(r.flow, expected, atol=1e-5)
    assert np.median(r.flow[0]) > 0.2  # content moved left: the previous position is to the right


@pytest.mark.parametrize('reason', ['size', 'backwards', 'gap'])
def test_resets_on_size_change_backwards_stamp_and_long_gap(reason):
    p = tiny_pipeline(max_gap_s=0.5)
    f = frames(4)
    p.process(f[0], 10.0)
    assert p.process(f[1], 10.1).reset_reason is None
    if reason == 'size':
        nxt = frames(1, h=100, w=140)[0]
        stamp = 10.2
    else:
        nxt = f[2]
        stamp = 9.0 if reason == 'backwards' else 11.0
    r = p.process(nxt, stamp)
    assert r.reset_reason == reason and r.flow is None and p.resets == 1
    # the stream goes on with flow from the next frame
    assert p.process(nxt, stamp + 0.1).reset_reason is None


def test_prev_override_uses_the_frame_received_before_not_the_last_processed():
    f = frames(4)
    a = tiny_pipeline(temporal_smoothing=0.0)
    a.process(f[0], 0.0)
    a.process(f[2], 0.1)  # what a node that dropped f[1]... processed last
    dropped = a.process(f[3], 0.3, prev=(f[2], 0.2))
    b = tiny_pipeline(temporal_smoothing=0.0)
    b.process(f[2], 0.2)
    straight = b.process(f[3], 0.3)
    np.testing.assert_array_equal(dropped.flow, straight.flow)
    np.testing.assert_array_equal(dropped.labels, straight.labels)
    # with temporal smoothing the state of the last processed frame is not carried along a flow
    # into another frame: the labels start afresh, as without smoothing
    c = tiny_pipeline(temporal_smoothing=0.5)
    c.process(f[0], 0.0)
    c.process(f[2], 0.1)
    np.testing.assert_array_equal(c.process(f[3], 0.3, prev=(f[2], 0.2)).labels, dropped.labels)


def test_same_frames_give_the_same_labels_as_the_model_itself():
    p = tiny_pipeline()
    img = frames(1, h=64, w=96)[0]  # already at network size: no resizing
    r = p.process(img, 0.0)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = p.model((x - mean) / std)['fused'].argmax(1)[0].numpy()
    assert (ref == r.labels).mean() > 0.999


def test_network_input_is_the_cards_normalisation_for_each_frame_of_a_batch():
    p = tiny_pipeline()
    a, b = frames(2, h=64, w=96, seed=3)
    a0 = a.copy()
    x = p._network_input([a, b])
    assert x.dtype == torch.float32 and tuple(x.shape) == (2, 3, 64, 96)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    want = (torch.from_numpy(np.stack([a, b])).permute(0, 3, 1, 2).float() / 255 - mean) / std
    torch.testing.assert_close(x, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(a, a0)  # the frame itself is kept for the next flow


@pytest.mark.parametrize('config, message', [
    (dict(device='tpu'), 'device'),
    (dict(precision='int4'), 'precision'),
    (dict(input_size=(30, 64)), 'multiples of 8'),
    (dict(flow_method='magic'), 'flow method'),
    (dict(flow_method='mixed'), "'mixed' draws each frame's flow at random"),
    (dict(overlay_alpha=1.5), 'overlay alpha'),
    (dict(max_gap_s=0), 'max frame gap'),
])
def test_bad_config_values_are_refused_with_the_reason(config, message):
    with pytest.raises(ValueError, match=message):
        PipelineConfig(**config).validate()


def test_bad_frames_are_refused():
    p = tiny_pipeline()
    with pytest.raises(ValueError, match='uint8 RGB'):
        p.process(np.zeros((10, 10), np.uint8), 0.0)
    with pytest.raises(ValueError, match='unknown outputs'):
        p.process(frames(1)[0], 0.0, outputs=('hologram',))


def test_prepare_infer_finish_is_process():
    f = frames(3)
    a, b = tiny_pipeline(), tiny_pipeline()
    for i, img in enumerate(f):
        ra = a.process(img, 0.1 * i, outputs=('confidence',), heads=('fused', 'image', 'flow'))
        frame = b.prepare(img, 0.1 * i)
        out = b.infer([frame], heads=('fused', 'image', 'flow'))[0]
        rb = b.finish(frame, out, outputs=('confidence',), heads=('fused', 'image', 'flow'))
        assert ra.reset_reason == rb.reset_reason
        np.testing.assert_array_equal(ra.labels, rb.labels)
        np.testing.assert_array_equal(ra.confidence, rb.confidence)
        for h in ('image', 'flow'):
            assert (ra.head_labels[h] is None) == (rb.head_labels[h] is None)
    assert b.frames == 3


def test_one_batch_for_two_cameras_sharing_a_model_matches_each_camera_alone():
    from flow2seg_ros.pipeline import infer_batch

    shared = tiny_pipeline()
    cams = [FramePipeline(shared.config, model=shared.model, card=shared.card)
            for _ in range(2)]
    alone = [tiny_pipeline(), tiny_pipeline()]
    streams = [frames(3, seed=1), frames(3, seed=2)]
    # camera 1 starts a frame later: the batch mixes a first frame with a frame that has flow
    for i in range(3):
        batch = [cams[0].prepare(streams[0][i], 0.1 * i)]
        if i >= 1:
            batch.append(cams[1].prepare(streams[1][i], 0.1 * i))
        outs = infer_batch(batch, heads=('fused', 'flow'))
        for k, (frame, out) in enumerate(zip(batch, outs)):
            got = frame.pipeline.finish(frame, out, outputs=(), heads=('fused', 'flow'))
            want = alone[k].process(streams[k][i], 0.1 * i, outputs=(), heads=('fused', 'flow'))
            assert got.reset_reason == want.reset_reason
            assert (got.labels == want.labels).mean() > 0.999
            if want.flow is not None:
                np.testing.assert_allclose(got.flow, want.flow, atol=1e-5)
    assert cams[0].frames == 3 and cams[1].frames == 2


def test_a_batch_refuses_mixed_sizes_and_foreign_models():
    a, b = tiny_pipeline(), tiny_pipeline()
    fa = a.prepare(frames(1)[0], 0.0)
    with pytest.raises(ValueError, match='share one model'):
        a.infer([fa, b.prepare(frames(1)[0], 0.0)])
    c = tiny_pipeline(input_size=(32, 64))
    c.model = a.model
    with pytest.raises(ValueError, match='network size'):
        a.infer([fa, c.prepare(frames(1)[0], 0.0)])


def test_the_card_names_the_flow_per_device():
    card = {'flow': {'method': 'dis', 'preset': 'medium', 'scale': 32.0,
                     'cuda': {'method': 'learned', 'preset': 'flowlite_synthetic'}}}
    assert card_flow(card, torch.device('cpu')) == ('dis', 'medium')
    assert card_flow(card, torch.device('cuda', 0)) == ('learned', 'flowlite_synthetic')
    plain = {'flow': {'method': 'farneback', 'preset': '', 'scale': 1.0}}
    assert card_flow(plain, torch.device('cuda')) == ('farneback', '')
    # the bundled model: trained on both flows, DIS fast on the CPU and learned on CUDA
    bundled = json.loads(card_path(bundled_model_path()).read_text())
    assert card_flow(bundled, torch.device('cpu')) == ('dis', 'fast')
    assert card_flow(bundled, torch.device('cuda'))[0] == 'learned'
    # a model trained on a mix runs one of its parts, the same one every frame
    mixed = {'flow': {'method': 'mixed', 'preset': 'dis/fast+learned/flowlite_synthetic',
                      'scale': 32.0}}
    assert card_flow(mixed, torch.device('cpu')) == ('dis', 'fast')
    assert card_flow(mixed, torch.device('cuda')) == ('learned', 'flowlite_synthetic')
    only_dis = {'flow': {'method': 'mixed', 'preset': 'dis/medium+farneback'}}
    assert card_flow(only_dis, torch.device('cuda')) == ('dis', 'medium')


def test_a_model_trained_on_a_mix_runs_one_flow(tmp_path):
    # the card training writes for flow_method mixed: the pipeline picks DIS, not the mix
    model, card = load_model()
    card = dict(card, flow={'method': 'mixed', 'preset': 'dis/ultrafast+farneback',
                            'scale': card['flow']['scale']})
    path = tmp_path / 'mixed.safetensors'
    save_model(model, path, card)
    pipe = FramePipeline(PipelineConfig(weights=str(path), device='cpu', backend='torch'))
    assert pipe.flow_estimator.name == 'dis/ultrafast'
    assert (pipe.flow_method, pipe.flow_preset) == ('dis', 'ultrafast')
