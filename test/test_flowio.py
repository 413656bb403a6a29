"""KITTI flow PNG I/O and the flow-pair dataset."""
from pathlib import Path
import re
import shutil

import cv2
import numpy as np
import pytest

from flow2seg_ros.data import synth
from flow2seg_ros.data.cityscapes import DatasetError
from flow2seg_ros.data.flow_pairs import FlowPairs
from flow2seg_ros.data.flowio import FlowFileError, read_flow_png, read_moving_png, write_flow_png


def test_kitti_png_round_trip_and_channel_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    flow = rng.uniform(-100, 100, (2, 20, 30)).astype(np.float32)
    flow[0, 0, 0], flow[1, 0, 0] = 600.0, -700.0          # beyond KITTI's +-512 px range
    valid = rng.random((20, 30)) > 0.3
    valid[0, 0] = True
    path = tmp_path / 'f_flow.png'
    write_flow_png(path, flow, valid)
    back, back_valid = read_flow_png(path, expected_size=(30, 20))
    assert back.shape == (2, 20, 30) and back.dtype == np.float32
    np.testing.assert_array_equal(back_valid, valid)
    inside = valid.copy()
    inside[0, 0] = False
    np.testing.assert_allclose(back[:, inside], flow[:, inside], atol=1 / 128 + 1e-6)
    assert back[0, 0, 0] == pytest.approx((65535 - 2**15) / 64)
    assert back[1, 0, 0] == pytest.approx(-512.0)
    np.testing.assert_array_equal(back[:, ~valid], 0.0)
    # The PNG itself is R = u, G = v, B = valid (OpenCV's array is BGR).
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.shape == (20, 30, 3)
    i, j = np.argwhere(inside)[0]
    assert raw[i, j, 2] == round(flow[0, i, j] * 64 + 2**15)
    assert raw[i, j, 1] == round(flow[1, i, j] * 64 + 2**15)
    np.testing.assert_array_equal(raw[..., 0], valid.astype(np.uint16))


def test_bad_flow_files_name_the_file(tmp_path: Path) -> None:
    good = tmp_path / 'good_flow.png'
    write_flow_png(good, np.zeros((2, 8, 16), np.float32), np.ones((8, 16), bool))
    with pytest.raises(FlowFileError, match=r'good_flow\.png: expected 32x8 \(WxH\), got 16x8'):
        read_flow_png(good, expected_size=(32, 8))
    corrupt = tmp_path / 'corrupt_flow.png'
    corrupt.write_bytes(good.read_bytes()[:40])
    with pytest.raises(FlowFileError, match=r'corrupt_flow\.png: not a readable PNG'):
        read_flow_png(corrupt)
    eight_bit = tmp_path / 'rgb_flow.png'
    cv2.imwrite(str(eight_bit), np.zeros((8, 16, 3), np.uint8))
    with pytest.raises(FlowFileError, match=r'rgb_flow\.png: expected a 16-bit 3-channel KITTI '
                                            r'flow PNG, got 8-bit with 3 channel'):
        read_flow_png(eight_bit)
    mono = tmp_path / 'mono_flow.png'
    cv2.imwrite(str(mono), np.zeros((8, 16), np.uint16))
    with pytest.raises(FlowFileError, match='got 16-bit with 1 channel'):
        read_flow_png(mono)
    with pytest.raises(FlowFileError, match=r'flow file not found: .*missing_flow\.png'):
        read_flow_png(tmp_path / 'missing_flow.png')
    assert issubclass(FlowFileError, ValueError)
    with pytest.raises(ValueError, match=r'flow must be \(2, H, W\)'):
        write_flow_png(tmp_path / 'x.png', np.zeros((8, 16, 2)), np.ones((8, 16), bool))
    with pytest.raises(ValueError, match='valid must be'):
        write_flow_png(tmp_path / 'x.png', np.zeros((2, 8, 16)), np.ones((8, 15), bool))


