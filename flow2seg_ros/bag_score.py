"""In-process bag scoring: a rosbag2 bag's images through the node's frame pipeline.

The images (``sensor_msgs/Image`` in any encoding the node accepts, or ``CompressedImage``) run
through :class:`flow2seg_ros.pipeline.FramePipeline` in stream order, exactly as the node would
run them. With a labels topic (``mono8`` train ids, matched to images by header stamp) every head
is scored with :class:`flow2seg_ros.metrics.HeadsEvaluator`; without one only the fused head's
temporal consistency is measured. Measured as well: latency per pipeline stage, frames per
second, flow resets, and frames skipped with the reason. Optionally written: an output bag in the
input's storage format (the input images and the node's ``labels``, ``color_mask`` and
``overlay`` topics with the input's header stamps) and the report (:mod:`flow2seg_ros.report`).
"""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
import json
from pathlib import Path
import shutil
import time
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from tqdm import tqdm

from flow2seg_ros.bagio import (
    BagReader, BagWriter, COMPRESSED, IMAGE, image_message, label_info_topic, stamp_ns, STRING)
from flow2seg_ros.classes import ClassSet
from flow2seg_ros.encodings import compressed_msg_to_rgb, image_msg_to_rgb, ImageFormatError
from flow2seg_ros.metrics import HeadsEvaluator
from flow2seg_ros.models import HEADS
from flow2seg_ros.report import write_bag_report
from flow2seg_ros.stats import percentiles

__all__ = ['BagEvalError', 'DEFAULT_NODE_NS', 'LABEL_WINDOW_NS', 'check_labels_topic',
           'evaluate_bag', 'image_topic_type', 'label_lut']

DEFAULT_NODE_NS = '/flow2seg_node'
#: How far (bag time) an image waits for its label before it is processed without one.
LABEL_WINDOW_NS = 1_000_000_000
_LABEL_ENCODINGS = ('mono8', '8UC1')
#: The node's image outputs written to the output bag, with their encodings.
_OUTPUT_TOPICS = (('labels', 'mono8'), ('color_mask', 'rgb8'), ('overlay', 'rgb8'))


class BagEvalError(ValueError):
    """Bad input to bag evaluation (topic, type, label); the message says what and where."""


# ----------------------------------------------------------------------------- topics
def image_topic_type(reader: BagReader, topic: str) -> str:
    """The message type of a bag's image topic (``Image`` or ``CompressedImage``).

    Raises:
        BagEvalError: the topic is missing or of another type (the message lists the topics).
    """
    topics = reader.topics
    if topic not in topics:
        raise BagEvalError(f"topic '{topic}' not found in bag {reader.path}; its topics:\n"
                           f'{reader.describe_topics()}')
    msgtype = topics[topic].msgtype
    if msgtype not in (IMAGE, COMPRESSED):
        raise BagEvalError(f"topic '{topic}' in bag {reader.path} is {msgtype}, expected "
                           f'{IMAGE} or {COMPRESSED}; its topics:\n{reader.describe_topics()}')
    return msgtype


def check_labels_topic(reader: BagReader, topic: str) -> None:
    """Raise :class:`BagEvalError` unless ``topic`` is a ``sensor_msgs/Image`` topic of the bag."""
    topics = reader.topics
    if topic not in topics:
        raise BagEvalError(f"labels topic '{topic}' not found in bag {reader.path}; its topics:"
                           f'\n{reader.describe_topics()}')
    if topics[topic].msgtype != IMAGE:
        raise BagEvalError(f"labels topic '{topic}' in bag {reader.path} is "
                           f'{topics[topic].msgtype}, expected {IMAGE} (mono8 train ids)')


