"""v2 scenes of the generator: classes, coverage, articulated people, determinism, exact flow."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from flow2seg_ros.data import synth
from flow2seg_ros.data.synth_flow import ground_truth_flow

SIZE = (128, 64)


@pytest.fixture(scope='module')
def v2_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp('synth_v2')
    synth.generate(out, sequences=8, frames=2, size=SIZE, seed=31, split='train', progress=False,
                   scenes='v2', flow=False)
    return out


def test_v2_shows_the_cityscapes_classes_and_reports_coverage(v2_set: Path) -> None:
    labels = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
              for p in sorted(v2_set.glob('gtFine/train/*/*_labelIds.png'))]
    assert len(labels) == 16
    seen = set(np.unique(np.stack(labels)).tolist())
    assert seen <= set(synth.LABEL_IDS_V2.values())
    # Of the 19 classes, these few tiny frames of 8 sequences already show most.
    assert len(seen) >= 16, sorted(set(synth.LABEL_IDS_V2.values()) - seen)
    entry = json.loads((v2_set / 'sequence_info.json').read_text())['splits']['train']
    assert entry['scenes'] == 'v2' and len(entry['coverage']) == 19
    for name, lid in synth.LABEL_IDS_V2.items():
        frames = sum(bool((lbl == lid).any()) for lbl in labels)
        pixels = sum(int((lbl == lid).sum()) for lbl in labels)
        assert entry['coverage'][name]['frames_pct'] == round(100 * frames / 16, 2), name
        assert entry['coverage'][name]['pixels_pct'] == pytest.approx(
            100 * pixels / (16 * SIZE[0] * SIZE[1]), abs=1e-3), name
    table = synth.format_coverage(entry['coverage'])
    assert 'traffic_light' in table and len(table.splitlines()) == 20


def test_v2_same_seed_same_pngs_and_v1_is_the_default(v2_set: Path, tmp_path: Path) -> None:
    synth.generate(tmp_path / 'a', sequences=8, frames=2, size=SIZE, seed=31, split='train',
                   progress=False, scenes='v2', flow=False)
    for p in sorted(v2_set.rglob('*.png')):
        assert (tmp_path / 'a' / p.relative_to(v2_set)).read_bytes() == p.read_bytes(), p
    synth.generate(tmp_path / 'v1', sequences=1, frames=2, size=SIZE, seed=31, split='train',
                   progress=False, flow=False)
    synth.generate(tmp_path / 'v1b', sequences=1, frames=2, size=SIZE, seed=31, split='train',
                   progress=False, flow=False, scenes='v1')
    v1 = sorted((tmp_path / 'v1').rglob('*.png'))
    assert v1 and all((tmp_path / 'v1b' / p.relative_to(tmp_path / 'v1')).read_bytes()
                      == p.read_bytes() for p in v1)
    a = cv2.imread(str(v1[0]))
    b = cv2.imread(str(v2_set / v1[0].relative_to(tmp_path / 'v1')))
    assert not np.array_equal(a, b), 'v2 drew the v1 scene'


def test_unknown_scene_family_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ValueError, match='scenes must be one of v1, v2'):
        synth.generate(tmp_path, sequences=1, frames=1, seed=0, split='x', scenes='v3',
                       progress=False)
    with pytest.raises(ValueError, match='scenes must be one of'):
        synth.SynthSequence(0, 1, SIZE, scenes='v0')
    with pytest.raises(SystemExit) as exc:
        synth.main(['--out', str(tmp_path), '--scenes', 'v3'])
    assert exc.value.code == 2 and 'v3' in capsys.readouterr().err


def _relative(pose_a: np.ndarray, pose_b: np.ndarray) -> np.ndarray:
    return np.linalg.inv(pose_a) @ pose_b


def test_walkers_swing_their_legs_standing_people_and_parked_bikes_stay() -> None:
    person, rider = synth.LABEL_IDS_V2['person'], synth.LABEL_IDS_V2['rider']
    with synth.SynthSequence(8, frames=6, size=(64, 32), scenes='v2') as scene:
        walkers = [m for m in scene.movers if m.label == person]
        riders = [m for m in scene.movers
                  if any(scene._labels[b] == rider for b, _ in m.parts)]
        scene.place(0)
        before = scene.body_poses()
        scene.place(5)
        after = scene.body_poses()
    assert walkers and riders, 'sequence 8 should have pedestrians and riders'
    swung = 0
    for m in walkers:
        assert len(m.parts) == 8 and m.animate is not None     # torso, head, 2 x 2 legs, arms
        torso = m.parts[0][0]
        rel = [np.abs(_relative(before[torso], before[b]) - _relative(after[torso], after[b]))
               .max() for b, _ in m.parts[2:]]
        if np.allclose(before[torso], after[torso]):
            assert max(rel) < 1e-9                              # standing: a static body
        else:
            # Walking: every limb moves relative to the torso (legs swing and bend, arms too).
            assert min(rel) > 1e-3, rel
            swung += 1
    assert swung > 0
    for m in riders:
        # The two-wheeler and its rider move together; the rider's legs move relative to it.
        frame_part = m.parts[0][0]
        assert not np.allclose(before[frame_part], after[frame_part])


def _warp(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample ``img`` (the previous frame) at each pixel + flow: the current frame, predicted."""
    h, w = flow.shape[1:]
    mx = (np.arange(w, dtype=np.float32)[None, :] + flow[0]).astype(np.float32)
    my = (np.arange(h, dtype=np.float32)[:, None] + flow[1]).astype(np.float32)
    return cv2.remap(img, mx, my, cv2.INTER_LINEAR).astype(np.float32)


