"""flow2seg-bench: where the node's time goes, stage by stage, fused against image-only.

For every preset x network input size x camera frame size, frames of a panning textured scene go
through what the node does per frame: an ``rgb8``/``bgr8`` image message is converted
(``encodings.image_msg_to_rgb``), the :class:`~flow2seg_ros.pipeline.FramePipeline` runs
(resize, flow, network, argmax, resize back, colouring and overlay), the three output messages
(``labels``, ``color_mask``, ``overlay``) are built and, with ``--publish``, published over rclpy.
In the same loop, interleaved frame by frame so that a busy machine slows both alike:

* the same pipeline with the image-only model (``use_flow=False``, the same image-path weights),
  so the cost of motion is a ratio (fused / image-only);
* the model's paths timed one by one on the same tensors: image path (``image_backbone`` +
  ``image_head`` + skip), flow path (``flow_backbone`` + ``flow_head``), fusion, upsampling.

Figures are medians over the timed frames (the first frame, which has no flow, is not timed).
On CUDA the stages are synchronised; ``--precision fp16``/``bf16`` use autocast,
``--channels-last`` is available, and the peak GPU memory is reported. (``torch.compile`` is
measured by ``make gpu-check`` against CUDA graphs; on an H200 it was slower than both them and
eager (3.4 against 0.52 and 2.1-2.6 ms, lite), so it is no option here.)

Writes JSON (``--out``) and prints a short table.
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from dataclasses import replace
import json
import os
from pathlib import Path
import platform
import statistics
import sys
import time
from types import SimpleNamespace
from typing import Any, Callable, Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from flow2seg_ros.backends import BACKENDS
from flow2seg_ros.classes import cityscapes_classes, ClassSet
from flow2seg_ros.cli import size_arg
from flow2seg_ros.dds import apply_dds_environment
from flow2seg_ros.devices import resolve_device
from flow2seg_ros.encodings import image_msg_from_array, image_msg_to_rgb, MessageBuffers
from flow2seg_ros.frames import scene_frames
from flow2seg_ros.models import build_model
from flow2seg_ros.peers import build_peers, PEERS, time_peers
from flow2seg_ros.pipeline import FramePipeline, PipelineConfig, PRECISIONS
from flow2seg_ros.visualize import colorize, overlay
from flow2seg_ros.weights import load_model, random_model

__all__ = ['PIPELINE_STAGES', 'OUTPUT_STAGES', 'NODE_STAGES', 'environment', 'make_message',
           'model_pair', 'time_model_paths', 'bench_config', 'run', 'get_args_parser', 'main']

#: Pipeline stages (FrameResult.timings) that compute the labels at the network's size.
PIPELINE_STAGES = ('resize', 'flow', 'network', 'argmax')
#: Pipeline stages that make the published pictures at the input's size (labels resized back,
#: colour mask and overlay): pipeline work the node asks for, counted apart from the above.
OUTPUT_STAGES = ('resize_back', 'colour')
#: What the node itself adds around the pipeline: message conversion, building, publishing.
NODE_STAGES = ('convert', 'messages', 'publish')
OUTPUT_TOPICS = ('labels', 'color_mask', 'overlay')


def _cpu_model() -> str:
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on: device, threads, versions, CPU model.

    Args:
        device: the torch device used.
    """
    env = {
        'device': str(device),
        'torch_threads': torch.get_num_threads(),
        'cpu_count': os.cpu_count(),
        'cpu_model': _cpu_model(),
        'torch': torch.__version__,
        'opencv': cv2.__version__,
        'numpy': np.__version__,
        'python': platform.python_version(),
        'load_average': list(os.getloadavg()) if hasattr(os, 'getloadavg') else None,
        # OpenMP threads spin while waiting unless PASSIVE: on a busy CPU that decides a lot
        'omp_wait_policy': os.environ.get('OMP_WAIT_POLICY', ''),
    }
    if device.type == 'cuda':
        env['gpu'] = torch.cuda.get_device_name(device)
        env['cuda'] = torch.version.cuda
    return env


def _message_type() -> Any:
    try:
        from sensor_msgs.msg import Image
        return Image
    except ImportError:
        return None


