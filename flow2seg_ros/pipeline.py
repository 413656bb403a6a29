"""The frame pipeline: a stream of RGB frames in, label maps and pictures out. No ROS here.

The node, the demo, evaluation, bag replay and the benchmark all run frames through
:class:`FramePipeline`, so what is measured offline is what the robot runs. Per frame: resize to
the network's input size, optical flow between this frame and the one before it, the Flow2Seg
network (image path, flow path, residual fusion), temporal smoothing along the flow, argmax,
and, at the input's size, the label map plus whatever pictures were asked for. Three steps,
public so that several cameras can share one network call:

* :meth:`FramePipeline.prepare` ``(rgb, stamp, *, prev=None) -> PreparedFrame``: checks the
  frame, resizes it and decides whether the flow state resets. The per-stream state (the
  previous frame) moves on to this frame here; the PreparedFrame keeps the one it needs.
* :meth:`FramePipeline.infer` ``(frames, heads=('fused',)) -> list[dict]``: the network, once,
  on a batch of prepared frames of one network size, flow included (each frame's flow comes
  from the flow estimator of the pipeline that prepared it, between that frame and its own
  predecessor, and is stored in ``frame.flow``). A multi-camera node keeps one FramePipeline
  per camera, all built with the same ``model=``, and runs its cameras' frames in one batch
  (:func:`infer_batch`). Returns, per frame, ``{head: (1, C, h, w) logits}`` for the heads the
  network made (on the CPU at its native strides: :mod:`flow2seg_ros.cpu_path`).
* :meth:`FramePipeline.finish` ``(frame, out, *, outputs=..., heads=...) -> FrameResult``:
  temporal smoothing (:mod:`flow2seg_ros.temporal`), argmax, labels (and the pictures asked for)
  at the input's size. Call it on the frame's own pipeline (its stream's smoothing state).

:meth:`FramePipeline.process` is ``prepare`` + ``infer`` + ``finish`` for one frame. Each step
adds its stages to ``frame.timings`` (ms): ``resize``; ``flow``, ``network``; ``argmax``,
``resize_back``, ``colour``; ``total`` is their sum. In a batch of several frames, ``network``
is the batch's time, given to each frame. With the flow overlapped, ``flow`` is what the image
path did not hide, and ``flow_thread`` (not in ``total``) the flow thread's own time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import logging
import time
from typing import Any, Iterable, Optional, Sequence

import cv2
import numpy as np
import torch

from flow2seg_ros.backends import make_runner, resolve_backend
from flow2seg_ros.classes import ClassSet
from flow2seg_ros.cpu_path import (CONCURRENT_STAGES, CpuPath, full_size, labels_from_logits,
                                   network_input)
from flow2seg_ros.device_path import autocast_dtype, DeviceFrame, DevicePath
from flow2seg_ros.devices import resolve_device
from flow2seg_ros.flow import (FlowEstimator, INFERENCE_FLOW_METHODS, make_flow_estimator,
                               scale_flow)
from flow2seg_ros.models import HEADS
from flow2seg_ros.stats import StageTimer
from flow2seg_ros.temporal import check_stride, check_weight, DEFAULT_WEIGHT, TemporalFilter
from flow2seg_ros.visualize import colorize, flow_to_rgb, overlay
from flow2seg_ros.weights import card_flow, IMAGENET_MEAN, IMAGENET_STD, load_model

__all__ = ['OUTPUTS', 'PRECISIONS', 'PipelineConfig', 'FrameResult', 'PreparedFrame',
           'FramePipeline', 'card_flow', 'infer_batch']

log = logging.getLogger(__name__)

OUTPUTS = ('color_mask', 'overlay', 'confidence', 'flow_rgb')
PRECISIONS = ('fp32', 'fp16', 'bf16')


@dataclass
class PipelineConfig:
    """What the pipeline runs and how.

    Args:
        weights: model file (.safetensors with its .json card); None = the bundled model.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``fp32``, ``fp16`` or ``bf16`` (autocast on CUDA; the network stays NCHW;
            falls back to fp32 on the CPU).
        input_size: network input (height, width); None = the model card's.
        flow_method: flow estimator; None = the model card's (what the model was trained with).
        flow_preset: its preset; None = the card's (for another method: that method's default).
        flow_weights: RAFT weights file (None = torch hub cache).
        overlay_alpha: weight of the colour mask in the overlay, 0..1.
        max_gap_s: a longer gap between two frames' stamps resets the flow state.
        threads: torch CPU threads (0 = leave torch's default).
        cuda_graphs: on CUDA, replay the fixed-shape stages of a frame as CUDA graphs (captured
            at the first frame of a size); False runs them eagerly.
        device_resident: on CUDA, keep each frame on the device from upload to outputs (the
            device path); False resizes and draws on the host around the network (the CPU
            path's pictures), a baseline for comparison.
        backend: who runs the network on the CPU: ``onnxruntime``, ``torch``, or ``auto`` (the
            one measured faster on the device: ONNX Runtime on the CPU, torch on CUDA).
        onnx: for ONNX Runtime, a ``flow2seg-export`` file of these weights at the input size;
            None = exported on first use into the cache (``FLOW2SEG_CACHE``, else
            ``~/.cache/flow2seg_ros``).
        overlap_flow: on the CPU, compute the flow (and the flow path) in a second thread while
            the image path runs: True, False, or None = whichever is measured faster as frames
            run (see :class:`~flow2seg_ros.cpu_path.CpuPath`).
        temporal_smoothing: weight in [0, 1) of the previous frame's fused class probabilities,
            carried along the flow, in this frame's (:mod:`flow2seg_ros.temporal`); 0 = off.
        temporal_smoothing_stride: network pixels per cell of the grid the smoothing runs on;
            0 = the logits' own grid.
    """

    weights: Optional[str] = None
    device: str = 'auto'
    precision: str = 'fp32'
    input_size: Optional[tuple[int, int]] = None
    flow_method: Optional[str] = None
    flow_preset: Optional[str] = None
    flow_weights: Optional[str] = None
    overlay_alpha: float = 0.5
    max_gap_s: float = 0.5
    threads: int = 0
    cuda_graphs: bool = True
    device_resident: bool = True
    backend: str = 'auto'
    onnx: Optional[str] = None
    overlap_flow: Optional[bool] = None
    temporal_smoothing: float = DEFAULT_WEIGHT
    temporal_smoothing_stride: int = 0

    def validate(self) -> None:
        """Raise ValueError naming the first bad value."""
        resolve_backend(self.backend, resolve_device(self.device))
        if self.precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, got {self.precision!r}')
        if self.input_size is not None:
            h, w = self.input_size
            if h < 32 or w < 32 or h % 8 or w % 8:
                raise ValueError(f'network input size must be multiples of 8 and >= 32, '
                                 f'got {w}x{h} (WxH)')
        if self.flow_method == 'mixed':
            raise ValueError("flow method 'mixed' draws each frame's flow at random from its "
                             'parts (for training); name one of them, e.g. dis or learned')
        if self.flow_method is not None and self.flow_method not in INFERENCE_FLOW_METHODS:
            raise ValueError(f'flow method must be one of {INFERENCE_FLOW_METHODS}, '
                             f'got {self.flow_method!r}')
        if not 0.0 <= self.overlay_alpha <= 1.0:
            raise ValueError(f'overlay alpha must be in [0, 1], got {self.overlay_alpha}')
        if not self.max_gap_s > 0:
            raise ValueError(f'max frame gap must be > 0 s, got {self.max_gap_s}')
        check_weight(self.temporal_smoothing)
        check_stride(self.temporal_smoothing_stride)


@dataclass
class FrameResult:
    """Everything the pipeline produced for one frame (arrays at the input's size)."""

    labels: np.ndarray
    stamp: float
    confidence: Optional[np.ndarray] = None
    color_mask: Optional[np.ndarray] = None
    overlay: Optional[np.ndarray] = None
    flow_rgb: Optional[np.ndarray] = None
    flow: Optional[np.ndarray] = None
    head_labels: dict[str, Optional[np.ndarray]] = field(default_factory=dict)
    reset_reason: Optional[str] = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def used_flow(self) -> bool:
        return self.flow is not None


@dataclass
class _Frame:
    small: np.ndarray  # RGB at the network's input size
    stamp: float
    size: tuple[int, int]  # (H, W) of the input


@dataclass
class PreparedFrame:
    """One frame after :meth:`FramePipeline.prepare`, ready for :meth:`FramePipeline.infer`.

    Attributes:
        pipeline: the FramePipeline that prepared it (its stream, flow estimator and counters).
        rgb: the frame as received, (H, W, 3) uint8 RGB (BGR when prepared with ``bgr=True``
            on the device path, which swaps the channels on the device).
        small: the frame at the network's input size.
        stamp: its time in seconds.
        reset_reason: None, ``first``, ``size``, ``backwards`` or ``gap`` (see FrameResult).
        prev_small: the previous frame at the network's input size when flow is to be computed
            for this frame, else None (a reset, or a model without a flow path).
        prev_stamp: the time of the frame ``prev_small`` is (None without it).
        flow: (2, h, w) flow in pixels, set by :meth:`FramePipeline.infer` (None without flow).
        timings: per-stage wall times in ms, filled in by each step.
        device: on CUDA, the frame on the device (:class:`~flow2seg_ros.device_path.
            DeviceFrame`); None on the CPU.
    """

    pipeline: 'FramePipeline'
    rgb: np.ndarray
    small: np.ndarray
    stamp: float
    reset_reason: Optional[str]
    prev_small: Optional[np.ndarray] = None
    prev_stamp: Optional[float] = None
    flow: Optional[torch.Tensor] = None
    timings: dict[str, float] = field(default_factory=dict)
    device: Optional[DeviceFrame] = None

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the frame as received."""
        return (self.rgb.shape[0], self.rgb.shape[1])


class FramePipeline:
    """Stateful frame-to-labels pipeline holding the model, the flow estimator and the last frame.

    Args:
        config: see :class:`PipelineConfig`.
        model: an already built model (tests); with ``card``, skips loading weights.
        card: the model card that goes with ``model``.
        flow_estimator: an already built flow estimator (tests, benchmarks).
        runner: the CPU backend runner of another pipeline around the same model and network
            size (cameras of one node share it, so the model is in memory once).
    """

    def __init__(self, config: Optional[PipelineConfig] = None, *,
                 model: Optional[torch.nn.Module] = None, card: Optional[dict[str, Any]] = None,
                 flow_estimator: Optional[FlowEstimator] = None, runner: Any = None) -> None:
        self.config = config = config or PipelineConfig()
        config.validate()
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = resolve_device(config.device)
        # --- device path (issue 11): autocast dtype; NCHW kept (channels-last was slower) ---
        self.amp_dtype = autocast_dtype(config.precision, self.device)
        self.fp16 = self.amp_dtype == torch.float16
        if config.precision != 'fp32' and self.amp_dtype is None:
            log.warning('precision %s needs CUDA; running fp32 on %s', config.precision,
                        self.device)
        if model is None:
            model, card = load_model(config.weights, device=str(self.device))
        elif card is None:
            raise ValueError('a model passed to FramePipeline needs its model card')
        self.model = model.to(self.device).eval()
        self.card = card
        self.classes = ClassSet.from_dict(card['classes'])
        self.palette = self.classes.palette()
        size = config.input_size or card.get('input_size')
        if not size:
            raise ValueError('no network input size: neither the config nor the model card '
                             'gives one')
        self.input_size = (int(size[0]), int(size[1]))  # (H, W)
        norm = card.get('normalization', {})
        mean, std = norm.get('mean', IMAGENET_MEAN), norm.get('std', IMAGENET_STD)
        # Fold /255, mean and std into one multiply-add on the device.
        self._scale = (1.0 / (255.0 * torch.tensor(std))).view(1, 3, 1, 1).to(self.device)
        self._shift = (-torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1).to(self.device)
        self.flow_scale = float(card.get('flow', {}).get('scale', 1.0))
        self.has_flow_path = bool(getattr(self.model, 'has_flow', True))
        # the flow method and preset it runs (None with a given estimator)
        self.flow_method: Optional[str] = None
        self.flow_preset: Optional[str] = None
        if flow_estimator is None and self.has_flow_path:
            card_method, card_preset = card_flow(card, self.device)
            method = config.flow_method or card_method
            preset = config.flow_preset or (card_preset if method == card_method else '')
            flow_estimator = make_flow_estimator(method, preset, device=str(self.device),
                                                 weights=config.flow_weights)
            self.flow_method, self.flow_preset = method, preset
        self.flow_estimator = flow_estimator
        # CPU path (issue 12): the network through a backend, the flow in a second thread
        self.backend = resolve_backend(config.backend, self.device)
        self.cpu_path: Optional[CpuPath] = None
        if self.device.type == 'cpu':
            runner = runner or make_runner(self.backend, self.model, card, device=self.device,
                                           input_size=self.input_size, threads=config.threads,
                                           onnx_path=config.onnx)
            self.cpu_path = CpuPath(runner, flow_scale=self.flow_scale,
                                    overlap=config.overlap_flow, threads=config.threads)
        self._prev: Optional[_Frame] = None
        self._pinned: Optional[torch.Tensor] = None  # page-locked upload buffer (CUDA only)
        # --- device path (issue 11): on CUDA the frame goes up once, outputs come down once ---
        self.device_path: Optional[DevicePath] = None
        self._prev_device: Optional[torch.Tensor] = None  # last frame's network-size tensor
        self.normalization = (tuple(mean), tuple(std))
        if self.device.type == 'cuda' and config.device_resident:
            self.device_path = DevicePath.for_pipeline(self)
        # per stream, like _prev; a model without a flow path has no flow to carry along
        self.temporal = TemporalFilter(config.temporal_smoothing if self.has_flow_path else 0.0,
                                       config.temporal_smoothing_stride, self.input_size)
        self.frames = 0
        self.resets = 0

    def reset(self) -> None:
        """Forget the previous frame: the next frame is segmented as a first frame."""
        self._prev = None
        self.temporal.reset()

    def _reset_reason(self, size: tuple[int, int], stamp: float,
                      prev: Optional[_Frame]) -> Optional[str]:
        if prev is None:
            return 'first'
        if prev.size != size:
            return 'size'
        if stamp < prev.stamp:
            return 'backwards'
        if stamp - prev.stamp > self.config.max_gap_s:
            return 'gap'
        return None

    def _small(self, rgb: np.ndarray) -> np.ndarray:
        h, w = self.input_size
        if rgb.shape[:2] == (h, w):
            # kept as the previous frame and handed to torch: never a view of a read-only buffer
            return rgb if rgb.flags.writeable else rgb.copy()
        # INTER_AREA is the anti-aliased downscale but takes 5-10 ms on a CPU at a fractional
        # factor (640x480 or 1280x720 to 512x256). Downscaling by an integer factor k >= 2 with
        # INTER_AREA is fast, so: bilinear to k times the network size, then area by k; below a
        # factor of 2 bilinear alone (it averages 2x2 pixels, so little aliasing).
        k = int(min(rgb.shape[1] / w, rgb.shape[0] / h))
        if k < 2:
            return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
        if rgb.shape[:2] != (k * h, k * w):
            rgb = cv2.resize(rgb, (k * w, k * h), interpolation=cv2.INTER_LINEAR)
        return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)

    def _upload(self, small: np.ndarray) -> torch.Tensor:
        """The network-size frame as a uint8 tensor on the device.

        On CUDA the frame goes through one reused page-locked buffer, so the copy is asynchronous;
        reusing it is safe because every frame ends with a device-to-host copy of its labels.
        """
        if self.device.type != 'cuda':
            return torch.from_numpy(small)
        if self._pinned is None or tuple(self._pinned.shape) != small.shape:
            self._pinned = torch.empty(small.shape, dtype=torch.uint8).pin_memory()
        self._pinned.numpy()[...] = small
        return self._pinned.to(self.device, non_blocking=True)

    @staticmethod
    def _check_outputs_heads(outputs: Iterable[str], heads: Iterable[str]
                             ) -> tuple[set[str], tuple[str, ...]]:
        outputs, heads = set(outputs), tuple(heads)
        unknown = (outputs - set(OUTPUTS)) | (set(heads) - set(HEADS))
        if unknown:
            raise ValueError(f'unknown outputs or heads: {sorted(unknown)}')
        return outputs, heads

    def prepare(self, rgb: np.ndarray, stamp: float, *,
                prev: Optional[tuple[np.ndarray, float]] = None,
                bgr: bool = False) -> PreparedFrame:
        """Step 1: check the frame, resize it to the network's size, decide on a flow reset.

        The stream moves on to this frame: the next frame prepared here takes its flow against
        this one.

        Args:
            rgb: (H, W, 3) uint8 RGB frame at the camera's size.
            stamp: its time in seconds (header stamp).
            prev: ``(rgb, stamp)`` of the frame received just before this one when it differs
                from the last frame prepared (a node that dropped frames); None = the last
                prepared frame.
            bgr: the frames are blue, green, red (a ``bgr8`` camera): swapped on the device
                on CUDA (no host conversion), by OpenCV on the CPU.
        """
        if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 \
                or rgb.dtype != np.uint8:
            shape = getattr(rgb, 'shape', type(rgb))
            raise ValueError(f'frame must be (H, W, 3) uint8 RGB, got {shape} '
                             f'{getattr(rgb, "dtype", "")}')
        if bgr:  # device path (issue 11): a bgr8 frame goes up as it is
            if self.device_path is None:
                rgb = cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB)
            if prev is not None:
                prev = (cv2.cvtColor(prev[0], cv2.COLOR_BGR2RGB), prev[1])
        frame = PreparedFrame(self, rgb, rgb, float(stamp), None)
        timer = StageTimer(self.device.type == 'cuda', frame.timings)
        size = frame.size
        if prev is not None:
            prev_rgb, prev_stamp = prev
            stored = self._prev
            if stored is None or stored.stamp != float(prev_stamp) or \
                    stored.size != prev_rgb.shape[:2]:
                stored = _Frame(self._small(prev_rgb), float(prev_stamp),
                                (prev_rgb.shape[0], prev_rgb.shape[1]))
                self._prev_device = None  # device path: flow from the host frames this time
            self._prev = stored
        reason = self._reset_reason(size, frame.stamp, self._prev)
        if reason is not None and reason != 'first':
            self.resets += 1
            log.info('flow state reset (%s) at stamp %.3f', reason, frame.stamp)
        if self.device_path is not None:  # device path: resized on the device
            frame.device = self.device_path.prepare(rgb, bgr=bgr)
            frame.small = self.device_path.small_host(frame.device)
        else:
            frame.small = self._small(rgb)
        frame.reset_reason = reason
        if reason is None and self.flow_estimator is not None:
            frame.prev_small, frame.prev_stamp = self._prev.small, self._prev.stamp
            if frame.device is not None:
                frame.device.prev_small = self._prev_device
        self._prev_device = None if frame.device is None else frame.device.small
        self._prev = _Frame(frame.small, frame.stamp, size)
        timer.lap('resize')
        return frame

    @torch.inference_mode()
    def infer(self, frames: Sequence[PreparedFrame],
              heads: Iterable[str] = ('fused',)) -> list[dict[str, torch.Tensor]]:
        """Step 2: flow and the network, once, on a batch of prepared frames.

        Args:
            frames: frames prepared by this pipeline or by others sharing its model, all at
                one network size.
            heads: heads wanted (``fused``, ``image``, ``flow``); ``fused`` is always made.

        Returns:
            Per frame, ``{head: (1, C, h, w) logits}`` (``flow`` only for frames with flow).
        """
        _, heads = self._check_outputs_heads((), heads)
        frames = list(frames)
        if not frames:
            return []
        shapes = {f.small.shape for f in frames}
        if len(shapes) > 1:
            raise ValueError(f'frames in one batch must share a network size, got '
                             f'{sorted(s[:2] for s in shapes)}')
        for f in frames:
            if f.pipeline.model is not self.model:
                raise ValueError('a batch may only hold frames of pipelines that share '
                                 'one model object')
        if self.cpu_path is not None:  # CPU path: native-stride logits, flow overlapped
            return self.cpu_path.infer(frames, self._network_input([f.small for f in frames]))
        if self.device_path is not None and all(f.device is not None for f in frames):
            # device path: image path queued first, flow alongside, graphs, native strides
            return self.device_path.infer(self.model, frames, flow_scale=self.flow_scale)
        for f in frames:
            timer = StageTimer(self.device.type == 'cuda', f.timings)
            if f.prev_small is not None:
                f.flow = f.pipeline.flow_estimator(f.prev_small, f.small)
            timer.lap('flow')

        t0 = time.perf_counter()
        outs: list[dict[str, torch.Tensor]] = [{} for _ in frames]
        # frames with flow and frames without (first frames, resets) run as two groups
        groups = ([i for i, f in enumerate(frames) if f.flow is not None],
                  [i for i, f in enumerate(frames) if f.flow is None])
        for idx in groups:
            if not idx:
                continue
            x = self._network_input([frames[i].small for i in idx])
            flow = None
            if frames[idx[0]].flow is not None:
                flow = torch.stack([frames[i].flow for i in idx]).to(self.device)
                flow = scale_flow(flow, self.flow_scale)
            with torch.autocast('cuda', dtype=self.amp_dtype or torch.float16,
                                enabled=self.amp_dtype is not None):
                out = self.model(x, flow, heads=heads)
            for j, i in enumerate(idx):
                outs[i] = {h: v[j:j + 1] for h, v in out.items()}
        if self.device.type == 'cuda':
            torch.cuda.synchronize()
        network_ms = 1000.0 * (time.perf_counter() - t0)
        for f in frames:
            f.timings['network'] = f.timings.get('network', 0.0) + network_ms
        return outs

    def _network_input(self, smalls: Sequence[np.ndarray]) -> torch.Tensor:
        """(N, 3, H, W) normalised float batch on the device from network-size RGB frames."""
        if self.device.type == 'cpu':  # NumPy: no OpenMP threads left spinning (cpu_path)
            return network_input(smalls, self._scale, self._shift)
        if len(smalls) == 1:
            x = self._upload(smalls[0]).permute(2, 0, 1).unsqueeze(0)
        else:
            x = self._upload(np.stack(smalls)).permute(0, 3, 1, 2)
        return x.float().mul_(self._scale).add_(self._shift)

    @torch.inference_mode()
    def finish(self, frame: PreparedFrame, out: dict[str, torch.Tensor], *,
               outputs: Iterable[str] = ('color_mask', 'overlay'),
               heads: Iterable[str] = ('fused',)) -> FrameResult:
        """Step 3: temporal smoothing and argmax, then labels and pictures at the input's size.

        Args:
            frame: the frame, as :meth:`prepare` returned it and :meth:`infer` left it.
            out: its dict from :meth:`infer`.
            outputs: pictures to make, any of ``color_mask``, ``overlay``, ``confidence``,
                ``flow_rgb``; labels are always made.
            heads: heads whose labels go in ``head_labels`` (None for a head not in ``out``).
        """
        outputs, heads = self._check_outputs_heads(outputs, heads)
        timer = StageTimer(self.device.type == 'cuda', frame.timings)
        pipe, f = frame.pipeline, frame  # the stream's smoothing, its device path's graphs
        out = dict(out, fused=pipe.temporal(out['fused'], f.flow, f.stamp, f.prev_stamp,
                                            getattr(pipe.device_path, 'runner', None)))
        if frame.device is not None and frame.pipeline.device_path is not None:
            return self._finish_on_device(frame, out, outputs, heads, timer)
        want_conf = 'confidence' in outputs
        fused = out['fused']
        conf_small = None
        if want_conf:
            conf_t, lab_t = torch.softmax(full_size(fused, self.input_size), 1).max(1)
            labels_small = lab_t[0].to(torch.uint8).cpu().numpy()
            conf_small = (conf_t[0] * 255).round().to(torch.uint8).cpu().numpy()
        else:
            labels_small = labels_from_logits(fused, self.input_size)
        head_small = {}
        for h in heads:
            if h == 'fused':
                head_small[h] = labels_small
            elif h in out:
                head_small[h] = labels_from_logits(out[h], self.input_size)
            else:
                head_small[h] = None
        flow_np = None if frame.flow is None else frame.flow.cpu().numpy()
        timer.lap('argmax')

        size = frame.size
        h_in, w_in = size
        same = size == self.input_size

        def up(a: np.ndarray, interp: int = cv2.INTER_NEAREST) -> np.ndarray:
            return a if same else cv2.resize(a, (w_in, h_in), interpolation=interp)

        labels = up(labels_small)
        result = FrameResult(labels=labels, stamp=frame.stamp, flow=flow_np,
                             reset_reason=frame.reset_reason)
        result.head_labels = {h: (labels if h == 'fused' else
                                  None if v is None else up(v)) for h, v in head_small.items()}
        if conf_small is not None:
            result.confidence = up(conf_small, cv2.INTER_LINEAR)
        timer.lap('resize_back')
        if 'color_mask' in outputs or 'overlay' in outputs:
            # colouring at the network's size then a nearest resize gives the same pixels as
            # colouring the resized labels, with a fraction of the LUT work
            result.color_mask = up(colorize(labels_small, self.palette))
            if 'overlay' in outputs:
                result.overlay = overlay(frame.rgb, result.color_mask, self.config.overlay_alpha)
        if 'flow_rgb' in outputs:
            pic = (np.zeros(self.input_size + (3,), np.uint8) if flow_np is None
                   else flow_to_rgb(flow_np, max_magnitude=0.05 * self.input_size[1]))
            result.flow_rgb = up(pic, cv2.INTER_LINEAR)
        timer.lap('colour')

        self.frames += 1
        result.timings = dict(frame.timings)
        result.timings['total'] = sum(v for k, v in frame.timings.items()
                                      if k not in CONCURRENT_STAGES)
        return result

    def _finish_on_device(self, frame: PreparedFrame, out: dict[str, torch.Tensor],
                          outputs: set[str], heads: tuple[str, ...],
                          timer: StageTimer) -> FrameResult:
        """Device path of :meth:`finish`, one copy back (stages ``argmax``; ``resize_back``
        holding colour and overlay)."""
        result = FrameResult(stamp=frame.stamp, reset_reason=frame.reset_reason,
                             **frame.pipeline.device_path.finish(
                                 frame.device, out, frame.flow, outputs=outputs, heads=heads,
                                 lap=timer.lap))
        self.frames += 1
        result.timings = dict(frame.timings, total=sum(
            v for k, v in frame.timings.items() if k not in CONCURRENT_STAGES))
        return result

    def process(self, rgb: np.ndarray, stamp: float, *,
                outputs: Iterable[str] = ('color_mask', 'overlay'),
                heads: Iterable[str] = ('fused',),
                prev: Optional[tuple[np.ndarray, float]] = None,
                bgr: bool = False) -> FrameResult:
        """Segment one frame: :meth:`prepare`, :meth:`infer` and :meth:`finish`.

        Args:
            rgb: (H, W, 3) uint8 RGB frame at the camera's size.
            stamp: its time in seconds (header stamp).
            outputs: pictures to make, any of ``color_mask``, ``overlay``, ``confidence``,
                ``flow_rgb``; labels are always made.
            heads: heads whose labels go in ``head_labels`` (``fused``, ``image``, ``flow``).
            prev: ``(rgb, stamp)`` of the frame received just before this one when it differs
                from the last frame processed (a node that dropped frames); None = the last
                processed frame.
            bgr: the frames are blue, green, red (see :meth:`prepare`).

        Returns:
            FrameResult; ``labels`` are the fused head's, at the input's size.
        """
        outputs, heads = self._check_outputs_heads(outputs, heads)
        frame = self.prepare(rgb, stamp, prev=prev, bgr=bgr)
        out = self.infer([frame], heads=heads)[0]
        return self.finish(frame, out, outputs=outputs, heads=heads)


def infer_batch(frames: Sequence[PreparedFrame],
                heads: Iterable[str] = ('fused',)) -> list[dict[str, torch.Tensor]]:
    """:meth:`FramePipeline.infer` on frames of several pipelines that share one model.

    Args:
        frames: prepared frames (any of their pipelines runs the batch).
        heads: heads wanted.
    """
    frames = list(frames)
    if not frames:
        return []
    return frames[0].pipeline.infer(frames, heads=heads)