def _bag_classes(reader: BagReader, labels_topic: str) -> Optional[ClassSet]:
    """The class table the bag's labels refer to (``<ns>/label_info``), or None."""
    topic = label_info_topic(labels_topic)
    info = reader.topics.get(topic)
    if info is None or info.msgtype != STRING:
        return None
    for _, _, raw in reader.messages([topic]):
        text = reader.deserialize(raw, STRING).data
        try:
            doc = json.loads(text)
            if 'class_set' in doc:
                return ClassSet.from_dict(doc['class_set'])
            table = doc['classes']
            return ClassSet(tuple(c['name'] for c in table),
                            tuple(tuple(c['color']) for c in table))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise BagEvalError(f"{reader.path}: '{topic}' holds no valid class table: "
                               f'{exc}') from exc
    return None


def label_lut(bag: Optional[ClassSet], model: ClassSet) -> Optional[np.ndarray]:
    """(256,) uint8 map from the bag's train ids to the model's (None = identical sets).

    Classes are matched by dataset label id when both sets have them, else by name; a bag class
    the model does not know maps to ignore.

    Args:
        bag: the class set of the bag's labels (None = assume the model's).
        model: the model's class set.
    """
    if bag is None or (bag.names == model.names and bag.label_ids == model.label_ids):
        return None
    lut = np.full(256, model.ignore_index, np.uint8)
    if bag.label_ids is not None and model.label_ids is not None:
        to_model = model.label_to_train_lut()
        for i, lid in enumerate(bag.label_ids):
            lut[i] = to_model[lid]
    else:
        index = {n: i for i, n in enumerate(model.names)}
        for i, n in enumerate(bag.names):
            lut[i] = index.get(n, model.ignore_index)
    return lut


def _decode(msg: Any, msgtype: str) -> np.ndarray:
    return compressed_msg_to_rgb(msg) if msgtype == COMPRESSED else image_msg_to_rgb(msg)


def _decode_label(msg: Any, topic: str) -> np.ndarray:
    if msg.encoding not in _LABEL_ENCODINGS:
        raise BagEvalError(f"label image on '{topic}' at stamp {_sec(stamp_ns(msg.header))} is "
                           f"'{msg.encoding}', expected mono8 train ids")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.frombuffer(msg.data, np.uint8)
    if step < w or data.size < step * h:
        raise BagEvalError(f"label image on '{topic}' at stamp {_sec(stamp_ns(msg.header))} "
                           f'is truncated ({data.size} bytes for {w}x{h}, step {step})')
    return data[:step * h].reshape(h, step)[:, :w]


def _sec(ns: int) -> str:
    return f'{ns / 1e9:.3f}'


def _period_s(reader: BagReader, topic: str, n: int = 30) -> Optional[float]:
    """Median log-time period of the first ``n`` messages of a topic (None for one message)."""
    times = []
    for _, t, _ in reader.messages([topic]):
        times.append(t)
        if len(times) >= n:
            break
    if len(times) < 2:
        return None
    d = np.diff(np.asarray(times, np.float64))
    d = d[d > 0]
    return float(np.median(d)) / 1e9 if d.size else None


# ----------------------------------------------------------------------------- reading
@dataclass
class _Frame:
    t: int  # log time ns
    stamp: int  # header stamp ns
    raw: bytes
    msg: Any


def _frames(reader: BagReader, image_topic: str, msgtype: str, labels_topic: Optional[str],
            labels_pending: dict[int, Any]) -> Iterator[_Frame]:
    """The bag's images in stream order, each released once its label is in ``labels_pending``
    (keyed by header stamp), or once the bag has moved ``LABEL_WINDOW_NS`` past it."""
    queue: deque[_Frame] = deque()
    topics = [image_topic] + ([labels_topic] if labels_topic else [])
    for topic, t, raw in reader.messages(topics):
        if topic == image_topic:
            msg = reader.deserialize(raw, msgtype)
            queue.append(_Frame(t, stamp_ns(msg.header), raw, msg))
        else:
            msg = reader.deserialize(raw, IMAGE)
            labels_pending[stamp_ns(msg.header)] = msg
        while queue and (not labels_topic or queue[0].stamp in labels_pending
                         or t - queue[0].t > LABEL_WINDOW_NS):
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def _open_output_bag(path: Path, reader: BagReader, image_topic: str, msgtype: str,
                     overwrite: bool) -> BagWriter:
    """The output bag in the input's storage, holding the input image topic as recorded."""
    if path.exists() and overwrite and (path / 'metadata.yaml').is_file():
        shutil.rmtree(path)
    writer = BagWriter(path, reader.storage)
    writer.open()
    conn = reader.connection(image_topic)
    writer.add_topic(image_topic, msgtype, msgdef=conn.msgdef.data, rihs01=conn.digest)
    return writer


