"""flow2seg-bag-eval: replay a rosbag2 bag through the node's frame pipeline, or to a running node.

Usage::

    flow2seg-bag-eval BAG --image-topic T [--labels-topic T] [--out DIR] [--weights W]
                      [--device D] [--max-frames N]
    flow2seg-bag-eval BAG --image-topic T --live [--node-ns /flow2seg_node]
                      [--rate-scale X | --as-fast-as-possible] [--sweep]

In-process (default): the bag's images (``sensor_msgs/Image`` in any encoding the node accepts,
or ``CompressedImage``) run through :class:`flow2seg_ros.pipeline.FramePipeline` in stream order,
exactly as the node would run them. With a labels topic (``mono8`` train ids, matched to images
by header stamp) every head (fused, image, flow) is scored with
:class:`flow2seg_ros.metrics.HeadsEvaluator`; without one only the fused head's temporal
consistency is measured. Always measured: latency per pipeline stage (p50/p90/p99), frames per
second, flow resets, and frames skipped with the reason. Written to ``--out``: an output bag in
the input's storage format holding the input images and ``<ns>/labels``, ``<ns>/color_mask``,
``<ns>/overlay`` (the node's topic names) with the input's header stamps; ``report.md``,
``report.json`` (every figure) and PNG figures.

``--live``: the bag's images are published over DDS (best effort, like a camera) to a running
``seg_node`` at the recorded rate (or ``--rate-scale``, or as fast as possible); its
``<node-ns>/labels`` outputs are matched by stamp to give end-to-end latency and frames lost.
``--sweep`` then searches, ros2_benchmark-style, for the highest input rate the node holds with
under 5 % loss. Publishing and recording is :class:`flow2seg_ros.replay.LiveReplay`. The process
keeps DDS discovery on this machine (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` unless set), keeps
the inherited ``ROS_DOMAIN_ID`` and loads the shipped large-image Fast DDS profile unless a profile
is already named (see :func:`flow2seg_ros.replay.dds_environment`).
"""
from __future__ import annotations

import argparse
from collections import Counter, deque
import dataclasses
from dataclasses import dataclass, field
import json
import os
from pathlib import Path
import shutil
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np
from tqdm import tqdm

from flow2seg_ros.bagio import (
    BagError, BagReader, BagWriter, COMPRESSED, IMAGE, image_message, stamp_ns, STRING)
from flow2seg_ros.classes import ClassSet
from flow2seg_ros.encodings import compressed_msg_to_rgb, image_msg_to_rgb, ImageFormatError
from flow2seg_ros.replay import apply_dds_environment, describe_dds_changes, LiveReplay
from flow2seg_ros.report import (
    fmt_ms, fmt_pct, markdown_table, percentiles, plot_confusion, plot_latency,
    plot_per_class_iou, plot_table, write_json, write_png)

__all__ = ['BagEvalError', 'DEFAULT_NODE_NS', 'LiveOptions', 'evaluate_bag', 'get_args_parser',
           'label_lut', 'live_replay', 'main']

DEFAULT_NODE_NS = '/flow2seg_node'
#: Loss below which a rate counts as held in a sweep (ros2_benchmark's usual threshold).
SWEEP_MAX_LOSS = 0.05
#: How far (bag time) an image waits for its label before it is processed without one.
LABEL_WINDOW_NS = 1_000_000_000
_LABEL_ENCODINGS = ('mono8', '8UC1')


class BagEvalError(ValueError):
    """Bad input to bag evaluation (topic, type, label); the message says what and where."""


# ----------------------------------------------------------------------------- topics
def _image_topic_type(reader: BagReader, topic: str) -> str:
    topics = reader.topics
    if topic not in topics:
        raise BagEvalError(f"topic '{topic}' not found in bag {reader.path}; its topics:\n"
                           f'{reader.describe_topics()}')
    msgtype = topics[topic].msgtype
    if msgtype not in (IMAGE, COMPRESSED):
        raise BagEvalError(f"topic '{topic}' in bag {reader.path} is {msgtype}, expected "
                           f'{IMAGE} or {COMPRESSED}; its topics:\n{reader.describe_topics()}')
    return msgtype


