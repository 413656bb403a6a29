"""make gpu-check: one command that checks the CUDA path on a machine with an NVIDIA GPU.

1. The tests marked ``cuda`` (pytest, in a subprocess): CPU/CUDA label agreement, CUDA graph
   replay against eager, recapture after a resolution change, buffers reused safely.
2. The pipeline as the node runs it, timed frame by frame: an ``rgb8`` camera message converted
   (``encodings.image_msg_to_rgb``), :meth:`FramePipeline.process` (upload to published outputs
   on the host), the three output messages filled as the node fills them
   (``encodings.MessageBuffers``; rclpy's types when rclpy is there, a stand-in otherwise).
   Over both presets (the bundled lite model; the paper preset with random weights), 512x256
   and 1024x512 networks, 1280x720 and 2048x1024 camera frames, each precision, CUDA graphs
   on and off. Medians of the timed frames.
3. ``torch.compile`` of the lite network against the same network replayed as a CUDA graph:
   compile time, steady time, recompiles over 20 calls.

Prints one table, writes ``gpu_check.json`` under ``--out`` (default ``$OUT``, else
``gpu_check_out``), and exits non-zero when a CUDA test fails (or a timed run breaks). Without
CUDA it says so, runs the device path's CPU tests and a reduced CPU run of the harness, and
measures no GPU figure. Needs torch, torchvision, OpenCV, numpy, safetensors and PyYAML only.
"""
from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
from pathlib import Path
import platform
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from flow2seg_ros import gpu_ops
from flow2seg_ros.classes import cityscapes_classes, ClassSet
from flow2seg_ros.device_path import AUTOCAST_DTYPES, DevicePath, GraphRunner
from flow2seg_ros.encodings import image_msg_from_array, image_msg_to_rgb, MessageBuffers
from flow2seg_ros.frames import scene_frames
from flow2seg_ros.gpu_report import (AIMS, check_aims, format_table, row as report_row,
                                     size_text)
from flow2seg_ros.pipeline import FramePipeline, PipelineConfig, PRECISIONS
from flow2seg_ros.weights import load_model, random_model

__all__ = ['AIMS', 'agreement', 'camera_message', 'run_tests', 'time_config', 'time_configs',
           'time_compile', 'time_formats', 'check_aims', 'format_table', 'main']  # the last
# three from gpu_report, so that ``gpu_check.check_aims`` and friends keep working

REPO = Path(__file__).resolve().parents[1]
NETWORKS = ((512, 256), (1024, 512))  # (W, H)
CAMERAS = ((1280, 720), (2048, 1024))


def _timed_calls(fn: Callable[[], Any], n: int) -> list[float]:
    """``fn()`` called ``n`` times on CUDA, each timed between synchronisations: ms."""
    times = []
    for _ in range(n):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - t0))
    return times


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float('nan')


def environment(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on (no tool module imported: this is a tool itself)."""
    env = {'device': str(device), 'torch': torch.__version__, 'cuda': torch.version.cuda,
           'python': platform.python_version(), 'cpu_count': os.cpu_count(),
           'cpu_model': platform.processor() or platform.machine(),
           'torch_threads': torch.get_num_threads()}
    if device.type == 'cuda':
        env['gpu'] = torch.cuda.get_device_name(device)
    return env


def camera_message(rgb: np.ndarray, stamp: float, image_type: Any) -> Any:
    """An ``rgb8`` camera message as a driver sends it (rclpy's type, else a stand-in)."""
    sec, nanosec = int(stamp), int(round((stamp - int(stamp)) * 1e9))
    header = SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec),
                             frame_id='camera')
    if image_type is not None:
        header = image_type().header
        header.stamp.sec, header.stamp.nanosec = sec, nanosec
        header.frame_id = 'camera'
    return image_msg_from_array(rgb, 'rgb8', header, image_type or SimpleNamespace)


def _message_type() -> Any:
    try:
        from sensor_msgs.msg import Image
        return Image
    except ImportError:
        return None