# ----------------------------------------------------------------------------- scoring
@dataclass
class _Run:
    """What the in-process replay accumulates."""

    timings: dict[str, list[float]] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    resets: Counter = field(default_factory=Counter)
    processed: int = 0
    labelled: int = 0
    montage: list[list[np.ndarray]] = field(default_factory=list)
    seen: int = 0


class _Scorer:
    """Runs frames through the pipeline, scores them, and writes the node's outputs.

    Args:
        pipeline: the frame pipeline.
        evaluator: the heads' accumulator.
        heads: the heads computed and scored.
        labels_topic: the labels topic (for messages), or None.
        labels_pending: label messages by header stamp (taken as their images are processed).
        lut: bag train ids -> model train ids, or None.
        skip_bad_labels: skip (and count) a label of another size instead of failing.
        montage_rows: indices of the frames pictured in the montage.
        writer: the output bag, or None.
        image_topic: the input image topic (copied to the output bag).
        node_ns: namespace of the output topics.
    """

    def __init__(self, pipeline: Any, evaluator: HeadsEvaluator, heads: tuple[str, ...], *,
                 labels_topic: Optional[str], labels_pending: dict[int, Any],
                 lut: Optional[np.ndarray], skip_bad_labels: bool, montage_rows: set[int],
                 writer: Optional[BagWriter], image_topic: str, node_ns: str) -> None:
        self.pipeline = pipeline
        self.evaluator = evaluator
        self.heads = heads
        self.labels_topic = labels_topic
        self.labels_pending = labels_pending
        self.lut = lut
        self.skip_bad_labels = skip_bad_labels
        self.montage_rows = montage_rows
        self.writer = writer
        self.image_topic = image_topic
        self.ns = '/' + node_ns.strip('/')
        self.run = _Run()

    def process(self, frame: _Frame, msgtype: str) -> None:
        """Decode, label, run, score and write one frame (an undecodable one is counted)."""
        index = self.run.seen
        self.run.seen += 1
        tic = time.perf_counter()
        try:
            rgb = _decode(frame.msg, msgtype)
        except ImageFormatError as exc:
            self.run.skipped[f'undecodable image ({exc})'] += 1
            return
        decode_ms = 1000.0 * (time.perf_counter() - tic)
        target = self._target(frame, rgb)
        pictured = index in self.montage_rows
        outputs = ('color_mask', 'overlay') + (('flow_rgb',) if pictured else ())
        result = self.pipeline.process(rgb, frame.stamp / 1e9, outputs=outputs, heads=self.heads)
        if result.reset_reason is not None:
            self.evaluator.new_sequence()
            self.run.resets[result.reset_reason] += 1
        self.evaluator.update(rgb, result.head_labels, target)
        self._count(decode_ms, result.timings, target is not None)
        if pictured:
            self.run.montage.append([rgb, result.overlay, result.flow_rgb])
        if self.writer is not None:
            self._write(frame, result)

    def _target(self, frame: _Frame, rgb: np.ndarray) -> Optional[np.ndarray]:
        """The frame's label in the model's train ids, or None (none, or skipped)."""
        label_msg = self.labels_pending.pop(frame.stamp, None)
        if label_msg is None:
            return None
        target = _decode_label(label_msg, self.labels_topic)
        if target.shape != rgb.shape[:2]:
            text = (f"label on '{self.labels_topic}' at stamp {_sec(frame.stamp)} is "
                    f'{target.shape[1]}x{target.shape[0]} but its image is '
                    f'{rgb.shape[1]}x{rgb.shape[0]}')
            if not self.skip_bad_labels:
                raise BagEvalError(text + ' (--skip-bad-labels scores the frame without it)')
            self.run.skipped['label size mismatch (frame not scored)'] += 1
            return None
        return target if self.lut is None else self.lut[target]

    def _count(self, decode_ms: float, timings: dict[str, float], labelled: bool) -> None:
        self.run.processed += 1
        self.run.labelled += labelled
        self.run.timings.setdefault('decode', []).append(decode_ms)
        for stage, ms in timings.items():
            self.run.timings.setdefault(stage, []).append(ms)

    def _write(self, frame: _Frame, result: Any) -> None:
        header = frame.msg.header
        self.writer.write_raw(self.image_topic, frame.raw, frame.t)
        for topic, enc in _OUTPUT_TOPICS:
            self.writer.write(f'{self.ns}/{topic}',
                              image_message(getattr(result, topic), enc, frame.stamp,
                                            header.frame_id), frame.t)


