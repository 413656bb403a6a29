"""``make demo``: the node on a short synthetic drive, over DDS, the way a robot runs it.

1. Generates a short driving sequence (``data.synth.generate``, a seed no training set uses).
2. Starts ``seg_node`` as its own process with the shipped ``config/seg.yaml`` and the bundled
   model (or ``--weights``), discovery on loopback, its own ``ROS_DOMAIN_ID`` and the shipped
   large-image Fast DDS profile.
3. Plays the sequence to it at the camera's rate, best effort like a camera, and records what it
   publishes (``labels``, ``overlay``, ``flow``) by header stamp.
4. Writes into ``demo_out/``: the overlays as PNGs, a contact sheet (input, labels coloured,
   overlay, flow), an MP4 of the overlays and ``summary.json``; prints frames/s, latency
   (p50/p95), frames sent/received and the mIoU against the sequence's labels.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys
import tempfile
import time
from typing import Any, Optional, Sequence

import cv2
import numpy as np

from flow2seg_ros import weights
from flow2seg_ros.classes import ClassSet
from flow2seg_ros.cli import size_arg
from flow2seg_ros.data.cityscapes import SequenceDataset
from flow2seg_ros.data.synth import generate
from flow2seg_ros.dds import apply_dds_environment, dds_environment
from flow2seg_ros.metrics import HeadsEvaluator
from flow2seg_ros.replay import LiveReplay, start_node_process, stop_process
from flow2seg_ros.visualize import colorize, contact_sheet

__all__ = ['DEMO_SEED', 'get_args_parser', 'run_demo', 'main']

#: Seed of the demo's sequence; training uses 1 and 2, validation 9001 and test 777 (see
#: config/train_synthetic.yaml), so the demo drive is unseen.
DEMO_SEED = 4242


class DemoError(RuntimeError):
    """Something the demo needs is missing or failed; the message says what to do."""


def _model_file(weights_file: Optional[str]) -> tuple[Path, dict[str, Any]]:
    try:
        path = weights.resolve_model_path(weights_file)  # a path or a bundled model's name
    except weights.WeightsError as exc:
        raise DemoError(str(exc)) from None
    if not path.is_file():
        if weights_file:
            raise DemoError(f'model file not found: {path}')
        raise DemoError(f'no bundled model yet ({path} is missing): train it with '
                        '`flow2seg-train --config config/train_synthetic.yaml`, or run the demo '
                        'with --weights MODEL.safetensors')
    card_file = weights.card_path(path)
    if not card_file.is_file():
        raise DemoError(f'model card {card_file} missing beside {path}')
    return path, json.loads(card_file.read_text())


def _write_video(path: Path, frames: Sequence[np.ndarray], fps: float) -> bool:
    if not frames:
        return False
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), float(fps), (w, h))
    if not writer.isOpened():
        return False
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path.is_file() and path.stat().st_size > 0


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    """Run the demo and return its summary (also written to ``<out>/summary.json``).

    Args:
        args: parsed arguments of :func:`get_args_parser`.

    Raises:
        DemoError: a missing model, a node that does not start, or no output received.
    """
    model_path, card = _model_file(args.weights)
    classes = ClassSet.from_dict(card['classes'])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    width, height = args.size
    scenes = args.scenes or card.get('training', {}).get('scenes') or 'v1'

    print(f'demo: generating {args.frames} frames at {width}x{height} ({scenes} scenes, '
          f'seed {args.seed})', flush=True)
    with tempfile.TemporaryDirectory(prefix='flow2seg_demo_') as data_root:
        info = generate(data_root, sequences=1, frames=args.frames, size=(width, height),
                        seed=args.seed, split='demo', progress=False, scenes=scenes)
        dataset = SequenceDataset(data_root, 'demo', classes=classes)
        record = dataset[0]
        frames = [dataset.read_image(p) for p in record.images]
        targets = [None if p is None else dataset.read_label(p, f.shape)
                   for p, f in zip(record.labels, frames)]
    rate = float(args.rate or info.get('fps') or 17.0)

    apply_dds_environment(args.domain_id)
    env = dds_environment(args.domain_id)
    log_path = out / 'node.log'
    print(f"demo: starting seg_node (ROS_DOMAIN_ID {env['ROS_DOMAIN_ID']}, model {model_path})",
          flush=True)
    proc = start_node_process(image_topic=args.image_topic, model_path=str(model_path),
                              overrides={'publish_flow': True, 'device': args.device},
                              env=env, log_path=log_path)
    try:
        with LiveReplay(image_topic=args.image_topic, outputs=('labels', 'overlay', 'flow'),
                        keep=('labels', 'overlay', 'flow')) as replay:
            try:
                replay.wait_for_node(args.startup_timeout, process=proc)
            except (TimeoutError, RuntimeError) as exc:
                tail = log_path.read_text(errors='replace')[-2000:] if log_path.is_file() else ''
                raise DemoError(f'seg_node did not come up: {exc}\n--- node log ---\n{tail}')
            # one warm-up frame (model and flow start-up), not counted
            warm = replay.publish(frames[0])
            replay.wait_outputs([warm], quiet_s=args.startup_timeout, timeout=args.startup_timeout)
            time.sleep(0.6)  # longer than max_frame_gap_s: the drive starts a fresh flow state
            print(f'demo: playing {len(frames)} frames at {rate:g} Hz (best effort)', flush=True)
            stamps = replay.play(frames, rate)
            replay.wait_outputs(stamps, quiet_s=3.0, timeout=30.0)
            stats = replay.stats(stamps, rate)
            received = [(i, s) for i, s in enumerate(stamps) if replay.output('labels', s)]
            results = {i: {name: replay.output(name, s) for name in ('labels', 'overlay', 'flow')}
                       for i, s in received}
    finally:
        code = stop_process(proc)
    if not results:
        tail = log_path.read_text(errors='replace')[-2000:] if log_path.is_file() else ''
        raise DemoError(f'no labels received from seg_node ({stats.sent} frames sent)\n'
                        f'--- node log ---\n{tail}')

    evaluator = HeadsEvaluator(classes, heads=('fused',))
    palette = classes.palette()
    overlays, sheet_rows = [], []
    picks = set(np.linspace(0, len(results) - 1, min(4, len(results))).round().astype(int))
    for n, (i, got) in enumerate(sorted(results.items())):
        labels = got['labels'].array
        evaluator.update(frames[i], {'fused': labels}, targets[i])
        ov = got['overlay'].array if got['overlay'] is not None else None
        if ov is not None:
            cv2.imwrite(str(out / f'overlay_{i:04d}.png'), cv2.cvtColor(ov, cv2.COLOR_RGB2BGR))
            overlays.append(ov)
        if n in picks:
            flow = got['flow'].array if got['flow'] is not None else np.zeros_like(frames[i])
            sheet_rows.append([frames[i], colorize(labels, palette),
                               ov if ov is not None else np.zeros_like(frames[i]), flow])
    sheet = contact_sheet(sheet_rows, ['input', 'labels', 'overlay', 'flow'])
    cv2.imwrite(str(out / 'contact_sheet.png'), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    video = _write_video(out / 'overlay.mp4', overlays, rate)
    metrics = evaluator.summary()
    fused = metrics['heads']['fused']
    summary = {
        'model': str(model_path), 'frames': len(frames), 'size': [width, height],
        'scenes': scenes, 'seed': args.seed,
        'camera_rate_hz': rate, 'replay': stats.as_dict(),
        'miou': fused['miou'], 'pixel_accuracy': fused['pixel_accuracy'], 'tc': fused['tc'],
        'per_class_iou': fused['per_class_iou'], 'labelled_frames': metrics['labelled_frames'],
        'overlays_written': len(overlays), 'video': video, 'node_exit_code': code,
    }
    (out / 'summary.json').write_text(json.dumps(summary, indent=2))
    return summary


def _pct(value: Optional[float]) -> str:
    return '-' if value is None else f'{100 * value:.1f} %'


def get_args_parser() -> argparse.ArgumentParser:
    """The command-line options of the demo."""
    parser = argparse.ArgumentParser(prog='flow2seg-demo', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--weights', default=None, help='model file (default: the bundled one)')
    parser.add_argument('--frames', type=int, default=40, help='frames in the drive')
    parser.add_argument('--size', type=size_arg(), default=(512, 256), help='frame size WxH')
    parser.add_argument('--seed', type=int, default=DEMO_SEED, help='sequence seed')
    parser.add_argument('--scenes', choices=('v1', 'v2'), default=None,
                        help='flow2seg-synth scene family (default: the one the model was '
                             "trained on, its card's training.scenes; else v1)")
    parser.add_argument('--rate', type=float, default=0.0,
                        help="camera rate in Hz (0 = the sequence's own rate)")
    parser.add_argument('--device', default='auto', help='node device: auto, cpu, cuda')
    parser.add_argument('--image-topic', default='/camera/image_raw', help='camera topic')
    parser.add_argument('--domain-id', type=int, default=None,
                        help='ROS_DOMAIN_ID (default: the inherited one, else derived from '
                             'the pid)')
    parser.add_argument('--startup-timeout', type=float, default=90.0,
                        help='seconds to wait for the node (loading torch and the model)')
    parser.add_argument('--out', default='demo_out', help='output folder')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; prints its figures.

    Args:
        argv: command-line arguments (None = ``sys.argv[1:]``).

    Returns:
        0 on success, 1 with a message when something is missing or fails.
    """
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.frames < 2:
        parser.error(f'--frames must be >= 2, got {args.frames}')
    started = time.monotonic()
    try:
        s = run_demo(args)
    except ImportError as exc:
        print(f'flow2seg-demo: error: a package is missing: {exc} (run `make install`)',
              file=sys.stderr)
        return 1
    except DemoError as exc:
        print(f'flow2seg-demo: error: {exc}', file=sys.stderr)
        return 1
    r = s['replay']
    print(f"demo: frames sent {r['sent']}, received {r['received']}, lost {r['lost']} "
          '(latest-wins drops while busy)')
    print(f"demo: throughput {r['throughput_hz']:.1f} frames/s at a {s['camera_rate_hz']:g} Hz "
          f"camera; latency p50 {r['latency_ms_p50']:.1f} ms, p95 {r['latency_ms_p95']:.1f} ms")
    print(f"demo: mIoU {_pct(s['miou'])}, pixel accuracy {_pct(s['pixel_accuracy'])}, "
          f"TC {_pct(s['tc'])} over {s['labelled_frames']} labelled frames received")
    print(f"demo: wrote {s['overlays_written']} overlays, contact_sheet.png"
          f"{', overlay.mp4' if s['video'] else ' (no MP4: OpenCV cannot write mp4v here)'} and "
          f'summary.json to {args.out}/ in {time.monotonic() - started:.0f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