@pytest.fixture(scope='module')
def pairs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp('flow_pairs')
    synth.generate(out, sequences=2, frames=3, size=(64, 32), seed=3, split='flowtest',
                   progress=False)
    return out


def test_flow_pairs_reads_what_the_generator_writes(pairs_root: Path) -> None:
    pairs = FlowPairs(pairs_root, 'flowtest')
    assert len(pairs) == 4                        # 2 sequences x (3 frames - the first)
    assert [p.name for p in pairs.pairs] == [f'synth3_{s:06d}_{f:06d}' for s in (0, 1)
                                             for f in (1, 2)]
    sample = pairs[1]
    assert sample['name'] == 'synth3_000000_000002'
    assert sample['prev'].shape == sample['cur'].shape == (32, 64, 3)
    assert sample['prev'].dtype == np.uint8
    assert sample['flow'].shape == (2, 32, 64) and sample['flow'].dtype == np.float32
    assert sample['valid'].dtype == bool and sample['moving'].dtype == bool
    assert sample['valid'].mean() > 0.5
    assert sample['labels'].shape == (32, 64)
    # The pair is the generator's own frames: images 1 and 2 of sequence 0, in that order.
    img_dir = pairs_root / 'leftImg8bit_sequence/flowtest/synth3'
    prev = cv2.imread(str(img_dir / 'synth3_000000_000001_leftImg8bit.png'))
    np.testing.assert_array_equal(sample['prev'], cv2.cvtColor(prev, cv2.COLOR_BGR2RGB))
    assert sum(1 for _ in pairs) == 4


def test_flow_pairs_errors_name_the_path(pairs_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r'no ground-truth flow for split .*flow/train'):
        FlowPairs(pairs_root, 'train')
    with pytest.raises(DatasetError, match='dataset folder not found'):
        FlowPairs(tmp_path / 'nothing', 'flowtest')
    # A copy with one previous frame removed.
    root = tmp_path / 'copy'
    shutil.copytree(pairs_root, root)
    gone = root / 'leftImg8bit_sequence/flowtest/synth3/synth3_000001_000000_leftImg8bit.png'
    gone.unlink()
    message = f'previous frame of flow file .* not found: {re.escape(str(gone))}'
    with pytest.raises(DatasetError, match=message):
        FlowPairs(root, 'flowtest')
    shutil.copy(pairs_root / gone.relative_to(root), gone)
    # A flow file of the wrong size is reported when read, naming the file.
    bad = root / 'flow/flowtest/synth3/synth3_000000_000002_flow.png'
    write_flow_png(bad, np.zeros((2, 16, 32), np.float32), np.ones((16, 32), bool))
    pairs = FlowPairs(root, 'flowtest')
    with pytest.raises(FlowFileError, match=f'{re.escape(str(bad))}: expected 64x32'):
        pairs[1]
    # So is a moving-object mask of the wrong size or with colour channels.
    write_flow_png(bad, np.zeros((2, 32, 64), np.float32), np.ones((32, 64), bool))
    mask = root / 'flow/flowtest/synth3/synth3_000000_000002_moving.png'
    cv2.imwrite(str(mask), np.zeros((16, 32), np.uint8))
    with pytest.raises(DatasetError, match=f'{re.escape(str(mask))}: expected 64x32'):
        pairs[1]
    cv2.imwrite(str(mask), np.zeros((32, 64, 3), np.uint8))
    with pytest.raises(DatasetError, match=f'{re.escape(str(mask))} must be a single-channel'):
        pairs[1]


def test_moving_masks_read_as_bool(tmp_path: Path) -> None:
    mask = np.zeros((4, 6), np.uint8)
    mask[1:3, 2:5] = 1
    cv2.imwrite(str(tmp_path / 'a_moving.png'), mask)
    np.testing.assert_array_equal(read_moving_png(tmp_path / 'a_moving.png', (6, 4)), mask > 0)
    with pytest.raises(FlowFileError, match='moving-object mask not found: .*b_moving.png'):
        read_moving_png(tmp_path / 'b_moving.png')
