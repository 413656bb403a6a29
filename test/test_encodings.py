"""Image message conversion: every encoding against an independent reference, and bad input."""

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from flow2seg_ros.encodings import (
    compressed_msg_to_rgb, image_msg_from_array, image_msg_to_array, image_msg_to_frame,
    image_msg_to_rgb, ImageFormatError, MessageBuffers, mono_to_image_fields, parallel_copy,
    PARALLEL_COPY_BYTES, rgb_to_image_fields)


def _msg(encoding, array, *, pad=0, bigendian=False, step=None, data=None):
    """An Image-like object holding ``array`` (H, W[, C]) with ``pad`` junk bytes per row."""
    arr = np.asarray(array)
    if arr.dtype.itemsize > 1:
        arr = arr.astype(arr.dtype.newbyteorder('>' if bigendian else '<'))
    h = arr.shape[0]
    rows = arr.reshape(h, -1).view(np.uint8).reshape(h, -1)
    junk = np.full((h, pad), 0xAB, np.uint8)
    raw = np.concatenate([rows, junk], axis=1)
    return SimpleNamespace(
        encoding=encoding, height=h, width=arr.shape[1],
        step=raw.shape[1] if step is None else step, is_bigendian=int(bigendian),
        data=raw.tobytes() if data is None else data)


@pytest.fixture
def rgb():
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)


@pytest.mark.parametrize('pad', [0, 6])
def test_rgb_family(rgb, pad):
    alpha = np.full(rgb.shape[:2] + (1,), 77, np.uint8)
    cases = {
        'rgb8': rgb,
        'bgr8': rgb[..., ::-1],
        '8UC3': rgb[..., ::-1],  # cv_bridge's display rule: 8UC3 is bgr8
        'rgba8': np.concatenate([rgb, alpha], axis=2),
        'bgra8': np.concatenate([rgb[..., ::-1], alpha], axis=2),
    }
    for encoding, packed in cases.items():
        out = image_msg_to_rgb(_msg(encoding, packed, pad=pad), use_cv_bridge=False)
        assert out.dtype == np.uint8 and out.shape == rgb.shape, encoding
        np.testing.assert_array_equal(out, rgb, err_msg=encoding)


def test_mono8_replicated(rgb):
    gray = rgb[..., 0]
    out = image_msg_to_rgb(_msg('mono8', gray, pad=3), use_cv_bridge=False)
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=2))


@pytest.mark.parametrize('bigendian', [False, True])
@pytest.mark.parametrize('encoding', ['mono16', '16UC1'])
def test_mono16_scaled_like_cv_bridge(encoding, bigendian):
    # cv_bridge: convertTo(CV_8U, 255/65535) = round(v / 257)
    values = np.array([[0, 128, 129, 257, 385, 386], [1000, 30000, 65278, 65407, 65408, 65535]],
                      np.uint16)
    out = image_msg_to_rgb(_msg(encoding, values, pad=4, bigendian=bigendian),
                           use_cv_bridge=False)
    expected = np.floor(values.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 0], expected)
    np.testing.assert_array_equal(out[..., 2], expected)
    assert expected[0, 1] == 0 and expected[0, 2] == 1 and expected[1, 5] == 255


def _pack_422(y, u, v, order):
    """Pack per-pixel Y and per-pair U, V into UYVY or YUYV bytes, shape (H, W, 2)."""
    h, w = y.shape
    out = np.zeros((h, w, 2), np.uint8)
    out[..., 1 if order == 'uyvy' else 0] = y
    chroma = np.zeros((h, w), np.uint8)
    chroma[:, 0::2], chroma[:, 1::2] = u, v
    out[..., 0 if order == 'uyvy' else 1] = chroma
    return out