def run_tests(cuda: bool) -> dict[str, Any]:
    """Tests in a subprocess: on a GPU every test marked ``cuda``; without one, the device path's
    CPU tests (``test/test_gpu_path.py``), which take seconds.

    Without pytest (a bare GPU machine) the ``cuda`` tests run through
    :mod:`flow2seg_ros.marked_tests`.

    Args:
        cuda: whether a CUDA device is present.
    """
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / 'test').glob('test_*.py')
                   if 'mark.cuda' in p.read_text())
    if not cuda:
        files = ['test/test_gpu_path.py']
    if importlib.util.find_spec('pytest') is not None:
        marker = ['-m', 'cuda'] if cuda else ['-m', 'not cuda']
        cmd = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', *marker, *files]
    elif cuda:
        cmd = [sys.executable, '-m', 'flow2seg_ros.marked_tests', *files]
    else:
        return {'command': 'none', 'returncode': 0, 'seconds': 0.0,
                'summary': 'pytest is not installed and there is no CUDA: no test run',
                'output_tail': []}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    tail = (proc.stdout + proc.stderr).strip().splitlines()
    return {'command': ' '.join(cmd[1:]), 'returncode': proc.returncode,
            'seconds': round(time.perf_counter() - t0, 1), 'summary': tail[-1] if tail else '',
            'output_tail': tail[-60:]}


def _classes19() -> ClassSet:
    try:
        return cityscapes_classes()
    except ImportError:  # cityscapesScripts absent: 19 classes with generated colours
        rng = np.random.default_rng(0)
        return ClassSet([f'class{i}' for i in range(19)],
                        [tuple(int(c) for c in rng.integers(0, 255, 3)) for i in range(19)])


def models(device: torch.device) -> dict[str, tuple[torch.nn.Module, dict[str, Any]]]:
    """``{'lite': bundled (model, card), 'paper': random-weight (model, card)}`` on ``device``."""
    lite, lite_card = load_model(None, device=str(device))
    paper, paper_card = random_model('paper', classes=_classes19(), input_size=(256, 512))
    return {'lite': (lite, lite_card), 'paper': (paper.to(device), paper_card)}


def flow_estimator(kind: str, device: torch.device) -> tuple[Any, str]:
    """The flow estimator to time: ``learned`` (on the device) or ``card`` (the model card's).

    Returns:
        ``(estimator or None for the card's, description)``.
    """
    if kind == 'card':
        return None, 'model card'
    from flow2seg_ros.flow import make_flow_estimator
    try:
        return make_flow_estimator('learned', '', device=str(device)), 'learned (device)'
    except (ValueError, OSError) as exc:
        if kind == 'learned':
            raise
        return None, f'model card (learned flow unavailable: {exc})'


def agreement(device: torch.device, count: int = 6) -> dict[str, dict[str, float]]:
    """Share of label pixels equal between the CPU path and the CUDA path (bundled lite model),
    per precision, from frames at the network size and from 1280x720 frames.

    Both sides run one flow method: the learned flow (what CUDA runs by default; the same
    network on each side), and DIS fast (the CPU default, on the host for both) at fp32.

    Args:
        device: a CUDA device.
        count: frames per sequence.
    """
    cpu_model, card = load_model(None)
    gpu_model, _ = load_model(None, device=str(device))
    out: dict[str, dict[str, float]] = {}
    for flow, preset in (('learned', ''), ('dis', 'fast')):
        pinned = {'flow_method': flow, 'flow_preset': preset}
        # the CPU side runs the network in torch: the same network code on both sides
        cpu = FramePipeline(PipelineConfig(device='cpu', backend='torch', **pinned),
                            model=cpu_model, card=card)
        h, w = cpu.input_size
        for camera in ((w, h), (1280, 720)) if flow == 'learned' else ((w, h),):
            frames = scene_frames(count, camera)
            cpu.reset()
            ref = [cpu.process(f, 0.05 * i).labels for i, f in enumerate(frames)]
            for precision in PRECISIONS if flow == 'learned' else ('fp32',):
                gpu = FramePipeline(PipelineConfig(device=str(device), precision=precision,
                                                   **pinned), model=gpu_model, card=card)
                got = [gpu.process(f, 0.05 * i).labels for i, f in enumerate(frames)]
                equal = sum(int((a == b).sum()) for a, b in zip(ref, got))
                out.setdefault(f'{size_text(camera)} frames, {flow} flow', {})[precision] = \
                    equal / sum(a.size for a in ref)
    return out


