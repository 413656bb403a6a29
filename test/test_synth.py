"""Tests of the pybullet sequence generator (tiny sequences: 2 x 3 frames at 128x64).

The ground-truth flow itself is checked in test_synth_flow.py, its file format in test_flowio.py.
"""
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from flow2seg_ros.data import synth
from flow2seg_ros.data.flowio import read_flow_png

SIZE = (128, 64)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*.png'))}


@pytest.fixture(scope='module')
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp('synth_a')
    summary = synth.generate(out, sequences=2, frames=3, size=SIZE, seed=7, split='train',
                             progress=False)
    assert summary['frames'] == 6
    return out


def test_layout_and_info(dataset: Path) -> None:
    for seq in range(2):
        for frame in range(3):
            stem = f'synth7_{seq:06d}_{frame:06d}'
            img = cv2.imread(str(dataset / 'leftImg8bit_sequence/train/synth7' /
                                 f'{stem}_leftImg8bit.png'), cv2.IMREAD_UNCHANGED)
            lbl = cv2.imread(str(dataset / 'gtFine/train/synth7' /
                                 f'{stem}_gtFine_labelIds.png'), cv2.IMREAD_UNCHANGED)
            assert img.shape == (SIZE[1], SIZE[0], 3) and img.dtype == np.uint8
            assert lbl.shape == (SIZE[1], SIZE[0]) and lbl.dtype == np.uint8
            flow_dir = dataset / 'flow/train/synth7'
            if frame == 0:                  # no previous frame, no flow
                assert not (flow_dir / f'{stem}_flow.png').exists()
                continue
            flow, valid = read_flow_png(flow_dir / f'{stem}_flow.png', expected_size=SIZE)
            moving = cv2.imread(str(flow_dir / f'{stem}_moving.png'), cv2.IMREAD_UNCHANGED)
            assert moving.shape == (SIZE[1], SIZE[0]) and moving.dtype == np.uint8
            assert set(np.unique(moving).tolist()) <= {0, 1}
            assert valid.mean() > 0.5 and np.abs(flow[:, valid]).max() > 0.1
            assert set(np.unique(lbl[moving > 0]).tolist()) <= set(synth.MOVING_LABEL_IDS)
    info = json.loads((dataset / 'sequence_info.json').read_text())
    assert info['fps'] == synth.FPS
    assert info['splits']['train']['size'] == list(SIZE)
    assert info['splits']['train']['sequences'] == 2
    assert info['splits']['train']['flow'] is True
    assert 'kitti' in info['splits']['train']['flow_format']


def test_same_seed_gives_identical_pngs(dataset: Path, tmp_path: Path) -> None:
    synth.generate(tmp_path, sequences=2, frames=3, size=SIZE, seed=7, split='train',
                   progress=False)
    first, second = _files(dataset), _files(tmp_path)
    assert len(first) == 12 + 2 * 2 * 2           # images, labels; flow and mask of frames 1, 2
    assert first == second


def test_other_seed_gives_other_scenes(dataset: Path, tmp_path: Path) -> None:
    synth.generate(tmp_path, sequences=1, frames=1, size=SIZE, seed=8, split='train',
                   progress=False)
    a = cv2.imread(str(dataset / 'leftImg8bit_sequence/train/synth7/'
                                 'synth7_000000_000000_leftImg8bit.png'))
    b = cv2.imread(str(tmp_path / 'leftImg8bit_sequence/train/synth8/'
                                  'synth8_000000_000000_leftImg8bit.png'))
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 5


def test_label_ids_are_known_and_varied(dataset: Path) -> None:
    known = set(synth.LABEL_IDS.values())
    seen = set()
    for path in sorted((dataset / 'gtFine').rglob('*_gtFine_labelIds.png')):
        lbl = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        ids = set(np.unique(lbl).tolist())
        assert ids <= known, f'{path}: unexpected ids {ids - known}'
        assert len(ids) > 3, f'{path}: only {ids}'
        seen |= ids
    assert {7, 8, 23} <= seen                       # road, sidewalk, sky
    assert seen & set(synth.MOVING_LABEL_IDS), 'no car or person in any frame'


def test_annotate_last_and_cli(tmp_path: Path) -> None:
    rc = synth.main(['--out', str(tmp_path), '--sequences', '1', '--frames', '3', '--size',
                     '64x32', '--seed', '1', '--split', 'val', '--annotate', 'last',
                     '--no-progress'])
    assert rc == 0
    images = sorted((tmp_path / 'leftImg8bit_sequence/val/synth1').glob('*.png'))
    labels = sorted((tmp_path / 'gtFine/val/synth1').glob('*.png'))
    assert [p.name for p in images] == [f'synth1_000000_{i:06d}_leftImg8bit.png'
                                        for i in range(3)]
    assert [p.name for p in labels] == ['synth1_000000_000002_gtFine_labelIds.png']
    assert cv2.imread(str(images[0])).shape == (32, 64, 3)
    assert len(list((tmp_path / 'flow/val/synth1').glob('*_flow.png'))) == 2


