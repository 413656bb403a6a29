"""Image message conversion with cv_bridge's semantics, without importing ROS.

``image_msg_to_rgb`` accepts any object with the fields of ``sensor_msgs/Image``
(``encoding``, ``height``, ``width``, ``step``, ``is_bigendian``, ``data``), so rclpy messages
and rosbags messages convert alike. Where ROS 2's ``cv_bridge`` is importable the pixel
conversion is ``CvBridge().imgmsg_to_cv2(msg, 'rgb8')``; elsewhere the same conversion table
is applied here with OpenCV:

=========================  ===============================================================
encoding                   conversion to rgb8
=========================  ===============================================================
rgb8, bgr8, rgba8, bgra8   channel reorder / alpha dropped (``cv2.COLOR_*2RGB``)
mono8                      ``cv2.COLOR_GRAY2RGB``
mono16, rgb16, bgr16, ...  colour conversion, then ``convertTo(alpha=255/65535)`` (rounded)
yuv422 / uyvy              ``cv2.COLOR_YUV2RGB_UYVY``
yuv422_yuy2 / yuyv         ``cv2.COLOR_YUV2RGB_YUY2``
bayer_rggb8                ``cv2.COLOR_BayerBG2RGB`` (OpenCV names the pattern by the
bayer_bggr8                ``cv2.COLOR_BayerRG2RGB``  second row's 2nd and 3rd pixels, so
bayer_gbrg8                ``cv2.COLOR_BayerGR2RGB``  ROS's rggb is OpenCV's BG, and so on)
bayer_grbg8                ``cv2.COLOR_BayerGB2RGB``
8UC1, 8UC3, 8UC4, 16UC1    read as mono8, bgr8, bgra8, mono16 (cv_bridge's display rule)
=========================  ===============================================================

Rows are read ``step`` bytes apart (padding skipped) and 16-bit samples honour
``is_bigendian``. Malformed messages raise :class:`ImageFormatError` naming the problem.
"""

import array as pyarray
from concurrent.futures import ThreadPoolExecutor
import os
import threading
from types import SimpleNamespace
from typing import Any, Dict, Optional, Tuple

import cv2
import numpy as np

__all__ = [
    'ImageFormatError',
    'MessageBuffers',
    'NODE_IMAGES',
    'PARALLEL_COPY_BYTES',
    'SUPPORTED_ENCODINGS',
    'compressed_msg_to_rgb',
    'image_fields',
    'image_msg_from_array',
    'image_msg_to_array',
    'image_msg_to_frame',
    'image_msg_to_rgb',
    'mono_to_image_fields',
    'parallel_copy',
    'rgb_to_image_fields',
]


class ImageFormatError(ValueError):
    """An image message that cannot be converted; the message names the problem."""


# encoding -> (sample dtype, channels, OpenCV code to RGB or None)
_TABLE: Dict[str, Tuple[type, int, Optional[int]]] = {
    'rgb8': (np.uint8, 3, None),
    'bgr8': (np.uint8, 3, cv2.COLOR_BGR2RGB),
    'rgba8': (np.uint8, 4, cv2.COLOR_RGBA2RGB),
    'bgra8': (np.uint8, 4, cv2.COLOR_BGRA2RGB),
    'mono8': (np.uint8, 1, cv2.COLOR_GRAY2RGB),
    'mono16': (np.uint16, 1, cv2.COLOR_GRAY2RGB),
    'rgb16': (np.uint16, 3, None),
    'bgr16': (np.uint16, 3, cv2.COLOR_BGR2RGB),
    'rgba16': (np.uint16, 4, cv2.COLOR_RGBA2RGB),
    'bgra16': (np.uint16, 4, cv2.COLOR_BGRA2RGB),
    'yuv422': (np.uint8, 2, cv2.COLOR_YUV2RGB_UYVY),
    'uyvy': (np.uint8, 2, cv2.COLOR_YUV2RGB_UYVY),
    'yuv422_yuy2': (np.uint8, 2, cv2.COLOR_YUV2RGB_YUY2),
    'yuyv': (np.uint8, 2, cv2.COLOR_YUV2RGB_YUY2),
    'bayer_rggb8': (np.uint8, 1, cv2.COLOR_BayerBG2RGB),
    'bayer_bggr8': (np.uint8, 1, cv2.COLOR_BayerRG2RGB),
    'bayer_gbrg8': (np.uint8, 1, cv2.COLOR_BayerGR2RGB),
    'bayer_grbg8': (np.uint8, 1, cv2.COLOR_BayerGB2RGB),
}