def _header(stamp: float, frame_id: str, image_type: Any) -> Any:
    sec, nanosec = int(stamp), int(round((stamp - int(stamp)) * 1e9))
    if image_type is None:
        return SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec), frame_id=frame_id)
    header = image_type().header
    header.stamp.sec, header.stamp.nanosec = sec, nanosec
    header.frame_id = frame_id
    return header


def make_message(rgb: np.ndarray, encoding: str, stamp: float, *, image_type: Any = None) -> Any:
    """A camera message (``sensor_msgs/Image`` when given its type, else a look-alike).

    Args:
        rgb: (H, W, 3) uint8 RGB frame.
        encoding: ``rgb8`` or ``bgr8``.
        stamp: header stamp in seconds.
        image_type: ``sensor_msgs.msg.Image`` or None for a plain namespace.
    """
    pixels = rgb if encoding == 'rgb8' else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    return image_msg_from_array(pixels, encoding, _header(stamp, 'camera', image_type),
                                image_type or SimpleNamespace)


def model_pair(preset: str, *, num_classes: int, weights: Optional[str] = None,
               seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module, dict[str, Any]]:
    """The fused model, its image-only twin (same image-path weights) and a model card.

    Args:
        preset: ``lite`` or ``paper`` (ignored when ``weights`` is given: the card's preset).
        num_classes: classes of a random model (ignored with ``weights``).
        weights: a model file (.safetensors with its card); None = random weights.
        seed: torch seed of random weights.
    """
    if weights is not None:
        model, card = load_model(weights)
        classes = ClassSet.from_dict(card['classes'])
        preset = card['preset']
    else:
        classes = cityscapes_classes() if num_classes == 19 else ClassSet(
            [f'class{i}' for i in range(num_classes)],
            [tuple(int(c) for c in np.random.default_rng(i).integers(0, 255, 3))
             for i in range(num_classes)])
        model, card = random_model(preset, classes=classes, input_size=(256, 512), seed=seed)
    kwargs = dict(card.get('model_kwargs', {}))
    if not getattr(model, 'has_flow', False):
        raise ValueError(f'the {preset} model has no flow path (use_flow=False); the benchmark '
                         'compares a fused model against its image-only twin')
    kwargs['use_flow'] = False
    image_only = build_model(preset, num_classes=classes.num_classes, **kwargs)
    missing, _ = image_only.load_state_dict(model.state_dict(), strict=False)
    if missing:
        raise ValueError(f'image-only twin of {preset} misses weights: {missing[:5]}')
    image_card = dict(card, model_kwargs=kwargs)
    card = dict(card, image_only_card=image_card)
    return model.eval(), image_only.eval(), card


class _Clock:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == 'cuda'

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def time_model_paths(model: torch.nn.Module, x: torch.Tensor, f: torch.Tensor,
                     clock: Callable[[], float], *,
                     amp_dtype: Optional[torch.dtype] = None) -> dict[str, float]:
    """Time the model's own parts on one input: image path, flow path, fusion, upsampling (ms).

    Calls :meth:`Flow2Seg.image_logits`, :meth:`Flow2Seg.flow_logits` and :meth:`Flow2Seg.fuse`,
    the methods ``forward`` is made of, so the parts timed are the parts the pipeline runs.

    Args:
        model: a Flow2Seg model with a flow path, in eval mode.
        x: (1, 3, H, W) normalised image.
        f: (1, 2, H, W) scaled flow.
        clock: returns seconds (synchronising CUDA).
        amp_dtype: CUDA autocast dtype (``torch.float16``, ``torch.bfloat16``); None = fp32.
    """
    times = {}
    with torch.inference_mode(), torch.autocast('cuda', dtype=amp_dtype or torch.float16,
                                                enabled=amp_dtype is not None):
        t0 = clock()
        image_logits, _ = model.image_logits(x)
        t1 = clock()
        flow_logits = model.flow_logits(f)
        t2 = clock()
        fused = model.fuse(image_logits, flow_logits)
        t3 = clock()
        F.interpolate(fused, size=x.shape[-2:], mode='bilinear', align_corners=False)
        t4 = clock()
    times['image_path'] = 1e3 * (t1 - t0)
    times['flow_path'] = 1e3 * (t2 - t1)
    times['fusion'] = 1e3 * (t3 - t2)
    times['upsample'] = 1e3 * (t4 - t3)
    return times


