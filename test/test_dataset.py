"""Tests of the Cityscapes-layout datasets and the pair augmentation."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from flow2seg_ros.classes import cityscapes_classes
from flow2seg_ros.data import synth
from flow2seg_ros.data.cityscapes import (DatasetError, PairTransform, SequenceDataset,
                                          SequencePairDataset)

CS = cityscapes_classes()


def _write_frame(root: Path, split: str, city: str, seq: int, frame: int, value: int,
                 size: tuple[int, int] = (16, 8)) -> Path:
    path = (root / 'leftImg8bit_sequence' / split / city /
            f'{city}_{seq:06d}_{frame:06d}_leftImg8bit.png')
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros((size[1], size[0], 3), np.uint8)
    img[..., 0] = value                                   # R channel carries the frame number
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return path


def _write_label(root: Path, split: str, city: str, seq: int, frame: int,
                 size: tuple[int, int] = (16, 8)) -> Path:
    path = root / 'gtFine' / split / city / f'{city}_{seq:06d}_{frame:06d}_gtFine_labelIds.png'
    path.parent.mkdir(parents=True, exist_ok=True)
    lbl = np.full((size[1], size[0]), 7, np.uint8)        # road
    lbl[0, 0] = 26                                        # car
    lbl[0, 1] = 4                                         # 'static': no train id
    cv2.imwrite(str(path), lbl)
    return path


@pytest.fixture
def cityscapes_like(tmp_path: Path) -> Path:
    """One 30-frame snippet annotated at its 20th frame (index 19), like real Cityscapes."""
    for frame in range(30):
        _write_frame(tmp_path, 'val', 'aachen', 0, frame, value=frame)
    _write_label(tmp_path, 'val', 'aachen', 0, 19)
    return tmp_path


def test_cityscapes_pairing_20th_frame(cityscapes_like: Path) -> None:
    ds = SequencePairDataset(cityscapes_like, 'val')
    assert len(ds) == 1
    s = ds[0]
    assert s['name'] == 'aachen_000000_000019'
    assert s['image'].shape == (8, 16, 3) and s['image'].dtype == np.uint8
    assert (s['image'][..., 0] == 19).all() and (s['prev'][..., 0] == 18).all()   # RGB order
    assert (s['image'][..., 2] == 0).all()
    lut = CS.label_to_train_lut()
    assert s['label'][0, 0] == lut[26] == 13
    assert s['label'][0, 1] == 255
    assert s['label'][1, 1] == 0                          # road -> train id 0


def test_sequence_dataset_frame_order(cityscapes_like: Path) -> None:
    ds = SequenceDataset(cityscapes_like, 'val')
    assert len(ds) == 1
    rec = ds[0]
    assert rec.frames == tuple(range(30))
    assert [lb is not None for lb in rec.labels] == [i == 19 for i in range(30)]
    assert rec.frame_name(19) == 'aachen_000000_000019'
    img = ds.read_image(rec.images[5])
    assert (img[..., 0] == 5).all()
    assert ds.read_label(rec.labels[19], img.shape)[0, 0] == 13


def test_sequence_dataset_splits_on_gaps(tmp_path: Path) -> None:
    for frame in (0, 1, 2, 10, 11):
        _write_frame(tmp_path, 'val', 'bochum', 3, frame, value=frame)
    _write_label(tmp_path, 'val', 'bochum', 3, 2)
    _write_label(tmp_path, 'val', 'bochum', 3, 11)
    ds = SequenceDataset(tmp_path, 'val')
    assert [r.frames for r in ds] == [(0, 1, 2), (10, 11)]
    assert ds.read_label(ds[0].labels[2]).shape == (8, 16)


def test_generated_sequences_pair_and_skip_first_frames(tmp_path: Path) -> None:
    synth.generate(tmp_path, sequences=2, frames=3, size=(64, 32), seed=2, split='train',
                   progress=False)
    ds = SequencePairDataset(tmp_path, 'train')
    assert len(ds) == 4                                   # frames 1 and 2 of both sequences
    assert len(ds.skipped_first) == 2
    names = [ds[i]['name'] for i in range(len(ds))]
    assert names == ['synth2_000000_000001', 'synth2_000000_000002',
                     'synth2_000001_000001', 'synth2_000001_000002']
    s = ds[1]
    prev_file = cv2.imread(str(tmp_path / 'leftImg8bit_sequence/train/synth2/'
                                          'synth2_000000_000001_leftImg8bit.png'))
    np.testing.assert_array_equal(s['prev'], prev_file[..., ::-1])
    assert set(np.unique(s['label'])) <= set(range(CS.num_classes)) | {255}
    seqs = SequenceDataset(tmp_path, 'train')
    assert [len(r) for r in seqs] == [3, 3]


def test_annotate_last_missing_predecessor(tmp_path: Path) -> None:
    synth.generate(tmp_path, sequences=1, frames=3, size=(64, 32), seed=4, split='val',
                   annotate='last', progress=False)
    ds = SequencePairDataset(tmp_path, 'val')
    assert [ds[0]['name']] == ['synth4_000000_000002']
    missing = tmp_path / 'leftImg8bit_sequence/val/synth4/synth4_000000_000001_leftImg8bit.png'
    missing.unlink()
    with pytest.raises(DatasetError, match='no predecessor frame') as err:
        SequencePairDataset(tmp_path, 'val')
    assert str(missing) in str(err.value)


def test_missing_folder_and_split(tmp_path: Path, cityscapes_like: Path) -> None:
    nowhere = tmp_path / 'nowhere'
    with pytest.raises(DatasetError, match='dataset folder not found') as err:
        SequencePairDataset(nowhere, 'val')
    assert str(nowhere) in str(err.value)
    with pytest.raises(DatasetError, match="split 'train' not found") as err:
        SequencePairDataset(cityscapes_like, 'train')
    assert str(cityscapes_like / 'gtFine' / 'train') in str(err.value)
    with pytest.raises(DatasetError, match='dataset folder not found'):
        SequenceDataset(nowhere, 'val')


def test_no_annotated_frames(tmp_path: Path) -> None:
    _write_frame(tmp_path, 'val', 'aachen', 0, 0, value=0)
    (tmp_path / 'gtFine' / 'val' / 'aachen').mkdir(parents=True)
    with pytest.raises(DatasetError, match='no annotated frames') as err:
        SequencePairDataset(tmp_path, 'val')
    assert str(tmp_path / 'gtFine' / 'val') in str(err.value)
    with pytest.raises(DatasetError, match='no annotated frames'):
        SequenceDataset(tmp_path, 'val')


def test_annotated_frame_without_image(tmp_path: Path) -> None:
    _write_frame(tmp_path, 'val', 'aachen', 0, 0, value=0)
    lbl = _write_label(tmp_path, 'val', 'aachen', 0, 1)
    with pytest.raises(DatasetError, match='has no image') as err:
        SequencePairDataset(tmp_path, 'val')
    assert str(lbl) in str(err.value)


def test_label_size_mismatch(tmp_path: Path) -> None:
    for frame in range(2):
        _write_frame(tmp_path, 'val', 'aachen', 0, frame, value=frame)
    lbl = _write_label(tmp_path, 'val', 'aachen', 0, 1, size=(12, 8))
    ds = SequencePairDataset(tmp_path, 'val')
    with pytest.raises(DatasetError, match='is 12x8 but its image') as err:
        ds[0]
    assert str(lbl) in str(err.value)
    seqs = SequenceDataset(tmp_path, 'val')
    with pytest.raises(DatasetError, match='is 12x8 but its image'):
        seqs.read_label(lbl, (8, 16, 3))


def _block_sample(h: int = 48, w: int = 64) -> dict:
    """Image, predecessor and label that encode the same 8x8 block pattern."""
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 19, (h // 8, w // 8)).astype(np.uint8)
    label = np.kron(blocks, np.ones((8, 8), np.uint8))
    image = np.stack([label * 12, 255 - label * 12, np.full_like(label, 90)], axis=-1)
    prev = image.copy()
    return {'image': image, 'prev': prev, 'label': label, 'name': 'x'}


@pytest.mark.parametrize('seed', range(6))
def test_pair_transform_same_geometry(seed: int) -> None:
    sample = _block_sample()
    t = PairTransform((32, 40), scale_range=(0.75, 1.5), color_jitter=0.0,
                      generator=torch.Generator().manual_seed(seed))
    out = t(sample)
    assert out['image'].shape == (32, 40, 3) and out['prev'].shape == (32, 40, 3)
    assert out['label'].shape == (32, 40) and out['label'].dtype == np.uint8
    np.testing.assert_array_equal(out['image'], out['prev'])
    # Nearest label values only (no blended ids), and where the image is locally flat (inside a
    # block) the label matches the image's encoding of it.
    assert set(np.unique(out['label'])) <= set(np.unique(sample['label'])) | {255}
    r = out['image'][..., 0].astype(int)
    flat = np.zeros_like(r, bool)
    flat[1:-1, 1:-1] = ((r[1:-1, 1:-1] == r[:-2, 1:-1]) & (r[1:-1, 1:-1] == r[2:, 1:-1]) &
                        (r[1:-1, 1:-1] == r[1:-1, :-2]) & (r[1:-1, 1:-1] == r[1:-1, 2:]))
    inside = flat & (out['label'] != 255) & (r % 12 == 0)
    assert inside.sum() > 100
    np.testing.assert_array_equal(r[inside], out['label'][inside].astype(int) * 12)


def test_pair_transform_flip_pad_and_jitter() -> None:
    sample = _block_sample(16, 16)
    sample['prev'] = sample['image'][:, ::-1].copy()     # a different predecessor
    gen = torch.Generator().manual_seed(1)
    t = PairTransform((24, 24), scale_range=(1.0, 1.0), color_jitter=0.4, generator=gen)
    flips = 0
    for _ in range(20):
        out = t(sample)
        assert out['label'].shape == (24, 24)
        # The crop is larger than the image: padding is ignore in the label, black in frames.
        assert (out['label'] == 255).sum() == 24 * 24 - 16 * 16
        pad = out['label'] == 255
        assert (out['image'][pad] == 0).all() and (out['prev'][pad] == 0).all()
        inner = ~pad
        lbl = out['label'][inner].reshape(16, 16)
        if np.array_equal(lbl, sample['label'][:, ::-1]):
            flips += 1
        else:
            np.testing.assert_array_equal(lbl, sample['label'])
        # The same jitter on both frames: the predecessor is still the mirror of the image.
        img = out['image'][inner].reshape(16, 16, 3)
        prev = out['prev'][inner].reshape(16, 16, 3)
        np.testing.assert_array_equal(prev, img[:, ::-1])
    assert 0 < flips < 20


def test_pair_transform_bad_arguments() -> None:
    with pytest.raises(ValueError, match='crop_size'):
        PairTransform((0, 10))
    with pytest.raises(ValueError, match='scale_range'):
        PairTransform((8, 8), scale_range=(2.0, 1.0))
