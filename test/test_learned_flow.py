"""The learned flow estimator: bundled weights recover known motions, CPU/CUDA agreement, the
weights files, the training samples and the training command."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from flow2seg_ros.data.synth import generate
from flow2seg_ros.flow import FLOW_METHODS, make_flow_estimator
from flow2seg_ros.flow.augment import FlowPairTransform, random_warp_pair
from flow2seg_ros.flow.learned import (bundled_flow_weights_path, correlation_shifted,
                                       correlation_unfold, FlowLiteNet, LearnedFlow,
                                       load_flow_model, resolve_flow_weights, save_flow_model)
from flow2seg_ros.tensorfile import WeightsError
from flow2seg_ros.train_flow import main as train_flow_main

W, H = 512, 256


def _texture(seed: int = 0) -> np.ndarray:
    """A street-like textured frame: smooth blobs plus fine grain, (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    img = np.zeros((H, W, 3), np.float32)
    for sigma, amp in ((12, 90.0), (4, 50.0), (1.5, 25.0)):
        noise = rng.standard_normal((H, W, 3)).astype(np.float32)
        blur = cv2.GaussianBlur(noise, (0, 0), sigma)
        img += amp * blur / blur.std()
    return np.clip(img + 128, 0, 255).astype(np.uint8)


def _warp_affine(img: np.ndarray, m: np.ndarray) -> np.ndarray:
    """out(x) = img(m @ x) for a 2x3 map m of pixel coordinates."""
    return cv2.warpAffine(img, m, (img.shape[1], img.shape[0]),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT101)


def _interior_epe(flow: torch.Tensor, truth: np.ndarray, margin: int = 32) -> float:
    err = np.sqrt(((flow.numpy() - truth) ** 2).sum(0))
    return float(np.median(err[margin:-margin, margin:-margin]))


@pytest.fixture(scope='module')
def bundled() -> LearnedFlow:
    return LearnedFlow(device='cpu')


def test_learned_is_a_registered_flow_method_with_the_bundled_weights() -> None:
    assert 'learned' in FLOW_METHODS
    est = make_flow_estimator('learned', '')
    assert isinstance(est, LearnedFlow)
    assert Path(est.weights) == bundled_flow_weights_path()
    assert resolve_flow_weights('flowlite_synthetic') == bundled_flow_weights_path()
    assert resolve_flow_weights('some/dir/x.safetensors') == Path('some/dir/x.safetensors')
    card = json.loads(bundled_flow_weights_path().with_suffix('.json').read_text())
    assert card['format'] == 'flow2seg-flow-card/1'
    assert card['training']['command'].startswith('flow2seg-train-flow')


@pytest.mark.parametrize('shift', [(3.0, -2.0), (-6.5, 1.5)])
def test_bundled_weights_recover_a_known_translation(bundled: LearnedFlow, shift) -> None:
    prev = _texture(1)
    dx, dy = shift
    # cur(x) = prev(x - t): content moved by t, so the flow cur -> prev is -t everywhere.
    cur = _warp_affine(prev, np.array([[1.0, 0.0, -dx], [0.0, 1.0, -dy]]))
    flow = bundled(prev, cur)
    assert flow.shape == (2, H, W) and flow.dtype == torch.float32
    truth = np.broadcast_to(np.array([-dx, -dy], np.float32)[:, None, None], (2, H, W))
    assert _interior_epe(flow, truth) < 0.5


def test_bundled_weights_recover_a_known_rotation(bundled: LearnedFlow) -> None:
    prev = _texture(2)
    angle = np.deg2rad(2.0)
    c, s = np.cos(angle), np.sin(angle)
    cx, cy = W / 2, H / 2
    # cur(x) = prev(R (x - c) + c): the flow cur -> prev is R (x - c) + c - x.
    rot = np.array([[c, -s, cx - c * cx + s * cy], [s, c, cy - s * cx - c * cy]])
    cur = _warp_affine(prev, rot)
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    truth = np.stack([rot[0, 0] * xs + rot[0, 1] * ys + rot[0, 2] - xs,
                      rot[1, 0] * xs + rot[1, 1] * ys + rot[1, 2] - ys])
    assert np.abs(truth).max() > 8  # a real rotation, up to ~9 px at the corners
    assert _interior_epe(bundled(prev, cur), truth) < 0.6


def test_batched_entry_point_matches_single_calls_and_any_size_works(bundled) -> None:
    a, b, c = _texture(3), _texture(4), _texture(5)
    prev = torch.from_numpy(np.stack([a, b])).permute(0, 3, 1, 2)
    cur = torch.from_numpy(np.stack([b, c])).permute(0, 3, 1, 2)
    batch = bundled.estimate_batch(prev, cur)
    assert batch.shape == (2, 2, H, W)
    torch.testing.assert_close(batch[0], bundled(a, b), atol=1e-4, rtol=0)
    torch.testing.assert_close(batch[1], bundled(b, c), atol=1e-4, rtol=0)
    odd = bundled(a[:70, :100], b[:70, :100])  # padded inside, cropped back
    assert odd.shape == (2, 70, 100)
    assert torch.equal(bundled(a, b), bundled(a, b))  # deterministic


def test_correlation_forms_agree() -> None:
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(2, 8, 12, 20, generator=g), torch.randn(2, 8, 12, 20, generator=g)
    for radius in (1, 2, 3):
        torch.testing.assert_close(correlation_unfold(f1, f2, radius),
                                   correlation_shifted(f1, f2, radius))
    # displacement (dy, dx) = (0, 1) of radius 1 is channel 5: f1(x) . f2(x + (1, 0))
    corr = correlation_shifted(f1, f2, 1)
    torch.testing.assert_close(corr[:, 5, :, :-1], (f1[..., :-1] * f2[..., 1:]).sum(1))


@pytest.mark.cuda
def test_cpu_and_cuda_give_the_same_flow() -> None:
    prev, cur = _texture(6), _warp_affine(_texture(6), np.array([[1.0, 0, 2.5], [0, 1.0, -1]]))
    on_cpu = LearnedFlow(device='cpu')(prev, cur)
    on_gpu = LearnedFlow(device='cuda')(prev, cur)
    assert on_gpu.device.type == 'cuda'
    diff = (on_gpu.cpu() - on_cpu).abs()
    assert float(diff.max()) < 0.05, f'CPU and CUDA flows differ by up to {float(diff.max())} px'


def test_missing_corrupt_or_mismatched_weights_raise_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / 'nope.safetensors'
    with pytest.raises(WeightsError, match='nope.safetensors'):
        make_flow_estimator('learned', str(missing))
    corrupt = tmp_path / 'corrupt.safetensors'
    corrupt.write_bytes(b'\x00' * 7 + b'garbage that is not a safetensors header')
    with pytest.raises(WeightsError, match='corrupt.safetensors'):
        LearnedFlow(corrupt)
    good = tmp_path / 'small.safetensors'
    save_flow_model(FlowLiteNet(widths=(8, 8, 8), radii=(1, 1), est_width=8, context_width=0,
                                refine_width=0), good)
    model, card = load_flow_model(good)
    assert card['model_kwargs']['widths'] == [8, 8, 8]
    card['model_kwargs']['widths'] = [8, 8, 16]
    good.with_suffix('.json').write_text(json.dumps(card))
    with pytest.raises(WeightsError, match='small.safetensors'):
        load_flow_model(good)
    good.with_suffix('.json').unlink()
    with pytest.raises(WeightsError, match='small.json'):
        load_flow_model(good)


def _photometric_error(s: dict) -> float:
    """Mean |prev(x + flow) - cur(x)| on valid pixels whose target is inside the frame."""
    h, w = s['cur'].shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    tx, ty = xs + s['flow'][0], ys + s['flow'][1]
    back = cv2.remap(s['prev'], tx, ty, cv2.INTER_LINEAR)
    ok = s['valid'] & (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    return float(np.abs(back.astype(np.float32) - s['cur']).mean(-1)[ok].mean())


@pytest.mark.parametrize('seed', range(4))
def test_warped_pairs_and_their_augmentation_keep_the_flow_exact(seed: int) -> None:
    frame, other = _texture(10 + seed), _texture(20 + seed)
    sample = random_warp_pair(frame, np.random.default_rng(seed), other=other, noise=0.0)
    assert _photometric_error(sample) < 3.0
    assert sample['moving'].any() or seed == 0  # objects are drawn at random
    # The same motion without the flow would not line up: the check can fail.
    assert _photometric_error(dict(sample, flow=np.zeros_like(sample['flow']))) > 10.0
    gen = torch.Generator().manual_seed(seed)
    tf = FlowPairTransform((160, 320), scale_range=(0.75, 1.25), hflip=True, generator=gen)
    for _ in range(3):
        out = tf(sample)
        assert out['cur'].shape == (160, 320, 3) and out['flow'].shape == (2, 160, 320)
        assert _photometric_error(out) < 3.0


def test_training_command_runs_writes_loadable_weights_and_resumes(tmp_path: Path) -> None:
    data = tmp_path / 'data'
    generate(data, sequences=2, frames=3, size=(128, 64), seed=3, split='train',
             annotate='last', progress=False)
    out = tmp_path / 'run'
    args = ['--data_root', str(data), '--output_dir', str(out), '--steps', '3',
            '--batch_size', '2', '--workers', '0', '--crop_size', '[64, 128]',
            '--warp_fraction', '0.5', '--val_split', 'train', '--checkpoint_every', '2',
            '--warmup_steps', '1', '--progress', 'false',
            '--model_kwargs', '{widths: [8, 8, 8], radii: [1, 1], est_width: 8, '
                              'context_width: 8, refine_width: 8}',
            '--loss_weights', '[0.5, 0.5, 0.5, 0.5, 1.0]']
    assert train_flow_main(args) == 0
    model, card = load_flow_model(out / 'flow.safetensors')
    assert card['training']['steps'] == 3
    assert card['metrics']['train_pairs']['pairs'] == 4
    assert np.isfinite(card['metrics']['train_pairs']['epe_all'])
    est = make_flow_estimator('learned', str(out / 'flow.safetensors'))
    assert est(_texture(0)[:64, :128], _texture(0)[:64, :128]).shape == (2, 64, 128)
    ckpt = out / 'checkpoint.safetensors'
    assert json.loads(ckpt.with_suffix('.json').read_text())['step'] == 3
    assert train_flow_main(args + ['--steps', '5', '--resume', str(ckpt)]) == 0
    assert load_flow_model(out / 'flow.safetensors')[1]['training']['steps'] == 5


def test_training_command_refuses_bad_config_in_one_line(tmp_path: Path, capsys) -> None:
    assert train_flow_main(['--no_such_key', '1', '--output_dir', str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('flow2seg-train-flow: error:') and 'no_such_key' in err
    assert len(err.splitlines()) == 1


def test_mixed_flow_answers_each_call_with_one_of_its_methods() -> None:
    prev = _texture(7)
    cur = _warp_affine(prev, np.array([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]]))
    mixed = make_flow_estimator('mixed', 'dis/medium+learned')
    direct = {'dis/medium': make_flow_estimator('dis', 'medium')(prev, cur),
              'learned': make_flow_estimator('learned', '')(prev, cur)}
    torch.manual_seed(0)
    seen = set()
    for _ in range(12):
        flow = mixed(prev, cur)
        torch.testing.assert_close(flow, direct[mixed.last])
        seen.add(mixed.last)
    assert seen == {'dis/medium', 'learned'}
    with pytest.raises(ValueError, match='two or more'):
        make_flow_estimator('mixed', 'dis/medium')