class _Publisher:
    """In-process rclpy publishers for the three output topics (``--publish``).

    Nobody subscribes, so the figure is the publishing call's own cost (a lower bound of what
    a node with remote subscribers pays for serialisation and transport).
    """

    def __init__(self) -> None:
        apply_dds_environment()  # loopback discovery, own domain, large-image profile
        import rclpy
        from rclpy.context import Context
        from sensor_msgs.msg import Image

        self.rclpy = rclpy
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node('flow2seg_bench', context=self.context)
        self.pubs = [self.node.create_publisher(Image, f'~/{t}', 5) for t in OUTPUT_TOPICS]

    def publish(self, msgs: Sequence[Any]) -> None:
        for pub, msg in zip(self.pubs, msgs):
            pub.publish(msg)

    def close(self) -> None:
        self.node.destroy_node()
        self.rclpy.shutdown(context=self.context)


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float('nan')


#: Seconds the loop waits on the CPU after its own eager torch (model paths, peers): its OpenMP
#: threads spin-wait after it and delay the next frame's flow thread (1.7 against 0.3 ms waited).
SETTLE_S = 0.02


def bench_config(model: torch.nn.Module, image_only: torch.nn.Module, card: dict[str, Any], *,
                 network: tuple[int, int], camera: tuple[int, int], iterations: int,
                 device: torch.device, precision: str = 'fp32', encoding: str = 'bgr8',
                 publisher: Optional[_Publisher] = None, budget_s: float = 120.0,
                 channels_last: bool = False, backend: str = 'auto',
                 overlap_flow: Optional[bool] = None, peers: bool = False,
                 compare_overlap: bool = False) -> dict[str, Any]:
    """Time one preset at one network input size and one camera frame size.

    Args:
        model: fused model (eval mode).
        image_only: its image-only twin.
        card: model card (classes, normalisation, flow).
        network: network input (width, height).
        camera: camera frame (width, height).
        iterations: timed frames (the stage loop stops early past ``budget_s``, after >= 2).
        device: torch device.
        precision: ``fp32``, ``fp16`` or ``bf16`` (CUDA autocast).
        encoding: camera message encoding, ``rgb8`` or ``bgr8``.
        publisher: publish the output messages in-process (``--publish``), or None.
        budget_s: wall-time budget of this configuration.
        channels_last: convert both models to channels-last memory format.
        backend: the pipelines' network runner (``auto``, ``torch``, ``onnxruntime``).
        overlap_flow: the pipelines' ``overlap_flow`` (flow in a second thread on the CPU:
            True, False, None = measured as it runs).
        peers: also time torchvision's segmenters (:mod:`flow2seg_ros.peers`) per frame.
        compare_overlap: also run the fused pipeline with the overlap always on and always off
            (``overlapped_stages_ms``, ``sequential_stages_ms``, ratio ``overlap_speedup``).

    Returns:
        A dict with the configuration, medians per stage for both pipelines, per-path times,
        totals, frames/s and the ratios.
    """
    clock = _Clock(device)
    (nw, nh) = network
    config = PipelineConfig(device=str(device), precision=precision, input_size=(nh, nw),
                            backend=backend, overlap_flow=overlap_flow)
    peer_nets = build_peers(model.num_classes, device) if peers else {}
    pipes = {}
    for name, net, net_card in (('fused', model, card), ('image_only', image_only,
                                                         card['image_only_card'])):
        net = net.to(device)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        pipe = FramePipeline(config, model=net, card=net_card)
        pipes[name] = pipe
    ways = {'overlapped': True, 'sequential': False} if compare_overlap else {}
    for name, way in ways.items():
        pipes[name] = FramePipeline(replace(config, overlap_flow=way),
                                    model=pipes['fused'].model, card=card)
    image_type = _message_type()
    outboxes = {name: MessageBuffers(image_type or SimpleNamespace) for name in pipes}
    for name, pipe in pipes.items():
        outboxes[name].serve(pipe)  # the node's reused messages
    frames = scene_frames(iterations + 1, camera)
    amp_dtype = pipes['fused'].amp_dtype
    x = torch.randn(1, 3, nh, nw, device=device)
    f = 0.1 * torch.randn(1, 2, nh, nw, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        f = f.contiguous(memory_format=torch.channels_last)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)

    stages: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in pipes}
    paths: dict[str, list[float]] = defaultdict(list)
    micro: dict[str, list[float]] = defaultdict(list)
    peer_ms: dict[str, list[float]] = defaultdict(list)
    peer_ratio: dict[str, list[float]] = defaultdict(list)
    started = time.perf_counter()
    timed = 0
    for i, rgb in enumerate(frames):
        stamp = 100.0 + i / 30.0
        msg = make_message(rgb, encoding, stamp, image_type=image_type)
        for name, pipe in pipes.items():
            t0 = clock()
            frame = image_msg_to_rgb(msg)
            t1 = clock()
            result = pipe.process(frame, stamp, outputs=('color_mask', 'overlay'))
            t2 = clock()
            out_msgs = outboxes[name].result_messages(result, msg.header)
            t3 = clock()
            if publisher is not None:
                publisher.publish(out_msgs)
            t4 = clock()
            if i == 0:
                continue  # first frame: no flow, warm-up
            if result.reset_reason is not None:
                raise RuntimeError(f'benchmark frame {i} reset the flow state '
                                   f'({result.reset_reason})')
            s = stages[name]
            s['convert'].append(1e3 * (t1 - t0))
            for stage, ms in result.timings.items():
                s[stage].append(ms)
            s['process_wall'].append(1e3 * (t2 - t1))
            s['messages'].append(1e3 * (t3 - t2))
            if publisher is not None:
                s['publish'].append(1e3 * (t4 - t3))
        if i == 0:
            time_model_paths(model, x, f, clock, amp_dtype=amp_dtype)  # warm-up
            time_peers(peer_nets, x, clock)
            time.sleep(SETTLE_S if device.type == 'cpu' else 0.0)
            continue
        for key, ms in time_model_paths(model, x, f, clock, amp_dtype=amp_dtype).items():
            paths[key].append(ms)
        for key, ms in time_peers(peer_nets, x, clock).items():
            peer_ms[key].append(ms)
            # the peer's network alone / the whole fused pipeline (its process() total), per frame
            peer_ratio[key].append(ms / stages['fused']['total'][-1])
        # colouring and overlay apart (the pipeline's "colour" stage holds both)
        palette = pipes['fused'].palette
        t0 = clock()
        mask = colorize(result.labels, palette)
        t1 = clock()
        overlay(frame, mask, 0.5)
        t2 = clock()
        micro['colorize'].append(1e3 * (t1 - t0))
        micro['overlay'].append(1e3 * (t2 - t1))
        timed += 1
        time.sleep(SETTLE_S if device.type == 'cpu' else 0.0)
        if timed >= 2 and time.perf_counter() - started > budget_s:
            break

    med = {name: {k: _median(v) for k, v in s.items()} for name, s in stages.items()}
    path_med = {k: _median(v) for k, v in paths.items()}
    totals = {}
    for name, m in med.items():
        own = sum(m.get(k, 0.0) for k in PIPELINE_STAGES)
        pictures = sum(m.get(k, 0.0) for k in OUTPUT_STAGES)
        added = sum(m.get(k, 0.0) for k in NODE_STAGES)
        frame = own + pictures + added
        totals[name] = {'pipeline_ms': own, 'outputs_ms': pictures, 'node_added_ms': added,
                        'frame_ms': frame,
                        'pipeline_process_ms': m.get('total', float('nan')),
                        'pipeline_fps': 1e3 / m['total'] if m.get('total') else float('nan'),
                        'frame_fps': 1e3 / frame if frame else float('nan')}
    fused_frame = [sum(v) for v in zip(*(stages['fused'][k] for k in PIPELINE_STAGES))]
    image_frame = [sum(v) for v in zip(*(stages['image_only'][k] for k in PIPELINE_STAGES))]
    per_frame_ratio = [a / b for a, b in zip(fused_frame, image_frame) if b > 0]
    ratios = {
        # fused pipeline / image-only pipeline, median of per-frame ratios (robust to load)
        'motion_cost': _median(per_frame_ratio),
        # what the node adds around the pipeline / all the pipeline's work (labels + pictures)
        'node_overhead': totals['fused']['node_added_ms'] / (totals['fused']['pipeline_ms']
                                                             + totals['fused']['outputs_ms']),
        # pipeline without overlap / with it (whole process() totals), per frame then median
        'overlap_speedup': _median([a / b for a, b in zip(stages['sequential']['total'],
                                                          stages['overlapped']['total'])])
        if compare_overlap else float('nan'),
        # (flow path + fusion) / image path, per frame then median
        'flow_fusion_over_image_path': _median(
            [(a + b) / c for a, b, c in zip(paths['flow_path'], paths['fusion'],
                                            paths['image_path']) if c > 0]),
    }
    out = {
        'preset': card.get('preset'),
        'network': list(network),
        'camera': list(camera),
        'encoding': encoding,
        'precision': precision if amp_dtype is not None else 'fp32',
        'channels_last': channels_last,
        'iterations': timed,
        'stages_ms': med['fused'],
        'image_only_stages_ms': med['image_only'],
        **{f'{name}_stages_ms': med[name] for name in ways},
        'paths_ms': path_med,
        'postprocess_ms': {k: _median(v) for k, v in micro.items()},
        'totals': totals,
        'ratios': ratios,
        'published': publisher is not None,
        'backend': pipes['fused'].backend,
        'peers_ms': {k: _median(v) for k, v in peer_ms.items()},
        'peers_over_pipeline': {k: _median(v) for k, v in peer_ratio.items()},
        'overlap_flow': overlap_flow,
    }
    if device.type == 'cuda':
        out['gpu_max_memory_allocated_mb'] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark matrix the arguments describe and return the report dict.

    Args:
        args: parsed arguments of :func:`get_args_parser`.
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    presets = args.presets
    if args.weights:
        presets = ['weights']
    publisher = None
    if args.publish:
        try:
            publisher = _Publisher()
        except ImportError as exc:
            print(f'flow2seg-bench: --publish needs rclpy ({exc}); not publishing',
                  file=sys.stderr)
    report = {'environment': environment(device), 'configs': []}
    try:
        for preset in presets:
            model, image_only, card = model_pair(preset, num_classes=args.num_classes,
                                                 weights=args.weights)
            for network in args.sizes:
                for camera in args.cameras:
                    result = bench_config(
                        model, image_only, card, network=network, camera=camera,
                        iterations=args.iterations, device=device, precision=args.precision,
                        encoding=args.encoding, publisher=publisher, budget_s=args.budget_s,
                        channels_last=args.channels_last, backend=args.backend,
                        overlap_flow=_OVERLAP[args.overlap_flow], peers=args.peers,
                        compare_overlap=args.compare_overlap)
                    report['configs'].append(result)
                    if args.verbose:
                        print(_row(result), flush=True)
    finally:
        if publisher is not None:
            publisher.close()
    return report