def _labels_topic_ok(reader: BagReader, topic: str) -> None:
    topics = reader.topics
    if topic not in topics:
        raise BagEvalError(f"labels topic '{topic}' not found in bag {reader.path}; its topics:"
                           f'\n{reader.describe_topics()}')
    if topics[topic].msgtype != IMAGE:
        raise BagEvalError(f"labels topic '{topic}' in bag {reader.path} is "
                           f'{topics[topic].msgtype}, expected {IMAGE} (mono8 train ids)')


def _bag_classes(reader: BagReader, labels_topic: str) -> Optional[ClassSet]:
    """The class table the bag's labels refer to (``<ns>/label_info``), or None."""
    from flow2seg_ros.make_bag import label_info_topic

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


# ----------------------------------------------------------------------------- in-process
@dataclass
class _Frame:
    t: int  # log time ns
    stamp: int  # header stamp ns
    raw: bytes
    msg: Any


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
    from flow2seg_ros.metrics import HeadsEvaluator

    bag = Path(bag)
    out = Path(out_dir) if out_dir is not None else None
    reader = BagReader(bag)
    with reader:
        msgtype = _image_topic_type(reader, image_topic)
        lut = None
        if labels_topic:
            _labels_topic_ok(reader, labels_topic)
            bag_classes = _bag_classes(reader, labels_topic)
            lut = label_lut(bag_classes, pipeline.classes)
        heads = (('fused', 'image', 'flow') if pipeline.has_flow_path else ('fused', 'image')) \
            if labels_topic else ('fused',)
        period = _period_s(reader, image_topic)
        if period is not None:
            pipeline.config.max_gap_s = max(0.5, 2.5 * period)
        pipeline.reset()
        evaluator = HeadsEvaluator(pipeline.classes, heads=heads, tc_flow=tc_flow)
        total = in_bag = reader.topics[image_topic].count
        if max_frames:
            total = min(total, max_frames)
        rows = set(np.linspace(0, total - 1, min(montage_frames, total)).round().astype(int)) \
            if total else set()
        writer = None
        out_bag = None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            if write_bag:
                out_bag = out / f'{bag.name}_flow2seg'
                if out_bag.exists() and overwrite and (out_bag / 'metadata.yaml').is_file():
                    shutil.rmtree(out_bag)
                writer = BagWriter(out_bag, reader.storage)
                writer.open()
                conn = reader.connection(image_topic)
                writer.add_topic(image_topic, msgtype, msgdef=conn.msgdef.data,
                                 rihs01=conn.digest)
        run = _Run()
        ns = '/' + node_ns.strip('/')
        labels_pending: dict[int, Any] = {}
        queue: deque[_Frame] = deque()
        t0 = time.perf_counter()

        def process(frame: _Frame) -> None:
            index = run.seen
            run.seen += 1
            tic = time.perf_counter()
            try:
                rgb = _decode(frame.msg, msgtype)
            except ImageFormatError as exc:
                run.skipped[f'undecodable image ({exc})'] += 1
                return
            decode_ms = 1000.0 * (time.perf_counter() - tic)
            target = None
            label_msg = labels_pending.pop(frame.stamp, None)
            if label_msg is not None:
                target = _decode_label(label_msg, labels_topic)
                if target.shape != rgb.shape[:2]:
                    text = (f"label on '{labels_topic}' at stamp {_sec(frame.stamp)} is "
                            f'{target.shape[1]}x{target.shape[0]} but its image is '
                            f'{rgb.shape[1]}x{rgb.shape[0]}')
                    if not skip_bad_labels:
                        raise BagEvalError(text + ' (--skip-bad-labels scores the frame '
                                                  'without it)')
                    run.skipped['label size mismatch (frame not scored)'] += 1
                    target = None
                elif lut is not None:
                    target = lut[target]
            outputs = ('color_mask', 'overlay') + (('flow_rgb',) if index in rows else ())
            result = pipeline.process(rgb, frame.stamp / 1e9, outputs=outputs, heads=heads)
            if result.reset_reason is not None:
                evaluator.new_sequence()
                run.resets[result.reset_reason] += 1
            evaluator.update(rgb, result.head_labels, target)
            run.processed += 1
            run.labelled += target is not None
            run.timings.setdefault('decode', []).append(decode_ms)
            for stage, ms in result.timings.items():
                run.timings.setdefault(stage, []).append(ms)
            if index in rows:
                run.montage.append([rgb, result.overlay, result.flow_rgb])
            if writer is not None:
                header = frame.msg.header
                writer.write_raw(image_topic, frame.raw, frame.t)
                for topic, pixels, enc in (('labels', result.labels, 'mono8'),
                                           ('color_mask', result.color_mask, 'rgb8'),
                                           ('overlay', result.overlay, 'rgb8')):
                    writer.write(f'{ns}/{topic}',
                                 image_message(pixels, enc, frame.stamp, header.frame_id),
                                 frame.t)

        topics = [image_topic] + ([labels_topic] if labels_topic else [])
        try:
            with tqdm(total=total, desc='bag-eval', unit='frame', disable=not progress) as bar:
                done = False
                for topic, t, raw in reader.messages(topics):
                    if topic == image_topic:
                        msg = reader.deserialize(raw, msgtype)
                        queue.append(_Frame(t, stamp_ns(msg.header), raw, msg))
                    else:
                        msg = reader.deserialize(raw, IMAGE)
                        labels_pending[stamp_ns(msg.header)] = msg
                    while queue and (not labels_topic or queue[0].stamp in labels_pending
                                     or t - queue[0].t > LABEL_WINDOW_NS):
                        process(queue.popleft())
                        bar.update(1)
                        if max_frames and run.seen >= max_frames:
                            done = True
                            break
                    if done:
                        break
                while queue and not (max_frames and run.seen >= max_frames):
                    process(queue.popleft())
                    bar.update(1)
        finally:
            if writer is not None:
                writer.close()
        wall_s = time.perf_counter() - t0
        unmatched = len(labels_pending)

    summary = evaluator.summary()
    latency = {stage: percentiles(v) for stage, v in run.timings.items()}
    mean_total = latency.get('total', {}).get('mean')
    data: dict[str, Any] = {
        'bag': str(bag), 'storage': reader.storage, 'image_topic': image_topic,
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
        data['confusion_fused'] = evaluator.cm['fused'].matrix.tolist()
        data['class_names'] = list(pipeline.classes.names)
        data['label_mapping'] = 'identity' if lut is None else 'remapped to the model classes'
    if writer is not None:
        data['output_bag'] = {'path': str(out_bag), 'storage': reader.storage,
                              'topics': dict(writer.counts)}
    if out is not None:
        _write_inprocess_report(out, data, run, pipeline.classes)
    return data


def _setup(pipeline: Any) -> dict[str, Any]:
    card = pipeline.card
    flow = card.get('flow', {})
    cfg = pipeline.config
    return {'weights': cfg.weights or 'bundled', 'preset': card.get('preset'),
            'device': str(pipeline.device), 'precision': cfg.precision,
            'input_size': list(pipeline.input_size),
            'flow': {'method': cfg.flow_method or flow.get('method'),
                     'preset': cfg.flow_preset or flow.get('preset'),
                     'scale': pipeline.flow_scale},
            'max_gap_s': cfg.max_gap_s, 'torch_threads': _torch_threads()}


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _write_inprocess_report(out: Path, data: dict[str, Any], run: _Run,
                            classes: ClassSet) -> None:
    figures: dict[str, str] = {}
    heads = data['heads']
    names = list(classes.names)
    rows = [[h, fmt_pct(r['miou']), fmt_pct(r['tc']), fmt_pct(r['pixel_accuracy'])]
            for h, r in heads.items()]
    header = ['head', 'mIoU %', 'TC %', 'pixel acc %']
    plot_table(out / 'summary_table.png', header, rows, title='Summary')
    figures['summary_table'] = 'summary_table.png'
    if data.get('labels_topic') and data['frames']['labelled']:
        plot_per_class_iou(out / 'per_class_iou.png', heads, names)
        figures['per_class_iou'] = 'per_class_iou.png'
        plot_confusion(out / 'confusion_fused.png', np.asarray(data['confusion_fused']), names,
                       title='Fused head: confusion (rows: truth, %)')
        figures['confusion_fused'] = 'confusion_fused.png'
    if run.timings.get('total'):
        plot_latency(out / 'latency.png', run.timings, title='Pipeline latency per frame')
        figures['latency'] = 'latency.png'
    if run.montage:
        from flow2seg_ros.visualize import contact_sheet

        write_png(out / 'montage.png', contact_sheet(run.montage, ['input', 'overlay', 'flow'],
                                                     tile_width=320))
        figures['montage'] = 'montage.png'
    data['figures'] = figures
    write_json(out / 'report.json', data)

    f = data['frames']
    md = [f"# flow2seg bag evaluation: `{Path(data['bag']).name}`", '',
          f"- bag: `{data['bag']}` ({data['storage']}), images `{data['image_topic']}` "
          f"({data['image_type']}), labels `{data['labels_topic'] or '-'}`",
          f"- model: {data['setup']['weights']} ({data['setup']['preset']}), input "
          f"{data['setup']['input_size'][1]}x{data['setup']['input_size'][0]}, flow "
          f"{data['setup']['flow']['method']}/{data['setup']['flow']['preset']}, device "
          f"{data['setup']['device']}, {data['setup']['torch_threads']} torch threads",
          f"- frames: {f['processed']} processed of {f['read']} read, {f['labelled']} labelled, "
          f"{f['labels_unmatched']} labels without an image; flow resets: "
          f"{f['resets'] or 'none'}",
          f"- skipped: {f['skipped'] or 'none'}",
          f"- throughput: {_num(data['fps']['pipeline'])} frames/s (pipeline), "
          f"{_num(data['fps']['wall'])} frames/s (wall, with decoding, scoring, writing)", '',
          '## Summary', '', markdown_table(header, rows), '']
    if 'per_class_iou' in figures:
        md += ['## Per-class IoU (%)', '',
               markdown_table(['class'] + list(heads),
                              [[n] + [fmt_pct(heads[h]['per_class_iou'].get(n)) for h in heads]
                               for n in names
                               if any(heads[h]['per_class_iou'].get(n) is not None
                                      for h in heads)]),
               '', '![per-class IoU](per_class_iou.png)', '',
               '![confusion matrix of the fused head](confusion_fused.png)', '']
    md += ['## Latency (ms per frame)', '',
           markdown_table(['stage', 'p50', 'p90', 'p99', 'mean', 'max'],
                          [[s, fmt_ms(v['p50']), fmt_ms(v['p90']), fmt_ms(v['p99']),
                            fmt_ms(v['mean']), fmt_ms(v['max'])]
                           for s, v in data['latency_ms'].items()]), '']
    if 'latency' in figures:
        md += ['![latency](latency.png)', '']
    if 'montage' in figures:
        md += ['## Frames', '', '![input, overlay, flow](montage.png)', '']
    if 'output_bag' in data:
        ob = data['output_bag']
        md += ['## Output bag', '', f"`{ob['path']}` ({ob['storage']})", '',
               markdown_table(['topic', 'messages'], list(ob['topics'].items())), '']
    (out / 'report.md').write_text('\n'.join(md))


def _num(x: Optional[float]) -> str:
    return '-' if x is None else f'{x:.1f}'


# ----------------------------------------------------------------------------- live
@dataclass
class LiveOptions:
    """How ``--live`` replays.

    Args:
        node_ns: namespace of the node's outputs.
        publish_topic: topic to publish the images on (None = the bag's topic).
        rate_scale: play at this multiple of the recorded rate.
        as_fast_as_possible: publish without pacing.
        sweep: search the highest rate held with < 5 % loss.
        sweep_rates: explicit sweep rates in Hz (None = geometric from ``sweep_start``).
        sweep_start: first sweep rate in Hz.
        sweep_max: highest sweep rate tried.
        sweep_refine: bisection steps after the first failing rate.
        window_s: length of one sweep window in seconds.
        warmup: frames sent (and waited for) before measuring.
        wait_s: how long to wait for the node to appear and answer.
        drain_s: how long to wait for outputs after the last frame of a run (at least three
            times the slowest warm-up answer).
        max_frames: frames of the bag to use (0 = all).
    """

    node_ns: str = DEFAULT_NODE_NS
    publish_topic: Optional[str] = None
    rate_scale: float = 1.0
    as_fast_as_possible: bool = False
    sweep: bool = False
    sweep_rates: Optional[list[float]] = None
    sweep_start: float = 5.0
    sweep_max: float = 120.0
    sweep_refine: int = 2
    window_s: float = 3.0
    warmup: int = 3
    wait_s: float = 60.0
    drain_s: float = 2.0
    max_frames: int = 0


def _run_window(live: LiveReplay, msgs: list[Any], stamps: Sequence[int],
                send_at: Optional[Sequence[float]], drain_s: float) -> dict[str, Any]:
    """Publish ``msgs[i % n]`` stamped ``stamps[i]`` at ``send_at[i]`` s after the start
    (None = as fast as possible); wait for outputs; return sent/received/latency figures."""
    stats = live.run_window(msgs, stamps, send_at, drain_s=drain_s)
    n = stats.sent
    return {'sent': n, 'received': stats.received, 'lost': stats.lost,
            'loss': stats.lost / n if n else None, 'send_rate_hz': stats.send_rate_hz,
            'latency_ms': percentiles(stats.latency_ms), '_latencies': stats.latency_ms}


def live_replay(bag: str | Path, *, image_topic: str, options: LiveOptions,
                out_dir: Optional[str | Path] = None,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Publish a bag's images to a running node and measure end-to-end latency and loss.

    Args:
        bag: the rosbag2 folder.
        image_topic: the bag's image topic (Image or CompressedImage).
        options: see :class:`LiveOptions`.
        out_dir: folder for ``report.md``, ``report.json`` and the latency figure.
        log: where progress lines go.

    Returns:
        The report data.

    Raises:
        BagError, BagEvalError: as :func:`evaluate_bag`; BagEvalError also when the node does
            not appear or does not answer within ``wait_s``.
    """
    # the node runs elsewhere: keep the inherited domain (ROS's default when unset)
    for note in describe_dds_changes(apply_dds_environment(own_domain=False)):
        log(note)
    bag = Path(bag)
    with BagReader(bag) as reader:
        msgtype = _image_topic_type(reader, image_topic)
        raws, times = [], []
        for _, t, raw in reader.messages([image_topic]):
            raws.append(raw)
            times.append(t)
            if options.max_frames and len(raws) >= options.max_frames:
                break
    if not raws:
        raise BagEvalError(f"topic '{image_topic}' in bag {bag} holds no messages")
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CompressedImage, Image

    ns = '/' + options.node_ns.strip('/')
    labels_topic = f'{ns}/labels'
    topic = options.publish_topic or image_topic
    cls = CompressedImage if msgtype == COMPRESSED else Image
    live = LiveReplay(image_topic=topic, node_ns=ns, outputs=('labels',), message_type=cls)
    try:
        msgs = [deserialize_message(r, cls) for r in raws]
        stamps0 = [stamp_ns(m.header) for m in msgs]
        span = max(stamps0) - min(stamps0) + 10_000_000_000
        try:
            live.wait_for_node(options.wait_s)
        except TimeoutError:
            raise BagEvalError(
                f'no node answered within {options.wait_s:g} s: nobody subscribes to '
                f"'{topic}' or nobody publishes '{labels_topic}'. Start seg_node with "
                f'-r image:={topic} in the same ROS_DOMAIN_ID '
                f"({os.environ.get('ROS_DOMAIN_ID', '0')}), or set --node-ns") from None
        time.sleep(0.5)  # let the node's side of discovery match our publisher too
        rec_t = (np.asarray(times, np.float64) - times[0]) / 1e9
        period = float(np.median(np.diff(rec_t))) if len(rec_t) > 1 else 0.1
        recorded_rate = 1.0 / period if period > 0 else None
        window = 0
        drain = options.drain_s

        def next_base() -> int:
            nonlocal window
            window += 1
            return window * span

        if options.warmup:
            k = min(options.warmup, len(msgs))
            base = next_base()
            warm_deadline = time.perf_counter() + options.wait_s
            answered = False
            while not answered and time.perf_counter() < warm_deadline:
                res = _run_window(live, msgs[:k], [s + base for s in stamps0[:k]],
                                  [i * period for i in range(k)], drain_s=options.wait_s / 4)
                answered = res['received'] > 0
                base = next_base()
            if answered:  # a slow node needs longer to answer than the default drain
                drain = max(drain, 3e-3 * res['latency_ms']['max'])
            if not answered:
                raise BagEvalError(
                    f"the node subscribes to '{topic}' but published nothing on "
                    f"'{labels_topic}' within {options.wait_s:g} s (QoS mismatch? the node "
                    'must accept best-effort input)')
        scale = options.rate_scale
        options = dataclasses.replace(options, drain_s=drain)
        if options.as_fast_as_possible:
            send_at = None
        else:
            send_at = list(rec_t / scale)
        log(f'live: sending {len(msgs)} frames to {topic} '
            + ('as fast as possible' if send_at is None else f'at {scale:g}x recorded rate'))
        main_run = _run_window(live, msgs, list(stamps0), send_at,
                               drain_s=options.drain_s)
        latencies = main_run.pop('_latencies')
        data: dict[str, Any] = {
            'bag': str(bag), 'image_topic': image_topic, 'image_type': msgtype,
            'publish_topic': topic, 'labels_topic': labels_topic, 'mode': 'live',
            'dds': {k: os.environ.get(k) for k in
                    ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE',
                     'FASTDDS_DEFAULT_PROFILES_FILE', 'RMW_IMPLEMENTATION')},
            'recorded_rate_hz': recorded_rate,
            'rate_scale': None if send_at is None else scale,
            'as_fast_as_possible': send_at is None,
            'drain_s': drain, 'run': main_run,
        }
        if options.sweep:
            data['sweep'] = _sweep(live, msgs, stamps0, next_base, options, log)
    finally:
        live.close()
    if out_dir is not None:
        _write_live_report(Path(out_dir), data, latencies)
    return data


def _sweep(live: LiveReplay, msgs: list[Any], stamps0: Sequence[int], next_base: Callable[[], int],
           options: LiveOptions, log: Callable[[str], None]) -> dict[str, Any]:
    """ros2_benchmark-style peak search: fixed-rate windows at increasing rates."""
    tried: list[dict[str, Any]] = []

    def window(rate: float) -> bool:
        n = max(5, int(round(rate * options.window_s)))
        base = next_base() + stamps0[0]
        res = _run_window(live, msgs, [base + round(i * 1e9 / rate) for i in range(n)],
                          [i / rate for i in range(n)], drain_s=options.drain_s)
        res.pop('_latencies')
        res['rate_hz'] = rate
        tried.append(res)
        ok = res['loss'] is not None and res['loss'] < SWEEP_MAX_LOSS
        log(f"sweep {rate:7.2f} Hz: {res['received']}/{res['sent']} received "
            f"({100 * (res['loss'] or 0):.1f} % lost), latency p50 "
            f"{fmt_ms(res['latency_ms']['p50'])} ms -> {'held' if ok else 'not held'}")
        return ok

    good: Optional[float] = None
    bad: Optional[float] = None
    if options.sweep_rates:
        for rate in sorted(options.sweep_rates):
            if window(rate):
                good = rate
            else:
                bad = rate
                break
    else:
        rate = options.sweep_start
        while rate <= options.sweep_max:
            if window(rate):
                good = rate
                rate *= 1.5
            else:
                bad = rate
                break
        if good is not None and bad is not None:
            for _ in range(options.sweep_refine):
                mid = (good + bad) / 2
                if window(mid):
                    good = mid
                else:
                    bad = mid
    return {'max_loss': SWEEP_MAX_LOSS, 'window_s': options.window_s, 'windows': tried,
            'highest_rate_held_hz': good, 'lowest_rate_failed_hz': bad}


def _write_live_report(out: Path, data: dict[str, Any], latencies: list[float]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    figures = {}
    if latencies:
        plot_latency(out / 'latency.png', {'end-to-end': latencies},
                     title='End-to-end latency (send -> labels received)',
                     total_key='end-to-end')
        figures['latency'] = 'latency.png'
    r = data['run']
    lat = r['latency_ms']
    header = ['sent', 'received', 'lost %', 'send rate Hz', 'p50 ms', 'p90 ms', 'p99 ms']
    row = [r['sent'], r['received'], fmt_pct(r['loss']), _num(r['send_rate_hz']),
           fmt_ms(lat['p50']), fmt_ms(lat['p90']), fmt_ms(lat['p99'])]
    plot_table(out / 'summary_table.png', header, [row], title='Live replay')
    figures['summary_table'] = 'summary_table.png'
    data['figures'] = figures
    write_json(out / 'report.json', data)
    pacing = ('as fast as possible' if data['as_fast_as_possible']
              else f"{data['rate_scale']:g}x the recorded rate")
    md = [f"# flow2seg live replay: `{Path(data['bag']).name}`", '',
          f"- published `{data['publish_topic']}` ({data['image_type']}), best effort; "
          f"recorded `{data['labels_topic']}`",
          f"- pacing: {pacing} (recorded {_num(data['recorded_rate_hz'])} Hz)",
          f"- DDS: {data['dds']}", '', '## End-to-end latency and loss', '',
          markdown_table(header, [row]), '']
    if 'latency' in figures:
        md += ['![latency](latency.png)', '']
    if 'sweep' in data:
        s = data['sweep']
        md += ['## Rate sweep', '',
               f"Highest input rate held with < {100 * s['max_loss']:.0f} % loss: "
               f"**{_num(s['highest_rate_held_hz'])} Hz** ({s['window_s']:g} s windows)", '',
               markdown_table(['rate Hz', 'sent', 'received', 'lost %', 'p50 ms', 'p90 ms'],
                              [[f"{w['rate_hz']:.2f}", w['sent'], w['received'],
                                fmt_pct(w['loss']), fmt_ms(w['latency_ms']['p50']),
                                fmt_ms(w['latency_ms']['p90'])] for w in s['windows']]), '']
    (out / 'report.md').write_text('\n'.join(md))


# ----------------------------------------------------------------------------- CLI
def get_args_parser() -> argparse.ArgumentParser:
    """The command-line options of ``flow2seg-bag-eval``."""
    p = argparse.ArgumentParser(
        prog='flow2seg-bag-eval',
        description='Replay a rosbag2 bag (sqlite3 or mcap) through the Flow2Seg frame '
                    'pipeline (or, with --live, to a running seg_node) and report accuracy, '
                    'temporal consistency, latency and throughput.')
    p.add_argument('bag', metavar='BAG', help='rosbag2 folder')
    p.add_argument('--image-topic', required=True, help='sensor_msgs/Image or CompressedImage')
    p.add_argument('--labels-topic', default=None, help='mono8 train-id label images')
    p.add_argument('--out', default=None, metavar='DIR',
                   help='report and output bag folder (default <BAG>_flow2seg_eval)')
    p.add_argument('--weights', default=None, help='model .safetensors (default: bundled)')
    p.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    p.add_argument('--precision', default='fp32', choices=('fp32', 'fp16'))
    p.add_argument('--flow-method', default=None, help="flow method (default: the card's)")
    p.add_argument('--flow-preset', default=None, help="flow preset (default: the card's)")
    p.add_argument('--threads', type=int, default=0, help='torch threads (0 = default)')
    p.add_argument('--max-frames', type=int, default=0, help='use at most N images (0 = all)')
    p.add_argument('--node-ns', default=DEFAULT_NODE_NS,
                   help='namespace of the output topics / of the live node')
    p.add_argument('--skip-bad-labels', action='store_true',
                   help='score frames whose label has another size without it (counted) '
                        'instead of stopping')
    p.add_argument('--no-output-bag', action='store_true', help='write the report only')
    p.add_argument('--overwrite', action='store_true', help='replace an existing output bag')
    p.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    live = p.add_argument_group('live replay to a running seg_node')
    live.add_argument('--live', action='store_true', help='publish over DDS to a running node')
    live.add_argument('--publish-topic', default=None,
                      help='topic to publish on (default: --image-topic)')
    pace = live.add_mutually_exclusive_group()
    pace.add_argument('--rate-scale', type=float, default=1.0, metavar='X',
                      help='play at X times the recorded rate (default 1)')
    pace.add_argument('--as-fast-as-possible', action='store_true', help='no pacing')
    live.add_argument('--sweep', action='store_true',
                      help='find the highest input rate held with < 5 %% loss')
    live.add_argument('--sweep-rates', default=None, metavar='HZ,HZ,...',
                      help='explicit sweep rates (default: 5 Hz x1.5 up to --sweep-max)')
    live.add_argument('--sweep-max', type=float, default=120.0, help='highest sweep rate (Hz)')
    live.add_argument('--window-s', type=float, default=3.0, help='sweep window length (s)')
    live.add_argument('--warmup', type=int, default=3, help='warm-up frames (default 3)')
    live.add_argument('--wait-s', type=float, default=60.0,
                      help='wait this long for the node to appear and answer')
    live.add_argument('--drain-s', type=float, default=2.0,
                      help='wait this long for outputs after the last frame')
    return p


def _rates(text: Optional[str]) -> Optional[list[float]]:
    if not text:
        return None
    try:
        rates = [float(v) for v in text.split(',') if v.strip()]
    except ValueError:
        raise BagEvalError(f'--sweep-rates must be numbers separated by commas, got {text!r}') \
            from None
    if not rates or any(r <= 0 for r in rates):
        raise BagEvalError(f'--sweep-rates must be positive rates in Hz, got {text!r}')
    return rates


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run what the parsed command line asks for and return the report data.

    Args:
        args: :func:`get_args_parser`'s result.
    """
    bag = Path(args.bag)
    if not bag.exists():
        raise BagError(f'bag not found: {bag}')
    if args.max_frames < 0:
        raise BagEvalError(f'--max-frames must be >= 0, got {args.max_frames}')
    out = Path(args.out) if args.out else bag.parent / f'{bag.name}_flow2seg_eval'
    if args.live:
        if not args.rate_scale > 0:
            raise BagEvalError(f'--rate-scale must be > 0, got {args.rate_scale}')
        opts = LiveOptions(node_ns=args.node_ns, publish_topic=args.publish_topic,
                           rate_scale=args.rate_scale,
                           as_fast_as_possible=args.as_fast_as_possible, sweep=args.sweep,
                           sweep_rates=_rates(args.sweep_rates), sweep_max=args.sweep_max,
                           window_s=args.window_s, warmup=args.warmup, wait_s=args.wait_s,
                           drain_s=args.drain_s, max_frames=args.max_frames)
        data = live_replay(bag, image_topic=args.image_topic, options=opts, out_dir=out)
        r = data['run']
        print(f"live: {r['received']}/{r['sent']} frames answered "
              f"({fmt_pct(r['loss'])} % lost), end-to-end latency p50 "
              f"{fmt_ms(r['latency_ms']['p50'])} / p90 {fmt_ms(r['latency_ms']['p90'])} / p99 "
              f"{fmt_ms(r['latency_ms']['p99'])} ms")
        if 'sweep' in data:
            print('sweep: highest rate held with < 5 % loss: '
                  f"{_num(data['sweep']['highest_rate_held_hz'])} Hz")
        print(f"wrote {out / 'report.md'}")
        return data
    from flow2seg_ros.pipeline import FramePipeline, PipelineConfig

    with BagReader(bag) as reader:  # fail on the bag before loading a model
        _image_topic_type(reader, args.image_topic)
        if args.labels_topic:
            _labels_topic_ok(reader, args.labels_topic)
    config = PipelineConfig(weights=args.weights, device=args.device, precision=args.precision,
                            flow_method=args.flow_method, flow_preset=args.flow_preset,
                            threads=args.threads)
    pipeline = FramePipeline(config)
    data = evaluate_bag(bag, pipeline, image_topic=args.image_topic,
                        labels_topic=args.labels_topic, out_dir=out, node_ns=args.node_ns,
                        max_frames=args.max_frames, skip_bad_labels=args.skip_bad_labels,
                        write_bag=not args.no_output_bag, overwrite=args.overwrite,
                        progress=not args.no_progress)
    lines = [f"{data['frames']['processed']} frames, {data['frames']['labelled']} labelled; "
             f"skipped: {data['frames']['skipped'] or 'none'}"]
    for h, r in data['heads'].items():
        lines.append(f"{h:<6} mIoU {fmt_pct(r['miou'])}  TC {fmt_pct(r['tc'])}  "
                     f"pixAcc {fmt_pct(r['pixel_accuracy'])}")
    tot = data['latency_ms'].get('total', {})
    lines.append(f"latency p50/p90/p99 {fmt_ms(tot.get('p50'))}/{fmt_ms(tot.get('p90'))}/"
                 f"{fmt_ms(tot.get('p99'))} ms, {_num(data['fps']['pipeline'])} frames/s")
    lines.append(f"wrote {out / 'report.md'}")
    print('\n'.join(lines))
    return data


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``flow2seg-bag-eval``; bad input prints ``flow2seg-bag-eval: error: ...``
    and raises ``SystemExit(2)`` (no traceback).

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when None).
    """
    from flow2seg_ros.data.cityscapes import DatasetError

    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        run(args)
    except (BagError, BagEvalError, DatasetError, ImageFormatError, OSError,
            ValueError) as exc:
        parser.exit(2, f'{parser.prog}: error: {exc}\n')
    except KeyboardInterrupt:
        parser.exit(130, f'{parser.prog}: interrupted\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