def _heads(pipeline: Any, labels_topic: Optional[str]) -> tuple[str, ...]:
    """Every head the model has with labels to score against; else the fused head only."""
    if not labels_topic:
        return ('fused',)
    return HEADS if pipeline.has_flow_path else tuple(h for h in HEADS if h != 'flow')


def _montage_rows(total: int, rows: int) -> set[int]:
    """Indices of ``rows`` frames spread evenly over ``total``."""
    if not total:
        return set()
    return set(np.linspace(0, total - 1, min(rows, total)).round().astype(int))


def _setup(pipeline: Any) -> dict[str, Any]:
    card = pipeline.card
    cfg = pipeline.config
    return {'weights': cfg.weights or 'bundled', 'preset': card.get('preset'),
            'device': str(pipeline.device), 'precision': cfg.precision,
            'input_size': list(pipeline.input_size),
            'flow': {'method': pipeline.flow_method, 'preset': pipeline.flow_preset,
                     'scale': pipeline.flow_scale},
            'max_gap_s': cfg.max_gap_s, 'torch_threads': torch.get_num_threads()}


def evaluate_bag(bag: str | Path, pipeline: Any, *, image_topic: str,
                 labels_topic: Optional[str] = None, out_dir: Optional[str | Path] = None,
                 node_ns: str = DEFAULT_NODE_NS, max_frames: int = 0,
                 skip_bad_labels: bool = False, write_bag: bool = True, overwrite: bool = False,
                 montage_frames: int = 4, tc_flow: Optional[Callable] = None,
                 progress: bool = True) -> dict[str, Any]:
    """Replay a bag through a frame pipeline, score it, and write the output bag and report.

    Args:
        bag: the rosbag2 folder (sqlite3 or mcap).
        pipeline: a :class:`flow2seg_ros.pipeline.FramePipeline`.
        image_topic: topic of ``sensor_msgs/Image`` or ``CompressedImage`` messages.
        labels_topic: topic of ``mono8`` train-id label images, or None.
        out_dir: folder for the output bag and the report; None writes nothing.
        node_ns: namespace of the output topics (the node's name).
        max_frames: process at most N images (0 = all).
        skip_bad_labels: a label of another size than its image is skipped (counted) instead
            of being an error.
        write_bag: write the output bag (with ``out_dir``).
        overwrite: replace an existing output bag.
        montage_frames: rows of the montage picture.
        tc_flow: flow estimator for temporal consistency (None = HeadsEvaluator's default).
        progress: show a progress bar.

    Returns:
        The report data (also written as ``report.json``).

    Raises:
        BagError: the bag is missing, truncated or corrupt.
        BagEvalError: a missing or mistyped topic, a bad label image.
    """
    bag = Path(bag)
    out = Path(out_dir) if out_dir is not None else None
    with BagReader(bag) as reader:
        msgtype = image_topic_type(reader, image_topic)
        lut = None
        if labels_topic:
            check_labels_topic(reader, labels_topic)
            lut = label_lut(_bag_classes(reader, labels_topic), pipeline.classes)
        heads = _heads(pipeline, labels_topic)
        period = _period_s(reader, image_topic)
        if period is not None:  # a gap of a few frame periods starts a fresh flow state
            pipeline.config.max_gap_s = max(0.5, 2.5 * period)
        pipeline.reset()
        in_bag = reader.topics[image_topic].count
        total = min(in_bag, max_frames) if max_frames else in_bag
        writer = None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            if write_bag:
                writer = _open_output_bag(out / f'{bag.name}_flow2seg', reader, image_topic,
                                          msgtype, overwrite)
        labels_pending: dict[int, Any] = {}
        scorer = _Scorer(pipeline, HeadsEvaluator(pipeline.classes, heads=heads, tc_flow=tc_flow),
                         heads, labels_topic=labels_topic, labels_pending=labels_pending,
                         lut=lut, skip_bad_labels=skip_bad_labels,
                         montage_rows=_montage_rows(total, montage_frames), writer=writer,
                         image_topic=image_topic, node_ns=node_ns)
        t0 = time.perf_counter()
        try:
            with tqdm(total=total, desc='bag-eval', unit='frame', disable=not progress) as bar:
                for frame in _frames(reader, image_topic, msgtype, labels_topic, labels_pending):
                    scorer.process(frame, msgtype)
                    bar.update(1)
                    if max_frames and scorer.run.seen >= max_frames:
                        break
        finally:
            if writer is not None:
                writer.close()
        wall_s = time.perf_counter() - t0
    data = _report_data(bag, reader.storage, image_topic, msgtype, labels_topic, pipeline,
                        scorer, in_bag=in_bag, unmatched=len(labels_pending), wall_s=wall_s,
                        lut=lut)
    if writer is not None:
        data['output_bag'] = {'path': str(writer.path), 'storage': reader.storage,
                              'topics': dict(writer.counts)}
    if out is not None:
        write_bag_report(out, data, timings=scorer.run.timings, montage=scorer.run.montage,
                         class_names=list(pipeline.classes.names))
    return data