_HEADER = (f"{'preset':<7}{'network':>10}{'camera':>10}{'n':>4}{'image':>8}{'flowp':>7}"
           f"{'fusion':>7}{'pipe ms':>9}{'fps':>7}{'node +':>8}{'img-only':>9}"
           f"{'motion':>8}{'(f+fu)/i':>9}")


def _row(c: dict[str, Any]) -> str:
    t, r, p = c['totals'], c['ratios'], c['paths_ms']
    net = 'x'.join(map(str, c['network']))
    cam = 'x'.join(map(str, c['camera']))
    return (f"{c['preset']:<7}{net:>10}{cam:>10}{c['iterations']:>4}{p['image_path']:>8.1f}"
            f"{p['flow_path']:>7.1f}{p['fusion']:>7.1f}{t['fused']['pipeline_ms']:>9.1f}"
            f"{t['fused']['pipeline_fps']:>7.1f}{100 * r['node_overhead']:>7.1f}%"
            f"{t['image_only']['pipeline_ms']:>9.1f}{r['motion_cost']:>7.2f}x"
            f"{100 * r['flow_fusion_over_image_path']:>8.1f}%")


def format_table(report: dict[str, Any]) -> str:
    """The short text table printed at the end.

    Args:
        report: what :func:`run` returned.
    """
    env = report['environment']
    lines = [f"device {env['device']} ({env.get('gpu') or env['cpu_model']}), "
             f"{env['torch_threads']} threads, torch {env['torch']}", _HEADER]
    for c in report['configs']:
        lines.append(_row(c))
        for name in PEERS:
            if name in c.get('peers_ms', {}):
                lines.append(f"  peer {name}: {c['peers_ms'][name]:.1f} ms; the whole fused "
                             f"pipeline is {c['peers_over_pipeline'][name]:.2f}x faster")
    lines.append('times in ms (medians); pipe = resize+flow+network+argmax; node + = conversion '
                 'and 3 messages built (+publish) over the pipeline with its pictures (resize '
                 'back, colour, overlay); motion = fused / image-only pipe; (f+fu)/i = (flow '
                 'path + fusion) / image path')
    return '\n'.join(lines)