def test_no_flow_writes_the_same_images_without_flow(dataset: Path, tmp_path: Path) -> None:
    rc = synth.main(['--out', str(tmp_path), '--sequences', '2', '--frames', '3', '--size',
                     '128x64', '--seed', '7', '--no-flow', '--no-progress'])
    assert rc == 0
    assert not (tmp_path / 'flow').exists()
    with_flow = {k: v for k, v in _files(dataset).items() if not k.startswith('flow')}
    assert _files(tmp_path) == with_flow
    info = json.loads((tmp_path / 'sequence_info.json').read_text())
    assert info['splits']['train']['flow'] is False


@pytest.mark.parametrize('kwargs, message', [
    ({'sequences': 0}, 'sequences must be >= 1'),
    ({'frames': 0}, 'frames must be >= 1'),
    ({'annotate': 'some'}, "annotate must be 'all' or 'last'"),
    ({'size': (8, 8)}, 'at least 16x16'),
])
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = dict(sequences=1, frames=1, size=SIZE, seed=0, split='train', progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        synth.generate(tmp_path, **args)


def test_parse_size() -> None:
    assert synth.parse_size('512x256') == (512, 256)
    with pytest.raises(ValueError, match='WxH'):
        synth.parse_size('512')


def test_cli_errors_are_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        synth.main(['--out', str(tmp_path), '--size', '8x8'])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "flow2seg-synth: error: argument --size: size must be at least 16x16, got '8x8'" \
        in err and 'Traceback' not in err
    blocked = tmp_path / 'a_file'
    blocked.write_text('')
    assert synth.main(['--out', str(blocked / 'data'), '--sequences', '1', '--frames', '1',
                       '--size', '32x16', '--no-progress']) == 2
    err = capsys.readouterr().err
    assert err.startswith('flow2seg-synth: error: ') and str(blocked) in err
    assert 'Traceback' not in err
    assert synth.main(['--out', str(tmp_path), '--split', '../up', '--no-progress']) == 2
    err = capsys.readouterr().err
    assert "split must be a plain folder name, got '../up'" in err and 'Traceback' not in err


def test_movers_move_independently_of_static_scene() -> None:
    import pybullet as p

    with synth.SynthSequence(3, frames=4, size=(64, 32)) as scene:
        assert scene.movers, 'a sequence without moving objects'
        client = scene._client

        def positions(bodies: list[int]) -> np.ndarray:
            return np.array([p.getBasePositionAndOrientation(b, physicsClientId=client)[0]
                             for b in bodies])

        static = scene.static_bodies
        scene.render(0)
        static0 = positions(static)
        movers0 = positions([m.parts[0][0] for m in scene.movers])
        cam0 = np.array(scene.camera_pose(0)[0])
        scene.render(3)
        static3 = positions(static)
        movers3 = positions([m.parts[0][0] for m in scene.movers])
        cam3 = np.array(scene.camera_pose(3)[0])

        np.testing.assert_array_equal(static0, static3)
        dt = 3 / synth.FPS
        cam_v = (cam3 - cam0) / dt
        assert np.linalg.norm(cam_v) > 3.0              # the camera drives (m/s)
        mover_v = (movers3 - movers0) / dt
        walking = [m.gait > 0 or m.label == synth.LABEL_IDS['car'] for m in scene.movers]
        speeds = np.linalg.norm(mover_v, axis=1)[walking]
        assert (speeds > 0.5).all(), f'movers standing still: {speeds}'
        # The static scene does not move in the world, so a moving object's world velocity is
        # its motion relative to the static scene; it also differs from the camera's.
        assert (np.linalg.norm(mover_v - cam_v, axis=1)[walking] > 0.1).all()
        # Cars and walkers face where they go (within a half turn for oncoming traffic).
        m = scene.movers[0]
        x0, y0, yaw0 = m.pose(0.0)
        x1, y1, _ = m.pose(0.1)
        heading = math.atan2(y1 - y0, x1 - x0)
        assert abs(math.remainder(heading - yaw0, 2 * math.pi)) < 0.2


def test_moving_object_masks_change_between_frames() -> None:
    moved = False
    with synth.SynthSequence(5, frames=3, size=SIZE) as scene:
        prev = None
        for frame in range(3):
            rgb, labels = scene.render(frame)
            assert rgb.shape == (SIZE[1], SIZE[0], 3)
            mask = np.isin(labels, synth.MOVING_LABEL_IDS)
            if prev is not None and (mask.any() or prev.any()):
                moved |= bool((mask != prev).any())
            prev = mask
    assert moved, 'no moving object changed its image footprint'