def time_config(model: torch.nn.Module, card: dict[str, Any], *, preset: str,
                network: tuple[int, int], camera: tuple[int, int], precision: str,
                graphs: bool, device: torch.device, frames: list[np.ndarray], warmup: int,
                estimator: Any = None, device_path_on_cpu: bool = False,
                device_resident: bool = True) -> dict[str, Any]:
    """One precision through :func:`time_configs` (its row)."""
    return time_configs(model, card, preset=preset, network=network, camera=camera,
                        precisions=(precision,), graphs=graphs, device=device, frames=frames,
                        warmup=warmup, estimator=estimator,
                        device_path_on_cpu=device_path_on_cpu,
                        device_resident=device_resident)[0]


def time_configs(model: torch.nn.Module, card: dict[str, Any], *, preset: str,
                 network: tuple[int, int], camera: tuple[int, int], precisions: Sequence[str],
                 graphs: bool, device: torch.device, frames: list[np.ndarray], warmup: int,
                 estimator: Any = None, device_path_on_cpu: bool = False,
                 device_resident: bool = True,
                 variants: Optional[Sequence[dict[str, Any]]] = None) -> list[dict[str, Any]]:
    """Frames through what the node does, per stage; medians over the frames after ``warmup``.

    One pipeline per precision, timed interleaved: each frame goes through every pipeline in
    turn (the order rotating frame by frame), so a slow spell of the host weighs on all of them
    alike and the precisions' medians compare.

    Args:
        model: the network (shared by the configs).
        card: its model card.
        preset: the preset's name (for the report).
        network: network input (W, H).
        camera: camera frame (W, H).
        precisions: ``fp32``, ``fp16``, ``bf16``: one row each.
        graphs: CUDA graphs on.
        device: where the pipeline runs.
        frames: camera frames (RGB uint8).
        warmup: frames not timed (the first has no flow; graphs are captured in the next ones).
        estimator: flow estimator (None: the model card's).
        device_path_on_cpu: on the CPU, run the device path's code (eagerly) instead of the
            CPU path: the harness checked end to end without a GPU.
        device_resident: False times the CUDA baseline that resizes and draws on the host.
        variants: one dict per entry of ``precisions`` (which may repeat): ``label``,
            ``temporal_smoothing`` (the weight; default the pipeline's),
            ``temporal_smoothing_stride`` (default the pipeline's) and ``smoothing_graphs``
            (False: the smoothing eager while the other stages replay).
    """
    pipes = []
    variants = list(variants) if variants is not None else [{} for _ in precisions]
    for precision, variant in zip(precisions, variants):
        extra = {k: variant[k] for k in ('temporal_smoothing', 'temporal_smoothing_stride')
                 if k in variant}
        config = PipelineConfig(device=str(device), precision=precision,
                                input_size=(network[1], network[0]), cuda_graphs=graphs,
                                device_resident=device_resident, **extra)
        pipe = FramePipeline(config, model=model, card=card, flow_estimator=estimator)
        if not variant.get('smoothing_graphs', True):
            pipe.temporal.graphs = False  # eager torch on the device
        if device_path_on_cpu and device.type == 'cpu':
            pipe.cpu_path = None  # the pipeline as on CUDA
            pipe.device_path = DevicePath.for_pipeline(pipe)
        pipes.append(pipe)
    image_type = _message_type()
    outboxes = [MessageBuffers(image_type or SimpleNamespace) for _ in pipes]  # as the node's
    for pipe, box in zip(pipes, outboxes):
        box.serve(pipe)  # outputs downloaded into the messages, as the node does
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    stages: list[dict[str, list[float]]] = [{} for _ in pipes]
    for i, rgb in enumerate(frames):
        stamp = 100.0 + i / 30.0
        for k in [(i + j) % len(pipes) for j in range(len(pipes))]:
            msg = camera_message(rgb, stamp, image_type)
            t0 = time.perf_counter()
            frame = image_msg_to_rgb(msg)
            t1 = time.perf_counter()
            result = pipes[k].process(frame, stamp, outputs=('color_mask', 'overlay'))
            t2 = time.perf_counter()
            outboxes[k].result_messages(result, msg.header)
            t3 = time.perf_counter()
            if i < warmup:
                continue
            if result.reset_reason is not None:
                raise RuntimeError(f'frame {i} reset the flow state ({result.reset_reason})')
            for key, ms in (('convert', t1 - t0), ('process', t2 - t1), ('messages', t3 - t2),
                            ('frame', t3 - t0)):
                stages[k].setdefault(key, []).append(1e3 * ms)
            for key, ms in result.timings.items():
                stages[k].setdefault(f'pipeline.{key}', []).append(ms)
    rows = []
    for precision, pipe, timed, box, variant in zip(precisions, pipes, stages, outboxes,
                                                    variants):
        med = {k: _median(v) for k, v in timed.items()}
        runner = pipe.device_path.runner if pipe.device_path is not None else None
        out = {
            'preset': preset, 'network': list(network), 'camera': list(camera),
            'precision': precision, 'autocast': str(pipe.amp_dtype), 'graphs': graphs,
            'variant': variant.get('label', ''), 'temporal_smoothing': pipe.temporal.weight,
            'temporal_smoothing_stride': pipe.temporal.stride,
            'device_path': pipe.device_path is not None,
            'path': ('device' if pipe.device_path is not None else
                     'host' if device.type == 'cuda' else 'cpu'),
            'flow': type(pipe.flow_estimator).__name__ if pipe.flow_estimator else None,
            'frames_timed': len(timed.get('frame', [])), 'median_ms': med,
            'process_fps': 1e3 / med['process'] if med.get('process') else float('nan'),
            'frame_fps': 1e3 / med['frame'] if med.get('frame') else float('nan'),
            # what the node adds around the pipeline: message in, three messages out
            'node_share': (med['convert'] + med['messages']) / med['frame']
            if med.get('frame') else float('nan'),
        }
        if pipe.device_path is not None and pipe.device_path.format_choice:
            out['memory_format'] = pipe.device_path.format_choice
        if pipe.device_path is not None:  # message buffers page-locked in place, or not
            registry = pipe.device_path.download.registry
            out['host_buffers'] = {'page_locked': registry.registered,
                                   'left_pageable': registry.skipped,
                                   'host_copies': box.copies}
        if runner is not None:
            out['graph_captures'] = runner.captures
            out['graph_failures'] = dict(runner.failed)
        if device.type == 'cuda':  # the pipelines of the group together
            out['gpu_max_memory_mb'] = round(
                torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
        rows.append(out)
    return rows


SMOOTHING_VARIANTS = ({'label': 'smoothing off', 'temporal_smoothing': 0.0},
                      {'label': 'smoothing as graphs'},
                      {'label': 'smoothing eager', 'smoothing_graphs': False},
                      {'label': 'smoothing at stride 2 as graphs', 'temporal_smoothing_stride': 2})


def time_smoothing(model: torch.nn.Module, card: dict[str, Any], device: torch.device,
                   frames: list[np.ndarray], warmup: int, estimator: Any = None
                   ) -> list[dict[str, Any]]:
    """What the temporal smoothing costs on the device: the lite preset at 512x256 from the
    given frames, fp32, CUDA graphs on, timed interleaved frame by frame with the smoothing
    off, captured with the other stages (the default), run eagerly between them, and captured
    on the finer stride-2 grid."""
    return time_configs(model, card, preset='lite', network=(512, 256),
                        camera=frames[0].shape[1::-1],
                        precisions=('fp32',) * len(SMOOTHING_VARIANTS), graphs=True,
                        device=device, frames=frames, warmup=warmup, estimator=estimator,
                        variants=SMOOTHING_VARIANTS)


def time_compile(model: torch.nn.Module, card: dict[str, Any], device: torch.device, *,
                 precision: str = 'fp32', calls: int = 20) -> dict[str, Any]:
    """``torch.compile`` of the network against eager and the device path's CUDA graph.

    Args:
        model: the lite network.
        card: its card (input size).
        device: a CUDA device.
        precision: autocast precision, held constant over the calls.
        calls: steady-state calls timed (and watched for recompiles).
    """
    h, w = card['input_size']
    x = torch.randn(1, 3, h, w, device=device)
    f = torch.randn(1, 2, h, w, device=device) * 0.1
    path = DevicePath(device, input_size=(h, w), mean=(0, 0, 0), std=(1, 1, 1),
                      palette=np.zeros((256, 3), np.uint8), precision=precision)
    timed = _timed_calls
    path.runner.enabled = False
    eager = _median(timed(lambda: path.network(model, x, f, ('fused',)), calls))
    path.runner.enabled = True
    graph = _median(timed(lambda: path.network(model, x, f, ('fused',)), calls + 3)[3:])
    out: dict[str, Any] = {'precision': precision, 'input': [w, h], 'eager_ms': eager,
                           'graph_ms': graph}
    try:
        from torch._dynamo.utils import counters
        compiled = torch.compile(model)
        t0 = time.perf_counter()
        path.runner.enabled = False
        path.network(compiled, x, f, ('fused',))
        torch.cuda.synchronize()
        out['compile_first_call_s'] = round(time.perf_counter() - t0, 1)
        before = sum(counters['frames'].values())
        out['compiled_ms'] = _median(timed(lambda: path.network(compiled, x, f, ('fused',)),
                                           calls))
        out['recompiles'] = sum(counters['frames'].values()) - before
        out['compiled_faster_than_graph'] = out['compiled_ms'] < graph
    except Exception as exc:  # a missing compiler is a finding, not a crash
        out['compile_error'] = f'{type(exc).__name__}: {exc}'[:500]
    return out


def time_formats(model: torch.nn.Module, device: torch.device, *, input_size: tuple[int, int],
                 calls: int = 20) -> dict[str, float]:
    """The network alone as the device path replays it (CUDA graph, reduced-precision weights),
    per precision, in NCHW and in channels-last memory format: median ms.

    Args:
        model: the network.
        device: a CUDA device.
        input_size: network input (h, w).
        calls: timed replays after three warm-up calls.
    """
    import copy
    h, w = input_size
    x = torch.randn(1, 3, h, w, device=device)
    f = torch.randn(1, 2, h, w, device=device) * 0.1
    out: dict[str, float] = {}
    for fmt in ('nchw', 'channels_last'):
        net, xx, ff = model, x, f
        if fmt == 'channels_last':
            cl = torch.channels_last
            net = copy.deepcopy(model).to(memory_format=cl)
            xx, ff = x.contiguous(memory_format=cl), f.contiguous(memory_format=cl)
        for precision in PRECISIONS:
            path = DevicePath(device, input_size=(h, w), mean=(0, 0, 0), std=(1, 1, 1),
                              palette=np.zeros((256, 3), np.uint8), precision=precision)
            path.choose_format = False  # each format as given
            times = _timed_calls(lambda p=path, n=net: p.network(n, xx, ff, ('fused',)),
                                 calls + 3)
            out[f'{precision} {fmt}'] = round(_median(times[3:]), 3)
            del path
        del net
    for precision in PRECISIONS:  # NCHW with the norms not folded, for comparison
        dtype = AUTOCAST_DTYPES[precision]
        net = gpu_ops.inference_copy(model, dtype, fold=False)
        xx, ff = (x, f) if dtype is None else (x.to(dtype), f.to(dtype))
        runner = GraphRunner()

        def call(a: torch.Tensor, b: torch.Tensor,
                 net: torch.nn.Module = net) -> tuple[torch.Tensor, ...]:
            return tuple(net(a, b, heads=('fused',)).values())
        with torch.inference_mode():
            times = _timed_calls(lambda: runner('unfolded', call, (xx, ff)), calls + 3)
        out[f'{precision} nchw norms unfolded'] = round(_median(times[3:]), 3)
        runner.clear()
        del net
    torch.cuda.empty_cache()
    return out


def get_args_parser() -> argparse.ArgumentParser:
    """The command-line options of ``python -m flow2seg_ros.gpu_check``."""
    p = argparse.ArgumentParser(prog='gpu-check', description=__doc__.split('\n\n')[0])
    p.add_argument('--out', default=os.environ.get('OUT') or 'gpu_check_out',
                   help='folder for gpu_check.json (default $OUT, else gpu_check_out)')
    p.add_argument('--frames', type=int, default=20, help='timed frames per configuration')
    p.add_argument('--warmup', type=int, default=3, help='untimed frames per configuration')
    p.add_argument('--flow', choices=('auto', 'learned', 'card'), default='auto',
                   help='flow to time: the learned network on the device, or the model '
                        "card's; auto = learned when its weights are there")
    p.add_argument('--budget-s', type=float, default=150.0,
                   help='stop starting new timed configurations after this long')
    p.add_argument('--no-tests', action='store_true', help='skip the pytest run')
    p.add_argument('--no-compile', action='store_true', help='skip the torch.compile timing')
    return p


def _cpu_reduced(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """No CUDA: the harness end to end on the CPU, on one small configuration."""
    device = torch.device('cpu')
    model, card = load_model(None)
    frames = scene_frames(args.warmup + 2, (1280, 720))
    report['configs'].append(time_config(
        model, card, preset='lite', network=(512, 256), camera=(1280, 720), precision='fp32',
        graphs=False, device=device, frames=frames, warmup=args.warmup))
    report['configs'] += time_configs(
        model, card, preset='lite', network=(512, 256), camera=(1280, 720),
        precisions=('fp32', 'bf16'), graphs=False, device=device, frames=frames,
        warmup=args.warmup, device_path_on_cpu=True)
    # the aims' code runs too, but CPU figures say nothing about them: kept apart, not printed
    report['aims_code_check_on_cpu'] = check_aims(report['configs'])
    report['notes'].append('no CUDA device: GPU figures NOT measured; a reduced CPU run of the '
                           'harness (the CPU path, and the device path code run eagerly on the '
                           'CPU); the tests line says which tests ran')


def _cuda_matrix(args: argparse.Namespace, report: dict[str, Any],
                 device: torch.device) -> bool:
    """Agreement with the CPU, the timed matrix and torch.compile on CUDA; False when a part
    broke (each broken part is reported and the others still run)."""
    ok = True
    try:
        report['agreement'] = agreement(device)
    except Exception as exc:  # reported; the tests check the thresholds
        ok = False
        report['errors'].append(f'agreement: {type(exc).__name__}: {exc}'[:500])
    nets = models(device)
    estimator, report['flow'] = flow_estimator(args.flow, device)
    started = time.perf_counter()
    n = args.warmup + args.frames
    frames = {cam: scene_frames(n, cam) for cam in CAMERAS}
    # graphs on first, then the host baseline (fp32), then eager: if the budget runs out, what
    # goes is the eager comparison
    sizes = list(itertools.product(('lite', 'paper'), NETWORKS, CAMERAS))
    matrix = [('graphs',) + s + (PRECISIONS,) for s in sizes] + \
        [('host',) + s + (('fp32',),) for s in sizes] + \
        [('eager',) + s + (PRECISIONS,) for s in sizes]
    try:  # a throwaway pass of the first configuration: host and GPU in a steady state
        _, preset, network, camera, precisions = matrix[0]
        time_configs(*nets[preset], preset=preset, network=network, camera=camera,
                     precisions=precisions, graphs=True, device=device,
                     frames=frames[camera][:args.warmup + 5], warmup=args.warmup,
                     estimator=estimator)
    except Exception as exc:  # noted; the timed pass reports its own errors
        report['notes'].append(f'warm-up pass failed: {type(exc).__name__}: {exc}'[:500])
    for mode, preset, network, camera, precisions in matrix:
        what = f'{preset} {size_text(network)} {size_text(camera)} {"/".join(precisions)} {mode}'
        if time.perf_counter() - started > args.budget_s:
            report['notes'].append(f'time budget ({args.budget_s:.0f} s) spent: skipped {what} '
                                   'and the configurations after it')
            break
        model, card = nets[preset]
        try:
            rows = time_configs(model, card, preset=preset, network=network, camera=camera,
                                precisions=precisions, graphs=mode == 'graphs', device=device,
                                frames=frames[camera], warmup=args.warmup,
                                estimator=estimator, device_resident=mode != 'host')
        except Exception as exc:  # report it and go on with the others
            ok = False
            report['errors'].append(f'{what}: {type(exc).__name__}: {exc}'[:500])
            continue
        for row in rows:
            report['configs'].append(row)
            print(report_row(row), flush=True)
    try:
        report['smoothing'] = time_smoothing(*nets['lite'], device, frames[(1280, 720)],
                                             args.warmup, estimator)
        for row in report['smoothing']:
            med = row['median_ms']
            print(f"smoothing: {row['variant']:31s} process {med['process']:.3f} ms, argmax "
                  f"stage {med.get('pipeline.argmax', float('nan')):.3f} ms", flush=True)
    except Exception as exc:  # reported; the matrix stands
        ok = False
        report['errors'].append(f'smoothing: {type(exc).__name__}: {exc}'[:500])
    report['formats'] = {}
    for preset, size in (('lite', (256, 512)), ('paper', (512, 1024))):
        try:
            report['formats'][f'{preset} {size[1]}x{size[0]}'] = time_formats(
                nets[preset][0], device, input_size=size)
        except Exception as exc:  # a finding, reported
            report['errors'].append(f'formats {preset}: {type(exc).__name__}: {exc}'[:500])
    if args.no_compile:
        pass
    elif time.perf_counter() - args.started > 210.0:
        report['notes'].append('torch.compile not timed: under 90 s of the 5 minutes left '
                               '(it compiles for about 25 s, more on a slow host)')
    else:
        report['compile'] = time_compile(nets['lite'][0], nets['lite'][1], device)
    return ok


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the check; 0 when every test passed and every configuration ran."""
    args = get_args_parser().parse_args(argv)
    args.started = time.perf_counter()
    cuda = torch.cuda.is_available()
    device = torch.device('cuda' if cuda else 'cpu')
    report: dict[str, Any] = {'environment': environment(device), 'cuda': cuda, 'configs': [],
                              'notes': [], 'errors': [], 'flow': 'model card',
                              'aims_targets': AIMS}
    t0 = time.perf_counter()
    name = 'CUDA ' + torch.cuda.get_device_name(device) if cuda else 'no CUDA'
    print(f'gpu-check: {name}, torch {torch.__version__}', flush=True)
    if not args.no_tests:
        report['tests'] = run_tests(cuda)
        print(f"tests: {report['tests']['summary']}", flush=True)
    ok = _cuda_matrix(args, report, device) if cuda else (_cpu_reduced(args, report) or True)
    report['aims'] = check_aims(report['configs']) if cuda else {}
    report['seconds'] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'gpu_check.json').write_text(json.dumps(report, indent=2, default=str) + '\n')
    print(format_table(report))
    for err in report['errors']:
        print(f'error: {err}')
    print(f"wrote {out / 'gpu_check.json'} in {report['seconds']} s")
    tests_ok = args.no_tests or report['tests']['returncode'] in (0, 5)  # 5: none collected
    return 0 if tests_ok and ok else 1


if __name__ == '__main__':
    sys.exit(main())