# Generic OpenCV type names read as the colour encoding cv_bridge assumes for display.
_ALIASES = {'8UC1': 'mono8', '8UC3': 'bgr8', '8UC4': 'bgra8', '16UC1': 'mono16'}

SUPPORTED_ENCODINGS = tuple(sorted(_TABLE)) + tuple(sorted(_ALIASES))

try:  # ROS 2's cv_bridge where a ROS distribution provides it
    from cv_bridge import CvBridge as _CvBridge  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the installation
    _CvBridge = None


def _canonical_encoding(encoding: Any) -> str:
    name = str(encoding)
    name = _ALIASES.get(name, name)
    if name not in _TABLE:
        name_lower = name.lower()
        if name_lower in _TABLE:
            return name_lower
        raise ImageFormatError(
            f"unknown image encoding '{encoding}' (supported: {', '.join(SUPPORTED_ENCODINGS)})")
    return name


def _validated_rows(msg: Any, dtype: type, channels: int) -> np.ndarray:
    """Return the message's pixels as (H, W, C) native-endian samples, padding removed."""
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageFormatError(
            f'image width and height must be positive, got {width}x{height} (WxH)')
    itemsize = np.dtype(dtype).itemsize
    row_bytes = width * channels * itemsize
    if step < row_bytes:
        raise ImageFormatError(
            f'step {step} is smaller than a row of {width} px x {channels * itemsize} bytes '
            f"= {row_bytes} bytes ('{msg.encoding}')")
    data = msg.data
    if isinstance(data, (list, tuple)):
        buf = np.asarray(data, dtype=np.uint8)
    else:
        buf = np.frombuffer(data, dtype=np.uint8)
    needed = step * height
    if buf.size < needed:
        raise ImageFormatError(
            f'image data is {buf.size} bytes, expected at least step*height = '
            f'{step}*{height} = {needed} bytes')
    rows = buf[:needed].reshape(height, step)[:, :row_bytes]
    if itemsize > 1:
        order = '>' if msg.is_bigendian else '<'
        rows = np.ascontiguousarray(rows).view(np.dtype(dtype).newbyteorder(order))
        rows = rows.astype(dtype)
    return rows.reshape(height, width, channels)


def _to_rgb_opencv(pixels: np.ndarray, code: Optional[int], encoding: str) -> np.ndarray:
    if code is None:
        out = pixels
    else:
        src = pixels[..., 0] if pixels.shape[2] == 1 else pixels
        try:
            out = cv2.cvtColor(np.ascontiguousarray(src), code)
        except cv2.error as exc:
            raise ImageFormatError(
                f"cannot convert a {pixels.shape[1]}x{pixels.shape[0]} '{encoding}' image: "
                f'{exc.err or exc}') from exc
    if out.dtype == np.uint16:
        # cv_bridge: convertTo(CV_8U, 255/65535), rounded to nearest.
        out = np.rint(out.astype(np.float32) * np.float32(255.0 / 65535.0)).astype(np.uint8)
    return np.ascontiguousarray(out, dtype=np.uint8)


def image_msg_to_frame(msg: Any) -> Tuple[np.ndarray, bool]:
    """A frame for a pipeline that swaps channels on the device: ``(pixels, bgr)``.

    ``bgr8`` gives its pixels as they are (no host conversion; ``bgr`` True), any other
    encoding :func:`image_msg_to_rgb` (``bgr`` False).

    Raises:
        ImageFormatError: as :func:`image_msg_to_rgb`.
    """
    if _canonical_encoding(msg.encoding) == 'bgr8':
        return np.ascontiguousarray(_validated_rows(msg, np.uint8, 3)), True
    return image_msg_to_rgb(msg), False


