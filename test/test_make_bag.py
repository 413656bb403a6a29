"""flow2seg-make-bag: sequence folders -> rosbag2 bags (sqlite3, mcap) that read back exactly."""
from pathlib import Path

import numpy as np
import pytest

from flow2seg_ros.bagio import (
    BagReader, COMPRESSED, IMAGE, image_message, rgb_to_encoding, STRING, WRITE_ENCODINGS)
from flow2seg_ros.classes import cityscapes_classes
from flow2seg_ros.data.cityscapes import SequenceDataset
from flow2seg_ros.encodings import compressed_msg_to_rgb, image_msg_to_rgb
from flow2seg_ros.make_bag import main, make_bag

RATE = 17.0


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    """2 synthetic sequences x 4 frames at 128x64, every frame labelled."""
    from flow2seg_ros.data.synth import generate

    root = tmp_path_factory.mktemp('synth')
    generate(root, sequences=2, frames=4, size=(128, 64), seed=7, split='val', progress=False)
    return root


def _read(bag):
    out = {}
    with BagReader(bag) as reader:
        topics = reader.topics
        for topic, t, raw in reader.messages(list(topics)):
            out.setdefault(topic, []).append((t, reader.deserialize(raw, topics[topic].msgtype)))
    return topics, out


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_bag_holds_every_frame_with_increasing_stamps_and_labels(dataset, tmp_path, storage):
    bag = tmp_path / 'bag'
    summary = make_bag(dataset, bag, storage=storage, progress=False)
    assert summary['frames'] == 8 and summary['labels'] == 8 and summary['rate'] == RATE
    assert (bag / 'metadata.yaml').read_text().count(f'storage_identifier: {storage}') == 1
    topics, msgs = _read(bag)
    assert topics['/camera/image_raw'].msgtype == IMAGE
    assert topics['/camera/labels'].msgtype == IMAGE
    assert topics['/camera/label_info'].msgtype == STRING
    images, labels = msgs['/camera/image_raw'], msgs['/camera/labels']
    assert len(images) == len(labels) == 8
    stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for _, m in images]
    gaps = np.diff(stamps) / 1e9
    # 1/17 s within a sequence, more than a second between the two sequences
    np.testing.assert_allclose(np.delete(gaps, 3), 1 / RATE, atol=1e-6)
    assert gaps[3] > 1.0
    assert [t for t, _ in images] == stamps  # bag time = stamp
    assert all(m.header.frame_id == 'camera' for _, m in images)
    assert [m.header.stamp for _, m in labels] == [m.header.stamp for _, m in images]

    ds = SequenceDataset(dataset, 'val', classes=cityscapes_classes(), annotated_only=False)
    paths = [(img, lbl) for seq in ds for img, lbl in zip(seq.images, seq.labels)]
    for (_, img_msg), (_, lbl_msg), (img_path, lbl_path) in zip(images, labels, paths):
        assert img_msg.encoding == 'rgb8' and lbl_msg.encoding == 'mono8'
        np.testing.assert_array_equal(image_msg_to_rgb(img_msg), ds.read_image(img_path))
        lbl = np.asarray(lbl_msg.data).reshape(lbl_msg.height, lbl_msg.width)
        np.testing.assert_array_equal(lbl, ds.read_label(lbl_path))
    assert set(np.unique(lbl)) <= set(range(19)) | {255}


@pytest.mark.parametrize('fmt', ['png', 'jpeg'])
def test_compressed_bag_decodes_to_the_frames(dataset, tmp_path, fmt):
    bag = tmp_path / 'bag'
    make_bag(dataset, bag, storage='mcap', compressed=True, compressed_format=fmt,
             labels_topic=None, rate=10.0, max_sequences=1, progress=False)
    topics, msgs = _read(bag)
    assert set(topics) == {'/camera/image_raw'}
    assert topics['/camera/image_raw'].msgtype == COMPRESSED
    ds = SequenceDataset(dataset, 'val', annotated_only=False)
    frames = [ds.read_image(p) for p in ds[0].images]
    got = [compressed_msg_to_rgb(m) for _, m in msgs['/camera/image_raw']]
    assert len(got) == 4
    assert np.diff([t for t, _ in msgs['/camera/image_raw']]).tolist() == [100_000_000] * 3
    for a, b in zip(got, frames):
        err = np.abs(a.astype(int) - b).mean()
        assert err == 0 if fmt == 'png' else err < 6


def _smooth_rgb(h=32, w=48):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 5, yy * 7, (xx + yy) * 3], -1).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize('encoding', WRITE_ENCODINGS)
def test_every_written_encoding_decodes_back(encoding):
    rgb = _smooth_rgb()
    msg = image_message(rgb_to_encoding(rgb, encoding), encoding, 5, 'camera')
    back = image_msg_to_rgb(msg, use_cv_bridge=False)
    assert back.shape == rgb.shape
    err = np.abs(back.astype(int) - rgb).mean()
    if encoding in ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'rgb16', 'bgr16'):
        assert err == 0
    elif encoding.startswith('mono'):
        grey = rgb.mean(-1)
        assert np.abs(back[..., 0] - grey).max() < 40 and (back[..., 0] == back[..., 2]).all()
    else:  # YUV 4:2:2 and Bayer keep the picture within a few levels on a smooth image
        assert err < 8, err


def test_bgr8_bag_through_the_cli(dataset, tmp_path, capsys):
    bag = tmp_path / 'bgr'
    assert main([str(dataset), '--out', str(bag), '--encoding', 'bgr8', '--labels-topic', '',
                 '--image-topic', '/cam/image', '--no-progress']) == 0
    assert 'wrote' in capsys.readouterr().out
    topics, msgs = _read(bag)
    assert set(topics) == {'/cam/image'}
    _, first = msgs['/cam/image'][0]
    assert first.encoding == 'bgr8'
    ds = SequenceDataset(dataset, 'val', annotated_only=False)
    np.testing.assert_array_equal(image_msg_to_rgb(first), ds.read_image(ds[0].images[0]))


@pytest.mark.parametrize('case', ['missing_folder', 'existing_bag', 'bad_split'])
def test_bad_input_exits_with_a_clear_message(dataset, tmp_path, capsys, case):
    out = tmp_path / 'bag'
    folder = str(dataset)
    extra = []
    if case == 'missing_folder':
        folder = str(tmp_path / 'nowhere')
        expected = f'sequence folder not found: {Path(folder)}'
    elif case == 'existing_bag':
        out.mkdir()
        expected = 'exists already'
    else:
        extra = ['--split', 'train']
        expected = "split 'train' not found"
    assert main([folder, '--out', str(out), '--no-progress'] + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith('flow2seg-make-bag: error: ') and expected in err
    assert 'Traceback' not in err