@pytest.mark.parametrize('uyvy_name,yuyv_name', [('yuv422', 'yuv422_yuy2'), ('uyvy', 'yuyv')])
def test_yuv422_byte_orders(uyvy_name, yuyv_name):
    h, w = 4, 8
    y = np.tile(np.linspace(40, 220, w).astype(np.uint8), (h, 1))
    u = np.full((h, w // 2), 100, np.uint8)
    v = np.full((h, w // 2), 200, np.uint8)  # strong red chroma
    a = image_msg_to_rgb(_msg(uyvy_name, _pack_422(y, u, v, 'uyvy'), pad=2), use_cv_bridge=False)
    b = image_msg_to_rgb(_msg(yuyv_name, _pack_422(y, u, v, 'yuyv')), use_cv_bridge=False)
    np.testing.assert_array_equal(a, b)
    assert (a[..., 0].astype(int) > a[..., 2].astype(int) + 50).all()  # V > 128: red
    assert (np.diff(a[..., 1].astype(int), axis=1) > 0).all()  # brighter with Y
    # read with the wrong byte order the picture is different
    c = image_msg_to_rgb(_msg(yuyv_name, _pack_422(y, u, v, 'uyvy')), use_cv_bridge=False)
    assert np.abs(c.astype(int) - a.astype(int)).max() > 50


def _mosaic(rgb, pattern):
    """A Bayer mosaic in ROS's naming: ``pattern`` lists the top-left 2x2 cell row by row."""
    out = np.zeros(rgb.shape[:2], np.uint8)
    for i, c in enumerate(pattern):
        dy, dx = divmod(i, 2)
        out[dy::2, dx::2] = rgb[dy::2, dx::2, 'rgb'.index(c)]
    return out


@pytest.mark.parametrize('pattern', ['rggb', 'bggr', 'gbrg', 'grbg'])
def test_bayer_patterns(pattern):
    colour = np.array([200, 100, 30], np.uint8)
    flat = np.broadcast_to(colour, (8, 12, 3))
    out = image_msg_to_rgb(_msg(f'bayer_{pattern}8', _mosaic(flat, pattern), pad=4),
                           use_cv_bridge=False)
    assert out.shape == (8, 12, 3)
    # demosaicing a uniform colour gives that colour away from the border; a pattern read
    # with OpenCV's name for another pattern swaps red and blue
    np.testing.assert_array_equal(out[2:-2, 2:-2], flat[2:-2, 2:-2])


def test_rclpy_and_rosbags_messages(rgb):
    from sensor_msgs.msg import Image

    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding='bgr8', step=rgb.shape[1] * 3)
    msg.data = rgb[..., ::-1].tobytes()
    np.testing.assert_array_equal(image_msg_to_rgb(msg), rgb)

    from rosbags.typesys import get_typestore, Stores

    store = get_typestore(Stores.ROS2_KILTED)
    types = store.types
    header = types['std_msgs/msg/Header'](
        stamp=types['builtin_interfaces/msg/Time'](sec=1, nanosec=2), frame_id='cam')
    bag_msg = types['sensor_msgs/msg/Image'](
        header=header, height=rgb.shape[0], width=rgb.shape[1], encoding='rgb8',
        is_bigendian=0, step=rgb.shape[1] * 3, data=rgb.reshape(-1).copy())
    np.testing.assert_array_equal(image_msg_to_rgb(bag_msg), rgb)


def test_output_fields_round_trip(rgb):
    fields = rgb_to_image_fields(rgb)
    assert (fields['encoding'], fields['step'], fields['height']) == ('rgb8', 30, 6)
    np.testing.assert_array_equal(image_msg_to_rgb(SimpleNamespace(**fields)), rgb)
    mono = rgb[..., 1].copy()
    fields = mono_to_image_fields(mono)
    assert (fields['encoding'], fields['step']) == ('mono8', 10)
    assert fields['data'] == mono.tobytes()
    with pytest.raises(ValueError, match='mono8'):
        mono_to_image_fields(rgb)


@pytest.mark.parametrize('make,match', [
    (lambda m: setattr(m, 'data', m.data[:-1]), r'59 bytes.*step\*height = 30\*2 = 60 bytes'),
    (lambda m: setattr(m, 'width', 0), r'positive, got 0x2'),
    (lambda m: setattr(m, 'height', 0), r'positive, got 10x0'),
    (lambda m: setattr(m, 'encoding', 'rgb9'), r"unknown image encoding 'rgb9'"),
    (lambda m: setattr(m, 'step', 29), r'step 29 is smaller than a row of 10 px x 3 bytes = 30'),
])
def test_bad_messages_named(make, match):
    msg = _msg('rgb8', np.zeros((2, 10, 3), np.uint8))
    make(msg)
    with pytest.raises(ImageFormatError, match=match):
        image_msg_to_rgb(msg, use_cv_bridge=False)


def test_odd_width_yuv_refused():
    msg = _msg('yuv422', np.zeros((2, 5, 2), np.uint8))
    with pytest.raises(ImageFormatError, match="5x2 'yuv422'"):
        image_msg_to_rgb(msg, use_cv_bridge=False)


def test_compressed(rgb):
    ok, png = cv2.imencode('.png', rgb[..., ::-1].copy())
    assert ok
    out = compressed_msg_to_rgb(SimpleNamespace(format='png', data=png.tobytes()))
    np.testing.assert_array_equal(out, rgb)
    flat = np.full((16, 16, 3), (200, 40, 90), np.uint8)
    ok, jpg = cv2.imencode('.jpg', flat[..., ::-1].copy(), [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = compressed_msg_to_rgb(SimpleNamespace(format='jpeg', data=jpg.tobytes()))
    assert np.abs(out.astype(int) - flat).max() <= 4
    with pytest.raises(ImageFormatError, match=r'cannot decode compressed image of 9 bytes'):
        compressed_msg_to_rgb(SimpleNamespace(format='jpeg', data=b'not a jpg'))
    with pytest.raises(ImageFormatError, match='empty'):
        compressed_msg_to_rgb(SimpleNamespace(format='png', data=b''))


@pytest.mark.parametrize('pad', [0, 6])
def test_frames_for_the_device_path_keep_bgr_as_it_is(rgb, pad):
    """bgr8 goes to the device path unconverted (swapped there); others become RGB."""
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    pixels, is_bgr = image_msg_to_frame(_msg('bgr8', bgr, pad=pad))
    assert is_bgr and pixels.flags.c_contiguous
    np.testing.assert_array_equal(pixels, bgr)
    for encoding, array in (('rgb8', rgb), ('mono8', rgb[..., 0])):
        pixels, is_bgr = image_msg_to_frame(_msg(encoding, array, pad=pad))
        assert not is_bgr
        np.testing.assert_array_equal(pixels, image_msg_to_rgb(_msg(encoding, array, pad=pad)))
    with pytest.raises(ImageFormatError, match='bytes'):
        image_msg_to_frame(_msg('bgr8', bgr, data=b'\0' * 10))


def test_rclpy_messages_are_filled_in_place():
    """An rclpy Image gets its data in its own buffer (one copy), equal to the array."""
    image_type = pytest.importorskip('sensor_msgs.msg').Image
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    msg = image_msg_from_array(arr, 'rgb8', image_type().header, image_type)
    assert type(msg.data).__name__ == 'array' and msg.step == 21
    np.testing.assert_array_equal(image_msg_to_rgb(msg, use_cv_bridge=False), arr)
    stand_in = image_msg_from_array(arr, 'rgb8', None, SimpleNamespace)
    assert isinstance(stand_in.data, bytes) and stand_in.data == arr.tobytes()


def _image_types():
    types = [SimpleNamespace]
    try:
        from sensor_msgs.msg import Image
        types.append(Image)
    except ImportError:  # pragma: no cover - rclpy is in requirements.txt
        pass
    return types


@pytest.mark.parametrize('image_type', _image_types(), ids=lambda t: t.__name__)
def test_message_buffers_reuse_one_message_per_output(image_type):
    """Each output has one message, reused frame after frame with its buffer (sized once);
    every frame's pixels, fields and header are the frame's own; a new size gets a new
    buffer; outputs do not share."""
    rng = np.random.default_rng(4)
    boxes = MessageBuffers(image_type)
    first_buffer = None
    for i, (h, w) in enumerate([(6, 10), (6, 10), (6, 10), (9, 4), (9, 4)]):
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        labels = rng.integers(0, 19, (h, w), dtype=np.uint8)
        header = SimpleNamespace(frame_id=f'cam{i}')
        a = boxes.message('overlay', rgb, 'rgb8', header)
        b = boxes.message('labels', labels, 'mono8', header)
        assert a is not b and a.header is header and b.header is header
        assert (a.height, a.width, a.step, a.encoding) == (h, w, 3 * w, 'rgb8')
        assert (b.height, b.width, b.step, b.encoding) == (h, w, w, 'mono8')
        np.testing.assert_array_equal(image_msg_to_array(a), rgb)
        np.testing.assert_array_equal(image_msg_to_array(b), labels)
        if i == 0:
            first, first_buffer = a, a.data
        elif i < 3:
            assert a is first and a.data is first_buffer  # the same message and buffer
        else:
            assert len(a.data) == h * w * 3
    with pytest.raises(ValueError, match='rgb8'):
        boxes.message('overlay', labels, 'rgb8', None)


@pytest.mark.parametrize('threads', [0, 1, 3])
def test_parallel_copy_equals_copy(threads):
    """Large copies are split in chunks over threads; every byte lands where it belongs."""
    rng = np.random.default_rng(5)
    n = 3 * PARALLEL_COPY_BYTES + 12345
    src = rng.integers(0, 256, n, dtype=np.uint8)
    dst = np.zeros(n, np.uint8)
    parallel_copy(dst, src, threads=threads)
    np.testing.assert_array_equal(dst, src)
    small = np.zeros(10, np.uint8)
    parallel_copy(small, src[:10], threads=threads)
    np.testing.assert_array_equal(small, src[:10])