def image_msg_to_rgb(msg: Any, *, use_cv_bridge: Optional[bool] = None) -> np.ndarray:
    """Convert a ``sensor_msgs/Image``-like object to an (H, W, 3) uint8 RGB array.

    Args:
        msg: any object with ``encoding``, ``height``, ``width``, ``step``, ``is_bigendian``
            and ``data`` (bytes, array.array, numpy array or list of ints).
        use_cv_bridge: ``None`` uses cv_bridge where it is importable, ``False`` forces the
            OpenCV path, ``True`` requires cv_bridge.

    Returns:
        A new C-contiguous (H, W, 3) uint8 array in RGB order.

    Raises:
        ImageFormatError: unknown encoding, zero size, a step smaller than a row, data shorter
            than step*height, or a conversion OpenCV refuses (e.g. odd width for yuv422).
    """
    encoding = _canonical_encoding(msg.encoding)
    dtype, channels, code = _TABLE[encoding]
    pixels = _validated_rows(msg, dtype, channels)
    if use_cv_bridge is None:
        use_cv_bridge = _CvBridge is not None
    if use_cv_bridge:
        if _CvBridge is None:
            raise ImageFormatError('cv_bridge was requested but is not importable')
        view = SimpleNamespace(
            encoding=encoding, height=int(msg.height), width=int(msg.width),
            step=int(msg.step), is_bigendian=int(bool(msg.is_bigendian)),
            data=np.frombuffer(bytes(msg.data) if isinstance(msg.data, (list, tuple))
                               else msg.data, dtype=np.uint8)[:int(msg.step) * int(msg.height)])
        try:
            out = _CvBridge().imgmsg_to_cv2(view, 'rgb8')
        except Exception as exc:  # CvBridgeError and OpenCV errors alike
            raise ImageFormatError(f"cv_bridge cannot convert '{encoding}': {exc}") from exc
        return np.ascontiguousarray(out, dtype=np.uint8)
    return _to_rgb_opencv(pixels, code, encoding)