def _report_data(bag: Path, storage: str, image_topic: str, msgtype: str,
                 labels_topic: Optional[str], pipeline: Any, scorer: _Scorer, *, in_bag: int,
                 unmatched: int, wall_s: float, lut: Optional[np.ndarray]) -> dict[str, Any]:
    """Every figure of the run (``report.json``)."""
    run = scorer.run
    summary = scorer.evaluator.summary()
    latency = {stage: percentiles(v) for stage, v in run.timings.items()}
    mean_total = latency.get('total', {}).get('mean')
    data: dict[str, Any] = {
        'bag': str(bag), 'storage': storage, 'image_topic': image_topic,
        'image_type': msgtype, 'labels_topic': labels_topic,
        'setup': _setup(pipeline),
        'frames': {'in_bag': in_bag,
                   'read': run.seen, 'processed': run.processed, 'labelled': run.labelled,
                   'labels_unmatched': unmatched, 'skipped': dict(run.skipped),
                   'resets': dict(run.resets)},
        'heads': summary['heads'],
        'tc_fused': summary['heads']['fused']['tc'],
        'latency_ms': latency,
        'fps': {'pipeline': 1000.0 / mean_total if mean_total else None,
                'wall': run.processed / wall_s if wall_s > 0 else None},
        'wall_s': wall_s,
    }
    if labels_topic:
        data['confusion_fused'] = scorer.evaluator.cm['fused'].matrix.tolist()
        data['class_names'] = list(pipeline.classes.names)
        data['label_mapping'] = 'identity' if lut is None else 'remapped to the model classes'
    return data