@pytest.mark.parametrize('seed', [8, 12])
def test_ground_truth_flow_is_exact_on_v2_scenes_and_articulated_limbs(seed: int) -> None:
    size = (256, 128)
    person = synth.LABEL_IDS_V2['person']
    with synth.SynthSequence(seed, 3, size, scenes='v2') as scene:
        scene.noise_sigma, scene.blur = 0.0, False      # noise is not motion
        frames = [scene.render_frame(f) for f in range(3)]
        limbs = {b for m in scene.movers if m.label == person for b, _ in m.parts[2:]}
    err = {k: [] for k in ('exact', 'none', 'dx1', 'dy1', 'limbs', 'limbs_none', 'limbs_dx1')}
    for prev, cur in zip(frames, frames[1:]):
        flow, valid, moving = ground_truth_flow(prev, cur)
        assert valid.mean() > 0.7
        assert set(np.unique(cur.labels[moving]).tolist()) <= set(synth.MOVING_LABEL_IDS_V2)
        grey = cv2.cvtColor(cur.rgb, cv2.COLOR_RGB2GRAY)
        textured = valid & (np.abs(cv2.Laplacian(grey, cv2.CV_32F)) > 10)
        rgb = cur.rgb.astype(np.float32)
        scene_err = {name: np.abs(_warp(prev.rgb, f) - rgb).mean(-1) for name, f in (
            ('exact', flow), ('none', np.zeros_like(flow)),
            ('dx1', flow + np.float32([1, 0])[:, None, None]),
            ('dy1', flow + np.float32([0, 1])[:, None, None]))}
        limb = textured & moving & np.isin(cur.body_ids, list(limbs))
        for name in ('exact', 'none', 'dx1', 'dy1'):
            err[name].append(scene_err[name][textured])
        err['limbs'].append(scene_err['exact'][limb])
        err['limbs_none'].append(scene_err['none'][limb])
        err['limbs_dx1'].append(scene_err['dx1'][limb])
    mean = {k: float(np.concatenate(v).mean()) for k, v in err.items() if sum(map(len, v))}
    assert sum(len(v) for v in err['limbs']) > 20, 'too few limb pixels to check'
    assert mean['exact'] < 0.8 * mean['none'], mean
    assert mean['exact'] < mean['dx1'] and mean['exact'] < mean['dy1'], mean
    assert mean['limbs'] < 0.8 * mean['limbs_none'] and mean['limbs'] < mean['limbs_dx1'], mean


def test_cli_prints_the_coverage_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert synth.main(['--out', str(tmp_path), '--scenes', 'v2', '--sequences', '1',
                       '--frames', '1', '--size', '64x32', '--seed', '3', '--coverage',
                       '--no-flow', '--no-progress']) == 0
    out = capsys.readouterr().out
    table = out[out.index('class'):].splitlines()
    assert len(table) == 20 and table[0].split() == ['class', 'frames', '%', 'pixels', '%']
    sky = next(line for line in table if line.startswith('sky')).split()
    assert float(sky[1]) == 100.0                  # one frame, and it shows sky
    entry = json.loads((tmp_path / 'sequence_info.json').read_text())['splits']['train']
    assert entry['coverage']['sky']['pixels_pct'] == pytest.approx(float(sky[2]), abs=1e-3)