def compressed_msg_to_rgb(msg: Any) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage``-like object (JPEG, PNG, ...) to RGB uint8.

    Args:
        msg: any object with ``format`` and ``data`` (the encoded bytes).

    Returns:
        A new (H, W, 3) uint8 RGB array (grey images are expanded to three channels).

    Raises:
        ImageFormatError: empty or undecodable data.
    """
    data = msg.data
    buf = (np.asarray(data, dtype=np.uint8) if isinstance(data, (list, tuple))
           else np.frombuffer(data, dtype=np.uint8))
    fmt = getattr(msg, 'format', '')
    if buf.size == 0:
        raise ImageFormatError(f"compressed image data is empty (format '{fmt}')")
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageFormatError(
            f"cannot decode compressed image of {buf.size} bytes (format '{fmt}'): "
            'not a JPEG/PNG or corrupt')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def image_fields(array: np.ndarray, encoding: str, *,
                 data_as_array: bool = False) -> Dict[str, Any]:
    """``sensor_msgs/Image`` fields holding an array (no row padding, little endian).

    Args:
        array: (H, W) or (H, W, C) samples already in the encoding's layout: uint8 for the 8-bit
            encodings (``mono8``, ``rgb8``, ``bgr8``, ...), uint16 for the 16-bit ones.
        encoding: the encoding to declare (any of :data:`SUPPORTED_ENCODINGS`).
        data_as_array: ``data`` as a numpy uint8 array (rosbags messages) instead of bytes
            (rclpy messages).

    Returns:
        A dict with ``height``, ``width``, ``encoding``, ``is_bigendian``, ``step``, ``data``.

    Raises:
        ValueError: the array's dtype or shape does not match the encoding.
    """
    dtype, channels, _ = _TABLE[_canonical_encoding(encoding)]
    arr = np.asarray(array)
    if arr.ndim == 3 and channels == 1 and arr.shape[2] == 1:
        arr = arr[..., 0]
    shape = '(H, W)' if channels == 1 else f'(H, W, {channels})'
    if (arr.dtype != dtype or arr.ndim != (2 if channels == 1 else 3)
            or (channels > 1 and arr.shape[2] != channels)):
        raise ValueError(f"'{encoding}' needs a {np.dtype(dtype).name} array of shape {shape}, "
                         f'got {arr.dtype} {arr.shape}')
    height, width = arr.shape[:2]
    data = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder('<'), copy=False)
    data = data.view(np.uint8).reshape(-1)
    return {
        'height': int(height),
        'width': int(width),
        'encoding': encoding,
        'is_bigendian': 0,
        'step': int(width * channels * np.dtype(dtype).itemsize),
        'data': data if data_as_array else data.tobytes(),
    }


def image_msg_from_array(array: np.ndarray, encoding: str, header: Any, msg_type: Any, *,
                         data_as_array: bool = False) -> Any:
    """Build an image message: the one place the project turns an array into a message.

    Args:
        array: samples in the encoding's layout (see :func:`image_fields`).
        encoding: the encoding to declare.
        header: the ``std_msgs/Header`` to carry (the input's, for the node's outputs).
        msg_type: a message class taking the fields as keywords: rclpy's
            ``sensor_msgs.msg.Image``, a rosbags ``sensor_msgs/msg/Image`` type (with
            ``data_as_array=True``), or ``types.SimpleNamespace`` off ROS.
        data_as_array: see :func:`image_fields`.
    """
    fields = image_fields(array, encoding, data_as_array=True)
    data = fields.pop('data')
    if data_as_array:
        return msg_type(header=header, data=data, **fields)
    msg = msg_type(header=header, **fields)
    own = getattr(msg, 'data', None)
    if isinstance(own, pyarray.array) and own.typecode == 'B' and not len(own):
        # rclpy: straight into the message's own buffer, one copy (its constructor and the
        # ``data`` setter would each copy again), as cv_bridge's cv2_to_imgmsg does
        own.frombytes(data)
    else:
        msg.data = data.tobytes()
    return msg


#: Copies of at least twice this many bytes are split into chunks of at least this size over
#: a few threads (numpy copies release the GIL), on hosts of 4 cores or more: on 2 cores one
#: thread already fills the memory bandwidth.
PARALLEL_COPY_BYTES = 1 << 20
COPY_THREADS = min(4, (os.cpu_count() or 1) - 1) if (os.cpu_count() or 1) >= 4 else 0
_POOLS: Dict[int, ThreadPoolExecutor] = {}
_POOL_LOCK = threading.Lock()


def _copy_pool(threads: int) -> ThreadPoolExecutor:
    with _POOL_LOCK:
        if threads not in _POOLS:
            _POOLS[threads] = ThreadPoolExecutor(max_workers=threads,
                                                 thread_name_prefix='flow2seg-copy')
        return _POOLS[threads]


def parallel_copy(dst: np.ndarray, src: np.ndarray, threads: Optional[int] = None) -> None:
    """``dst[:] = src`` for flat uint8 arrays, large ones in chunks on a few threads.

    Args:
        dst: destination.
        src: source of the same size.
        threads: helper threads (default :data:`COPY_THREADS`; 0 copies on this thread).
    """
    n = src.size
    threads = COPY_THREADS if threads is None else threads
    parts = min(threads + 1, n // PARALLEL_COPY_BYTES) if threads > 0 else 1
    if parts <= 1:
        np.copyto(dst, src)
        return
    pool = _copy_pool(threads)
    bounds = [n * i // parts for i in range(parts + 1)]
    pending = [pool.submit(np.copyto, dst[a:b], src[a:b])
               for a, b in zip(bounds[1:-1], bounds[2:])]
    np.copyto(dst[:bounds[1]], src[:bounds[1]])  # this thread takes the first chunk
    for job in pending:
        job.result()


#: The node's image outputs timed by the benchmarks: (pipeline result field, encoding).
NODE_IMAGES = (('labels', 'mono8'), ('color_mask', 'rgb8'), ('overlay', 'rgb8'))


class MessageBuffers:
    """One image message per output, reused frame after frame, filled on a few threads.

    Publishing serialises a message (rclpy converts it to its C form in ``publish``), so the
    same message object and its ``data`` buffer, sized once, can carry every frame of an
    output: each frame costs at most one copy of the pixels, split over threads for large
    images, instead of a new buffer and a copy on one thread (at 2048x1024 the three outputs
    are 14 MB). A producer can also write the pixels straight into the message's buffer
    (:meth:`buffer`; the GPU path downloads into it), and then nothing is copied. A message
    handed out is rewritten by the next frame with the same key: publish it first.

    Args:
        msg_type: rclpy's ``sensor_msgs.msg.Image``, or ``types.SimpleNamespace`` off ROS.
    """

    def __init__(self, msg_type: Any) -> None:
        self.msg_type = msg_type
        self._messages: Dict[str, Tuple[Any, np.ndarray]] = {}
        self.copies = 0  # messages filled by a copy (not written in place)

    def buffer(self, key: str, shape: Tuple[int, ...]) -> np.ndarray:
        """The uint8 buffer of ``key``'s message as an array of ``shape``, to write in place.

        The buffer keeps its memory (and address) while its size stays; a new size gives the
        message a new buffer.
        """
        n = int(np.prod(shape))
        held = self._messages.get(key)
        if held is None or held[1].size != n:
            msg = self.msg_type()
            own = getattr(msg, 'data', None)
            if not isinstance(own, pyarray.array) or own.typecode != 'B':
                own = pyarray.array('B')
                msg.data = own
            del own[:]
            own.frombytes(bytes(n))  # sized once; the message keeps this buffer
            held = self._messages[key] = (msg, np.frombuffer(own, dtype=np.uint8))
        return held[1].reshape(shape)

    def message(self, key: str, array: np.ndarray, encoding: str, header: Any) -> Any:
        """The message of ``key`` holding ``array`` (see :func:`image_fields`) and ``header``.

        Args:
            key: the output (one message each).
            array: samples in the encoding's layout; where it is :meth:`buffer`'s array of
                this key, the pixels are in place already and nothing is copied.
            encoding: the encoding to declare.
            header: the header to carry (the input's, for the node's outputs).
        """
        fields = image_fields(array, encoding, data_as_array=True)
        data = fields.pop('data')
        held = self._messages.get(key)
        in_place = (held is not None and held[1].size == data.size
                    and held[1].ctypes.data == data.ctypes.data)
        view = self.buffer(key, data.shape)
        if not in_place:
            parallel_copy(view, data)
            self.copies += 1
        msg = self._messages[key][0]
        msg.header = header
        for name, value in fields.items():
            setattr(msg, name, value)
        return msg

    def result_messages(self, result: Any, header: Any,
                        images: Tuple[Tuple[str, str], ...] = NODE_IMAGES) -> list:
        """The messages of a pipeline result's images (default the node's labels, colour mask
        and overlay), as the node fills them."""
        return [self.message(key, getattr(result, key), encoding, header)
                for key, encoding in images]

    def serve(self, pipeline: Any) -> None:
        """Have a pipeline's device path, where it has one, download its outputs straight into
        these messages' buffers (as the node does)."""
        device_path = getattr(pipeline, 'device_path', None)
        if device_path is not None:
            device_path.host_buffers = self