_OVERLAP = {'auto': None, 'on': True, 'off': False}


def get_args_parser() -> argparse.ArgumentParser:
    """The command-line options of ``flow2seg-bench``."""
    parser = argparse.ArgumentParser(
        prog='flow2seg-bench', description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--presets', nargs='+', default=['lite', 'paper'],
                        choices=['lite', 'paper'], help='model presets (random weights)')
    parser.add_argument('--weights', default=None,
                        help='a model file or bundled name to time instead of random presets')
    parser.add_argument('--num-classes', type=int, default=19,
                        help='classes of random models (19 = Cityscapes)')
    parser.add_argument('--sizes', nargs='+', type=size_arg(), default=None,
                        help='network input sizes WxH (default 512x256 1024x512; --quick 256x128)')
    parser.add_argument('--cameras', nargs='+', type=size_arg(), default=None,
                        help='camera frame sizes WxH (default 640x480 1280x720; --quick 320x240)')
    parser.add_argument('--iterations', type=int, default=30, help='timed frames per config')
    parser.add_argument('--budget-s', type=float, default=90.0,
                        help='wall-time budget per config (stops after >= 2 frames past it)')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    parser.add_argument('--precision', default='fp32', choices=list(PRECISIONS),
                        help='fp16, bf16 = CUDA autocast')
    parser.add_argument('--channels-last', action='store_true',
                        help='channels-last memory format (CUDA tensor cores)')
    parser.add_argument('--threads', type=int, default=0, help='torch CPU threads (0 = default)')
    parser.add_argument('--backend', default='auto', choices=BACKENDS,
                        help='network runner (auto: ONNX Runtime on the CPU, torch on CUDA)')
    parser.add_argument('--overlap-flow', default='auto', choices=list(_OVERLAP),
                        help='flow beside the image path: on, off, or auto (measured as it '
                             'runs)')
    parser.add_argument('--compare-overlap', action='store_true',
                        help='also run the fused pipeline with the overlap always on and '
                             'always off, in the same loop (ratio overlap_speedup)')
    parser.add_argument('--peers', action='store_true',
                        help="also time torchvision's LRASPP and DeepLabV3 MobileNetV3-Large "
                             '(random weights, eager, network alone) in the same loop')
    parser.add_argument('--encoding', default='bgr8', choices=['rgb8', 'bgr8'],
                        help='camera message encoding')
    parser.add_argument('--publish', action='store_true',
                        help='also publish the three output messages in-process over rclpy')
    parser.add_argument('--quick', action='store_true',
                        help='brief run: lite only, at most 5 frames, small sizes')
    parser.add_argument('--out', default='bench.json', help='JSON report path')
    parser.add_argument('--verbose', action='store_true', help='print each row as it is done')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``flow2seg-bench``.

    Args:
        argv: command-line arguments (None = ``sys.argv[1:]``).

    Returns:
        0 on success (errors exit with a message and status 2).
    """
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.quick:
        args.presets = ['lite']
        args.iterations = min(args.iterations, 5)
    if args.sizes is None:
        args.sizes = [(256, 128)] if args.quick else [(512, 256), (1024, 512)]
    if args.cameras is None:
        args.cameras = [(320, 240)] if args.quick else [(640, 480), (1280, 720)]
    if args.iterations < 1:
        parser.error(f'--iterations must be >= 1, got {args.iterations}')
    for w, h in args.sizes:
        if w % 8 or h % 8 or w < 32 or h < 32:
            parser.error(f'network size must be multiples of 8 and >= 32, got {w}x{h}')
    try:
        report = run(args)
    except (ValueError, RuntimeError, OSError) as exc:
        parser.exit(2, f'flow2seg-bench: error: {exc}\n')
    report['args'] = {k: (list(map(list, v)) if k in ('sizes', 'cameras') else v)
                      for k, v in vars(args).items()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(format_table(report))
    print(f'written: {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
