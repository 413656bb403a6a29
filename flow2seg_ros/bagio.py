"""rosbag2 reading and writing without ROS (``rosbags``), shared by the bag maker and bag replay.

Bags are written with the ROS 2 Kilted type store (``get_typestore(Stores.ROS2_KILTED)``) in
either storage format rosbag2 knows (``sqlite3`` or ``mcap``); reading goes through
``rosbags.highlevel.AnyReader``, which takes the message definitions from the bag itself.
Every failure of the underlying libraries (a missing path, a truncated or corrupt file, a
message that does not deserialise) is raised as :class:`BagError` naming the bag.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import sqlite3
import struct
from typing import Any, Iterable, Iterator, Optional

import cv2
import numpy as np
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.rosbag2 import ReaderError, StoragePlugin, Writer
from rosbags.typesys import get_typestore, Stores

from flow2seg_ros.encodings import image_msg_from_array

__all__ = ['IMAGE', 'COMPRESSED', 'STRING', 'STORAGES', 'BagError', 'BagReader', 'BagWriter',
           'TopicInfo', 'WRITE_ENCODINGS', 'bag_storage', 'compressed_message', 'image_message',
           'label_info_topic', 'rgb_to_encoding', 'stamp_ns', 'string_message', 'typestore']

IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED = 'sensor_msgs/msg/CompressedImage'
STRING = 'std_msgs/msg/String'
STORAGES = ('sqlite3', 'mcap')

_TYPESTORE = None


class BagError(ValueError):
    """A bag that cannot be read or written; the message names the bag and the problem."""


def typestore() -> Any:
    """The ROS 2 Kilted type store (built once)."""
    global _TYPESTORE
    if _TYPESTORE is None:
        _TYPESTORE = get_typestore(Stores.ROS2_KILTED)
    return _TYPESTORE


def stamp_ns(header: Any) -> int:
    """A message header's stamp in integer nanoseconds.

    Args:
        header: a ``std_msgs/Header`` (rosbags or rclpy).
    """
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _header(stamp: int, frame_id: str) -> Any:
    types = typestore().types
    sec, nanosec = divmod(int(stamp), 1_000_000_000)
    return types['std_msgs/msg/Header'](
        stamp=types['builtin_interfaces/msg/Time'](sec=sec, nanosec=nanosec), frame_id=frame_id)


# encoding -> (channels, bytes per sample) of the encodings the bag maker writes
_ENCODE = {
    'rgb8': (3, 1), 'bgr8': (3, 1), 'rgba8': (4, 1), 'bgra8': (4, 1), 'mono8': (1, 1),
    'rgb16': (3, 2), 'bgr16': (3, 2), 'mono16': (1, 2),
    'yuv422': (2, 1), 'uyvy': (2, 1), 'yuv422_yuy2': (2, 1), 'yuyv': (2, 1),
    'bayer_rggb8': (1, 1), 'bayer_bggr8': (1, 1), 'bayer_gbrg8': (1, 1), 'bayer_grbg8': (1, 1),
}
WRITE_ENCODINGS = tuple(_ENCODE)


def rgb_to_encoding(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """Convert (H, W, 3) uint8 RGB to the pixel layout of a ``sensor_msgs/Image`` encoding.

    The inverse of ``encodings.image_msg_to_rgb`` (exact for the 8-bit colour encodings; grey,
    YUV 4:2:2 and Bayer lose what those formats cannot hold).

    Args:
        rgb: the picture.
        encoding: one of :data:`WRITE_ENCODINGS`.

    Returns:
        (H, W, C) array of uint8 or uint16 samples (C = the encoding's channels).
    """
    if encoding not in _ENCODE:
        raise ValueError(f"cannot write image encoding '{encoding}' "
                         f"(choose from {', '.join(WRITE_ENCODINGS)})")
    h, w = rgb.shape[:2]
    if encoding in ('rgb8', 'rgb16'):
        out = rgb
    elif encoding in ('bgr8', 'bgr16'):
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    elif encoding == 'rgba8':
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)
    elif encoding == 'bgra8':
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)
    elif encoding in ('mono8', 'mono16'):
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    elif encoding in ('yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv'):
        if w % 2:
            raise ValueError(f"'{encoding}' needs an even image width, got {w}")
        code = (cv2.COLOR_RGB2YUV_UYVY if encoding in ('yuv422', 'uyvy')
                else cv2.COLOR_RGB2YUV_YUY2)
        out = cv2.cvtColor(rgb, code)
    else:  # Bayer mosaic: keep the one colour each pixel of the pattern sees
        pattern = encoding[len('bayer_'):-1]
        index = {'r': 0, 'g': 1, 'b': 2}
        out = np.empty((h, w), np.uint8)
        for k, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            out[dy::2, dx::2] = rgb[dy::2, dx::2, index[pattern[k]]]
    if _ENCODE[encoding][1] == 2:
        out = out.astype(np.uint16) * 257  # 0..255 -> 0..65535, read back exactly
    if out.ndim == 2:
        out = out[..., None]
    return np.ascontiguousarray(out)


def image_message(pixels: np.ndarray, encoding: str, stamp: int, frame_id: str) -> Any:
    """A rosbags ``sensor_msgs/Image`` holding ``pixels`` (no row padding, little endian).

    Args:
        pixels: (H, W) or (H, W, C) uint8/uint16 samples already in the encoding's layout.
        encoding: the encoding to declare.
        stamp: header stamp in nanoseconds.
        frame_id: header frame id.
    """
    return image_msg_from_array(pixels, encoding, _header(stamp, frame_id),
                                typestore().types[IMAGE], data_as_array=True)


def compressed_message(rgb: np.ndarray, fmt: str, stamp: int, frame_id: str,
                       jpeg_quality: int = 90) -> Any:
    """A rosbags ``sensor_msgs/CompressedImage`` (``jpeg`` or ``png``) of an RGB picture.

    Args:
        rgb: (H, W, 3) uint8 RGB.
        fmt: ``jpeg`` or ``png``.
        stamp: header stamp in nanoseconds.
        frame_id: header frame id.
        jpeg_quality: JPEG quality 1..100.
    """
    if fmt not in ('jpeg', 'png'):
        raise ValueError(f"compressed format must be jpeg or png, got '{fmt}'")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if fmt == 'jpeg' else []
    ok, buf = cv2.imencode('.' + ('jpg' if fmt == 'jpeg' else 'png'),
                           cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f'OpenCV could not encode a {rgb.shape} image as {fmt}')
    # image_transport's format string: "<original encoding>; <codec> compressed <pixels>"
    return typestore().types[COMPRESSED](
        header=_header(stamp, frame_id), format=f'rgb8; {fmt} compressed bgr8',
        data=np.ascontiguousarray(buf.reshape(-1), np.uint8))


def string_message(text: str) -> Any:
    """A rosbags ``std_msgs/String``.

    Args:
        text: its data.
    """
    return typestore().types[STRING](data=text)


def label_info_topic(labels_topic: str) -> str:
    """The class-table topic that goes with a labels topic (``/camera/labels`` ->
    ``/camera/label_info``): a ``std_msgs/String`` of JSON written once by the bag maker."""
    ns = labels_topic.rstrip('/').rsplit('/', 1)[0]
    return f'{ns}/label_info'


def bag_storage(path: str | Path) -> str:
    """The storage format (``sqlite3`` or ``mcap``) of a rosbag2 folder, from its metadata.

    Args:
        path: the bag folder.
    """
    path = Path(path)
    meta = path / 'metadata.yaml'
    if meta.is_file():
        text = meta.read_text(errors='replace')
        for storage in STORAGES:
            if f'storage_identifier: {storage}' in text:
                return storage
    files = [p.suffix for p in path.iterdir()] if path.is_dir() else [path.suffix]
    return 'mcap' if '.mcap' in files else 'sqlite3'


class BagWriter:
    """A rosbag2 writer that registers topics on first use.

    Args:
        path: the bag folder to create (must not exist).
        storage: ``sqlite3`` or ``mcap``.
    """

    def __init__(self, path: str | Path, storage: str = 'sqlite3') -> None:
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got '{storage}'")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f'output bag {self.path} exists already; choose another path '
                           'or remove it')
        self.storage = storage
        plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=9, storage_plugin=plugin)
        self._connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> 'BagWriter':
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        try:
            self._writer.open()
        except Exception as exc:  # WriterError, OSError
            raise BagError(f'cannot create bag {self.path}: {exc}') from exc

    def close(self) -> None:
        self._writer.close()

    def add_topic(self, topic: str, msgtype: str, *, msgdef: Optional[str] = None,
                  rihs01: Optional[str] = None) -> None:
        """Register a topic (idempotent).

        Args:
            topic: topic name.
            msgtype: e.g. ``sensor_msgs/msg/Image``.
            msgdef: the message definition to store (copied from another bag); None = the
                Kilted type store's.
            rihs01: its hash, with ``msgdef``.
        """
        if topic in self._connections:
            return
        kwargs: dict[str, Any] = ({'msgdef': msgdef, 'rihs01': rihs01} if msgdef and rihs01
                                  else {'typestore': typestore()})
        self._connections[topic] = self._writer.add_connection(topic, msgtype, **kwargs)
        self.counts[topic] = 0

    def write(self, topic: str, msg: Any, timestamp: int) -> None:
        """Serialise and write one message.

        Args:
            topic: its topic (registered on first use with the message's own type).
            msg: a rosbags message.
            timestamp: the bag's receive time in nanoseconds.
        """
        msgtype = msg.__msgtype__
        self.add_topic(topic, msgtype)
        self.write_raw(topic, typestore().serialize_cdr(msg, msgtype), timestamp)

    def write_raw(self, topic: str, data: bytes | memoryview, timestamp: int) -> None:
        """Write an already serialised message to a registered topic.

        Args:
            topic: its topic.
            data: CDR bytes.
            timestamp: the bag's receive time in nanoseconds.
        """
        self._writer.write(self._connections[topic], int(timestamp), data)
        self.counts[topic] += 1


@dataclass(frozen=True)
class TopicInfo:
    """A topic of a bag: its message type and how many messages it holds."""

    name: str
    msgtype: str
    count: int


# What the readers raise on a missing, truncated or corrupt bag.
_READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError, sqlite3.Error, struct.error, EOFError, KeyError, IndexError, ValueError,
    AssertionError, AnyReaderError, ReaderError)


class BagReader:
    """Read a rosbag2 folder (sqlite3 or mcap) with ``rosbags``' AnyReader.

    Args:
        path: the bag folder.

    Raises:
        BagError: the path is missing, or the bag cannot be opened (truncated, corrupt).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f'bag not found: {self.path}')
        if not (self.path / 'metadata.yaml').is_file() and self.path.is_dir():
            raise BagError(f'{self.path} is not a rosbag2 folder (no metadata.yaml)')
        try:
            self._reader = AnyReader([self.path])
            self._reader.open()
        except _READ_ERRORS as exc:
            raise BagError(f'cannot open bag {self.path} (truncated or corrupt?): '
                           f'{_describe(exc)}') from exc
        self.storage = bag_storage(self.path)

    def __enter__(self) -> 'BagReader':
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._reader.close()
        except _READ_ERRORS:
            pass

    @property
    def topics(self) -> dict[str, TopicInfo]:
        """Every topic of the bag by name."""
        out: dict[str, TopicInfo] = {}
        for c in self._reader.connections:
            prev = out.get(c.topic)
            out[c.topic] = TopicInfo(c.topic, c.msgtype, c.msgcount + (prev.count if prev else 0))
        return out

    def describe_topics(self) -> str:
        """The bag's topics and types, one per line (for error messages)."""
        lines = [f'  {t.name}  [{t.msgtype}]  {t.count} msgs'
                 for t in sorted(self.topics.values(), key=lambda t: t.name)]
        return '\n'.join(lines) if lines else '  (no topics)'

    def connection(self, topic: str) -> Any:
        """The (first) connection of a topic (message definition, hash)."""
        for c in self._reader.connections:
            if c.topic == topic:
                return c
        raise KeyError(topic)

    def messages(self, topics: Iterable[str]) -> Iterator[tuple[str, int, bytes]]:
        """``(topic, log time ns, raw CDR bytes)`` of the given topics in log-time order.

        Raises:
            BagError: the bag breaks off or is corrupt part-way.
        """
        wanted = set(topics)
        conns = [c for c in self._reader.connections if c.topic in wanted]
        if not conns:
            return
        it = self._reader.messages(connections=conns)
        while True:
            try:
                conn, t, raw = next(it)
            except StopIteration:
                return
            except _READ_ERRORS as exc:
                raise BagError(f'cannot read bag {self.path} (truncated or corrupt?): '
                               f'{_describe(exc)}') from exc
            yield conn.topic, t, raw

    def deserialize(self, raw: bytes, msgtype: str) -> Any:
        """Deserialise one raw message.

        Raises:
            BagError: the bytes are not a valid message of that type.
        """
        try:
            return self._reader.deserialize(raw, msgtype)
        except _READ_ERRORS as exc:
            raise BagError(f'{self.path}: a {msgtype} message does not deserialise '
                           f'(corrupt?): {_describe(exc)}') from exc


def _describe(exc: BaseException) -> str:
    text = str(exc) or repr(exc)
    return f'{type(exc).__name__}: {text}'