def image_msg_to_array(msg: Any) -> np.ndarray:
    """The pixels of a ``mono8``, ``rgb8`` or ``bgr8`` message: (H, W) for mono8, else RGB.

    Unlike :func:`image_msg_to_rgb` a single channel stays single (label and confidence images).

    Raises:
        ImageFormatError: another encoding, or a malformed message.
    """
    encoding = _canonical_encoding(msg.encoding)
    if encoding not in ('mono8', 'rgb8', 'bgr8'):
        raise ImageFormatError(f"expected a mono8, rgb8 or bgr8 image, got '{msg.encoding}'")
    dtype, channels, _ = _TABLE[encoding]
    pixels = _validated_rows(msg, dtype, channels)
    if channels == 1:
        return np.ascontiguousarray(pixels[..., 0])
    return np.ascontiguousarray(pixels[..., ::-1] if encoding == 'bgr8' else pixels)


def rgb_to_image_fields(rgb: np.ndarray) -> Dict[str, Any]:
    """Return ``rgb8`` image fields for an (H, W, 3) uint8 array.

    Args:
        rgb: the RGB picture.
    """
    return image_fields(rgb, 'rgb8')


def mono_to_image_fields(mono: np.ndarray) -> Dict[str, Any]:
    """Return ``mono8`` image fields for an (H, W) uint8 array (labels, confidence).

    Args:
        mono: the single-channel picture.
    """
    return image_fields(mono, 'mono8')
